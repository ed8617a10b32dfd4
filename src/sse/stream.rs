//! An SSE stream: a handle to send events, and the HTTP response that carries them (the
//! seed's `createSse(ctx.res, 15_000)`).
//!
//! ```no_run
//! use std::time::Duration;
//! async fn stream() -> axum::response::Response {
//!     let (sse, response) = street::sse::create(Duration::from_secs(15)); // 15 s heartbeat
//!     tokio::spawn(async move {
//!         let mut tick = tokio::time::interval(Duration::from_secs(1));
//!         loop {
//!             tokio::select! {
//!                 () = sse.gone() => break, // the browser went away, or close()
//!                 _ = tick.tick() => {
//!                     if sse.send(&serde_json::json!({"time": "now"}), Some("tick")).is_err() { break }
//!                 }
//!             }
//!         }
//!     });
//!     response
//! }
//! ```
//!
//! Bounds: each stream has a byte-bounded queue (`max_queue_bytes`, default 256 KiB). A
//! reader that falls further behind has its stream ended (`SseError::SlowReader`), which
//! the browser's `EventSource` answers by reconnecting, resuming with `Last-Event-ID`.
//! Heartbeats are comment lines, sent when nothing else was sent for one interval.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use futures_util::task::AtomicWaker;
use http::{header, HeaderValue, StatusCode};
use serde::Serialize;
use tokio::sync::Notify;

use super::encode::{encode_comment, encode_event, SseEvent};
use super::registry::{RegistryInner, Slot};

/// Options for [`create_with`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SseOptions {
    /// Send a comment line when nothing was sent for this long (keeps proxies from timing
    /// out, and detects a browser that went away). Default 15 s; `Duration::ZERO` disables.
    pub heartbeat: Duration,
    /// Bytes queued for a reader at most; a slower reader's stream is ended. Default 256 KiB.
    pub max_queue_bytes: usize,
    /// A `retry:` hint (reconnection delay) sent first. Default `None`.
    pub retry: Option<Duration>,
}

impl Default for SseOptions {
    fn default() -> Self {
        Self {
            heartbeat: Duration::from_secs(15),
            max_queue_bytes: 256 * 1024,
            retry: None,
        }
    }
}

/// Why an event was not sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SseError {
    /// The stream was closed, or the client went away.
    #[error("SSE stream is closed")]
    Closed,
    /// The reader fell more than `max_queue_bytes` behind; the stream has been ended.
    #[error("slow reader: more than {limit} bytes queued; the stream was ended")]
    SlowReader {
        /// The limit in bytes.
        limit: usize,
    },
    /// The data did not serialize.
    #[error("data does not serialize: {0}")]
    Serialize(String),
}

#[derive(Debug, Default)]
struct State {
    queue: VecDeque<Bytes>,
    bytes: usize,
    /// No more events; the body ends once the queue is written.
    closed: bool,
    /// The response body was dropped (client gone or server shutdown).
    gone: bool,
    next_id: u64,
    /// Runs once when the body is dropped (see [`Shared::on_gone`]).
    on_gone: Option<OnGone>,
}

/// A hook run when a stream's body is dropped.
struct OnGone(Box<dyn FnOnce() + Send>);

impl std::fmt::Debug for OnGone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OnGone")
    }
}

#[derive(Debug)]
pub(crate) struct Shared {
    state: Mutex<State>,
    waker: AtomicWaker,
    gone: Notify,
    opts: SseOptions,
    /// The app's registry, for its counters (`None` for an unmanaged stream).
    registry: Option<Arc<RegistryInner>>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Its queue's bound ([`SseOptions::max_queue_bytes`]).
    pub(crate) fn max_queue_bytes(&self) -> usize {
        self.opts.max_queue_bytes
    }

    /// Closed, slow-reader-ended or gone.
    pub(crate) fn is_done(&self) -> bool {
        let st = self.lock();
        st.closed || st.gone
    }

