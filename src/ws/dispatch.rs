//! Message dispatch: what a decoded message does, apart from the I/O that decoded it
//! (`connection.rs`) — envelope decoding, listener lookup, error events, panics caught.
//! Each function is one message's handling, boxed by the connection task while it runs.

use super::ack::{self, codes, WireError};
use super::envelope;
use super::handler::{panic_message, run_dispatch};
use super::listeners::ErasedRequest;
use super::socket::{ErrorEvent, RawMessage, Socket};
use super::text::Text;
use serde_json::value::RawValue;

tokio::task_local! {
    /// The socket whose message is being handled in this task: its reader waits for the
    /// handler, so a reply from its client cannot be read meanwhile (see
    /// [`Socket::emit_with_ack`]).
    pub(crate) static HANDLING: super::SocketId;
}

/// An envelope (`{"type","payload"}`) to the socket's listeners for its event, and the
/// whole message to `"*"` listeners; what does not decode is reported to `error`
/// listeners and counted. Handlers run in order, each finishing before the next.
pub(crate) async fn envelope(socket: Socket, text: Text) {
    HANDLING.scope(socket.id(), envelope_in(socket, text)).await;
}

async fn envelope_in(socket: Socket, text: Text) {
    let socket = &socket;
    let text: &str = &text;
    let stats = &socket.inner.stats;
    let inc = match envelope::decode(text) {
        Ok(i) => i,
        Err(envelope::EnvelopeError::MalformedJson(e)) => {
            stats.malformed_json.inc();
            socket
                .report_error(ErrorEvent::MalformedJson {
                    message: e.to_string(),
                })
                .await;
            return;
        }
        Err(e) => {
            stats.not_envelope.inc();
            socket
                .report_error(ErrorEvent::NotEnvelope {
                    message: e.to_string(),
                })
                .await;
            return;
        }
    };
    if inc.event == ack::REPLY_EVENT {
        // a reply to one of our requests: never an event of the app's
        socket.settle_reply(inc.payload);
        return;
    }
    let (own, wild) = match inc.id {
        Some(id) => {
            let handler = socket.request_handler(&inc.event);
            if handler.is_some() {
                request(socket, &inc.event, handler, inc.payload, id).await;
                return;
            }
            // an id without a request handler: an ordinary event for `on` (a client
            // that puts ids on its messages for its own reasons keeps working); with no
            // `on` listener either, the requester is told at once (a `*` listener
            // watches every message, it answers none)
            let (own, wild) = socket.handlers_for(&inc.event);
            if own.is_empty() {
                request(socket, &inc.event, None, inc.payload, id).await;
                if wild.is_empty() {
                    return;
                }
            }
            (own, wild)
        }
        None => socket.handlers_for(&inc.event),
    };
    if own.is_empty() && wild.is_empty() {
        return;
    }
    let whole = if wild.is_empty() {
        None
    } else {
        serde_json::value::RawValue::from_string(text.to_owned()).ok()
    };
    let calls = own
        .into_iter()
        .map(|h| (h, inc.payload))
        .chain(wild.into_iter().map(|h| (h, whole.as_deref())));
    for (h, arg) in calls {
        // The handler itself runs inside `h` for inline handlers: catch panics there too.
        let called = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| h(arg, &inc.event)));
        let result = match called {
            Err(p) => Err(panic_message(&p)),
            Ok(Ok(out)) => run_dispatch(move || out).await,
            Ok(Err(message)) => {
                stats.payload_errors.inc();
                socket
                    .report_error(ErrorEvent::Payload {
                        event: inc.event.to_string(),
                        message,
                    })
                    .await;
                continue;
            }
        };
        if let Err(message) = result {
            stats.handler_errors.inc();
            socket
                .report_error(ErrorEvent::Handler {
                    event: inc.event.to_string(),
                    message,
                })
                .await;
        }
    }
}

/// A request (an envelope with an `id`) to the event's request handler, and its answer
/// back: the result, or an error with one of [`codes`]. The handler has
/// `request_timeout`; a panic is an `internal` error.
async fn request(
    socket: &Socket,
    event: &str,
    handler: Option<ErasedRequest>,
    payload: Option<&RawValue>,
    id: u64,
) {
    use futures_util::FutureExt;
    let stats = &socket.inner.stats;
    let fail = |code: &str, message: String| {
        Err(WireError {
            code: code.to_owned(),
            message,
        })
    };
    let answer = match handler {
        None => fail(
            codes::NO_HANDLER,
            "no handler answers that event".to_owned(),
        ),
        Some(h) => match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| h(payload))) {
            Err(p) => fail(codes::INTERNAL, ack::bounded(panic_message(&p))),
            Ok(Err(message)) => {
                stats.payload_errors.inc();
                // serde's message quotes the payload (escaped: longer than it came): the
                // client is told what, not sent its own bytes back amplified
                fail(codes::BAD_PAYLOAD, ack::bounded(message))
            }
            Ok(Ok(fut)) => {
                let limit = socket.inner.requests.timeout();
                let run = std::panic::AssertUnwindSafe(fut).catch_unwind();
                match tokio::time::timeout(limit, run).await {
                    Err(_) => fail(codes::TIMEOUT, format!("no answer within {limit:?}")),
                    Ok(Err(p)) => fail(codes::INTERNAL, ack::bounded(panic_message(&p))),
                    Ok(Ok(a)) => a,
                }
            }
        },
    };
    stats.requests.inc();
    if let Err(e) = &answer {
        stats.requests_failed.inc();
        if e.code == codes::INTERNAL {
            // as with `on` handlers: the app hears of its handlers' failures (a rejection
            // is an answer its handler chose, not one: a client asking wrongly again and
            // again does not flood the app's error handlers)
            stats.handler_errors.inc();
            socket
                .report_error(ErrorEvent::Handler {
                    event: event.to_owned(),
                    message: e.message.clone(),
                })
                .await;
        }
    }
    match ack::encode_reply(id, &answer) {
        // a closed or slow client: nothing more to do for it
        Ok(bytes) => {
            let _ = socket.send_text_bytes(bytes);
        }
        Err(e) => tracing::warn!(error = %e, "a reply did not encode"),
    }
}

/// A raw message (binary, or any frame under a custom subprotocol) to the `raw`
/// listeners; with none, an `UnexpectedRaw` error event.
pub(crate) async fn raw(socket: Socket, raw: RawMessage) {
    HANDLING.scope(socket.id(), raw_in(socket, raw)).await;
}

async fn raw_in(socket: Socket, raw: RawMessage) {
    let socket = &socket;
    let handlers = socket.raw_handlers();
    if handlers.is_empty() {
        socket.inner.stats.unexpected_raw.inc();
        let (binary, len) = match &raw {
            RawMessage::Text(t) => (false, t.len()),
            RawMessage::Binary(b) => (true, b.len()),
        };
        socket
            .report_error(ErrorEvent::UnexpectedRaw { binary, len })
            .await;
        return;
    }
    for h in handlers {
        let m = raw.clone();
        if let Err(message) = run_dispatch(move || h(m)).await {
            socket.inner.stats.handler_errors.inc();
            socket
                .report_error(ErrorEvent::Handler {
                    event: "raw".into(),
                    message,
                })
                .await;
        }
    }
}
