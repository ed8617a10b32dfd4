//! The task that runs one WebSocket connection.
//!
//! One task per connection runs two halves concurrently over the split stream:
//! - the **reader** takes frames in order, dispatches envelopes to the socket's
//!   handlers and awaits async handlers before the next frame (per-socket ordering);
//! - the **writer** drains the socket's byte-counted outbox, batching writes and
//!   flushing when the outbox runs dry.
//!
//! Around them, two more branches end the connection: a *kill* (heartbeat reap,
//! forced shutdown) and a *close timeout* that starts when a close is queued and drops
//! a peer that does not finish the closing handshake in time.

use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_websockets::{Message, WebSocketStream};

use super::close::{CloseCode, CloseInfo};
use super::envelope;
use super::handler::{panic_message, run_dispatch};
use super::socket::{ErrorEvent, Outbound, RawMessage, Socket};

/// How this connection interprets text frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// `{type,payload,ts}` envelopes.
    Envelope,
    /// A custom subprotocol: every frame goes to raw handlers.
    Raw,
}

enum WriterEnd {
    CloseTimeout,
    Failed,
}

/// Drive the connection until it ends; returns how it ended.
pub(crate) async fn run<S>(
    ws: WebSocketStream<S>,
    socket: &Socket,
    mode: Mode,
    close_timeout: Duration,
) -> CloseInfo
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (sink, stream) = ws.split();
    let reader = read_loop(stream, socket, mode);
    let writer = write_loop(sink, socket, close_timeout);
    let killed = async {
        loop {
            if let Some(info) = socket.inner.outbox.lock().kill.clone() {
                return info;
            }
            socket.inner.outbox.kill_notify.notified().await;
        }
    };
    tokio::pin!(reader, writer, killed);

    let info = tokio::select! {
        biased;
        info = &mut killed => return info,
        info = &mut reader => info,
        end = &mut writer => match end {
            WriterEnd::CloseTimeout => CloseInfo::new(CloseCode::ABNORMAL, "close handshake timeout"),
            // The sink failed (peer gone or we already closed): let the reader observe the
            // end of the stream, but not forever.
            WriterEnd::Failed => tokio::select! {
                info = &mut killed => return info,
                r = tokio::time::timeout(close_timeout, reader) => r
                    .unwrap_or_else(|_| CloseInfo::new(CloseCode::ABNORMAL, "write failed")),
            },
        },
    };
    // When the server started the close, its code is what handlers should see.
    socket.inner.outbox.lock().sent_close.take().unwrap_or(info)
}

async fn read_loop<S>(
    mut stream: futures_util::stream::SplitStream<WebSocketStream<S>>,
    socket: &Socket,
    mode: Mode,
) -> CloseInfo
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let stats = &socket.inner.stats;
    let mut info: Option<CloseInfo> = None;
    while let Some(item) = stream.next().await {
        let msg = match item {
            Ok(m) => m,
            Err(e) => {
                // tokio-websockets has queued the matching close frame (1002/1007/1009);
                // keep polling so it is flushed, then the stream ends.
                let (code, reason) = classify(&e);
                if code != CloseCode::ABNORMAL {
                    stats.protocol_errors.inc();
                }
                if code == CloseCode::MESSAGE_TOO_BIG {
                    // A fragmented message that outgrows the limit is reported without
                    // tokio-websockets queueing a close (only a single oversized frame
                    // gets one): close with 1009 ourselves. If a close is already on its
                    // way this is a no-op.
                    let _ = socket.close(code.0, &reason);
                }
                tracing::debug!(socket = %socket.id(), error = %e, code = code.0, "websocket error");
                info.get_or_insert(CloseInfo::new(code, reason));
                continue;
            }
        };
        socket.inner.alive.store(true, Ordering::Relaxed);
        if let Some((code, reason)) = msg.as_close() {
            info = Some(CloseInfo::new(CloseCode(u16::from(code)), reason));
            continue;
        }
        if msg.is_ping() || msg.is_pong() {
            continue;
        }
        stats.messages_in.inc();
        stats.bytes_in.add(msg.as_payload().len() as u64);
        if let (Mode::Envelope, Some(text)) = (mode, msg.as_text()) {
            dispatch_envelope(socket, text).await;
        } else {
            let raw = match msg.as_text() {
                Some(t) => RawMessage::Text(t.to_owned()),
                None => RawMessage::Binary(msg.into_payload().into()),
            };
            dispatch_raw(socket, raw).await;
        }
        // A handler that ran long still counts as activity of a live peer.
        socket.inner.alive.store(true, Ordering::Relaxed);
    }
    info.unwrap_or_else(|| CloseInfo::new(CloseCode::ABNORMAL, ""))
}

