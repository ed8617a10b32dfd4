//! Requests with a reply ("acknowledgements"), both ways, on the StreetJS envelope.
//!
//! **Wire.** A request is an envelope with a top-level `"id"`, an integer ≥ 0 the sender
//! picks, unique among its requests still waiting (an `"id"` that is not such an integer
//! is ignored, as any unknown field):
//! `{"type":"sum","payload":[1,2],"ts":1700000000000,"id":7}`. Its reply is the event
//! [`REPLY_EVENT`] (`street:reply`) with the same id and either a result or an error:
//!
//! ```text
//! {"type":"street:reply","payload":{"id":7,"result":3},"ts":…}
//! {"type":"street:reply","payload":{"id":7,"error":{"code":"rejected","message":"…"}},"ts":…}
//! ```
//!
//! Error codes: [`codes`]. A peer that knows nothing of requests sees an ordinary event
//! (StreetJS ignores unknown fields), so a request to it times out.
//!
//! **Client to server** ([`Socket::on_request`](super::Socket::on_request)): one handler
//! per event answers. A request for an event without one goes to its
//! [`Socket::on`](super::Socket::on) listeners as an ordinary event (and gets no reply),
//! or, when it has none either, is answered `no_handler` at once. Like every message of
//! a socket, requests are handled one at a time, in order: one in progress per
//! connection, the rest waiting in the socket's read path (bounded by its byte and
//! message rates). An async handler that takes longer than
//! [`WsOptions::request_timeout`](super::WsOptions::request_timeout) is answered
//! `timeout` and dropped at its next `.await`; a handler that blocks without awaiting is
//! not interrupted. While a handler runs its connection reads nothing, pongs included
//! (the heartbeat spares it meanwhile, for a while: see `WsOptions::heartbeat_interval`). Keep handlers short or spawn the work. A
//! handler's panic (or a result that does not serialize) is also an `error` event, as
//! for `on` handlers; an `Err` it returns is an answer, counted in `requests_failed` only.
//!
//! **Server to client** ([`Socket::emit_with_ack`](super::Socket::emit_with_ack)): at most
//! [`WsOptions::max_pending_acks`](super::WsOptions::max_pending_acks) waiting per socket
//! (beyond: [`AckError::TooMany`] at once), each for its own timeout; a reply that comes
//! later, or for an id nobody waits for, is dropped. The connection's end settles every
//! waiting request with [`AckError::Closed`].

use std::collections::HashMap;
use std::future::Future;
use std::marker::PhantomData;
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio::sync::oneshot;

use super::envelope::{self, EnvelopeError};
use super::handler::BoxFuture;

/// The event that carries a reply.
pub const REPLY_EVENT: &str = "street:reply";

/// The `code`s of a reply's error.
pub mod codes {
    /// The handler returned an error (its message is the error's `message`).
    pub const REJECTED: &str = "rejected";
    /// No handler answers requests for that event.
    pub const NO_HANDLER: &str = "no_handler";
    /// The payload did not fit the handler's type.
    pub const BAD_PAYLOAD: &str = "bad_payload";
    /// The handler took longer than the server's `request_timeout`.
    pub const TIMEOUT: &str = "timeout";
    /// The handler panicked, or its result did not serialize.
    pub const INTERNAL: &str = "internal";
}

/// Why a request got no result.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AckError {
    /// No reply within the timeout.
    #[error("no reply within {0:?}")]
    Timeout(Duration),
    /// The connection ended before the reply.
    #[error("the connection closed before the reply")]
    Closed,
    /// Too many requests to this socket wait for their reply already.
    #[error("{limit} requests wait for a reply already")]
    TooMany {
        /// [`WsOptions::max_pending_acks`](super::WsOptions::max_pending_acks).
        limit: usize,
    },
    /// The peer answered with an error.
    #[error("the peer answered {code}: {message}")]
    Rejected {
        /// One of [`codes`], or the peer's own.
        code: String,
        /// What the peer said.
        message: String,
    },
    /// The reply's result does not fit the type asked for.
    #[error("the reply's result does not fit: {0}")]
    Result(String),
    /// Awaited inside a handler of the same socket, whose reader waits for that handler:
    /// the reply could not be read in time. Call it from a spawned task.
    #[error("emit_with_ack awaited in a handler of the same socket: spawn a task for it")]
    InHandler,
    /// The request could not be sent (it did not serialize, or the client's queue was
    /// full: it is then disconnected as a slow consumer).
    #[error("the request could not be sent: {0}")]
    Send(String),
}

/// A reply's error, on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct WireError {
    pub(crate) code: String,
    pub(crate) message: String,
}

#[derive(Serialize)]
struct ReplyOut<'a> {
    id: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    result: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a WireError>,
}

#[derive(Deserialize)]
struct ReplyIn<'a> {
    id: u64,
    #[serde(borrow, default)]
    result: Option<&'a RawValue>,
    /// Any JSON: an error the client shaped its own way is still an error, not a reply
    /// dropped (its waiter would time out).
    #[serde(default)]
    error: Option<serde_json::Value>,
}

