//! The `text/event-stream` encoder: one function from an event to the bytes on the wire,
//! safe for every input string.
//!
//! axum's `Event` setters panic on CR/LF (and `id` on NUL), so street encodes frames
//! itself:
//! - `event` and `id` have CR, LF and NUL removed (they cannot split the frame or inject
//!   fields);
//! - `data` is split on every line break (`\r\n`, `\r`, `\n`), one `data:` line each, so
//!   the browser reassembles it exactly (lines joined with `\n`);
//! - a comment is split the same way, one `:` line each.

use bytes::{BufMut, Bytes, BytesMut};

/// One event.
///
/// ```
/// use street::sse::{encode_event, SseEvent};
/// let ev = SseEvent { id: Some("7".into()), event: Some("tick".into()), data: "a\nb".into(), retry: None };
/// assert_eq!(&encode_event(&ev)[..], b"id: 7\nevent: tick\ndata: a\ndata: b\n\n");
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SseEvent {
    /// `id:` (CR, LF and NUL are removed).
    pub id: Option<String>,
    /// `event:` (CR, LF and NUL are removed).
    pub event: Option<String>,
    /// `data:` (split into one line per line break).
    pub data: String,
    /// `retry:` in milliseconds.
    pub retry: Option<u64>,
}

fn put_clean(buf: &mut BytesMut, field: &[u8], value: &str) {
    buf.put_slice(field);
    for b in value.bytes() {
        if !matches!(b, b'\r' | b'\n' | b'\0') {
            buf.put_u8(b);
        }
    }
    buf.put_u8(b'\n');
}

/// Split on `\r\n`, `\r` or `\n`.
fn lines(s: &str) -> impl Iterator<Item = &str> {
    let mut rest = Some(s);
    std::iter::from_fn(move || {
        let r = rest?;
        match r.find(['\r', '\n']) {
            None => {
                rest = None;
                Some(r)
            }
            Some(i) => {
                let skip = if r[i..].starts_with("\r\n") { 2 } else { 1 };
                rest = Some(&r[i + skip..]);
                Some(&r[..i])
            }
        }
    })
}

/// Encode one event, ending with the blank line that dispatches it.
pub fn encode_event(ev: &SseEvent) -> Bytes {
    let mut buf = BytesMut::with_capacity(ev.data.len() + 32);
    if let Some(id) = &ev.id {
        put_clean(&mut buf, b"id: ", id);
    }
    if let Some(event) = &ev.event {
        put_clean(&mut buf, b"event: ", event);
    }
    if let Some(retry) = ev.retry {
        buf.put_slice(b"retry: ");
        buf.put_slice(itoa::Buffer::new().format(retry).as_bytes());
        buf.put_u8(b'\n');
    }
    for line in lines(&ev.data) {
        buf.put_slice(b"data: ");
        buf.put_slice(line.as_bytes());
        buf.put_u8(b'\n');
    }
    buf.put_u8(b'\n');
    buf.freeze()
}

/// Encode a comment (what heartbeats are): `: text` lines, ignored by browsers.
///
/// ```
/// assert_eq!(&street::sse::encode_comment("ping")[..], b": ping\n\n");
/// ```
pub fn encode_comment(text: &str) -> Bytes {
    let mut buf = BytesMut::with_capacity(text.len() + 4);
    for line in lines(text) {
        buf.put_slice(b": ");
        buf.put_slice(line.as_bytes());
        buf.put_u8(b'\n');
    }
    buf.put_u8(b'\n');
    buf.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(id: Option<&str>, event: Option<&str>, data: &str) -> String {
        let e = SseEvent {
            id: id.map(Into::into),
            event: event.map(Into::into),
            data: data.into(),
            retry: None,
        };
        String::from_utf8(encode_event(&e).to_vec()).unwrap()
    }

    #[test]
    fn line_breaks_of_every_kind_split_data() {
        assert_eq!(
            ev(None, None, "a\r\nb\rc\nd"),
            "data: a\ndata: b\ndata: c\ndata: d\n\n"
        );
        assert_eq!(ev(None, None, ""), "data: \n\n");
        assert_eq!(ev(None, None, "x\n"), "data: x\ndata: \n\n");
        assert_eq!(ev(None, None, "\r\n\r\n"), "data: \ndata: \ndata: \n\n");
    }

    #[test]
    fn injection_in_event_and_id_is_neutralized() {
        assert_eq!(
            ev(
                Some("1\n\ndata: evil"),
                Some("tick\r\nevent: admin\0"),
                "ok"
            ),
            "id: 1data: evil\nevent: tickevent: admin\ndata: ok\n\n"
        );
    }

    #[test]
    fn retry_and_comment() {
        let e = SseEvent {
            retry: Some(1500),
            data: "d".into(),
            ..Default::default()
        };
        assert_eq!(&encode_event(&e)[..], b"retry: 1500\ndata: d\n\n");
        assert_eq!(&encode_comment("a\nb")[..], b": a\n: b\n\n");
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    /// A browser's view of one event (WHATWG "interpret an event stream", for one block).
    fn parse(frame: &str) -> (Option<String>, Option<String>, String, usize) {
        let (mut id, mut event, mut data, mut blocks) = (None, None, Vec::new(), 0);
        for line in frame.split('\n') {
            if line.is_empty() {
                blocks += 1;
                continue;
            }
            let (field, value) = match line.split_once(':') {
                Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
                None => (line, ""),
            };
            match field {
                "id" => id = Some(value.to_owned()),
                "event" => event = Some(value.to_owned()),
                "data" => data.push(value.to_owned()),
                _ => {}
            }
        }
        (id, event, data.join("\n"), blocks)
    }

    proptest! {
        /// Whatever the strings, the frame is exactly one event whose data reads back
        /// with line breaks as `\n`, and whose `id`/`event` lost only CR, LF and NUL.
        #[test]
        fn any_strings_make_exactly_one_safe_event(id in ".{0,40}", event in ".{0,40}", data in "(.|\r|\n){0,200}") {
            let ev = SseEvent { id: Some(id.clone()), event: Some(event.clone()), data: data.clone(), retry: None };
            let bytes = encode_event(&ev);
            let text = std::str::from_utf8(&bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert!(text.ends_with("\n\n"));
            prop_assert!(!text.contains('\r'));
            let body = &text[..text.len() - 2];
            prop_assert!(!body.contains("\n\n"), "an event must not be split: {text:?}");
            let (pid, pevent, pdata, _) = parse(body);
            let clean = |s: &str| s.chars().filter(|c| !matches!(c, '\r' | '\n' | '\0')).collect::<String>();
            prop_assert_eq!(pid, Some(clean(&id)));
            prop_assert_eq!(pevent, Some(clean(&event)));
            prop_assert_eq!(pdata, data.replace("\r\n", "\n").replace('\r', "\n"));
        }
    }
}
