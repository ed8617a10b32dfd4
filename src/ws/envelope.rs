//! The `@streetjs/websocket` wire envelope: `{"type": string, "payload": any, "ts": epoch-ms}`.
//!
//! This module is a pure codec with no I/O. Encoding writes the three fields in the
//! order `JSON.stringify({ type, payload, ts })` does, so frames are byte-compatible
//! with StreetJS 1.0.0 for the same payload. Decoding borrows from the frame: the
//! payload stays an unparsed [`RawValue`] until a handler asks for a concrete type.

use std::borrow::Cow;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// An envelope as a handler sees it: what the `*` wildcard listener receives.
///
/// ```
/// use street::ws::Envelope;
/// let env: Envelope = serde_json::from_str(r#"{"type":"chat","payload":{"text":"hi"},"ts":1}"#).unwrap();
/// assert_eq!(env.event, "chat");
/// assert_eq!(env.payload["text"], "hi");
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// The event name (`type` on the wire).
    #[serde(rename = "type")]
    pub event: String,
    /// The payload; `null` when the sender left it out.
    #[serde(default)]
    pub payload: serde_json::Value,
    /// The sender's timestamp in milliseconds since the Unix epoch, if it sent one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ts: Option<i64>,
}

/// Why a text frame is not a valid envelope.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EnvelopeError {
    /// The frame is not JSON at all.
    #[error("malformed JSON: {0}")]
    MalformedJson(#[source] serde_json::Error),
    /// The frame is JSON but not an object with a string `type`.
    #[error("not an envelope: expected an object with a string \"type\" ({0})")]
    NotEnvelope(#[source] serde_json::Error),
    /// The payload could not be serialized (outgoing side).
    #[error("payload could not be serialized: {0}")]
    Serialize(#[source] serde_json::Error),
}

/// A decoded incoming envelope that borrows from the frame.
#[derive(Debug)]
pub struct Incoming<'a> {
    /// Event name.
    pub event: Cow<'a, str>,
    /// Raw JSON of the payload (`None` when absent or `null`).
    pub payload: Option<&'a RawValue>,
    /// The request id of an envelope that asks for a reply (see
    /// [`ack`](super::ack)); `None` for an ordinary event.
    pub id: Option<u64>,
}

#[derive(Deserialize)]
struct Wire<'a> {
    #[serde(rename = "type", borrow)]
    event: Cow<'a, str>,
    #[serde(default, borrow)]
    payload: Option<&'a RawValue>,
    /// Any JSON: only an integer ≥ 0 makes a request; anything else is ignored, as
    /// StreetJS ignores unknown fields.
    #[serde(default, borrow)]
    id: Option<&'a RawValue>,
}

/// Decode a text frame into an [`Incoming`] envelope.
///
/// Unknown fields (including `ts`) are ignored, as StreetJS does.
///
/// # Errors
/// [`EnvelopeError::MalformedJson`] when the text is not JSON, [`EnvelopeError::NotEnvelope`]
/// when it is JSON without a string `type`.
///
/// ```
/// let inc = street::ws::envelope::decode(r#"{"type":"echo","payload":[1,2]}"#).unwrap();
/// assert_eq!(inc.event, "echo");
/// assert_eq!(inc.payload.unwrap().get(), "[1,2]");
/// assert!(street::ws::envelope::decode("{oops").is_err());
/// ```
pub fn decode(text: &str) -> Result<Incoming<'_>, EnvelopeError> {
    match serde_json::from_str::<Wire<'_>>(text) {
        Ok(w) => Ok(Incoming {
            event: w.event,
            payload: w.payload,
            id: w.id.and_then(|v| v.get().parse::<u64>().ok()),
        }),
        Err(e) if e.is_syntax() || e.is_eof() => Err(EnvelopeError::MalformedJson(e)),
        Err(e) => Err(EnvelopeError::NotEnvelope(e)),
    }
}

