//! [`WebSocketServer`]: options, the registry of live sockets, broadcast and shutdown.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::close::{CloseCode, CloseInfo};
use super::envelope::{self, EnvelopeError};
use super::handler::{run_dispatch, BoxFuture, Dispatch, DispatchOut, Handler2};
use super::origin::Origin;
use super::socket::{Socket, SocketId};
use super::stats::{Stats, StatsSnapshot};
use super::upgrade::ConnectRequest;

/// What happens to a connection over [`WsOptions::max_connections`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum CapacityPolicy {
    /// Complete the handshake, then close with 1013 "Server at capacity" (StreetJS
    /// behaviour; browsers can read the code). The default.
    #[default]
    Close1013,
    /// Refuse before the upgrade with HTTP 503 and `Retry-After` (cheaper; browsers only
    /// see a failed connection).
    Http503,
}

/// How a server reads text frames on connections that negotiated no subprotocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Frames {
    /// `{type, payload, ts}` envelopes dispatched to `on(event)` handlers. The default.
    #[default]
    Envelope,
    /// Every frame goes to `on_raw` handlers as-is (an echo endpoint, a custom protocol).
    Raw,
}

/// Why the auth hook refused an upgrade. Becomes HTTP 401; the message is logged at
/// debug level, not sent to the client.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct AuthRejection(pub String);

impl AuthRejection {
    /// A rejection with a message for the client.
    pub fn new(msg: impl Into<String>) -> Self {
        Self(msg.into())
    }
}

/// The auth hook: sees the upgrade request, returns the data the socket will carry.
pub(crate) type AuthFn =
    Arc<dyn Fn(ConnectRequest) -> BoxFuture<Result<http::Extensions, AuthRejection>> + Send + Sync>;
type ConnFn = Arc<dyn Fn(Socket, ConnectRequest) -> DispatchOut + Send + Sync>;

/// One connection handler running `hooks` in order; the first error stops the chain and
/// is the chain's error. Inline handlers run inline until the first one that returns a
/// future; the rest run after it, in the same future.
fn chain_connection(hooks: Arc<[ConnFn]>) -> ConnFn {
    Arc::new(move |socket: Socket, req: ConnectRequest| {
        let mut next = 0;
        while let Some(h) = hooks.get(next) {
            next += 1;
            match h(socket.clone(), req.clone()).0 {
                Dispatch::Done(Ok(())) => {}
                Dispatch::Done(Err(e)) => return DispatchOut(Dispatch::Done(Err(e))),
                Dispatch::Pending(fut) => {
                    let hooks = hooks.clone();
                    return DispatchOut(Dispatch::Pending(Box::pin(async move {
                        fut.await?;
                        for h in hooks.get(next..).unwrap_or_default() {
                            let (s, r) = (socket.clone(), req.clone());
                            run_dispatch(move || h(s, r)).await?;
                        }
                        Ok(())
                    })));
                }
            }
        }
        DispatchOut(Dispatch::Done(Ok(())))
    })
}

/// One auth hook running `hooks` in order: each must accept, the first rejection is the
/// chain's; the data every hook returned is merged (a later hook's value of the same type
/// replaces an earlier one's).
fn chain_auth(hooks: Arc<[AuthFn]>) -> AuthFn {
    Arc::new(move |req: ConnectRequest| {
        let hooks = hooks.clone();
        Box::pin(async move {
            let mut data = http::Extensions::new();
            for h in hooks.iter() {
                data.extend(h(req.clone()).await?);
            }
            Ok(data)
        })
    })
}

/// Add `hook` to `all` and return what to run: the hook itself when it is the only one
/// (so one hook costs nothing more than before), else a chain of them all.
fn add_hook<F: Clone>(all: &mut Vec<F>, hook: F, chain: impl FnOnce(Arc<[F]>) -> F) -> F {
    all.push(hook);
    match all.as_slice() {
        [only] => only.clone(),
        many => chain(many.into()),
    }
}

