//! The per-connection [`Socket`] handle: typed events, listeners, per-socket data and the
//! byte-bounded outbound queue.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::value::RawValue;

use super::ack::{self, AckError, Pending, Responder};
use super::close::{CloseCode, CloseInfo};
use super::envelope::{self, EnvelopeError};
use super::handler::{DispatchOut, Handler, Outcome};
use super::listeners::{
    Erased, ErasedClose, ErasedError, ErasedRaw, ErasedRequest, Kind, Listeners,
};
use super::outbox::{Outbox, Refused};
use super::stats::Stats;

/// A socket's unique id (a random UUID, as StreetJS's `socket.id`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SocketId(uuid::Uuid);

impl SocketId {
    /// A random version-4 UUID from a fast thread-local generator: ids must be unique,
    /// not secret, and one `getrandom` system call per connection showed up in profiles.
    pub(crate) fn new() -> Self {
        Self(uuid::Builder::from_random_bytes(fastrand::u128(..).to_le_bytes()).into_uuid())
    }
}

impl std::str::FromStr for SocketId {
    type Err = uuid::Error;

    /// Parse the hyphenated form [`Display`](std::fmt::Display) writes.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        uuid::Uuid::parse_str(s).map(Self)
    }
}

impl std::fmt::Display for SocketId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

pub use super::listeners::ListenerId;

/// Event names with a lifecycle meaning, reachable only through the typed methods
/// [`Socket::on_close`], [`Socket::on_error`] and [`Socket::on_raw`].
///
/// [`Socket::on`] refuses them ([`SocketError::ReservedEvent`]); [`Socket::off`] and
/// [`Socket::listener_count`] accept them (they name the typed listeners). A client
/// envelope whose `type` is one of these (`{"type":"close",…}`) is an ordinary message
/// that only `"*"` handlers see: it never reaches a lifecycle handler, so a client cannot
/// fake a close, an error or a raw frame.
pub const LIFECYCLE_EVENTS: &[&str] = &["close", "error", "raw"];

/// The typed method that registers the lifecycle event `event`, if it is one.
fn lifecycle_method(event: &str) -> Option<(&'static str, &'static str)> {
    match event {
        "close" => Some(("close", "on_close")),
        "error" => Some(("error", "on_error")),
        "raw" => Some(("raw", "on_raw")),
        _ => None,
    }
}

/// Errors from the socket API.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SocketError {
    /// The socket is closed or closing; nothing more can be sent.
    #[error("socket is closed")]
    Closed,
    /// The payload could not be serialized.
    #[error(transparent)]
    Envelope(#[from] EnvelopeError),
    /// The client is not reading fast enough: its outbound queue would exceed the limit.
    /// The socket is disconnected (close 4008) when this happens.
    #[error("slow consumer: outbound queue would exceed {limit} bytes")]
    SlowConsumer {
        /// The configured limit in bytes.
        limit: usize,
    },
    /// A volatile message was dropped for this client because its queue was full.
    #[error("dropped: outbound queue is at its {limit}-byte limit")]
    Dropped {
        /// The configured limit in bytes.
        limit: usize,
    },
    /// [`Socket::on_request`] for an event that has a request handler already (one
    /// answers).
    #[error("event \"{0}\" has a request handler already")]
    RequestHandlerTaken(String),
    /// More than the allowed listeners for one event.
    #[error("too many listeners for event \"{event}\" (limit {limit})")]
    TooManyListeners {
        /// The event name.
        event: String,
        /// The limit.
        limit: usize,
    },
    /// A close code that may not be sent (RFC 6455 §7.4): 1004–1006, 1015, codes below
    /// 1000, and the reserved 1016–2999 and 5000+. Nothing is sent; the socket stays open.
    #[error("close code {0} cannot be sent (use 1000-1003, 1007-1014 or 3000-4999)")]
    InvalidCloseCode(CloseCode),
    /// [`Socket::on`] was given a lifecycle event name (see [`LIFECYCLE_EVENTS`]); those
    /// are registered with their typed method, named in `method`.
    #[error(
        "\"{event}\" is a lifecycle event, not a message event: register it with Socket::{method}"
    )]
    ReservedEvent {
        /// The refused name: `"close"`, `"error"` or `"raw"`.
        event: &'static str,
        /// The method to use instead: `"on_close"`, `"on_error"` or `"on_raw"`.
        method: &'static str,
    },
}

/// An error delivered to a socket's `error` handlers. Nothing here closes the connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorEvent {
    /// A text frame that is not JSON.
    MalformedJson {
        /// Parser message.
        message: String,
    },
    /// JSON that is not a `{type, payload}` envelope.
    NotEnvelope {
        /// Parser message.
        message: String,
    },
    /// The payload did not deserialize into the handler's type.
    Payload {
        /// The event whose handler rejected it.
        event: String,
        /// Deserializer message.
        message: String,
    },
    /// A binary frame (or a raw text frame) arrived and no `raw` handler is registered.
    UnexpectedRaw {
        /// Whether the frame was binary.
        binary: bool,
        /// Size in bytes.
        len: usize,
    },
    /// A handler returned an error or panicked.
    Handler {
        /// The event.
        event: String,
        /// The error message.
        message: String,
    },
}