/// The most of an error message a reply carries (longer ones are cut, with `…`).
pub(crate) const MAX_ERROR_MESSAGE: usize = 256;

/// `message` cut to [`MAX_ERROR_MESSAGE`] bytes (at a character boundary).
pub(crate) fn bounded(mut message: String) -> String {
    if message.len() > MAX_ERROR_MESSAGE {
        let end = super::text::prefix_within(&message, MAX_ERROR_MESSAGE - '…'.len_utf8()).len();
        message.truncate(end);
        message.push('…');
    }
    message
}

/// The `street:reply` envelope for request `id`.
pub(crate) fn encode_reply(
    id: u64,
    outcome: &Result<Box<RawValue>, WireError>,
) -> Result<Bytes, EnvelopeError> {
    let body = match outcome {
        Ok(r) => ReplyOut {
            id,
            result: Some(r),
            error: None,
        },
        Err(e) => ReplyOut {
            id,
            result: None,
            error: Some(e),
        },
    };
    envelope::encode(REPLY_EVENT, &body)
}

/// A reply's payload: its id and what it says (`None` when it is not a reply).
pub(crate) fn decode_reply(
    payload: Option<&RawValue>,
) -> Option<(u64, Result<Box<RawValue>, AckError>)> {
    let r: ReplyIn<'_> = serde_json::from_str(payload?.get()).ok()?;
    let text = |v: Option<&serde_json::Value>| v.and_then(|v| v.as_str()).map(str::to_owned);
    let outcome = match (r.error, r.result) {
        (Some(e), _) => Err(AckError::Rejected {
            code: text(e.get("code")).unwrap_or_else(|| codes::REJECTED.to_owned()),
            message: text(e.get("message"))
                .or_else(|| e.as_str().map(str::to_owned))
                .unwrap_or_default(),
        }),
        (None, Some(v)) => Ok(v.to_owned()),
        (None, None) => {
            RawValue::from_string("null".into()).map_err(|e| AckError::Result(e.to_string()))
        }
    };
    Some((r.id, outcome))
}

/// What a request to the client comes to: its result, or why there is none.
pub(crate) type Reply = Result<Box<RawValue>, AckError>;

type Waiter = oneshot::Sender<Reply>;

/// A socket's requests waiting for their reply (made on its first request).
#[derive(Default)]
pub(crate) struct Pending {
    next: u64,
    waiting: HashMap<u64, Waiter>,
}

impl Pending {
    /// A new request: its id and where its reply will arrive; `TooMany` over `limit`.
    pub(crate) fn open(
        &mut self,
        limit: usize,
    ) -> Result<(u64, oneshot::Receiver<Reply>), AckError> {
        if self.waiting.len() >= limit {
            return Err(AckError::TooMany { limit });
        }
        if self.next == 0 {
            // a random start (within JavaScript's safe integers): a client's reply meant
            // for another connection's request does not land on this one's
            self.next = fastrand::u64(1..1 << 40);
        }
        self.next += 1;
        let (tx, rx) = oneshot::channel();
        self.waiting.insert(self.next, tx);
        Ok((self.next, rx))
    }

    /// Hand a reply to its waiter; false when nobody waits for `id`.
    pub(crate) fn settle(&mut self, id: u64, outcome: Result<Box<RawValue>, AckError>) -> bool {
        match self.waiting.remove(&id) {
            Some(tx) => tx.send(outcome).is_ok(),
            None => false,
        }
    }

    /// Stop waiting for `id` (timed out, or its future dropped).
    pub(crate) fn forget(&mut self, id: u64) {
        self.waiting.remove(&id);
    }

    /// Requests waiting.
    pub(crate) fn len(&self) -> usize {
        self.waiting.len()
    }

    /// The connection ended: every waiter gets `Closed`.
    pub(crate) fn close_all(&mut self) {
        for (_, tx) in self.waiting.drain() {
            let _ = tx.send(Err(AckError::Closed));
        }
    }
}

/// What a request handler's answer became, for the wire.
pub(crate) type Answer = Result<Box<RawValue>, WireError>;

/// Opaque result of [`Responder::respond`]: the answer to await.
#[doc(hidden)]
pub struct Answered(pub(crate) BoxFuture<Answer>);

/// A request handler: `Fn(T) -> Result<R, E>` or `Fn(T) -> impl Future<Output =
/// Result<R, E>>`, for a payload type `T`, a serializable result `R` and a displayable
/// error `E` (answered with code `rejected` and `E`'s text). The marker `M` lets both
/// shapes share [`Socket::on_request`](super::Socket::on_request); you never name it.
pub trait Responder<T, M>: Send + Sync + 'static {
    /// Invoke the handler.
    #[doc(hidden)]
    fn respond(&self, arg: T) -> Answered;
}

/// Marker for request handlers that answer inline.
#[derive(Debug)]
pub struct InlineAnswer<R>(PhantomData<R>);
/// Marker for request handlers that return a future.
#[derive(Debug)]
pub struct AwaitedAnswer<R>(PhantomData<R>);

