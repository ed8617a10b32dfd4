//! The RFC 6455 frame decoder on arbitrary client bytes, fed whole and in small chunks.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    street::ws::__fuzz::frames(data);
});