/// Options for a [`WebSocketServer`]. Every field has a default (the seed's where it has
/// one); start from it and set what you need with the `with_*` setters, or assign the
/// public fields of a `let mut` binding.
///
/// ```
/// use std::time::Duration;
/// let opts = street::ws::WsOptions::default()
///     .with_path("/ws")
///     .with_heartbeat_interval(Duration::from_secs(30))
///     .with_max_connections(10_000);
/// assert_eq!(opts.max_payload, 512 * 1024);
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct WsOptions {
    /// URL path of the endpoint; the query string is ignored when matching. Default `/ws`.
    pub path: String,
    /// Ping interval. A peer that sent nothing (no pong, no frame) since the previous ping
    /// is terminated, so a dead peer goes within two intervals; while a handler of its
    /// message runs (its pongs wait unread) it is spared, for at most
    /// `2 + request_timeout / heartbeat_interval` more. Default 30 s; `Duration::ZERO`
    /// disables the heartbeat.
    pub heartbeat_interval: Duration,
    /// Most simultaneous connections; the next is refused per `capacity_policy`.
    /// Default 10 000.
    pub max_connections: usize,
    /// What to do over `max_connections`. Default [`CapacityPolicy::Close1013`].
    pub capacity_policy: CapacityPolicy,
    /// Largest message accepted, in bytes; larger closes with 1009. Default 512 KiB.
    pub max_payload: usize,
    /// Outbound queue limit per connection, in bytes; a client that falls further behind is
    /// disconnected with 4008 "slow consumer". Default 1 MiB.
    pub max_queue_bytes: usize,
    /// Listeners allowed per event per socket (StreetJS: 64). Default 64.
    pub max_listeners: usize,
    /// How text frames are read when no subprotocol was negotiated. Default
    /// [`Frames::Envelope`].
    pub frames: Frames,
    /// Allowed `Origin`s (`scheme://host[:port]`). Empty: only the server's own origin
    /// (from `Host`). Requests without `Origin` are always allowed. Default empty.
    pub allowed_origins: Vec<String>,
    /// How long a closing handshake may take before the connection is dropped. Default 5 s.
    pub close_timeout: Duration,
    /// How long [`WebSocketServer::close`] waits for clients to finish their closing
    /// handshakes before dropping them. Default 10 s.
    pub shutdown_timeout: Duration,
    /// Messages a connection may send per second (token bucket, burst of the same size);
    /// faster closes it with 1008 "rate limit exceeded". Every frame counts as one: pings,
    /// pongs and each frame of a fragmented message too. 0 disables. Default 1 000.
    pub max_messages_per_sec: u32,
    /// Bytes a connection may send per second (burst: the larger of this and
    /// `max_payload`); faster closes it with 1008. 0 disables. Default 8 MiB.
    pub max_bytes_per_sec: u32,
    /// Simultaneous connections from one IP (IPv6: one /64); more get HTTP 429 before the
    /// upgrade. 0 disables. Default 1 000 (NAT'd offices share one address).
    pub max_connections_per_ip: u32,
    /// Handshakes per second from one IP (burst of the same size); more get HTTP 429 with
    /// `Retry-After`. 0 disables. Default 100.
    pub max_handshakes_per_ip_per_sec: u32,
    /// Close connections that send no message within this time after connecting (1008
    /// "no message received"): for apps whose clients must authenticate with a first
    /// message. Default `None` (push-only clients never send anything).
    pub first_message_timeout: Option<Duration>,
    /// Kernel send buffer (`SO_SNDBUF`) for WebSocket connections. `None` keeps the
    /// kernel's autotuning, which lets a client that stops reading pin up to
    /// `net.ipv4.tcp_wmem`'s maximum (often 4 MiB) of kernel memory on top of
    /// `max_queue_bytes`. Setting it bounds that, and makes slow consumers reach
    /// `max_queue_bytes` sooner; it also disables autotuning, so leave room for your
    /// largest bursts. Default `None`.
    pub send_buffer_bytes: Option<usize>,
    /// A reconnect hint for clients: when set, the reasons of close 1001 (shutdown) and
    /// 1013 (at capacity) end with `" retry=MS"` (e.g. `"Going Away retry=2000"`), which
    /// `street.js` honours (waiting that long plus jitter). Default `None`: the reasons are
    /// exactly StreetJS's.
    pub reconnect_hint: Option<Duration>,
    /// permessage-deflate (RFC 7692), agreed with clients that offer it (every browser
    /// does). `None`, the default, leaves every message uncompressed. See [`Compression`]
    /// for the modes and what each costs, and the README for when to turn it on.
    ///
    /// [`Compression`]: super::Compression
    pub compression: Option<super::Compression>,
    /// How long a request handler ([`Socket::on_request`](super::Socket::on_request)) may
    /// take; beyond, the client is answered with an error of code `timeout` and the
    /// handler is dropped. Kept in whole milliseconds: at least 1 ms, at most about 49
    /// days. Default 10 s.
    pub request_timeout: Duration,
    /// Requests to one client ([`Socket::emit_with_ack`](super::Socket::emit_with_ack))
    /// waiting for their reply at once; one more fails at once with
    /// [`AckError::TooMany`](super::AckError::TooMany). Default 64.
    pub max_pending_acks: usize,
    /// How long a connection may stay open after its credentials expired
    /// ([`Socket::set_expiry`](super::Socket::set_expiry)) without refreshing them: at the
    /// first heartbeat sweep after the expiry the client is sent `street:expired`
    /// (`{"graceMs"}`); at the first sweep past expiry plus this grace, and at least one
    /// heartbeat interval after that warning, it is closed with 4010
    /// ([`CloseCode::TOKEN_EXPIRED`](super::CloseCode::TOKEN_EXPIRED)). Checked by the
    /// heartbeat sweep: with `heartbeat_interval` 0, expiries are not enforced. Default
    /// 30 s.
    pub expiry_grace: Duration,
    /// Also send every live client the envelope `street:ping` (`{"intervalMs"}`) at each
    /// heartbeat sweep. Browsers answer WebSocket pings without telling the page, so a
    /// page cannot see a connection that went dead (a laptop woken from sleep, a proxy
    /// that dropped it silently) until it writes; with this on, street.js reconnects
    /// when nothing arrived for two intervals. Costs one small message per client per
    /// interval; other envelope clients see an ordinary event. Not sent on raw endpoints
    /// ([`Frames::Raw`]) or to connections of a custom subprotocol. Default `false`.
    pub ping_envelopes: bool,
}

