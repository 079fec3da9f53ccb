//! Any bytes as the start of a DNS message a container sent (the kernel copies up to 128
//! bytes): a question name or nothing, never a panic. A name is dot-separated labels of at
//! most 63 characters each.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(name) = palisade::fuzzing::dns_query_name(data) {
        assert!(!name.is_empty());
        assert!(name.split('.').all(|l| !l.is_empty() && l.len() <= 63), "{name}");
    }
});
