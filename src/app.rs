//! The HTTP app: routes over axum's `Router`, mounted WebSocket servers, and a bounded
//! accept loop with graceful shutdown.
//!
//! Why not `axum::serve`: it gives hyper no timer (so no header-read timeout against
//! slowloris), no connection cap and no header limits. street runs its own accept loop:
//! - a `Semaphore` caps concurrent HTTP connections; a permit is taken *before*
//!   `accept()`, so over the cap the kernel backlog absorbs the burst instead of us
//!   holding file descriptors;
//! - hyper's HTTP/1 builder gets a Tokio timer, a header-read timeout and header limits;
//! - accept errors (e.g. out of file descriptors) back off instead of spinning;
//! - the listen backlog is 1024 (Tokio's `TcpListener::bind` uses 128, which overflows
//!   under a burst of a few hundred concurrent connects);
//! - on shutdown the listener closes first, WebSocket servers send 1001 and wait for
//!   their clients, SSE streams end after their queued events, then open HTTP requests
//!   get `shutdown_timeout` to finish.
//!
//! A WebSocket keeps its own permit (from [`WsOptions::max_connections`](crate::ws::WsOptions))
//! after the upgrade, when hyper's connection future has ended and the HTTP permit is
//! released, so file descriptors are bounded by the sum of the two caps.
//!
//! One address must not be able to take every slot (see SECURITY.md):
//! - each address holds at most `max_connections_per_ip` HTTP connections; one more is
//!   answered `429` and closed (a trusted proxy's own address is exempt: its clients are
//!   counted per request, by the address it names);
//! - SSE streams, which hold their connection for hours, have a cap of their own
//!   (`max_sse_streams`, below `max_connections`, so streams alone never fill the app) and
//!   a per-address cap (`max_sse_streams_per_ip`);
//! - request bodies have a size limit and a read deadline; request heads have
//!   `header_read_timeout`, which also closes idle keep-alive connections;
//! - with `proxy_protocol`, the PROXY header is read under `header_read_timeout` too.
//!
//! The client's address is resolved once per connection (PROXY protocol) and once per
//! request (trusted proxies' `Forwarded`/`X-Forwarded-For`, see [`crate::net`]), and
//! handlers see it as `ConnectInfo<SocketAddr>`.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::routing::MethodRouter;
use axum::{Extension, Router};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};
use tower::Service;

use crate::container::Container;
use crate::controller::Controller;
use crate::net::per_ip::{IpSlot, PerIp};
use crate::net::takeover::{self, FirstRequest};
use crate::net::{body::DeadlineBody, proxy_protocol, HttpCounters, HttpStats, TrustedProxies};
use crate::sse::SseRegistry;
use crate::ws::WebSocketServer;