impl WsOptions {
    /// `base`, with the reconnect hint when one is set.
    pub(crate) fn close_reason(&self, base: &'static str) -> std::borrow::Cow<'static, str> {
        match self.reconnect_hint {
            Some(d) => format!("{base} retry={}", d.as_millis()).into(),
            None => base.into(),
        }
    }
}

impl Default for WsOptions {
    fn default() -> Self {
        Self {
            path: "/ws".into(),
            heartbeat_interval: Duration::from_secs(30),
            max_connections: 10_000,
            capacity_policy: CapacityPolicy::Close1013,
            max_payload: 512 * 1024,
            max_queue_bytes: 1024 * 1024,
            max_listeners: 64,
            frames: Frames::Envelope,
            allowed_origins: Vec::new(),
            close_timeout: Duration::from_secs(5),
            shutdown_timeout: Duration::from_secs(10),
            max_messages_per_sec: 1_000,
            max_bytes_per_sec: 8 * 1024 * 1024,
            max_connections_per_ip: 1_000,
            max_handshakes_per_ip_per_sec: 100,
            first_message_timeout: None,
            send_buffer_bytes: None,
            reconnect_hint: None,
            compression: None,
            request_timeout: Duration::from_secs(10),
            max_pending_acks: 64,
            expiry_grace: Duration::from_secs(30),
            ping_envelopes: false,
        }
    }
}

/// The hooks behind [`Shared::on_connection`], [`Shared::protocols`] and [`Shared::auth`].
#[derive(Default)]
struct Hooks {
    connection: Vec<ConnFn>,
    protocols: Vec<(String, Vec<ConnFn>)>,
    auth: Vec<AuthFn>,
}

pub(crate) struct Shared {
    pub(crate) opts: WsOptions,
    pub(crate) allowed: Vec<Origin>,
    pub(crate) stats: Arc<Stats>,
    pub(crate) permits: Arc<Semaphore>,
    pub(crate) clients: RwLock<HashMap<SocketId, Socket>>,
    pub(crate) closing: AtomicBool,
    pub(crate) shutdown: CancellationToken,
    pub(crate) tasks: TaskTracker,
    pub(crate) empty: Notify,
    pub(crate) heartbeat_started: AtomicBool,
    /// What runs for a connection without a subprotocol: the registered handlers, chained.
    pub(crate) on_connection: RwLock<Option<ConnFn>>,
    /// What runs for each served subprotocol: its registered handlers, chained.
    pub(crate) protocols: RwLock<Vec<(String, ConnFn)>>,
    /// What runs before an upgrade: the registered auth hooks, chained.
    pub(crate) auth: RwLock<Option<AuthFn>>,
    /// Every hook registered, in order (read only when one is added).
    hooks: Mutex<Hooks>,
    pub(crate) close_lock: tokio::sync::Mutex<()>,
    pub(crate) closed_done: Mutex<bool>,
    pub(crate) per_ip: Arc<crate::net::per_ip::PerIp>,
}

/// A bounded WebSocket server: capacity, heartbeat, payload limits, origin and auth gates,
/// typed sockets, broadcast and graceful shutdown. Cheap to clone (an `Arc` inside).
///
/// Mount it on an app with [`App::websocket`](crate::app::App::websocket).
///
/// ```no_run
/// use street::ws::{WebSocketServer, WsOptions, Socket, ConnectRequest};
/// # async fn run() -> Result<(), street::app::AppError> {
/// let wss = WebSocketServer::new(WsOptions::default());
/// wss.on_connection(|socket: Socket, _req: ConnectRequest| {
///     let s = socket.clone();
///     socket.on("message", move |data: serde_json::Value| s.emit("echo", &data))?;
///     Ok::<_, street::ws::SocketError>(())
/// });
/// street::app(street::AppOptions::default()).websocket(&wss).listen().await
/// # }
/// ```
#[derive(Clone)]
pub struct WebSocketServer {
    pub(crate) shared: Arc<Shared>,
}

impl std::fmt::Debug for WebSocketServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebSocketServer")
            .field("path", &self.shared.opts.path)
            .field("connections", &self.connection_count())
            .finish()
    }
}