/// A message delivered as-is to `raw` handlers: binary frames, and every frame on a
/// connection that negotiated a custom subprotocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawMessage {
    /// A text frame (valid UTF-8, shared as it arrived).
    Text(super::Text),
    /// A binary frame.
    Binary(Bytes),
}

pub(crate) struct SocketInner {
    pub(crate) id: SocketId,
    pub(crate) outbox: Outbox,
    listeners: Mutex<Listeners>,
    data: Mutex<http::Extensions>,
    /// Set once the connection has ended and close handlers have run.
    pub(crate) finished: AtomicBool,
    /// Heartbeat: the peer sent something since the last sweep.
    pub(crate) alive: AtomicBool,
    /// Heartbeat: 0, or a handler of this socket's message runs (its reader, and the
    /// peer's pongs, wait for it) and 1 + the silent sweeps that spared it since.
    handling: AtomicU8,
    pub(crate) stats: Arc<Stats>,
    pub(crate) max_listeners: usize,
    pub(crate) remote_addr: Option<SocketAddr>,
    pub(crate) protocol: Option<Box<str>>,
    pub(crate) requests: RequestLimits,
}

/// The request options a socket keeps (from [`WsOptions`](super::WsOptions)), small:
/// every socket holds a copy.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RequestLimits {
    /// How long a request handler may take, in milliseconds.
    timeout_ms: u32,
    /// Requests to the client waiting at once.
    pub(crate) max_pending: u32,
}

impl RequestLimits {
    pub(crate) fn timeout(self) -> std::time::Duration {
        std::time::Duration::from_millis(u64::from(self.timeout_ms))
    }
}

/// Requests to the client waiting for their reply, kept with the socket's data (made by
/// its first request: nothing for the sockets that never ask).
#[derive(Clone, Default)]
struct Acks(Arc<Mutex<Pending>>);

/// The per-socket bounds [`Socket::new`] takes (from [`WsOptions`](super::WsOptions)).
#[derive(Debug, Clone, Copy)]
pub(crate) struct SocketLimits {
    pub(crate) max_queue_bytes: usize,
    pub(crate) max_listeners: usize,
    pub(crate) requests: RequestLimits,
}

impl SocketLimits {
    pub(crate) fn of(o: &super::WsOptions) -> Self {
        Self {
            max_queue_bytes: o.max_queue_bytes,
            max_listeners: o.max_listeners,
            requests: RequestLimits {
                // whole milliseconds, at least one (a zero would time out every handler)
                timeout_ms: u32::try_from(o.request_timeout.as_millis())
                    .unwrap_or(u32::MAX)
                    .max(1),
                max_pending: u32::try_from(o.max_pending_acks).unwrap_or(u32::MAX),
            },
        }
    }
}

impl Default for SocketLimits {
    fn default() -> Self {
        Self::of(&super::WsOptions::default())
    }
}

/// A connected client: a cheap, cloneable handle (an `Arc` inside).
///
/// Handlers usually capture a clone of the socket they belong to. Those clones do not
/// leak: when the connection ends, every listener is dropped.
#[derive(Clone)]
pub struct Socket {
    pub(crate) inner: Arc<SocketInner>,
}