/// Milliseconds since the Unix epoch (what JavaScript's `Date.now()` returns).
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Encode `{"type":event,"payload":payload,"ts":ts}` into shareable bytes.
///
/// The result is what every recipient of a broadcast shares: clone the [`Bytes`],
/// never the payload.
///
/// # Errors
/// [`EnvelopeError::Serialize`] when `payload`'s `Serialize` impl fails (e.g. a map
/// with non-string keys).
///
/// ```
/// let b = street::ws::envelope::encode_at("echo", &serde_json::json!({"a":1}), 42).unwrap();
/// assert_eq!(&b[..], br#"{"type":"echo","payload":{"a":1},"ts":42}"#);
/// ```
pub fn encode_at<P: Serialize + ?Sized>(
    event: &str,
    payload: &P,
    ts: i64,
) -> Result<Bytes, EnvelopeError> {
    let mut buf = BytesMut::with_capacity(48 + event.len());
    buf.put_slice(b"{\"type\":");
    {
        let mut w = (&mut buf).writer();
        serde_json::to_writer(&mut w, event).map_err(EnvelopeError::Serialize)?;
    }
    buf.put_slice(b",\"payload\":");
    {
        let mut w = (&mut buf).writer();
        serde_json::to_writer(&mut w, payload).map_err(EnvelopeError::Serialize)?;
    }
    buf.put_slice(b",\"ts\":");
    let mut itoa_buf = itoa::Buffer::new();
    buf.put_slice(itoa_buf.format(ts).as_bytes());
    buf.put_u8(b'}');
    Ok(buf.freeze())
}

/// A request: [`encode`] with a top-level `"id"` (see [`ack`](super::ack)).
pub(crate) fn encode_request<P: Serialize + ?Sized>(
    event: &str,
    payload: &P,
    id: u64,
) -> Result<Bytes, EnvelopeError> {
    let b = encode(event, payload)?;
    let body = b.strip_suffix(b"}").unwrap_or(&b);
    let mut buf = BytesMut::with_capacity(b.len() + 24);
    buf.put_slice(body);
    buf.put_slice(b",\"id\":");
    let mut itoa_buf = itoa::Buffer::new();
    buf.put_slice(itoa_buf.format(id).as_bytes());
    buf.put_u8(b'}');
    Ok(buf.freeze())
}

/// [`encode_at`] with the current time.
///
/// # Errors
/// As [`encode_at`].
pub fn encode<P: Serialize + ?Sized>(event: &str, payload: &P) -> Result<Bytes, EnvelopeError> {
    encode_at(event, payload, now_ms())
}

/// Add a top-level `"channel":channel` to an envelope [`encode_at`] made (what a
/// publication in a room with history carries, with its offset: see [`with_offset`]).
pub(crate) fn with_channel(envelope: &[u8], channel: &str) -> Bytes {
    let body = envelope.strip_suffix(b"}").unwrap_or(envelope);
    let mut buf = BytesMut::with_capacity(envelope.len() + channel.len() + 14);
    buf.put_slice(body);
    buf.put_slice(b",\"channel\":");
    {
        let mut w = (&mut buf).writer();
        // a &str always serializes
        let _ = serde_json::to_writer(&mut w, channel);
    }
    buf.put_u8(b'}');
    buf.freeze()
}

