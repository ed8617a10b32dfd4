//! The app's SSE streams: a cap on how many are open, `Last-Event-ID`, counters, and
//! ending every stream at graceful shutdown.
//!
//! A street [`App`](crate::App) owns one [`SseRegistry`] (its cap is
//! [`AppOptions::max_sse_streams`](crate::AppOptions)) and hands it to handlers through
//! the [`SseRequest`] extractor:
//!
//! ```no_run
//! use std::time::Duration;
//! use street::sse::SseRequest;
//!
//! // 503 (with Retry-After) before this runs when the app already holds its cap of streams
//! async fn stream(req: SseRequest) -> axum::response::Response {
//!     let resumed_from = req.last_event_id().map(str::to_owned);
//!     let (sse, response) = req.create(Duration::from_secs(15));
//!     let _ = sse.send(&serde_json::json!({ "resumedFrom": resumed_from }), Some("hello"));
//!     response
//! }
//! ```
//!
//! Policy when a bound is hit:
//! - more than `max_sse_streams_per_ip` from one address: `429 Too Many Requests` with
//!   `Retry-After: 5` (`rejected_per_ip`);
//! - more than `max_sse_streams` open: the request gets `503 Service Unavailable` with
//!   `Retry-After: 5` and the handler does not run (`rejected` counts it). Note that a
//!   browser's `EventSource` does not retry after a non-200 answer; the page decides;
//! - during shutdown: new streams get 503; open streams end after their queued events
//!   (`ended_by_shutdown`), and `EventSource` reconnects by itself once the server is back;
//! - a reader that falls more than `max_queue_bytes` behind: its stream ends
//!   (`slow_readers`), the browser reconnects and resumes with `Last-Event-ID`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use axum::extract::FromRequestParts;
use axum::response::{IntoResponse, Response};
use http::request::Parts;
use http::{header, HeaderValue, StatusCode};
use serde::Serialize;

use super::stream::{open, Shared};
use super::{Sse, SseOptions};
use crate::counters::stats;
use crate::net::per_ip::{IpSlot, PerIp};
use std::net::IpAddr;

stats! {
    families {
        REJECTED = counter(
            "street_sse_streams_rejected_total",
            "SSE requests refused (503, or 429 for the per-IP cap), by reason.",
        );
    }
    /// Counters of an app's SSE streams (see [`SseRegistry::stats`]).
    #[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
    #[serde(rename_all = "camelCase")]
    #[non_exhaustive]
    pub struct SseStats counted in SseCounters {
        /// Streams open now.
        set open => gauge("street_sse_streams", "SSE streams open now."),
        /// Streams opened since start.
        count opened => counter("street_sse_streams_opened_total", "SSE streams opened."),
        /// Requests refused with 503: the cap was reached.
        count rejected => REJECTED.with("reason", "capacity"),
        /// Requests refused with 429: their address already held its
        /// [`max_sse_streams_per_ip`](crate::AppOptions::max_sse_streams_per_ip) streams.
        count rejected_per_ip => REJECTED.with("reason", "ip"),
        /// Requests refused with 503 during shutdown.
        count rejected_shutdown => REJECTED.with("reason", "shutdown"),
        /// Streams ended because their reader fell more than `max_queue_bytes` behind.
        count slow_readers => counter(
            "street_sse_slow_readers_total",
            "SSE streams ended for reading too slowly.",
        ),
        /// Streams ended by graceful shutdown.
        count ended_by_shutdown,
    }
}

#[derive(Debug, Default)]
struct RegState {
    /// Slots taken (an extracted request that has not created its stream yet counts).
    taken: usize,
    streams: HashMap<u64, Weak<Shared>>,
    next: u64,
    shutting_down: bool,
}

#[derive(Debug)]
pub(crate) struct RegistryInner {
    max: usize,
    state: Mutex<RegState>,
    per_ip: Arc<PerIp>,
    pub(crate) counters: SseCounters,
}