/// The close code street sends to a slow consumer (reconnectable, application range).
pub const SLOW_CONSUMER_CODE: u16 = 4008;

impl WebSocketServer {
    /// Create a server. Origins in `allowed_origins` that do not parse are ignored with a
    /// warning (they could never match).
    pub fn new(opts: WsOptions) -> Self {
        let allowed = opts
            .allowed_origins
            .iter()
            .filter_map(|o| {
                let parsed = Origin::parse(o);
                if parsed.is_none() {
                    tracing::warn!(origin = %o, "ignoring unparsable allowed origin");
                }
                parsed
            })
            .collect();
        let max = opts.max_connections.min(Semaphore::MAX_PERMITS);
        Self {
            shared: Arc::new(Shared {
                allowed,
                stats: Arc::new(Stats::default()),
                permits: Arc::new(Semaphore::new(max)),
                clients: RwLock::new(HashMap::new()),
                closing: AtomicBool::new(false),
                shutdown: CancellationToken::new(),
                tasks: TaskTracker::new(),
                empty: Notify::new(),
                heartbeat_started: AtomicBool::new(false),
                on_connection: RwLock::new(None),
                protocols: RwLock::new(Vec::new()),
                auth: RwLock::new(None),
                hooks: Mutex::new(Hooks::default()),
                close_lock: tokio::sync::Mutex::new(()),
                closed_done: Mutex::new(false),
                per_ip: crate::net::per_ip::PerIp::new(
                    opts.max_connections_per_ip,
                    opts.max_handshakes_per_ip_per_sec,
                ),
                opts,
            }),
        }
    }

