//! The `{type,payload,ts}` envelope decoder, and typed payload extraction.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(inc) = street::ws::envelope::decode(text) {
            let _ = inc.payload.map(|p| serde_json::from_str::<serde_json::Value>(p.get()));
        }
        let _ = serde_json::from_str::<street::ws::Envelope>(text);
    }
});