/// Options for [`app`]. Every field has a default; start from it (or
/// [`AppOptions::from_env`]) and set what you need with the `with_*` setters, or assign
/// the public fields of a `let mut` binding.
///
/// ```
/// let opts = street::AppOptions::default().with_port(8080);
/// assert_eq!(opts.host, "0.0.0.0");
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct AppOptions {
    /// TCP port. Default 3000 (or the `PORT` environment variable via [`AppOptions::from_env`]).
    /// 0 picks a free port (see [`Server::local_addr`]).
    pub port: u16,
    /// Interface to bind. Default `0.0.0.0`.
    pub host: String,
    /// Most concurrent HTTP connections (WebSockets are counted by their own server once
    /// upgraded). Default 10 000.
    pub max_connections: usize,
    /// Time a client has to send a complete request head; slower clients are dropped
    /// (slowloris). Default 10 s.
    pub header_read_timeout: Duration,
    /// Largest request head in bytes (at least 8 KiB); larger gets 431. Default 16 KiB.
    pub max_header_bytes: usize,
    /// Most request headers; more gets 431. Default 100.
    pub max_headers: usize,
    /// Listen backlog. Default 1024.
    pub backlog: u32,
    /// How long graceful shutdown waits for open HTTP requests. Default 10 s.
    pub shutdown_timeout: Duration,
    /// Most concurrent SSE streams opened through [`SseRequest`](crate::sse::SseRequest);
    /// more get 503. Streams hold their connection, so they never get more than four
    /// fifths of `max_connections` whatever this says: the rest stays for pages, API
    /// calls and WebSocket upgrades. Default 8 000.
    pub max_sse_streams: usize,
    /// Most concurrent HTTP connections from one address (IPv6: one /64); one more gets
    /// `429 Too Many Requests` with `Retry-After` and is closed (counted in
    /// [`HttpStats::rejected_per_ip`]). A trusted proxy's own address is exempt. 0
    /// disables. Default 1 000 (NAT'd offices share one address).
    pub max_connections_per_ip: u32,
    /// Most concurrent SSE streams from one address; more get 429 (counted in
    /// [`SseStats::rejected_per_ip`](crate::sse::SseStats)). 0 disables. Default 500.
    pub max_sse_streams_per_ip: u32,
    /// Largest request body in bytes; axum's extractors answer a larger one with 413
    /// (counted in [`HttpStats::body_too_large`]). Default 2 MiB.
    pub max_body_bytes: usize,
    /// How long a handler may wait for a request body, from its first read; after that
    /// the body fails with [`BodyTimeout`](crate::net::BodyTimeout) (axum's extractors
    /// answer 400) and the connection closes (counted in [`HttpStats::body_timeout`]).
    /// Default 30 s.
    pub body_read_timeout: Duration,
    /// Reverse proxies whose `Forwarded`/`X-Forwarded-For` name the client (see
    /// [`crate::net`]). Default none: the client is the TCP peer.
    pub trusted_proxies: TrustedProxies,
    /// Every connection starts with a PROXY protocol v1 or v2 header naming the client
    /// (HAProxy `send-proxy`, AWS NLB); connections without a valid one within
    /// `header_read_timeout` are closed (counted in [`HttpStats::proxy_header_invalid`]).
    /// Turn on only when every connection comes through such a proxy, and let only the
    /// proxy reach the port: whoever connects can name any address in the header, and
    /// connections are counted per address only once it is read. Default off.
    pub proxy_protocol: bool,
    /// Serve TLS (`https://`, `wss://`) on this port with this certificate (feature
    /// `tls`; see [`crate::tls`]). The handshake must finish within
    /// `header_read_timeout`; a failed or late one closes the connection (counted in
    /// [`TlsConfig::stats`](crate::tls::TlsConfig::stats)). Default none: plain TCP.
    #[cfg(feature = "tls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
    pub tls: Option<crate::tls::TlsConfig>,
}

impl Default for AppOptions {
    fn default() -> Self {
        Self {
            port: 3000,
            host: "0.0.0.0".into(),
            max_connections: 10_000,
            header_read_timeout: Duration::from_secs(10),
            max_header_bytes: 16 * 1024,
            max_headers: 100,
            backlog: 1024,
            shutdown_timeout: Duration::from_secs(10),
            max_sse_streams: 8_000,
            max_connections_per_ip: 1_000,
            max_sse_streams_per_ip: 500,
            max_body_bytes: 2 * 1024 * 1024,
            body_read_timeout: Duration::from_secs(30),
            trusted_proxies: TrustedProxies::default(),
            proxy_protocol: false,
            #[cfg(feature = "tls")]
            tls: None,
        }
    }
}

impl AppOptions {
    /// Defaults, with `port` from the `PORT` environment variable when it is set and
    /// valid.
    pub fn from_env() -> Self {
        let port = std::env::var("PORT")
            .ok()
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or(3000);
        Self {
            port,
            ..Self::default()
        }
    }
}

/// Errors from starting or running an [`App`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AppError {
    /// The address could not be bound.
    #[error("cannot listen on {addr}: {source} (is the port in use? set PORT to another one)")]
    Bind {
        /// The address.
        addr: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// An option is out of range.
    #[error("invalid option: {0}")]
    Config(String),
}