    /// This server as an axum route, to mount in your own `Router` at any path, inside
    /// your own layers, served by your own `axum::serve` or hyper server. The path in
    /// [`WsOptions::path`] is not used here: the route's path is where you mount it, and
    /// its parameters reach the auth hook and the connection handler
    /// ([`ConnectRequest::path_param`]), as do the request extensions your middleware
    /// sets ([`ConnectRequest::extensions`]).
    ///
    /// What the host must do:
    /// - serve with `into_make_service_with_connect_info::<SocketAddr>()`, so per-address
    ///   limits apply (without `ConnectInfo` they are off); behind a proxy, add
    ///   [`TrustedProxies::layer`](crate::net::TrustedProxies::layer);
    /// - on shutdown, call [`close`](Self::close) (1001 to every client, waits up to
    ///   `shutdown_timeout`) from the graceful-shutdown future, before the HTTP drain:
    ///   upgraded connections are no longer the HTTP server's, so it does not wait
    ///   for them.
    ///
    /// Capacity, origin checks, auth, per-address limits, heartbeat and rate limits hold
    /// as under [`App::websocket`](crate::App::websocket). A TLS stream or any other
    /// transport works (street frames plain TCP itself, anything else through its
    /// `AsyncRead + AsyncWrite`).
    ///
    /// ```no_run
    /// use std::net::SocketAddr;
    /// use axum::{routing::get, Router};
    /// use street::ws::{ConnectRequest, Socket, WebSocketServer, WsOptions};
    ///
    /// # async fn run() -> std::io::Result<()> {
    /// let wss = WebSocketServer::new(WsOptions::default());
    /// wss.on_connection(|socket: Socket, req: ConnectRequest| {
    ///     let room = req.path_param("room").unwrap_or("lobby").to_owned();
    ///     socket.emit("joined", &room)
    /// });
    /// let app = Router::new()
    ///     .route("/", get(|| async { "hello" }))
    ///     .route("/ws/{room}", wss.route());
    /// let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    /// let closing = wss.clone();
    /// axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
    ///     .with_graceful_shutdown(async move {
    ///         street::app::shutdown_signal().await;
    ///         closing.close().await;
    ///     })
    ///     .await
    /// # }
    /// ```
    pub fn route<S>(&self) -> axum::routing::MethodRouter<S>
    where
        S: Clone + Send + Sync + 'static,
    {
        let wss = self.clone();
        axum::routing::any(move |req: axum::extract::Request| {
            let wss = wss.clone();
            async move { super::upgrade::handle(wss, req).await }
        })
    }

    /// The options this server runs with.
    pub fn options(&self) -> &WsOptions {
        &self.shared.opts
    }

    /// Add a connection handler (`wss.on('connection', …)` in the seed). Handlers run
    /// before the socket's first message is dispatched, so listeners they register see
    /// every message. Each may be async, and may return `Result<(), E>`.
    ///
    /// Calling it again adds a handler, as Node's `on('connection')` does (it does not
    /// replace the first): the handlers run one after the other in registration order,
    /// each finishing (its future too) before the next starts. An error (or a panic) in
    /// one closes the socket with 1011 and the later ones do not run. Closing the socket
    /// from a handler does not stop the later ones.
    ///
    /// ```no_run
    /// use street::ws::{ConnectRequest, Socket, SocketError, WebSocketServer};
    /// # let wss = WebSocketServer::new(Default::default());
    /// #[derive(Clone)]
    /// struct Greeted;
    /// wss.on_connection(|socket: Socket, _: ConnectRequest| socket.set(Greeted));
    /// // runs second: sees what the first one did
    /// wss.on_connection(|socket: Socket, _: ConnectRequest| async move {
    ///     assert!(socket.get::<Greeted>().is_some());
    ///     socket.emit("hello", "world")
    /// });
    /// ```
    pub fn on_connection<M, H>(&self, handler: H)
    where
        H: Handler2<Socket, ConnectRequest, M>,
    {
        let f: ConnFn = Arc::new(move |s, r| handler.call(s, r));
        let mut hooks = lock(&self.shared.hooks);
        let run = add_hook(&mut hooks.connection, f, chain_connection);
        *write(&self.shared.on_connection) = Some(run);
    }

