//! The SSE encoder with arbitrary id, event and data: it must never panic, and the frame
//! must be exactly one event.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.splitn(3, '\u{1}');
    let (id, event, body) = (parts.next(), parts.next(), parts.next().unwrap_or(""));
    let ev = street::sse::SseEvent {
        id: id.map(Into::into),
        event: event.map(Into::into),
        data: body.into(),
        retry: None,
    };
    let out = street::sse::encode_event(&ev);
    assert!(out.ends_with(b"\n\n"));
    assert!(!out[..out.len() - 2].windows(2).any(|w| w == b"\n\n"), "event split");
    assert!(!out.contains(&b'\r'));
    let _ = street::sse::encode_comment(&text);
});
