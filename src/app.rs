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
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::{oneshot, Semaphore};
use tower::Service;

use crate::container::Container;
use crate::controller::Controller;
use crate::sse::SseRegistry;
use crate::ws::WebSocketServer;

/// Options for [`app`]. Every field has a default; use `..Default::default()`.
///
/// ```
/// let opts = street::AppOptions { port: 8080, ..Default::default() };
/// assert_eq!(opts.host, "0.0.0.0");
/// ```
#[derive(Debug, Clone)]
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
    /// more get 503. Default 10 000.
    pub max_sse_streams: usize,
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
            max_sse_streams: 10_000,
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
/// street::app(street::AppOptions { port: 3000, ..Default::default() })
///     .route("/health", get(|| async { "ok" }))
///     .listen()
///     .await
/// # }
/// ```
pub fn app(options: AppOptions) -> App {
    App {
        sse: SseRegistry::new(options.max_sse_streams),
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
}

impl App {
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
        let path = wss.options().path.clone();
        let w = wss.clone();
        self.router = self.router.route(
            &path,
            axum::routing::any(move |req: axum::extract::Request| {
                let w = w.clone();
                async move { crate::ws::handle_upgrade(w, req).await }
            }),
        );
        self.servers.push(wss.clone());
        self
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

/// A bound app, ready to serve.
#[derive(Debug)]
pub struct Server {
    listener: TcpListener,
    local_addr: SocketAddr,
    router: Router,
    servers: Vec<WebSocketServer>,
    sse: SseRegistry,
    opts: AppOptions,
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
            opts,
            ..
        } = self;
        let permits = Arc::new(Semaphore::new(
            opts.max_connections.min(Semaphore::MAX_PERMITS),
        ));
        // hyper-util's GracefulShutdown does not accept connections with upgrades, so do
        // what it does: a signal to every connection, and a tracker to wait for them.
        let stop_http = tokio_util::sync::CancellationToken::new();
        let http_tasks = tokio_util::task::TaskTracker::new();
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
            let router = router.clone();
            let svc = hyper::service::service_fn(move |mut req: http::Request<Incoming>| {
                req.extensions_mut().insert(ConnectInfo(peer));
                let mut r = router.clone();
                async move { Ok::<_, Infallible>(r.call(req).await.unwrap_or_else(|e| match e {})) }
            });
            let conn = builder
                .serve_connection(TokioIo::new(stream), svc)
                .with_upgrades();
            let stop = stop_http.clone();
            http_tasks.spawn(async move {
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
            });
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

fn is_per_connection(e: &std::io::Error) -> bool {
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
