//! The subscriber seam: a room's publications reach WebSocket sockets and SSE streams
//! alike. A publication is one [`Frame`]: the envelope bytes, shared by every socket, and
//! its SSE encoding, made once, on the first stream that needs it, and shared by the
//! others. Each subscriber's queue is bounded by its own transport's policy (a socket's
//! `max_queue_bytes` closes it with 4008; a stream's ends it as a slow reader).

use std::sync::{Arc, OnceLock};

use bytes::Bytes;

use crate::cluster::Position;
use crate::sse::encode::{encode_event, SseEvent};
use crate::sse::stream::Shared;
use crate::ws::{envelope, Socket};

/// One subscriber of a room.
#[derive(Clone)]
pub(super) enum Sink {
    Socket(Socket),
    Stream(Arc<Shared>),
}

impl Sink {
    /// Queue `frame`; false when the subscriber is gone or was just closed for being slow.
    pub(super) fn send(&self, frame: &Frame<'_>) -> bool {
        match self {
            Sink::Socket(s) => s.send_text_bytes(frame.envelope.clone()).is_ok(),
            Sink::Stream(s) => frame.sse().is_some_and(|b| s.push(b.clone()).is_ok()),
        }
    }
}

/// The SSE id of a position: `epoch:offset` (what `Last-Event-ID` brings back).
pub(super) fn sse_id(pos: &Position) -> String {
    format!("{}:{}", pos.epoch, pos.offset)
}

/// Parse an SSE id made by [`sse_id`].
pub(super) fn parse_sse_id(id: &str) -> Option<Position> {
    let (epoch, offset) = id.trim().rsplit_once(':')?;
    Some(Position {
        epoch: Arc::from(epoch),
        offset: offset.parse().ok()?,
    })
}

/// A publication as every kind of subscriber gets it.
pub(super) struct Frame<'a> {
    pub(super) envelope: &'a Bytes,
    position: Option<&'a Position>,
    sse: OnceLock<Option<Bytes>>,
}

impl<'a> Frame<'a> {
    pub(super) fn new(envelope: &'a Bytes, position: Option<&'a Position>) -> Self {
        Self {
            envelope,
            position,
            sse: OnceLock::new(),
        }
    }

    /// The SSE event: `event:` the envelope's type, `data:` its payload (JSON), `id:` the
    /// position when it has one. `None` when the envelope does not decode (it always
    /// does when street made it).
    pub(super) fn sse(&self) -> Option<&Bytes> {
        self.sse
            .get_or_init(|| {
                let text = std::str::from_utf8(self.envelope).ok()?;
                let inc = envelope::decode(text).ok()?;
                Some(encode_event(&SseEvent {
                    id: self.position.map(sse_id),
                    event: Some(inc.event.into_owned()),
                    data: inc
                        .payload
                        .map_or_else(|| "null".into(), |p| p.get().to_owned()),
                    retry: None,
                }))
            })
            .as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_positioned_publication_becomes_one_sse_event_with_its_position_as_id() {
        let env = Bytes::from_static(
            br#"{"type":"m","payload":{"a":"x\ny"},"ts":1,"channel":"c","offset":7}"#,
        );
        let pos = Position {
            epoch: Arc::from("e1"),
            offset: 7,
        };
        let f = Frame::new(&env, Some(&pos));
        let sse = f.sse().expect("sse");
        assert_eq!(&sse[..], b"id: e1:7\nevent: m\ndata: {\"a\":\"x\\ny\"}\n\n");
        assert!(std::ptr::eq(f.sse().expect("again"), sse), "encoded once");
        assert_eq!(parse_sse_id("e1:7"), Some(pos));
        assert_eq!(parse_sse_id("7"), None);
    }
}