    /// Run `hook` once the stream's body is dropped (the client went away, or the stream
    /// ended and was written out), or now if it already was: the release of what the
    /// stream holds elsewhere, without a task waiting for it. One hook per stream; a
    /// second replaces the first.
    pub(crate) fn on_gone(&self, hook: impl FnOnce() + Send + 'static) {
        let mut st = self.lock();
        if st.gone {
            drop(st);
            hook();
        } else {
            debug_assert!(st.on_gone.is_none(), "one on_gone hook per stream");
            st.on_gone = Some(OnGone(Box::new(hook)));
        }
    }

    /// End the stream after what is queued (shutdown, `close()`).
    pub(crate) fn close(&self) {
        self.lock().closed = true;
        self.waker.wake();
        self.gone.notify_waiters();
    }

    /// Queue an encoded frame, enforcing the byte cap.
    pub(crate) fn push(&self, frame: Bytes) -> Result<(), SseError> {
        let st = self.lock();
        if st.closed || st.gone {
            return Err(SseError::Closed);
        }
        self.push_locked(st, frame)
    }

    fn push_locked(&self, mut st: MutexGuard<'_, State>, frame: Bytes) -> Result<(), SseError> {
        let limit = self.opts.max_queue_bytes;
        if st.bytes + frame.len() > limit && !st.queue.is_empty() {
            st.queue.clear();
            st.bytes = 0;
            st.closed = true;
            drop(st);
            if let Some(r) = &self.registry {
                r.counters.slow_readers.inc();
            }
            tracing::debug!(limit, "SSE reader too slow; ending its stream");
            self.waker.wake();
            self.gone.notify_waiters();
            return Err(SseError::SlowReader { limit });
        }
        st.bytes += frame.len();
        st.queue.push_back(frame);
        drop(st);
        self.waker.wake();
        Ok(())
    }
}

/// The sending side of an SSE stream. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Sse {
    shared: Arc<Shared>,
}

/// Create an *unmanaged* stream with the given heartbeat: a handle, and the response to
/// return from the handler (`Content-Type: text/event-stream`, `Cache-Control: no-cache,
/// no-transform`, `X-Accel-Buffering: no`).
///
/// Inside a street [`App`](crate::App) prefer the [`SseRequest`](super::SseRequest)
/// extractor and [`SseRequest::create`](super::SseRequest::create): that stream counts
/// against the app's stream cap, continues ids after `Last-Event-ID`, and ends at
/// graceful shutdown. This one is none of those (useful with plain `axum::serve`).
pub fn create(heartbeat: Duration) -> (Sse, Response) {
    create_with(SseOptions {
        heartbeat,
        ..SseOptions::default()
    })
}

/// [`create`] with every option.
pub fn create_with(opts: SseOptions) -> (Sse, Response) {
    open(opts, 0, None)
}

/// Build a stream; ids continue after `last_id`; `slot` ties it to an app's registry.
pub(crate) fn open(opts: SseOptions, last_id: u64, slot: Option<Slot>) -> (Sse, Response) {
    let mut state = State {
        next_id: last_id,
        ..State::default()
    };
    if let Some(r) = opts.retry {
        let b = encode_event(&SseEvent {
            retry: Some(u64::try_from(r.as_millis()).unwrap_or(u64::MAX)),
            ..SseEvent::default()
        });
        // a retry-only block: `data` is empty, so browsers dispatch nothing
        let text = String::from_utf8_lossy(&b).replace("data: \n", "");
        state.bytes += text.len();
        state.queue.push_back(Bytes::from(text));
    }
    let heartbeat = opts.heartbeat;
    let shared = Arc::new(Shared {
        state: Mutex::new(state),
        waker: AtomicWaker::new(),
        gone: Notify::new(),
        opts,
        registry: slot.as_ref().map(Slot::registry),
    });
    if let Some(s) = &slot {
        s.attach(&shared);
    }
    let body = BodyStream {
        shared: shared.clone(),
        heartbeat: (!heartbeat.is_zero()).then(|| Box::pin(tokio::time::sleep(heartbeat))),
        _slot: slot,
    };
    let mut resp = Response::new(Body::from_stream(body));
    *resp.status_mut() = StatusCode::OK;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, no-transform"),
    );
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    (Sse { shared }, resp)
}