/// Create an app (`streetApp({ port })` in the seed).
///
/// ```no_run
/// # async fn run() -> Result<(), street::app::AppError> {
/// use axum::routing::get;
/// street::app(street::AppOptions::default().with_port(3000))
///     .route("/health", get(|| async { "ok" }))
///     .listen()
///     .await
/// # }
/// ```
pub fn app(options: AppOptions) -> App {
    App {
        sse: SseRegistry::with_limits(
            options
                .max_sse_streams
                .min(options.max_connections - options.max_connections / 5),
            options.max_sse_streams_per_ip,
        ),
        http: Arc::default(),
        opts: options,
        router: Router::new(),
        servers: Vec::new(),
        container: Container::global().clone(),
    }
}

/// An HTTP app under construction. See [`app`].
#[derive(Debug)]
#[must_use = "an app does nothing until you call `listen` or `bind`"]
pub struct App {
    opts: AppOptions,
    router: Router,
    servers: Vec<WebSocketServer>,
    container: Container,
    sse: SseRegistry,
    http: Arc<HttpCounters>,
}

impl App {
    /// What the app's HTTP layer refused so far, by reason (per-IP cap, PROXY header,
    /// request bodies). A handle: call it again for fresh numbers.
    pub fn http_stats(&self) -> HttpStatsHandle {
        HttpStatsHandle(self.http.clone())
    }

    /// Mount a [`Controller`]: its routes under its prefix.
    ///
    /// # Panics
    /// As axum, on conflicting routes.
    #[track_caller]
    pub fn controller(mut self, controller: Controller) -> Self {
        self.router = self.router.merge(controller.into_router());
        self
    }

    /// The app's SSE streams: counters, and the cap from
    /// [`AppOptions::max_sse_streams`]. Streams opened with the
    /// [`SseRequest`](crate::sse::SseRequest) extractor are tracked here.
    pub fn sse_registry(&self) -> &SseRegistry {
        &self.sse
    }

    /// Add a route (axum's `Router::route`).
    ///
    /// # Panics
    /// As axum: on an invalid or conflicting path (a wiring mistake, found at startup).
    #[track_caller]
    pub fn route(mut self, path: &str, method_router: MethodRouter) -> Self {
        self.router = self.router.route(path, method_router);
        self
    }

    /// Merge an axum `Router` (e.g. a group of routes built elsewhere).
    ///
    /// # Panics
    /// As axum's `Router::merge`, on overlapping routes.
    #[track_caller]
    pub fn merge(mut self, router: Router) -> Self {
        self.router = self.router.merge(router);
        self
    }

    /// Nest an axum `Router` under a path prefix.
    ///
    /// # Panics
    /// As axum's `Router::nest`, on an invalid prefix.
    #[track_caller]
    pub fn nest(mut self, prefix: &str, router: Router) -> Self {
        self.router = self.router.nest(prefix, router);
        self
    }

    /// Serve a WebSocket server on this app's port at its `path`. On shutdown the app
    /// closes it (1001) before finishing HTTP requests.
    ///
    /// # Panics
    /// If another route already uses the same path.
    #[track_caller]
    pub fn websocket(mut self, wss: &WebSocketServer) -> Self {
        self.router = self.router.route(&wss.options().path, wss.route());
        self.servers.push(wss.clone());
        self
    }

    /// Wrap the routes added so far in a tower layer (axum's `Router::layer`): tracing,
    /// CORS, compression, your auth middleware. The WebSocket routes added so far are
    /// wrapped too, so request extensions your middleware sets reach the auth hook and
    /// the connection handler ([`ConnectRequest::extensions`](crate::ws::ConnectRequest::extensions)).
    /// Routes added later are not wrapped, as in axum.
    ///
    /// ```
    /// let app = street::app(street::AppOptions::default())
    ///     .route("/", axum::routing::get(|| async { "hi" }))
    ///     .layer(axum::middleware::from_fn(
    ///         |req: axum::extract::Request, next: axum::middleware::Next| async move {
    ///             let mut res = next.run(req).await;
    ///             res.headers_mut().insert("x-frame-options", http::HeaderValue::from_static("DENY"));
    ///             res
    ///         },
    ///     ));
    /// ```
    pub fn layer<L>(mut self, layer: L) -> Self
    where
        L: tower::Layer<axum::routing::Route> + Clone + Send + Sync + 'static,
        L::Service: Service<axum::extract::Request> + Clone + Send + Sync + 'static,
        <L::Service as Service<axum::extract::Request>>::Response:
            axum::response::IntoResponse + 'static,
        <L::Service as Service<axum::extract::Request>>::Error: Into<Infallible> + 'static,
        <L::Service as Service<axum::extract::Request>>::Future: Send + 'static,
    {
        self.router = self.router.layer(layer);
        self
    }

