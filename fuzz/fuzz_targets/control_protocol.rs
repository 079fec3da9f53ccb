//! Any bytes as a control-socket line: the protocol's `Request` and `Reply` parsers, the typed
//! answers the CLI reads out of a reply, and the agent's handling of what parses without a
//! running agent (a subscription's filter). Whatever parses must serialise again and parse to
//! the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use palisade_proto::{Learned, PolicyStatus, Reply, Request};

fuzz_target!(|data: &[u8]| {
    let _ = palisade::fuzzing::control_request(data);
    if let Ok(req) = serde_json::from_slice::<Request>(data) {
        let text = serde_json::to_string(&req).unwrap_or_else(|e| panic!("{e}"));
        let again: Request = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
        assert_eq!(
            serde_json::to_string(&again).unwrap_or_default(),
            text,
            "a request changes through a round trip"
        );
    }
    if let Ok(reply) = serde_json::from_slice::<Reply>(data) {
        let text = serde_json::to_string(&reply).unwrap_or_else(|e| panic!("{e}"));
        let _: Reply = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
        // the typed answers the CLI reads out of a reply (policy learn, policy status)
        let _ = reply.data_as::<Learned>();
        let _ = reply.data_as::<PolicyStatus>();
    }
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = palisade_proto::valid_name(s);
    }
});