fn answer<R: Serialize, E: std::fmt::Display>(r: Result<R, E>) -> Answer {
    match r {
        Ok(v) => serde_json::value::to_raw_value(&v).map_err(|e| WireError {
            code: codes::INTERNAL.into(),
            message: format!("the result did not serialize: {e}"),
        }),
        Err(e) => Err(WireError {
            code: codes::REJECTED.into(),
            message: e.to_string(),
        }),
    }
}

impl<F, T, R, E> Responder<T, InlineAnswer<Result<R, E>>> for F
where
    F: Fn(T) -> Result<R, E> + Send + Sync + 'static,
    R: Serialize + Send + 'static,
    E: std::fmt::Display + Send + 'static,
{
    fn respond(&self, arg: T) -> Answered {
        let a = answer(self(arg));
        Answered(Box::pin(async move { a }))
    }
}

impl<F, T, Fut, R, E> Responder<T, AwaitedAnswer<Result<R, E>>> for F
where
    F: Fn(T) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<R, E>> + Send + 'static,
    R: Serialize + Send + 'static,
    E: std::fmt::Display + Send + 'static,
{
    fn respond(&self, arg: T) -> Answered {
        let fut = self(arg);
        Answered(Box::pin(async move { answer(fut.await) }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.into()).expect("json")
    }

    #[test]
    fn replies_round_trip_on_the_wire() {
        let ok = encode_reply(7, &Ok(raw("[1,2]"))).expect("encode");
        let v: serde_json::Value = serde_json::from_slice(&ok).expect("json");
        assert_eq!(v["type"], REPLY_EVENT);
        assert_eq!(v["payload"], serde_json::json!({"id": 7, "result": [1, 2]}));
        let p = raw(&v["payload"].to_string());
        let (id, out) = decode_reply(Some(&p)).expect("a reply");
        assert_eq!((id, out.expect("ok").get()), (7, "[1,2]"));

        let e = WireError {
            code: codes::REJECTED.into(),
            message: "no".into(),
        };
        let err = encode_reply(8, &Err(e)).expect("encode");
        let v: serde_json::Value = serde_json::from_slice(&err).expect("json");
        assert_eq!(
            v["payload"],
            serde_json::json!({"id": 8, "error": {"code": "rejected", "message": "no"}})
        );
        let p = raw(&v["payload"].to_string());
        assert_eq!(
            decode_reply(Some(&p)).expect("a reply").1.err(),
            Some(AckError::Rejected {
                code: "rejected".into(),
                message: "no".into()
            })
        );
        // a reply without a result is null; what is not a reply is none
        let (_, out) = decode_reply(Some(&raw(r#"{"id":1}"#))).expect("a reply");
        assert_eq!(out.expect("ok").get(), "null");
        for bad in [r#"{"result":1}"#, r#"{"id":-1}"#, "[]", "\"x\""] {
            assert!(decode_reply(Some(&raw(bad))).is_none(), "{bad}");
        }
        assert!(decode_reply(None).is_none());
    }

    #[test]
    fn an_error_of_any_shape_is_an_error_not_a_dropped_reply() {
        let rejected = |code: &str, message: &str| {
            Some(AckError::Rejected {
                code: code.into(),
                message: message.into(),
            })
        };
        for (body, want) in [
            (r#"{"id":1,"error":"nope"}"#, rejected("rejected", "nope")),
            (r#"{"id":1,"error":{"code":5}}"#, rejected("rejected", "")),
            (
                r#"{"id":1,"error":{"code":"x"},"result":1}"#,
                rejected("x", ""),
            ),
            (r#"{"id":1,"error":true}"#, rejected("rejected", "")),
        ] {
            let (id, out) = decode_reply(Some(&raw(body))).expect("a reply");
            assert_eq!((id, out.err()), (1, want), "{body}");
        }
        // a null error is no error
        let (_, out) =
            decode_reply(Some(&raw(r#"{"id":1,"error":null,"result":2}"#))).expect("a reply");
        assert_eq!(out.expect("ok").get(), "2");
    }

    #[test]
    fn error_messages_are_bounded_at_a_character_boundary() {
        assert_eq!(bounded("short".into()), "short");
        let long = "é".repeat(400); // 800 bytes
        let cut = bounded(long);
        assert!(cut.len() <= MAX_ERROR_MESSAGE, "{}", cut.len());
        assert!(cut.ends_with('…'));
        assert!(cut.trim_end_matches('…').chars().all(|c| c == 'é'));
    }

    #[test]
    fn pending_is_bounded_and_each_waiter_is_settled_once() {
        let mut p = Pending::default();
        let (a, mut ra) = p.open(2).expect("first");
        let (b, rb) = p.open(2).expect("second");
        assert_eq!(p.open(2).err(), Some(AckError::TooMany { limit: 2 }));
        assert!(p.settle(a, Ok(raw("1"))));
        assert!(!p.settle(a, Ok(raw("1"))), "settled once");
        assert_eq!(ra.try_recv().expect("reply").expect("ok").get(), "1");
        p.forget(b);
        assert_eq!(p.len(), 0);
        drop(rb);
        let (_, rc) = p.open(2).expect("room again");
        p.close_all();
        assert_eq!(
            rc.blocking_recv().expect("settled").err(),
            Some(AckError::Closed)
        );
    }
}