    /// The app as a plain axum `Router`, to serve with your own server or nest in a
    /// bigger router. Its routes, controllers, WebSocket routes and the context street's
    /// extractors need ([`Inject`](crate::container::Inject),
    /// [`SseRequest`](crate::sse::SseRequest) with this app's caps) come along, and of the
    /// options: `max_body_bytes` (axum's `DefaultBodyLimit`), `trusted_proxies` (its
    /// [layer](TrustedProxies::layer)), `max_sse_streams` and `max_sse_streams_per_ip`.
    ///
    /// What street's listener does is then yours, and these options do nothing:
    /// `port`, `host`, `backlog`, `max_connections`, `max_connections_per_ip` (HTTP
    /// connections), `header_read_timeout`, `max_header_bytes`, `max_headers`,
    /// `body_read_timeout`, `shutdown_timeout`, `proxy_protocol` and `tls`. Serve with
    /// `into_make_service_with_connect_info::<SocketAddr>()`, and on shutdown call
    /// [`WebSocketServer::close`] on each server you mounted and
    /// [`SseRegistry::close_all`] (see [`WebSocketServer::route`]).
    ///
    /// ```
    /// let wss = street::ws::WebSocketServer::new(Default::default());
    /// let router: axum::Router = street::app(street::AppOptions::default())
    ///     .websocket(&wss)
    ///     .into_router();
    /// let host = axum::Router::new().nest("/realtime", router);
    /// ```
    pub fn into_router(self) -> Router {
        self.router
            .layer(Extension(AppContext {
                container: self.container,
                sse: self.sse,
            }))
            .layer(axum::extract::DefaultBodyLimit::max(
                self.opts.max_body_bytes,
            ))
            .layer(self.opts.trusted_proxies.layer())
    }

    /// Use this container for [`Inject`](crate::container::Inject) in handlers instead of
    /// the global one.
    pub fn with_container(mut self, container: Container) -> Self {
        self.container = container;
        self
    }

    /// The app's service container.
    pub fn container(&self) -> &Container {
        &self.container
    }

    /// Bind the listening socket (so the port is known before serving).
    ///
    /// # Errors
    /// [`AppError::Bind`] when the address is unavailable; [`AppError::Config`] for
    /// invalid options.
    pub async fn bind(self) -> Result<Server, AppError> {
        if self.opts.max_connections == 0 {
            return Err(AppError::Config(
                "max_connections must be at least 1".into(),
            ));
        }
        let addr_str = format!("{}:{}", self.opts.host, self.opts.port);
        let bind_err = |source| AppError::Bind {
            addr: addr_str.clone(),
            source,
        };
        let addr: SocketAddr = match tokio::net::lookup_host(&addr_str).await {
            Ok(mut it) => it.next().ok_or_else(|| {
                bind_err(std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no address",
                ))
            })?,
            Err(e) => return Err(bind_err(e)),
        };
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }
        .map_err(bind_err)?;
        socket.set_reuseaddr(true).map_err(bind_err)?;
        socket.bind(addr).map_err(bind_err)?;
        let listener = socket.listen(self.opts.backlog).map_err(bind_err)?;
        let local_addr = listener.local_addr().map_err(bind_err)?;
        let router = self
            .router
            // one extension per request for both (each insert is an allocation)
            .layer(Extension(AppContext {
                container: self.container.clone(),
                sse: self.sse.clone(),
            }));
        Ok(Server {
            listener,
            local_addr,
            router,
            servers: self.servers,
            sse: self.sse,
            http: self.http,
            opts: self.opts,
        })
    }

    /// Bind and serve until SIGTERM or SIGINT, then shut down gracefully.
    ///
    /// # Errors
    /// As [`App::bind`].
    pub async fn listen(self) -> Result<(), AppError> {
        let server = self.bind().await?;
        tracing::info!(addr = %server.local_addr(), "listening");
        server.serve(shutdown_signal()).await;
        Ok(())
    }
}