fn classify(e: &tokio_websockets::Error) -> (CloseCode, String) {
    use tokio_websockets::proto::ProtocolError;
    use tokio_websockets::Error as E;
    match e {
        E::PayloadTooLong { max_len, .. } => {
            (CloseCode::MESSAGE_TOO_BIG, format!("max length: {max_len}"))
        }
        E::Protocol(p) => {
            let code = if matches!(p, ProtocolError::InvalidUtf8) {
                CloseCode::INVALID_PAYLOAD
            } else {
                CloseCode::PROTOCOL_ERROR
            };
            (code, p.to_string())
        }
        _ => (CloseCode::ABNORMAL, e.to_string()),
    }
}

async fn dispatch_envelope(socket: &Socket, text: &str) {
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
    let (own, wild) = socket.handlers_for(&inc.event);
    let whole = serde_json::value::RawValue::from_string(text.to_owned()).ok();
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

async fn dispatch_raw(socket: &Socket, raw: RawMessage) {
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

enum Next {
    Ping,
    Items(Vec<Outbound>),
}

async fn write_loop<S>(
    mut sink: futures_util::stream::SplitSink<WebSocketStream<S>, Message>,
    socket: &Socket,
    close_timeout: Duration,
) -> WriterEnd
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let inner = &socket.inner;
    let stats = &inner.stats;
    let mut batch = Vec::new();
    loop {
        let next = loop {
            {
                let mut st = inner.outbox.lock();
                if std::mem::take(&mut st.ping) {
                    break Next::Ping;
                }
                if !st.queue.is_empty() {
                    // Take at most 64 items per batch so pings and kills stay responsive.
                    let n = st.queue.len().min(64);
                    batch.extend(st.queue.drain(..n));
                    break Next::Items(std::mem::take(&mut batch));
                }
            }
            inner.outbox.notify.notified().await;
        };
        match next {
            Next::Ping => {
                if sink.send(Message::ping(bytes::Bytes::new())).await.is_err() {
                    return WriterEnd::Failed;
                }
            }
            Next::Items(items) => {
                for item in items {
                    match item {
                        Outbound::Msg(msg, len) => {
                            let res = sink.feed(msg).await;
                            {
                                let mut st = inner.outbox.lock();
                                st.bytes = st.bytes.saturating_sub(len);
                            }
                            if res.is_err() {
                                return WriterEnd::Failed;
                            }
                            stats.messages_out.inc();
                            stats.bytes_out.add(len as u64);
                        }
                        Outbound::Close(code, reason) => {
                            // `Socket::close` validated the code and cut the reason, so
                            // `Message::close` cannot panic here.
                            let code = tokio_websockets::CloseCode::try_from(code.0)
                                .unwrap_or(tokio_websockets::CloseCode::NORMAL_CLOSURE);
                            if sink
                                .send(Message::close(Some(code), &reason))
                                .await
                                .is_err()
                            {
                                return WriterEnd::Failed;
                            }
                            // Wait for the peer's close (the reader ends the connection);
                            // a peer that never answers is dropped.
                            tokio::time::sleep(close_timeout).await;
                            return WriterEnd::CloseTimeout;
                        }
                    }
                }
                if sink.flush().await.is_err() {
                    return WriterEnd::Failed;
                }
            }
        }
    }
}