impl Sse {
    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }
}

impl Sse {
    /// Send `data` as an event: a string as-is, anything else as JSON; `event` names it.
    /// An `id` is assigned (1, 2, 3, …).
    ///
    /// # Errors
    /// [`SseError::Closed`] after close or when the client went away;
    /// [`SseError::SlowReader`] when the reader fell too far behind (the stream ends).
    pub fn send<T: Serialize + ?Sized>(
        &self,
        data: &T,
        event: Option<&str>,
    ) -> Result<(), SseError> {
        let data =
            match serde_json::to_value(data).map_err(|e| SseError::Serialize(e.to_string()))? {
                serde_json::Value::String(s) => s,
                other => other.to_string(),
            };
        self.send_event(SseEvent {
            id: None,
            event: event.map(Into::into),
            data,
            retry: None,
        })
    }

    /// Send a full event. Without an `id`, the next number is assigned.
    ///
    /// # Errors
    /// As [`Sse::send`].
    pub fn send_event(&self, mut ev: SseEvent) -> Result<(), SseError> {
        let mut st = self.shared.lock();
        if st.closed || st.gone {
            return Err(SseError::Closed);
        }
        if ev.id.is_none() {
            // after u64::MAX (e.g. a `Last-Event-ID` of u64::MAX) ids start again at 1
            st.next_id = st.next_id.checked_add(1).unwrap_or(1);
            ev.id = Some(st.next_id.to_string());
        }
        self.shared.push_locked(st, encode_event(&ev))
    }

    /// Send a comment line (ignored by browsers).
    ///
    /// # Errors
    /// As [`Sse::send`].
    pub fn comment(&self, text: &str) -> Result<(), SseError> {
        self.shared.push(encode_comment(text))
    }

    /// Whether the stream is closed (by [`Sse::close`], a slow reader, or the client going
    /// away).
    pub fn closed(&self) -> bool {
        self.shared.is_done()
    }

    /// End the stream after the events already queued.
    pub fn close(&self) {
        self.shared.close();
    }

    /// Resolves once the stream is closed or the client went away (detected at the latest
    /// by the next heartbeat write). Use it to stop a producer loop.
    pub async fn gone(&self) {
        loop {
            let notified = self.shared.gone.notified();
            if self.closed() {
                return;
            }
            notified.await;
        }
    }
}

/// The response body: drains the queue, sends heartbeats, ends when closed.
struct BodyStream {
    shared: Arc<Shared>,
    heartbeat: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Holds the stream's place under the app's cap until the body is dropped.
    _slot: Option<Slot>,
}

impl BodyStream {
    fn reset_heartbeat(&mut self) {
        if let Some(h) = self.heartbeat.as_mut() {
            let next = tokio::time::Instant::now() + self.shared.opts.heartbeat;
            h.as_mut().reset(next);
        }
    }
}

impl futures_util::Stream for BodyStream {
    type Item = Result<Bytes, Infallible>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        this.shared.waker.register(cx.waker());
        {
            let mut st = this.shared.lock();
            if let Some(b) = st.queue.pop_front() {
                st.bytes -= b.len();
                drop(st);
                this.reset_heartbeat();
                return Poll::Ready(Some(Ok(b)));
            }
            if st.closed || st.gone {
                return Poll::Ready(None);
            }
        }
        if let Some(h) = this.heartbeat.as_mut() {
            if h.as_mut().poll(cx).is_ready() {
                this.reset_heartbeat();
                return Poll::Ready(Some(Ok(Bytes::from_static(b": heartbeat\n\n"))));
            }
        }
        Poll::Pending
    }
}

impl Drop for BodyStream {
    fn drop(&mut self) {
        // hyper drops the body when the client goes away (or at shutdown)
        let hook = {
            let mut st = self.shared.lock();
            st.gone = true;
            st.on_gone.take()
        };
        self.shared.gone.notify_waiters();
        if let Some(OnGone(hook)) = hook {
            hook();
        }
    }
}
