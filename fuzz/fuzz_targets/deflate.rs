//! permessage-deflate: bounded inflation of arbitrary bytes, the decoder with RSV1 on,
//! and compress-then-inflate round trips.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    street::ws::__fuzz::deflate(data);
});