    /// Handle connections that negotiate the WebSocket subprotocol `name`
    /// (StreetJS's `attachProtocol`). Their frames are not parsed as envelopes: register
    /// [`Socket::on_raw`] and answer with [`Socket::send_text`]/[`Socket::send_binary`].
    /// Capacity, origin, auth and heartbeat apply as for every connection.
    ///
    /// Calling it again with a name already registered adds a handler for that
    /// subprotocol, with the same semantics as [`on_connection`](Self::on_connection):
    /// the handlers run in registration order, and the first error closes with 1011.
    pub fn on_protocol<M, H>(&self, name: &str, handler: H)
    where
        H: Handler2<Socket, ConnectRequest, M>,
    {
        let f: ConnFn = Arc::new(move |s, r| handler.call(s, r));
        let mut hooks = lock(&self.shared.hooks);
        let run = match hooks.protocols.iter_mut().find(|(n, _)| n == name) {
            Some((_, all)) => add_hook(all, f, chain_connection),
            None => {
                hooks.protocols.push((name.to_owned(), vec![f.clone()]));
                f
            }
        };
        let mut served = write(&self.shared.protocols);
        match served.iter_mut().find(|(n, _)| n == name) {
            Some((_, current)) => *current = run,
            None => served.push((name.to_owned(), run)),
        }
    }

    /// Add an auth hook, run before the upgrade with the request's method, URI (with
    /// query), headers and peer address. `Ok(value)` lets the connection in and attaches
    /// `value` to the socket (read it with [`Socket::get`]); `Err` refuses it with 401.
    ///
    /// Calling it again adds a hook (it does not replace the first): the hooks run one
    /// after the other in registration order and all must accept. The first rejection (or
    /// panic) refuses the upgrade with 401 and the later hooks do not run. When all
    /// accept, each hook's value is attached to the socket; two hooks returning the same
    /// type leave the later one's value.
    ///
    /// ```no_run
    /// # let wss = street::ws::WebSocketServer::new(Default::default());
    /// use street::ws::{AuthRejection, ConnectRequest};
    /// #[derive(Clone)]
    /// struct UserId(String);
    /// wss.auth(|req: ConnectRequest| async move {
    ///     match req.query_param("token") {
    ///         Some(t) if t == "secret" => Ok(UserId("u1".into())),
    ///         _ => Err(AuthRejection::new("bad token")),
    ///     }
    /// });
    /// ```
    pub fn auth<F, Fut, T>(&self, hook: F)
    where
        F: Fn(ConnectRequest) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<T, AuthRejection>> + Send + 'static,
        T: Clone + Send + Sync + 'static,
    {
        let f: AuthFn = Arc::new(move |req| {
            let fut = hook(req);
            Box::pin(async move {
                let value = fut.await?;
                let mut ext = http::Extensions::new();
                ext.insert(value);
                Ok(ext)
            })
        });
        let mut hooks = lock(&self.shared.hooks);
        let run = add_hook(&mut hooks.auth, f, chain_auth);
        *write(&self.shared.auth) = Some(run);
    }

    /// Send `{"type":event,"payload":…,"ts":…}` to every connected client **of this
    /// server, on this node**. The envelope is serialized once; every client's queue
    /// shares the same bytes. Returns how many clients it was queued for. In a cluster,
    /// [`Rooms::broadcast`](crate::rooms::Rooms::broadcast) reaches every client of every
    /// node.
    ///
    /// # Errors
    /// [`EnvelopeError::Serialize`] when the payload does not serialize.
    pub fn broadcast<P: Serialize + ?Sized>(
        &self,
        event: &str,
        payload: &P,
    ) -> Result<usize, EnvelopeError> {
        let bytes = envelope::encode(event, payload)?;
        Ok(self.broadcast_encoded(&bytes))
    }

    /// Like [`broadcast`](Self::broadcast), but clients whose queue is full skip this
    /// message (counted as `volatile_dropped`) instead of being disconnected. For data
    /// where only the latest matters. Returns how many clients it was queued for.
    ///
    /// # Errors
    /// [`EnvelopeError::Serialize`] when the payload does not serialize.
    pub fn broadcast_volatile<P: Serialize + ?Sized>(
        &self,
        event: &str,
        payload: &P,
    ) -> Result<usize, EnvelopeError> {
        let bytes = envelope::encode(event, payload)?;
        Ok(self.fan_out(&bytes, true))
    }

    /// Broadcast an already-encoded envelope (see [`envelope::encode`]) to every client.
    pub fn broadcast_encoded(&self, bytes: &bytes::Bytes) -> usize {
        self.fan_out(bytes, false)
    }