impl RegistryInner {
    fn lock(&self) -> MutexGuard<'_, RegState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The SSE streams of one app. Cheap to clone. See the [module docs](self).
///
/// street's [`App`](crate::App) has one. In your own axum app, add one as an extension,
/// **after** your SSE routes (an axum layer wraps only the routes added before it), so
/// [`SseRequest`] applies its caps; call [`close_all`](Self::close_all) on shutdown.
/// Without a registry, `SseRequest` applies no cap (and says so once in the log).
///
/// ```
/// use axum::{routing::get, Extension, Router};
/// use street::sse::{SseRegistry, SseRequest};
/// let streams = SseRegistry::with_limits(8_000, 500);
/// let app: Router = Router::new()
///     .route("/events", get(|req: SseRequest| async move {
///         req.create(std::time::Duration::from_secs(15)).1
///     }))
///     .layer(Extension(streams.clone()));
/// ```
#[derive(Debug, Clone)]
pub struct SseRegistry {
    inner: Arc<RegistryInner>,
}

impl SseRegistry {
    /// A registry that admits at most `max_streams` open streams.
    pub fn new(max_streams: usize) -> Self {
        Self::with_limits(max_streams, 0)
    }

    /// A registry that admits at most `max_streams` open streams, and at most
    /// `max_per_ip` from one address (IPv6: one /64; 0: no per-address cap).
    pub fn with_limits(max_streams: usize, max_per_ip: u32) -> Self {
        Self {
            inner: Arc::new(RegistryInner {
                max: max_streams,
                state: Mutex::new(RegState::default()),
                per_ip: PerIp::new(max_per_ip, 0),
                counters: SseCounters::default(),
            }),
        }
    }

    /// The counters.
    pub fn stats(&self) -> SseStats {
        let mut s = self.inner.counters.snapshot();
        s.open = self.inner.lock().streams.len() as u64;
        s
    }

    /// Streams open now.
    pub fn open_streams(&self) -> usize {
        self.inner.lock().streams.len()
    }

    /// Refuse new streams and end every open one after its queued events. The app calls
    /// this at graceful shutdown. Idempotent.
    pub fn close_all(&self) {
        let streams: Vec<Arc<Shared>> = {
            let mut st = self.inner.lock();
            st.shutting_down = true;
            st.streams.values().filter_map(Weak::upgrade).collect()
        };
        for s in streams {
            if !s.is_done() {
                self.inner.counters.ended_by_shutdown.inc();
                s.close();
            }
        }
    }

    fn acquire(&self, client: Option<IpAddr>) -> Result<Slot, SseRejection> {
        let ip = match client {
            Some(ip) => match self.inner.per_ip.admit(ip, std::time::Instant::now()) {
                Ok(slot) => slot,
                Err(_) => {
                    self.inner.counters.rejected_per_ip.inc();
                    return Err(SseRejection::TooManyFromAddress);
                }
            },
            None => IpSlot::none(),
        };
        let mut st = self.inner.lock();
        if st.shutting_down {
            drop(st);
            self.inner.counters.rejected_shutdown.inc();
            return Err(SseRejection::ShuttingDown);
        }
        if st.taken >= self.inner.max {
            drop(st);
            self.inner.counters.rejected.inc();
            return Err(SseRejection::TooManyStreams {
                limit: self.inner.max,
            });
        }
        st.taken += 1;
        st.next += 1;
        Ok(Slot {
            registry: self.inner.clone(),
            id: st.next,
            _ip: ip,
        })
    }
}

/// One stream's place under the cap; released on drop.
#[derive(Debug)]
pub(crate) struct Slot {
    registry: Arc<RegistryInner>,
    id: u64,
    _ip: IpSlot,
}

impl Slot {
    pub(crate) fn registry(&self) -> Arc<RegistryInner> {
        self.registry.clone()
    }