impl std::fmt::Debug for Socket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Socket")
            .field("id", &self.inner.id)
            .field("remote_addr", &self.inner.remote_addr)
            .field("closed", &self.closed())
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Socket {
    pub(crate) fn new(
        id: SocketId,
        stats: Arc<Stats>,
        limits: SocketLimits,
        remote_addr: Option<SocketAddr>,
        protocol: Option<Box<str>>,
        data: http::Extensions,
    ) -> Self {
        Self {
            inner: Arc::new(SocketInner {
                id,
                outbox: Outbox::new(limits.max_queue_bytes),
                listeners: Mutex::new(Listeners::default()),
                data: Mutex::new(data),
                finished: AtomicBool::new(false),
                alive: AtomicBool::new(true),
                handling: AtomicU8::new(0),
                stats,
                max_listeners: limits.max_listeners,
                remote_addr,
                protocol,
                requests: limits.requests,
            }),
        }
    }

    /// A socket with no connection behind it (unit tests): 1 MiB queue, 64 listeners.
    #[cfg(test)]
    pub(crate) fn for_test() -> Self {
        Self::new(
            SocketId::new(),
            Arc::default(),
            SocketLimits::default(),
            None,
            None,
            http::Extensions::new(),
        )
    }

    /// This connection's unique id.
    pub fn id(&self) -> SocketId {
        self.inner.id
    }

    /// The peer's address, when the server knows it.
    pub fn remote_addr(&self) -> Option<SocketAddr> {
        self.inner.remote_addr
    }

    /// The negotiated subprotocol, if any.
    pub fn protocol(&self) -> Option<&str> {
        self.inner.protocol.as_deref()
    }

    /// Whether the socket is closing or closed (no more messages can be sent).
    pub fn closed(&self) -> bool {
        if self.inner.finished.load(Ordering::Acquire) {
            return true;
        }
        self.inner.outbox.is_closing()
    }

    /// Send a typed event to this client as `{"type":event,"payload":…,"ts":…}`.
    ///
    /// # Errors
    /// [`SocketError::Closed`] after close; [`SocketError::Envelope`] when the payload does
    /// not serialize; [`SocketError::SlowConsumer`] when the client's queue is full (the
    /// client is then disconnected with 4008).
    pub fn emit<P: Serialize + ?Sized>(&self, event: &str, payload: &P) -> Result<(), SocketError> {
        let bytes = envelope::encode(event, payload)?;
        self.send_text_bytes(bytes)
    }

    /// Queue an already-encoded text frame (shared bytes; no copy).
    pub(crate) fn send_text_bytes(&self, bytes: Bytes) -> Result<(), SocketError> {
        self.push(super::proto::OP_TEXT, bytes)
    }

    /// Like [`Socket::emit`], but for data where only the latest matters (positions,
    /// cursors, live metrics): when this client's queue is full the message is dropped for
    /// it (counted as `volatile_dropped`) instead of disconnecting it.
    ///
    /// # Errors
    /// [`SocketError::Dropped`] when the message was dropped; otherwise as [`Socket::emit`].
    pub fn emit_volatile<P: Serialize + ?Sized>(
        &self,
        event: &str,
        payload: &P,
    ) -> Result<(), SocketError> {
        let bytes = envelope::encode(event, payload)?;
        self.push_with(super::proto::OP_TEXT, bytes, true)
    }

    pub(crate) fn send_text_bytes_volatile(&self, bytes: Bytes) -> Result<(), SocketError> {
        self.push_with(super::proto::OP_TEXT, bytes, true)
    }

    /// Send a raw text frame (for custom subprotocols; no envelope).
    ///
    /// # Errors
    /// As [`Socket::emit`].
    pub fn send_text(&self, text: impl Into<String>) -> Result<(), SocketError> {
        self.push(super::proto::OP_TEXT, Bytes::from(text.into()))
    }

    /// Send a raw binary frame.
    ///
    /// # Errors
    /// As [`Socket::emit`].
    pub fn send_binary(&self, data: impl Into<Bytes>) -> Result<(), SocketError> {
        self.push(super::proto::OP_BINARY, data.into())
    }

    /// Send a [`RawMessage`] back as it came (what an echo server does).
    ///
    /// # Errors
    /// As [`Socket::emit`].
    pub fn send_raw(&self, msg: RawMessage) -> Result<(), SocketError> {
        match msg {
            RawMessage::Text(t) => self.push(super::proto::OP_TEXT, t.into_bytes()),
            RawMessage::Binary(b) => self.send_binary(b),
        }
    }

    fn push(&self, opcode: u8, payload: Bytes) -> Result<(), SocketError> {
        self.push_with(opcode, payload, false)
    }

    /// Queue a message; over the queue limit, a volatile message is dropped for this client
    /// (counted) and a normal one disconnects the client as a slow consumer (see
    /// `outbox.rs` for the rules).
    fn push_with(&self, opcode: u8, payload: Bytes, volatile: bool) -> Result<(), SocketError> {
        let inner = &self.inner;
        if inner.finished.load(Ordering::Acquire) {
            return Err(SocketError::Closed);
        }
        let limit = inner.outbox.max_bytes();
        match inner.outbox.push(opcode, payload, volatile) {
            Ok(()) => Ok(()),
            Err(Refused::Closed) => Err(SocketError::Closed),
            Err(Refused::Dropped) => {
                inner.stats.volatile_dropped.inc();
                Err(SocketError::Dropped { limit })
            }
            Err(Refused::SlowConsumer) => {
                inner.stats.slow_consumers.inc();
                Err(SocketError::SlowConsumer { limit })
            }
        }
    }

    /// Start the closing handshake with `code` and `reason`. Messages emitted before this
    /// call are delivered first. The reason is cut to 123 bytes. Calling it on a closed
    /// socket does nothing.
    ///
    /// Use a [`CloseCode`] constant, or `CloseCode(4000..=4999)` for application codes.
    ///
    /// # Errors
    /// [`SocketError::InvalidCloseCode`] for a code that may not be sent (see
    /// [`CloseCode::is_sendable`]: e.g. 1005, 1006, 1015, 999); nothing is sent then and
    /// the socket stays open.
    ///
    /// ```no_run
    /// # fn f(socket: street::ws::Socket) -> Result<(), street::ws::SocketError> {
    /// use street::ws::{CloseCode, SocketError};
    /// assert!(matches!(
    ///     socket.close(CloseCode::ABNORMAL, "no"),
    ///     Err(SocketError::InvalidCloseCode(CloseCode::ABNORMAL))
    /// ));
    /// socket.close(CloseCode(4001), "Unauthorized")?;
    /// # Ok(()) }
    /// ```
    pub fn close(&self, code: CloseCode, reason: &str) -> Result<(), SocketError> {
        if !code.is_sendable() {
            return Err(SocketError::InvalidCloseCode(code));
        }
        self.inner.outbox.close(code, reason);
        Ok(())
    }

    /// A handler of this socket's message (or its connection handler) starts: its reader
    /// waits for it, pongs included.
    pub(crate) fn handling_started(&self) {
        self.inner.handling.store(1, Ordering::Release);
    }

    /// That handler ended: the peer counts as alive now (its pongs wait unread), and its
    /// silence counts again from here.
    pub(crate) fn handling_ended(&self) {
        self.inner.alive.store(true, Ordering::Release);
        self.inner.handling.store(0, Ordering::Release);
    }

    /// The heartbeat sweep's question: did the peer show life since the last sweep? A
    /// silent one is spared while a handler of it runs, for at most `spare` sweeps (each
    /// asking counts one): beyond, a handler that does not end no longer holds its peer.
    pub(crate) fn heartbeat_alive(&self, spare: u8) -> bool {
        let i = &self.inner;
        // (handling first: a handler that ends marks the peer alive before it clears it)
        let h = i.handling.load(Ordering::Acquire);
        if i.alive.swap(false, Ordering::AcqRel) {
            return true;
        }
        let spared = h != 0
            && h <= spare
            && i.handling
                .compare_exchange(h, h + 1, Ordering::AcqRel, Ordering::Acquire)
                .is_ok();
        // a handler that ended meanwhile marked the peer alive
        spared || i.alive.swap(false, Ordering::AcqRel)
    }

    /// Drop the connection at once without a close handshake (what the heartbeat does to a
    /// dead peer). Close handlers see `info`.
    pub(crate) fn kill(&self, info: CloseInfo) {
        self.inner.outbox.kill(info);
    }

    /// Ask the writer to send a ping ahead of queued data.
    pub(crate) fn ping(&self) {
        self.inner.outbox.ping();
    }

    /// Bytes queued for this client and not yet written.
    pub fn queued_bytes(&self) -> usize {
        self.inner.outbox.queued_bytes()
    }

    // ---- listeners ----

    /// Listen for an event. The payload is deserialized into `T` (use
    /// `serde_json::Value` for anything). A payload that does not fit `T` is counted and
    /// reported to the `error` handlers; the connection stays open.
    ///
    /// `event` may also be `"*"`: it receives every envelope, see
    /// [`Envelope`](super::Envelope). The lifecycle names `"close"`, `"error"` and `"raw"`
    /// are refused: register those with [`Socket::on_close`], [`Socket::on_error`] and
    /// [`Socket::on_raw`], which are typed. A client envelope named like them reaches only
    /// `"*"` handlers (see [`LIFECYCLE_EVENTS`]).
    ///
    /// Handlers may be plain closures or return futures; one socket's messages are handled
    /// in order, each handler finishing before the next message is dispatched.
    ///
    /// # Errors
    /// [`SocketError::ReservedEvent`] for `"close"`, `"error"` and `"raw"`;
    /// [`SocketError::TooManyListeners`] beyond 64 listeners for one event (configurable).
    ///
    /// ```no_run
    /// # fn f(socket: street::ws::Socket) -> Result<(), street::ws::SocketError> {
    /// use street::ws::{CloseInfo, SocketError};
    /// #[derive(serde::Deserialize)]
    /// struct Chat { text: String }
    /// let s = socket.clone();
    /// socket.on("chat", move |msg: Chat| s.emit("echo", &msg.text))?;
    /// socket.on("slow", |n: u64| async move {
    ///     tokio::time::sleep(std::time::Duration::from_millis(n)).await;
    /// })?;
    /// // lifecycle events have typed methods
    /// assert!(matches!(
    ///     socket.on("close", |_: CloseInfo| {}),
    ///     Err(SocketError::ReservedEvent { method: "on_close", .. })
    /// ));
    /// socket.on_close(|info: CloseInfo| println!("closed with {}", info.code))?;
    /// # Ok(()) }
    /// ```
    pub fn on<T, M, H>(&self, event: &str, handler: H) -> Result<ListenerId, SocketError>
    where
        T: DeserializeOwned + Send + 'static,
        H: Handler<T, M>,
    {
        if let Some((event, method)) = lifecycle_method(event) {
            return Err(SocketError::ReservedEvent { event, method });
        }
        let erased: Erased = Arc::new(move |payload: Option<&RawValue>, _ev: &str| {
            let text = payload.map_or("null", RawValue::get);
            match serde_json::from_str::<T>(text) {
                Ok(t) => Ok(handler.call(t)),
                Err(e) => Err(e.to_string()),
            }
        });
        self.listeners()
            .add(Kind::event(event, erased), Some(self.inner.max_listeners))
    }

    /// Register a close handler: runs exactly once when the connection ends, whoever ended
    /// it. Registering on an already closed socket runs it at once (as StreetJS).
    ///
    /// # Errors
    /// [`SocketError::TooManyListeners`] beyond the per-event limit.
    pub fn on_close<M, H>(&self, handler: H) -> Result<ListenerId, SocketError>
    where
        H: Handler<CloseInfo, M>,
    {
        self.add_close(Arc::new(move |info| handler.call(info)))
    }

    /// Register an error handler (see [`ErrorEvent`]).
    ///
    /// # Errors
    /// [`SocketError::TooManyListeners`] beyond the per-event limit.
    pub fn on_error<M, H>(&self, handler: H) -> Result<ListenerId, SocketError>
    where
        H: Handler<ErrorEvent, M>,
    {
        self.add_error(Arc::new(move |ev| handler.call(ev)))
    }

    /// Register a raw handler: binary frames, and every frame on a connection that
    /// negotiated a custom subprotocol.
    ///
    /// # Errors
    /// [`SocketError::TooManyListeners`] beyond the per-event limit.
    pub fn on_raw<M, H>(&self, handler: H) -> Result<ListenerId, SocketError>
    where
        H: Handler<RawMessage, M>,
    {
        let kind = Kind::Raw(Arc::new(move |m| handler.call(m)));
        self.listeners().add(kind, Some(self.inner.max_listeners))
    }

    /// Answer the client's requests for `event` (its `emitWithAck`; the wire is in
    /// [`ack`]): the handler gets the payload as `T` and returns
    /// `Result<R, E>`, or a future of one. `Ok` is the reply's result; `Err` is an error
    /// reply with code `rejected` and `E`'s text. One handler per event. A request is an
    /// envelope with an `id`: it reaches this handler only, not [`Socket::on`]'s.
    ///
    /// # Errors
    /// [`SocketError::RequestHandlerTaken`] when `event` has one already.
    ///
    /// ```no_run
    /// # fn f(socket: street::ws::Socket) -> Result<(), street::ws::SocketError> {
    /// socket.on_request("sum", |(a, b): (i64, i64)| a.checked_add(b).ok_or("overflow"))?;
    /// socket.on_request("user", |id: u64| async move {
    ///     // a database lookup, say
    ///     Ok::<_, std::io::Error>(serde_json::json!({ "id": id, "name": "ana" }))
    /// })?;
    /// # Ok(()) }
    /// ```
    pub fn on_request<T, M, H>(&self, event: &str, handler: H) -> Result<(), SocketError>
    where
        T: DeserializeOwned + Send + 'static,
        H: Responder<T, M>,
    {
        let erased: ErasedRequest = Arc::new(move |payload: Option<&RawValue>| {
            let text = payload.map_or("null", RawValue::get);
            match serde_json::from_str::<T>(text) {
                Ok(t) => Ok(handler.respond(t).0),
                Err(e) => Err(e.to_string()),
            }
        });
        let mut l = self.listeners();
        if l.has_request(event) {
            return Err(SocketError::RequestHandlerTaken(event.to_owned()));
        }
        l.add(
            Kind::Request(super::listeners::Name::new(event), erased),
            None,
        )
        .map(|_| ())
    }

    /// Stop answering requests for `event`; whether it had a handler.
    pub fn off_request(&self, event: &str) -> bool {
        self.listeners().remove_request(event)
    }

    /// Send `event` to the client as a request and wait for its reply (the client's
    /// `onRequest` handler), at most `timeout`; the result is deserialized into `R`.
    ///
    /// # Errors
    /// [`AckError::TooMany`] when [`WsOptions::max_pending_acks`](super::WsOptions)
    /// requests wait already; [`AckError::Timeout`]; [`AckError::Closed`] when the
    /// connection ends first; [`AckError::Rejected`] with the client's error;
    /// [`AckError::Result`] when the result does not fit `R`; [`AckError::Send`] when the
    /// request could not be queued.
    ///
    /// Not from inside a handler of this same socket: its reader waits for the handler,
    /// so the reply could not be read before the handler returns; that is
    /// [`AckError::InHandler`] at once. Spawn a task for it (handlers of other sockets,
    /// and any other task, are fine).
    ///
    /// ```no_run
    /// # async fn f(socket: street::ws::Socket) -> Result<(), street::ws::AckError> {
    /// use std::time::Duration;
    /// let ok: bool = socket.emit_with_ack("confirm", &"delete?", Duration::from_secs(5)).await?;
    /// # let _ = ok; Ok(()) }
    /// ```
    pub async fn emit_with_ack<P, R>(
        &self,
        event: &str,
        payload: &P,
        timeout: std::time::Duration,
    ) -> Result<R, AckError>
    where
        P: Serialize + ?Sized,
        R: DeserializeOwned,
    {
        let here = super::dispatch::HANDLING
            .try_with(|id| *id == self.id())
            .unwrap_or(false);
        if here {
            return Err(AckError::InHandler);
        }
        let limit = self.inner.requests.max_pending as usize;
        let (id, reply) = {
            let mut data = lock(&self.inner.data);
            if self.inner.finished.load(Ordering::Acquire) {
                return Err(AckError::Closed);
            }
            let acks = match data.get::<Acks>() {
                Some(a) => a.clone(),
                None => {
                    let a = Acks::default();
                    data.insert(a.clone());
                    a
                }
            };
            let mut pending = lock(&acks.0);
            pending.open(limit)?
        };
        // the entry goes with this future, whatever ends it (a timeout, a drop)
        let _waiting = Waiting(self, id);
        let bytes = envelope::encode_request(event, payload, id)
            .map_err(|e| AckError::Send(e.to_string()))?;
        self.send_text_bytes(bytes).map_err(|e| match e {
            SocketError::Closed => AckError::Closed,
            e => AckError::Send(e.to_string()),
        })?;
        let raw = match tokio::time::timeout(timeout, reply).await {
            Err(_) => {
                self.inner.stats.acks_timed_out.inc();
                return Err(AckError::Timeout(timeout));
            }
            Ok(Err(_)) => return Err(AckError::Closed),
            Ok(Ok(r)) => r?,
        };
        serde_json::from_str(raw.get()).map_err(|e| AckError::Result(e.to_string()))
    }

    /// When this connection's credentials expire (say, a JWT's `exp`), or `None` (the
    /// default): they never do. Past it, the heartbeat sweep warns the client
    /// (`street:expired`) and, unless a new expiry is set meanwhile (an in-band refresh:
    /// the client's `street:auth` request, answered by your
    /// [`on_request`](Socket::on_request) handler, which checks the new token and calls
    /// this again), closes it with 4010 after
    /// [`WsOptions::expiry_grace`](super::WsOptions::expiry_grace).
    ///
    /// ```no_run
    /// # fn f(socket: street::ws::Socket) -> Result<(), street::ws::SocketError> {
    /// use std::time::{Duration, SystemTime};
    /// socket.set_expiry(Some(SystemTime::now() + Duration::from_secs(3600)));
    /// let s = socket.clone();
    /// socket.on_request("street:auth", move |p: serde_json::Value| {
    ///     // verify p["token"] (same user, not expired) before trusting it
    ///     let ok = p["token"].as_str().is_some_and(|t| t.starts_with("valid"));
    ///     if ok {
    ///         s.set_expiry(Some(SystemTime::now() + Duration::from_secs(3600)));
    ///     }
    ///     ok.then_some("refreshed").ok_or("invalid token")
    /// })?;
    /// # Ok(()) }
    /// ```
    pub fn set_expiry(&self, at: Option<std::time::SystemTime>) {
        let mut d = lock(&self.inner.data);
        match at {
            Some(at) => {
                // a new time already past keeps the warning given (and its clock running)
                let warned = at <= std::time::SystemTime::now()
                    && d.get::<Expiry>().is_some_and(|e| e.warned);
                d.insert(Expiry { at, warned });
            }
            None => {
                d.remove::<Expiry>();
            }
        }
    }

    /// When this connection's credentials expire (see [`Socket::set_expiry`]).
    pub fn expiry(&self) -> Option<std::time::SystemTime> {
        lock(&self.inner.data).get::<Expiry>().map(|e| e.at)
    }

    /// The heartbeat sweep's expiry check: warn once the expiry is past (the
    /// `street:expired` envelope when `envelopes`: not to raw or custom-subprotocol
    /// connections), close with 4010 once the grace is past too (and a sweep after the
    /// warning). Whether this closed it.
    pub(crate) fn check_expiry(
        &self,
        now: std::time::SystemTime,
        grace: std::time::Duration,
        envelopes: bool,
    ) -> bool {
        let close = {
            let mut d = lock(&self.inner.data);
            let Some(e) = d.get_mut::<Expiry>() else {
                return false;
            };
            if now < e.at {
                return false;
            }
            if !e.warned {
                e.warned = true;
                if !envelopes {
                    return false;
                }
                let ms = u64::try_from(grace.as_millis()).unwrap_or(u64::MAX);
                let _ = envelope::encode(EXPIRED_EVENT, &serde_json::json!({ "graceMs": ms }))
                    .map(|b| self.send_text_bytes(b));
                return false;
            }
            let due = e.at.checked_add(grace).is_some_and(|end| now >= end);
            if due {
                // closed once (the next sweep may come before the close completes)
                d.remove::<Expiry>();
            }
            due
        };
        // (a close already under way is not this one)
        close
            && self
                .inner
                .outbox
                .close(CloseCode::TOKEN_EXPIRED, "token expired")
    }

    /// Requests to the client waiting for their reply.
    pub fn pending_acks(&self) -> usize {
        self.acks().map_or(0, |a| lock(&a.0).len())
    }

    fn acks(&self) -> Option<Acks> {
        lock(&self.inner.data).get::<Acks>().cloned()
    }

    /// A `street:reply` from the client: to the request waiting for it (dropped when
    /// none does: late, or never asked).
    pub(crate) fn settle_reply(&self, payload: Option<&RawValue>) {
        if let Some((id, outcome)) = ack::decode_reply(payload) {
            if let Some(a) = self.acks() {
                lock(&a.0).settle(id, outcome);
            }
        }
    }

    pub(crate) fn request_handler(&self, event: &str) -> Option<ErasedRequest> {
        self.listeners().request(event)
    }

    fn listeners(&self) -> MutexGuard<'_, Listeners> {
        lock(&self.inner.listeners)
    }

    /// A close hook for street's own bookkeeping (rooms): not counted against
    /// `max_listeners`, runs once like any close handler (at once if already closed).
    pub(crate) fn on_close_internal(&self, f: impl Fn(CloseInfo) + Send + Sync + 'static) {
        let h: ErasedClose = Arc::new(move |info| {
            f(info);
            DispatchOut(super::handler::Dispatch::Done(Ok(())))
        });
        let _ = self.add_close_inner(h, false);
    }

    fn add_close(&self, h: ErasedClose) -> Result<ListenerId, SocketError> {
        self.add_close_inner(h, true)
    }

    fn add_close_inner(&self, h: ErasedClose, limited: bool) -> Result<ListenerId, SocketError> {
        let mut l = self.listeners();
        if self.inner.finished.load(Ordering::Acquire) {
            drop(l);
            let info = CloseInfo::new(CloseCode::ABNORMAL, "already closed");
            let out = h(info);
            spawn_dispatch(out);
            return Ok(ListenerId(0));
        }
        l.add(Kind::Close(h), limited.then_some(self.inner.max_listeners))
    }

    fn add_error(&self, h: ErasedError) -> Result<ListenerId, SocketError> {
        self.listeners()
            .add(Kind::Error(h), Some(self.inner.max_listeners))
    }

    /// Remove a listener registered with `on`, `on_close`, `on_error` or `on_raw` (pass
    /// `"close"`, `"error"` or `"raw"` for the last three). Returns whether it was found.
    pub fn off(&self, event: &str, id: ListenerId) -> bool {
        self.listeners().remove(event, id)
    }

    /// Number of listeners registered for `event` (`"close"`, `"error"` and `"raw"` count
    /// the typed lifecycle listeners).
    pub fn listener_count(&self, event: &str) -> usize {
        self.listeners().count(event)
    }

    /// Trim listener storage to its length (called once the connection handler has
    /// registered its listeners).
    pub(crate) fn compact(&self) {
        self.listeners().compact();
    }

    // ---- typed per-socket data ----

    /// Attach a typed value to this socket (the seed's `socket.userId`), replacing any
    /// previous value of the same type.
    ///
    /// ```no_run
    /// # fn f(socket: street::ws::Socket) {
    /// #[derive(Clone)]
    /// struct UserId(String);
    /// socket.set(UserId("u1".into()));
    /// assert_eq!(socket.get::<UserId>().map(|u| u.0), Some("u1".to_string()));
    /// # }
    /// ```
    pub fn set<T: Clone + Send + Sync + 'static>(&self, value: T) {
        lock(&self.inner.data).insert(value);
    }

    /// A clone of the value of type `T` attached to this socket, if any.
    pub fn get<T: Clone + Send + Sync + 'static>(&self) -> Option<T> {
        lock(&self.inner.data).get::<T>().cloned()
    }

    /// Remove and return the value of type `T`.
    pub fn remove<T: Clone + Send + Sync + 'static>(&self) -> Option<T> {
        lock(&self.inner.data).remove::<T>()
    }

    // ---- dispatch (called by the connection task) ----

    /// Handlers for one incoming envelope, in registration order: the event's own
    /// handlers, then `*` handlers. An envelope named `*` or like a lifecycle event gets
    /// only `*` handlers (`on` refuses lifecycle names; the check here keeps it so).
    pub(crate) fn handlers_for(&self, event: &str) -> (Vec<Erased>, Vec<Erased>) {
        self.listeners().for_event(event)
    }

    pub(crate) fn raw_handlers(&self) -> Vec<ErasedRaw> {
        self.listeners().raw()
    }

    pub(crate) async fn report_error(&self, ev: ErrorEvent) {
        let handlers = self.listeners().errors();
        if handlers.is_empty() {
            tracing::debug!(socket = %self.id(), error = ?ev, "socket error (no error handler)");
        }
        for h in handlers {
            let ev = ev.clone();
            if let Err(e) = super::handler::run_dispatch(move || h(ev)).await {
                tracing::warn!(socket = %self.id(), error = %e, "error handler failed");
            }
        }
    }

    /// Run close handlers exactly once and drop every listener (breaking the reference
    /// cycles of handlers that captured this socket).
    pub(crate) fn finish(&self, info: CloseInfo) {
        let listeners = {
            let mut l = self.listeners();
            if self.inner.finished.swap(true, Ordering::AcqRel) {
                return;
            }
            std::mem::take(&mut *l)
        };
        self.inner.outbox.clear();
        if let Some(a) = self.acks() {
            lock(&a.0).close_all();
        }
        for h in listeners.into_closers() {
            let info = info.clone();
            match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| h(info))) {
                Ok(out) => spawn_dispatch(out),
                Err(_) => {
                    self.inner.stats.handler_errors.inc();
                    tracing::warn!(socket = %self.id(), "close handler panicked");
                }
            }
        }
        // Listeners dropped here; per-socket data is cleared too.
        lock(&self.inner.data).clear();
    }
}