    /// Queue the same bytes for every client (a reference-counted clone each, no copy).
    fn fan_out(&self, bytes: &bytes::Bytes, volatile: bool) -> usize {
        let started = std::time::Instant::now();
        self.shared.stats.broadcasts.inc();
        let clients = read(&self.shared.clients);
        let n = clients
            .values()
            .filter(|s| {
                let b = bytes.clone();
                if volatile {
                    s.send_text_bytes_volatile(b).is_ok()
                } else {
                    s.send_text_bytes(b).is_ok()
                }
            })
            .count();
        drop(clients);
        self.shared.stats.fanout.observe(started.elapsed());
        n
    }

    /// How long broadcasts (and room messages, see [`crate::rooms`]) took to queue for
    /// every local recipient.
    pub fn fanout_histogram(&self) -> crate::metrics::HistogramSnapshot {
        self.shared.stats.fanout.snapshot()
    }

    pub(crate) fn observe_fanout(&self, d: std::time::Duration) {
        self.shared.stats.fanout.observe(d);
    }

    /// The live sockets (a snapshot), for the seed's "broadcast to a subset" loop.
    pub fn clients(&self) -> Vec<Socket> {
        read(&self.shared.clients).values().cloned().collect()
    }

    /// Look up a live socket by id.
    pub fn client(&self, id: SocketId) -> Option<Socket> {
        read(&self.shared.clients).get(&id).cloned()
    }

    /// Number of live connections (only those that reached the connection handler).
    pub fn connection_count(&self) -> usize {
        read(&self.shared.clients).len()
    }

    /// The server's counters.
    pub fn stats(&self) -> StatsSnapshot {
        self.shared.stats.snapshot_with(self.connection_count())
    }

    /// Whether [`close`](Self::close) has been called.
    pub fn is_closing(&self) -> bool {
        self.shared.closing.load(Ordering::Acquire)
    }

    /// Shut down: new upgrades get 503; every client gets close 1001 "Going Away" after
    /// the messages already queued for it; waits for the closing handshakes up to
    /// `shutdown_timeout`, then drops the rest. Close handlers run for every client.
    /// Idempotent: later calls wait for the same shutdown.
    pub async fn close(&self) {
        let _guard = self.shared.close_lock.lock().await;
        if *lock(&self.shared.closed_done) {
            return;
        }
        {
            // Taking the write lock orders this with registration: a socket registered
            // after this block sees `closing` and closes itself.
            let clients = write(&self.shared.clients);
            self.shared.closing.store(true, Ordering::Release);
            for s in clients.values() {
                let _ = s.close(
                    CloseCode::GOING_AWAY,
                    &self.shared.opts.close_reason("Going Away"),
                );
            }
        }
        self.shared.shutdown.cancel();
        let deadline = tokio::time::sleep(self.shared.opts.shutdown_timeout);
        tokio::pin!(deadline);
        loop {
            let notified = self.shared.empty.notified();
            if self.connection_count() == 0 {
                break;
            }
            tokio::select! {
                () = notified => {}
                () = &mut deadline => {
                    for s in self.clients() {
                        s.kill(CloseInfo::new(CloseCode::GOING_AWAY, "shutdown timeout"));
                    }
                    break;
                }
            }
        }
        self.shared.tasks.close();
        self.shared.tasks.wait().await;
        *lock(&self.shared.closed_done) = true;
    }

    // ---- used by the connection task ----

    pub(crate) fn register(&self, socket: &Socket) -> bool {
        let mut clients = write(&self.shared.clients);
        if self.shared.closing.load(Ordering::Acquire) {
            return false;
        }
        clients.insert(socket.id(), socket.clone());
        self.shared.stats.observe_connections(clients.len());
        true
    }

    /// Give back the per-IP count of a connection admitted from `addr`.
    pub(crate) fn unregister(&self, id: SocketId) {
        let mut clients = write(&self.shared.clients);
        clients.remove(&id);
        if clients.is_empty() {
            self.shared.empty.notify_waiters();
        }
    }

    pub(crate) fn connection_handler(&self, protocol: Option<&str>) -> Option<ConnFn> {
        match protocol {
            Some(p) => read(&self.shared.protocols)
                .iter()
                .find(|(n, _)| n == p)
                .map(|(_, f)| f.clone()),
            None => read(&self.shared.on_connection).clone(),
        }
    }
}

pub(crate) fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|p| p.into_inner())
}
pub(crate) fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|p| p.into_inner())
}
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
