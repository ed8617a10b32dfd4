//! The upgrade request checks: handshake headers, Origin gate, query parsing.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    street::ws::__fuzz::upgrade_request(data);
});