/// The event a client gets when its credentials expired (see [`Socket::set_expiry`]).
pub const EXPIRED_EVENT: &str = "street:expired";

/// A socket's credentials' expiry, kept with its data (nothing for sockets without one).
#[derive(Clone, Copy)]
struct Expiry {
    at: std::time::SystemTime,
    warned: bool,
}

/// A request to the client waiting for its reply: forgotten when the wait ends.
struct Waiting<'a>(&'a Socket, u64);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if let Some(a) = self.0.acks() {
            lock(&a.0).forget(self.1);
        }
    }
}

/// Finish a dispatch in the background (used where nobody can await it).
fn spawn_dispatch(out: DispatchOut) {
    match out.0 {
        super::handler::Dispatch::Done(Err(e)) => tracing::warn!(error = %e, "handler failed"),
        super::handler::Dispatch::Done(Ok(())) => {}
        super::handler::Dispatch::Pending(fut) => {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    if let Err(e) = fut.await {
                        tracing::warn!(error = %e, "handler failed");
                    }
                });
            }
        }
    }
}

/// Allow `Outcome` to be named in bounds by users writing generic helpers.
#[doc(hidden)]
pub fn _assert_outcome<O: Outcome>() {}

#[cfg(test)]
mod tests {
    use super::*;

    fn socket() -> Socket {
        Socket::for_test()
    }

