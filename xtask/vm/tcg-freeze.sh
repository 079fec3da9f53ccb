#!/bin/bash
# Shows why `cargo xtask vm-test` runs qemu's TCG with one host thread (`vm::TCG`).
#
#   bash xtask/vm/tcg-freeze.sh multi    # qemu's default: multi-threaded TCG
#   bash xtask/vm/tcg-freeze.sh single   # -accel tcg,thread=single
#
# Boots Debian's 6.1 kernel (installed by `cargo xtask vm-test`) with 2 vCPUs. In the guest,
# two `dd bs=1` loops make syscalls on both vCPUs while the `raw_syscalls` tracepoints are
# enabled and disabled N times (default 400): each toggle patches the static key and static
# call in the syscall entry and exit paths, as an agent's start and stop do. With `multi`
# the guest has frozen within a few toggles (RCU stall, both vCPUs spinning in
# syscall_trace_enter); with `single` it finishes. Prints the last progress line and whether
# the kernel reported a stall; exits 1 when the guest froze (killed after LIMIT s, default 600).
set -u
if [ "${1:-}" = --guest ]; then
    out=$2 n=$3
    t=/sys/kernel/tracing
    [ -d $t/events ] || mount -t tracefs tracefs $t
    echo 0 > $t/tracing_on
    for c in 0 1; do taskset -c $c dd if=/dev/zero of=/dev/null bs=1 count=4000000000 2>/dev/null & done
    start=$(date +%s)
    for i in $(seq 1 "$n"); do
        for e in sys_enter sys_exit; do echo 1 > $t/events/raw_syscalls/$e/enable; done
        for e in sys_enter sys_exit; do echo 0 > $t/events/raw_syscalls/$e/enable; done
        echo "toggle $i after $(( $(date +%s) - start )) s" > "$out/progress"
    done
    echo "done: $n toggles" >> "$out/progress"
    kill %1 %2
    exit 0
fi
case "${1:-}" in
    multi) accel=tcg ;;
    single) accel=tcg,thread=single ;;
    *) echo "usage: $0 multi|single [N]" >&2; exit 2 ;;
esac
n=${2:-400}
kernel=$(ls /boot/vmlinuz-6.1.* 2>/dev/null | tail -1)
[ -n "$kernel" ] || { echo "no /boot/vmlinuz-6.1.*: run cargo xtask vm-test first" >&2; exit 2; }
PATH=$HOME/.local/share/palisade/virtme-ng/bin:$PATH
mkdir -p "$(dirname "$0")/../../target"
out=$(mktemp -d "$(dirname "$0")/../../target/tcg-freeze.XXXX")
out=$(readlink -f "$out")
self=$(readlink -f "$0")
timeout -k 10 "${LIMIT:-600}" vng --verbose --disable-kvm --disable-microvm -r "$kernel" \
    --memory 2G --cpus 2 --qemu-opts="-accel $accel" --rwdir "$out" \
    --exec "bash $self --guest $out $n" > "$out/console.log" 2>&1
rc=$?
echo "accel $accel: $(head -1 "$out/progress" 2>/dev/null)$(sed -n 2p "$out/progress" 2>/dev/null | sed 's/^/, /')"
grep -m1 -E "rcu_preempt (self-)?detected stall|soft lockup" "$out/console.log" && echo "(console: $out/console.log)"
grep -q '^done' "$out/progress" 2>/dev/null || { echo "the guest froze (vng exit $rc)"; exit 1; }