/// What every request of an app carries for street's extractors (`Inject`, `SseRequest`).
#[derive(Debug, Clone)]
pub(crate) struct AppContext {
    pub(crate) container: Container,
    pub(crate) sse: SseRegistry,
}

/// A handle on an app's HTTP counters (see [`App::http_stats`]).
#[derive(Debug, Clone)]
pub struct HttpStatsHandle(Arc<HttpCounters>);

impl HttpStatsHandle {
    /// The counters now.
    pub fn get(&self) -> HttpStats {
        self.0.snapshot()
    }
}

/// A bound app, ready to serve.
#[derive(Debug)]
pub struct Server {
    listener: TcpListener,
    local_addr: SocketAddr,
    router: Router,
    servers: Vec<WebSocketServer>,
    sse: SseRegistry,
    http: Arc<HttpCounters>,
    opts: AppOptions,
}

/// What every connection task of a server shares.
struct ConnContext {
    /// Every connection's task (and every taken-over event stream's), for shutdown.
    tasks: tokio_util::task::TaskTracker,
    router: Router,
    per_ip: Arc<PerIp>,
    counters: Arc<HttpCounters>,
    trusted: TrustedProxies,
    proxy_protocol: bool,
    header_timeout: Duration,
    /// A request head's bounds (hyper's, and the first head's that street reads itself:
    /// see [`takeover`]).
    max_head: usize,
    max_headers: usize,
    body_timeout: Duration,
    max_body: usize,
    /// Connections being answered 429 at once (each for at most a second).
    refusals: Arc<Semaphore>,
    #[cfg(feature = "tls")]
    tls: Option<crate::tls::TlsConfig>,
}

/// A server running in the background (see [`Server::spawn`]).
#[derive(Debug)]
pub struct ServerHandle {
    local_addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    done: tokio::task::JoinHandle<()>,
}

impl ServerHandle {
    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Shut down gracefully and wait until done.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        let _ = (&mut self.done).await;
    }
}

impl Server {
    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serve in a background task; stop it with [`ServerHandle::shutdown`].
    pub fn spawn(self) -> ServerHandle {
        let (tx, rx) = oneshot::channel::<()>();
        let local_addr = self.local_addr;
        let done = tokio::spawn(self.serve(async move {
            let _ = rx.await;
        }));
        ServerHandle {
            local_addr,
            stop: Some(tx),
            done,
        }
    }

    /// Serve until `shutdown` completes, then shut down gracefully.
    pub async fn serve(self, shutdown: impl Future<Output = ()> + Send) {
        let Server {
            listener,
            router,
            servers,
            sse,
            http,
            opts,
            ..
        } = self;
        // hyper-util's GracefulShutdown does not accept connections with upgrades, so do
        // what it does: a signal to every connection, and a tracker to wait for them.
        let stop_http = tokio_util::sync::CancellationToken::new();
        let http_tasks = tokio_util::task::TaskTracker::new();
        let ctx = Arc::new(ConnContext {
            tasks: http_tasks.clone(),
            router,
            per_ip: PerIp::new(opts.max_connections_per_ip, 0),
            counters: http,
            trusted: opts.trusted_proxies.clone(),
            proxy_protocol: opts.proxy_protocol,
            header_timeout: opts.header_read_timeout,
            max_head: opts.max_header_bytes.max(8192),
            max_headers: opts.max_headers,
            body_timeout: opts.body_read_timeout,
            max_body: opts.max_body_bytes,
            refusals: Arc::new(Semaphore::new(MAX_REFUSING)),
            #[cfg(feature = "tls")]
            tls: opts.tls.clone(),
        });
        let permits = Arc::new(Semaphore::new(
            opts.max_connections.min(Semaphore::MAX_PERMITS),
        ));
        let mut builder = http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(opts.header_read_timeout)
            .max_buf_size(opts.max_header_bytes.max(8192))
            .max_headers(opts.max_headers)
            .keep_alive(true);
        tokio::pin!(shutdown);
        let mut backoff = Duration::from_millis(10);

        loop {
            let permit = tokio::select! {
                () = &mut shutdown => break,
                p = permits.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => break,
                },
            };
            let (stream, peer) = tokio::select! {
                () = &mut shutdown => break,
                r = listener.accept() => match r {
                    Ok(x) => { backoff = Duration::from_millis(10); x }
                    Err(e) if is_per_connection(&e) => continue,
                    Err(e) => {
                        // e.g. EMFILE: back off rather than spin; connections that are
                        // already open keep being served meanwhile.
                        tracing::warn!(error = %e, delay_ms = backoff.as_millis() as u64, "accept failed");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(1));
                        continue;
                    }
                },
            };
            let _ = stream.set_nodelay(true);
            let ctx = ctx.clone();
            let builder = builder.clone();
            let stop = stop_http.clone();
            http_tasks.spawn(serve_connection(ctx, builder, stream, peer, stop, permit));
        }

        drop(listener);
        tracing::info!("shutting down");
        // WebSockets first: close 1001 and wait for their handshakes (each server has its
        // own deadline).
        futures_util::future::join_all(servers.iter().map(WebSocketServer::close)).await;
        // SSE streams end after their queued events (browsers reconnect by themselves),
        // so the HTTP drain below is not held up by them.
        sse.close_all();
        stop_http.cancel();
        http_tasks.close();
        if tokio::time::timeout(opts.shutdown_timeout, http_tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("HTTP connections still open after the shutdown timeout; dropping them");
        }
    }
}