    pub(crate) fn attach(&self, shared: &Arc<Shared>) {
        self.registry.counters.opened.inc();
        let mut st = self.registry.lock();
        st.streams.insert(self.id, Arc::downgrade(shared));
        if st.shutting_down {
            // raced with close_all: end it at once
            drop(st);
            shared.close();
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut st = self.registry.lock();
        st.taken = st.taken.saturating_sub(1);
        st.streams.remove(&self.id);
    }
}

/// Why a stream was refused: answered with `503 Service Unavailable` and `Retry-After`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SseRejection {
    /// The app already holds `max_sse_streams` streams.
    #[error("too many event streams (limit {limit})")]
    TooManyStreams {
        /// The cap.
        limit: usize,
    },
    /// The app is shutting down.
    #[error("the server is shutting down")]
    ShuttingDown,
    /// The client's address already holds its share of streams (answered with 429).
    #[error("too many event streams from this address")]
    TooManyFromAddress,
}

impl IntoResponse for SseRejection {
    fn into_response(self) -> Response {
        let status = match self {
            Self::TooManyFromAddress => StatusCode::TOO_MANY_REQUESTS,
            _ => StatusCode::SERVICE_UNAVAILABLE,
        };
        let mut r = (status, self.to_string()).into_response();
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        r
    }
}

/// Extractor for an SSE request: the client's `Last-Event-ID` and a place under the app's
/// stream cap (503 when there is none). See the [module docs](self).
#[derive(Debug)]
pub struct SseRequest {
    last_event_id: Option<String>,
    slot: Option<Slot>,
}

impl SseRequest {
    /// The `Last-Event-ID` header a reconnecting `EventSource` sends (the id of the last
    /// event it received), if any.
    pub fn last_event_id(&self) -> Option<&str> {
        self.last_event_id.as_deref()
    }

    /// `Last-Event-ID` as a number, when it is one (street's own ids are).
    pub fn last_event_number(&self) -> Option<u64> {
        self.last_event_id.as_deref()?.trim().parse().ok()
    }

    /// Create the stream with a heartbeat interval (the seed's `createSse(ctx.res,
    /// 15_000)`). Automatic ids continue after a numeric `Last-Event-ID`, so a resumed
    /// stream carries on where the browser stopped (after `u64::MAX` they start again at
    /// 1).
    pub fn create(self, heartbeat: Duration) -> (Sse, Response) {
        self.create_with(SseOptions {
            heartbeat,
            ..SseOptions::default()
        })
    }

    /// [`SseRequest::create`] with every option.
    pub fn create_with(self, opts: SseOptions) -> (Sse, Response) {
        let last = self.last_event_number().unwrap_or(0);
        open(opts, last, self.slot)
    }

    pub(crate) fn into_slot(self) -> Option<Slot> {
        self.slot
    }
}

impl<S: Send + Sync> FromRequestParts<S> for SseRequest {
    type Rejection = SseRejection;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let last_event_id = parts
            .headers
            .get("last-event-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let client = parts
            .extensions
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .map(|c| c.0.ip());
        // street's app, or an `Extension(SseRegistry)` in the host's own router
        let registry = parts
            .extensions
            .get::<crate::app::AppContext>()
            .map(|ctx| &ctx.sse)
            .or_else(|| parts.extensions.get::<SseRegistry>());
        let slot = match registry {
            Some(r) => Some(r.acquire(client)?),
            None => {
                static WARNED: std::sync::atomic::AtomicBool =
                    std::sync::atomic::AtomicBool::new(false);
                if !WARNED.swap(true, std::sync::atomic::Ordering::Relaxed) {
                    tracing::warn!(
                        "SseRequest without an SseRegistry (street's App, or an \
                         Extension(SseRegistry) layered after the SSE routes): \
                         SSE streams are not capped"
                    );
                }
                None
            }
        };
        Ok(Self {
            last_event_id,
            slot,
        })
    }
}
