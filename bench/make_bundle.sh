#!/usr/bin/env bash
# Build OCI bundles around a busybox-static rootfs.
#
# usage: bench/make_bundle.sh DIR [ARGS...]      (ARGS default: /bin/true)
#
# Creates (replacing whatever DIR held before):
#   DIR/rootfs/              busybox-static + one symlink per applet, empty /proc /sys /dev /tmp
#   DIR/plain/config.json    `runc spec` output, terminal=false, process.args=ARGS,
#                            root.path=DIR/rootfs (absolute: runc refuses a symlinked rootfs)
#   DIR/seccomp/config.json  same + linux.seccomp converted from ../tests/data/docker-default-seccomp.json
#   DIR/rootfs.tar           tarball of the rootfs (for `podman import`)
# Needs: busybox-static (/bin/busybox must be static), runc, jq, python3.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
DIR=${1:?usage: make_bundle.sh DIR [ARGS...]}
shift
ARGS=("$@")
[[ ${#ARGS[@]} -gt 0 ]] || ARGS=(/bin/true)

BB=/bin/busybox
file -L "$BB" 2>/dev/null | grep -q 'statically linked' || ldd "$BB" 2>&1 | grep -q 'not a dynamic' ||
    { echo "$BB is not static: apt-get install busybox-static" >&2; exit 1; }

mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)
rm -rf "$DIR/rootfs" "$DIR/plain" "$DIR/seccomp" "$DIR/rootfs.tar"
mkdir -p "$DIR"/rootfs/{bin,proc,sys,dev,tmp,etc,root} "$DIR/plain" "$DIR/seccomp"
cp "$BB" "$DIR/rootfs/bin/busybox"
for a in $("$BB" --list); do
    [[ -e $DIR/rootfs/bin/$a ]] || ln -s busybox "$DIR/rootfs/bin/$a"
done
echo 'root:x:0:0:root:/root:/bin/sh' >"$DIR/rootfs/etc/passwd"
echo 'root:x:0:' >"$DIR/rootfs/etc/group"
tar -C "$DIR/rootfs" -cf "$DIR/rootfs.tar" .

(cd "$DIR/plain" && runc spec)
args_json=$(printf '%s\n' "${ARGS[@]}" | jq -R . | jq -s .)
jq --arg root "$DIR/rootfs" --argjson args "$args_json" \
    '.process.terminal = false | .process.args = $args | .root.path = $root' \
    "$DIR/plain/config.json" >"$DIR/plain/config.json.tmp"
mv "$DIR/plain/config.json.tmp" "$DIR/plain/config.json"
python3 "$HERE/seccomp_to_oci.py" "$HERE/../tests/data/docker-default-seccomp.json" \
    "$DIR/plain/config.json" "$DIR/seccomp/config.json"
echo "bundles: $DIR/plain $DIR/seccomp (rootfs $DIR/rootfs, $(ls "$DIR/rootfs/bin" | wc -l) entries in /bin)" >&2