/// One HTTP connection: the PROXY header, the per-IP gate, then hyper.
async fn serve_connection(
    ctx: Arc<ConnContext>,
    builder: http1::Builder,
    mut stream: TcpStream,
    tcp_peer: SocketAddr,
    stop: tokio_util::sync::CancellationToken,
    permit: OwnedSemaphorePermit,
) {
    let peer = if ctx.proxy_protocol {
        match Box::pin(proxy_protocol::read_header(&mut stream, ctx.header_timeout)).await {
            Ok(named) => named.unwrap_or(tcp_peer),
            Err(e) => {
                ctx.counters.proxy_header_invalid.inc();
                tracing::debug!(error = %e, peer = %tcp_peer, "closing connection");
                return;
            }
        }
    } else {
        tcp_peer
    };
    // A trusted proxy carries many clients: they are counted per request, by the
    // address it names (SSE, WebSocket), not here.
    let slot = if ctx.trusted.is_trusted(peer.ip()) {
        IpSlot::none()
    } else {
        match ctx.per_ip.admit(peer.ip(), std::time::Instant::now()) {
            Ok(slot) => slot,
            Err(_) => {
                ctx.counters.rejected_per_ip.inc();
                tracing::debug!(%peer, "too many connections from this address: 429");
                // A refusal must not take one of the app's slots (an address over its cap
                // could otherwise fill them with connections being refused). Refusals have
                // a small pool of their own; past it the connection is just closed.
                drop(permit);
                // On a TLS port a plain-text 429 would only be a handshake error to the
                // client: close instead.
                #[cfg(feature = "tls")]
                if ctx.tls.is_some() {
                    return;
                }
                if let Ok(_refusing) = ctx.refusals.clone().try_acquire_owned() {
                    // boxed: its drain buffer would otherwise be in every connection's task
                    Box::pin(refuse_connection(stream)).await;
                }
                return;
            }
        }
    };
    #[cfg(feature = "tls")]
    if let Some(tls) = &ctx.tls {
        // Bounded like a request head: a client that stalls its handshake holds its
        // slot for `header_read_timeout` at most.
        let Some(stream) = Box::pin(tls.accept(stream, ctx.header_timeout, peer)).await else {
            return;
        };
        return Box::pin(serve_http(ctx, builder, stream, peer, stop, (permit, slot))).await;
    }
    serve_http(ctx, builder, stream, peer, stop, (permit, slot)).await;
}