    #[test]
    fn on_refuses_lifecycle_names_and_names_the_typed_method() {
        let s = socket();
        for (event, method) in [
            ("close", "on_close"),
            ("error", "on_error"),
            ("raw", "on_raw"),
        ] {
            let err = s
                .on(event, |_: serde_json::Value| {})
                .expect_err("reserved");
            assert!(
                matches!(err, SocketError::ReservedEvent { event: e, method: m } if e == event && m == method)
            );
            assert_eq!(
                err.to_string(),
                format!("\"{event}\" is a lifecycle event, not a message event: register it with Socket::{method}")
            );
            assert_eq!(s.listener_count(event), 0);
        }
        // the typed methods work, and off/listener_count take their names
        let id = s.on_close(|_: CloseInfo| {}).expect("on_close");
        assert_eq!(s.listener_count("close"), 1);
        assert!(s.off("close", id));
        assert_eq!(s.listener_count("close"), 0);
        // ordinary names and "*" are still accepted
        s.on("closed", |_: serde_json::Value| {}).expect("on");
        s.on("*", |_: serde_json::Value| {}).expect("on *");
    }

    #[test]
    fn close_refuses_codes_that_may_not_be_sent_and_stays_open() {
        let s = socket();
        for code in [0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, u16::MAX] {
            assert!(
                matches!(s.close(CloseCode(code), "x"), Err(SocketError::InvalidCloseCode(c)) if c.0 == code),
                "{code}"
            );
            assert!(!s.closed(), "{code}");
        }
        s.close(CloseCode(4001), "bye").expect("4001 may be sent");
        assert!(s.closed());
        // closing again is a no-op
        s.close(CloseCode::NORMAL, "again").expect("no-op");
    }
}