/// Add a top-level `"offset":offset` to an envelope (a JSON object, ending in `}`): the
/// publication's place in its channel's stream, inserted before the closing brace. A
/// broker that positions publications ([`Broker::publish_with_history`]) delivers and
/// keeps the envelope this returns (the Redis broker's script does the same to the
/// bytes).
///
/// [`Broker::publish_with_history`]: crate::cluster::Broker::publish_with_history
///
/// ```
/// let b = street::ws::envelope::with_offset(br#"{"type":"m","payload":1,"ts":7,"channel":"c"}"#, 42);
/// assert_eq!(&b[..], br#"{"type":"m","payload":1,"ts":7,"channel":"c","offset":42}"#);
/// ```
pub fn with_offset(envelope: &[u8], offset: u64) -> Bytes {
    let body = envelope.strip_suffix(b"}").unwrap_or(envelope);
    let mut buf = BytesMut::with_capacity(envelope.len() + 32);
    buf.put_slice(body);
    buf.put_slice(b",\"offset\":");
    let mut itoa_buf = itoa::Buffer::new();
    buf.put_slice(itoa_buf.format(offset).as_bytes());
    buf.put_u8(b'}');
    buf.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_channel_goes_in_before_the_closing_brace_json_escaped() {
        let b = encode_at("m", &1, 7).expect("encode");
        let b = with_channel(&b, "chat:\"a\"");
        assert_eq!(
            &b[..],
            br#"{"type":"m","payload":1,"ts":7,"channel":"chat:\"a\""}"#
        );
    }

    #[test]
    fn encodes_like_json_stringify() {
        let b = encode_at("a\"b", &serde_json::json!("x\ny"), 7).unwrap();
        assert_eq!(&b[..], br#"{"type":"a\"b","payload":"x\ny","ts":7}"#);
        let b = encode_at("n", &(), 1).unwrap();
        assert_eq!(&b[..], br#"{"type":"n","payload":null,"ts":1}"#);
    }

    #[test]
    fn decode_classifies_errors() {
        assert!(matches!(
            decode("nope"),
            Err(EnvelopeError::MalformedJson(_))
        ));
        assert!(matches!(decode("[1]"), Err(EnvelopeError::NotEnvelope(_))));
        assert!(matches!(
            decode(r#"{"type":5}"#),
            Err(EnvelopeError::NotEnvelope(_))
        ));
        assert!(matches!(
            decode(r#"{"payload":5}"#),
            Err(EnvelopeError::NotEnvelope(_))
        ));
        let ok = decode(r#"{"type":"x","ts":5,"extra":true}"#).unwrap();
        assert_eq!(ok.event, "x");
        assert!(ok.payload.is_none());
        let esc = decode(r#"{"type":"a\u0041"}"#).unwrap();
        assert_eq!(esc.event, "aA");
    }

    #[test]
    fn roundtrip() {
        let b = encode_at("chat", &serde_json::json!({"t":[1,2,{"x":null}]}), 9).unwrap();
        let text = std::str::from_utf8(&b).unwrap();
        let env: Envelope = serde_json::from_str(text).unwrap();
        assert_eq!(env.event, "chat");
        assert_eq!(env.ts, Some(9));
        let inc = decode(text).unwrap();
        assert_eq!(inc.payload.unwrap().get(), r#"{"t":[1,2,{"x":null}]}"#);
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    fn json_value() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            ".{0,20}".prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(3, 32, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
                proptest::collection::btree_map(".{0,8}", inner, 0..4)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn encode_then_decode_roundtrips(event in ".{0,30}", payload in json_value(), ts in any::<i64>()) {
            let b = encode_at(&event, &payload, ts).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let text = std::str::from_utf8(&b).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let inc = decode(text).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(&*inc.event, event.as_str());
            let back: serde_json::Value = match inc.payload {
                Some(raw) => serde_json::from_str(raw.get()).map_err(|e| TestCaseError::fail(e.to_string()))?,
                None => serde_json::Value::Null,
            };
            prop_assert_eq!(back, payload);
            let env: Envelope = serde_json::from_str(text).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(env.ts, Some(ts));
        }

        #[test]
        fn decode_never_panics(text in "(.|\\{|\\}|\"|:|,){0,200}") {
            let _ = decode(&text);
        }

        #[test]
        fn origin_parse_never_panics(s in "(.|:|/|\\[|\\]|@){0,60}") {
            let _ = crate::ws::Origin::parse(&s);
        }
    }
}