/// HTTP/1 over `io` (plain TCP, or TLS), until the client is done or the server stops.
async fn serve_http<IO>(
    ctx: Arc<ConnContext>,
    builder: http1::Builder,
    io: IO,
    peer: SocketAddr,
    stop: tokio_util::sync::CancellationToken,
    held: (OwnedSemaphorePermit, IpSlot),
) where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    // An event stream as the first request is served without hyper (see `takeover`).
    // What only runs once (reading the head, routing, hyper's whole connection) is
    // boxed: a task's size is that of its largest state, and a taken-over stream's task
    // lives as long as the stream.
    let first = Box::pin(takeover::first_request(
        io,
        ctx.header_timeout,
        ctx.max_head,
        ctx.max_headers,
    ))
    .await;
    match first {
        FirstRequest::EventStream { io, request } => {
            let request = request.map(|()| axum::body::Body::empty());
            let response = Box::pin(route(&ctx, peer, request)).await;
            let body = Box::pin(takeover::respond(io, response, ctx.body_timeout)).await;
            if let Some(body) = body {
                // The body (an event stream) goes on in a task of its own, sized for that
                // alone (this one's size is its largest state's), holding the
                // connection's slots.
                ctx.tasks.spawn(async move {
                    body.run().await;
                    drop(held);
                });
            }
        }
        FirstRequest::Other(io) => {
            let (permit, _slot) = held;
            Box::pin(serve_hyper(ctx, builder, io, peer, stop, permit)).await;
        }
        FirstRequest::Gone => {}
    }
}

/// HTTP/1 by hyper over `io`, until the client is done or the server stops.
async fn serve_hyper<IO>(
    ctx: Arc<ConnContext>,
    builder: http1::Builder,
    io: IO,
    peer: SocketAddr,
    stop: tokio_util::sync::CancellationToken,
    permit: OwnedSemaphorePermit,
) where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc_ctx = ctx.clone();
    let svc = hyper::service::service_fn(move |req: http::Request<Incoming>| {
        let ctx = svc_ctx.clone();
        async move {
            let req = req.map(|body| {
                let timed =
                    DeadlineBody::new(body, ctx.body_timeout, ctx.max_body, ctx.counters.clone());
                axum::body::Body::new(http_body_util::Limited::new(timed, ctx.max_body))
            });
            Ok::<_, Infallible>(route(&ctx, peer, req).await)
        }
    });
    let conn = builder
        .serve_connection(TokioIo::new(io), svc)
        .with_upgrades();
    tokio::pin!(conn);
    let res = tokio::select! {
        r = conn.as_mut() => r,
        () = stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = res {
        tracing::debug!(error = %e, %peer, "http connection ended with error");
    }
    drop(permit);
}

/// Run the app's router on a request from `peer` (the client a trusted proxy names, when
/// it is one).
async fn route(
    ctx: &ConnContext,
    peer: SocketAddr,
    mut req: http::Request<axum::body::Body>,
) -> http::Response<axum::body::Body> {
    let client = if ctx.trusted.is_empty() {
        peer
    } else {
        ctx.trusted.client_addr(peer, req.headers())
    };
    req.extensions_mut().insert(ConnectInfo(client));
    let mut r = ctx.router.clone();
    r.call(req).await.unwrap_or_else(|e| match e {})
}

/// Most connections answered with a 429 at the same time (see [`refuse_connection`]).
const MAX_REFUSING: usize = 256;

/// Answer a connection over its address's cap with a 429 and close it: the response is
/// written (bounded in time), then what the client sent is read and dropped for a moment,
/// so closing with unread bytes does not reset the connection before the client reads it.
async fn refuse_connection(mut stream: TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const BODY: &str = "too many connections from this address";
    let response = format!(
        "HTTP/1.1 429 Too Many Requests\r\ncontent-type: text/plain\r\nretry-after: 5\r\n\
         connection: close\r\ncontent-length: {}\r\n\r\n{BODY}",
        BODY.len()
    );
    let limit = Duration::from_secs(1);
    let _ = tokio::time::timeout(limit, async {
        stream.write_all(response.as_bytes()).await?;
        stream.shutdown().await?;
        let mut sink = [0u8; 4096];
        let mut drained = 0;
        while drained < 64 * 1024 {
            match stream.read(&mut sink).await? {
                0 => break,
                n => drained += n,
            }
        }
        Ok::<_, std::io::Error>(())
    })
    .await;
}

pub(crate) fn is_per_connection(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionAborted | ConnectionReset | ConnectionRefused | Interrupted
    )
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
