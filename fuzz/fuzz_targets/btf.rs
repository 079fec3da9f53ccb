//! Any bytes as kernel BTF (`/sys/kernel/btf/vmlinux`): member offsets or a typed error, never
//! a panic, a hang or an allocation the input's length does not bound.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = palisade::fuzzing::btf_offsets(data);
});
