//! The HTTP side of a WebSocket connection: handshake validation, the shutdown, origin,
//! capacity and auth gates (all before `101 Switching Protocols`), subprotocol
//! negotiation, and handing the upgraded stream to the connection task.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use axum::body::Body;
use axum::extract::{ConnectInfo, FromRequestParts};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tracing::Instrument;

use super::close::{CloseCode, CloseInfo};
use super::connection::{self, Conn, Mode};
use super::deflate::{self, PerMessage};
use super::handler::run_dispatch;
use super::origin::{self, OriginVerdict};
use super::proto;
use super::server::{AuthRejection, CapacityPolicy, WebSocketServer};
use super::socket::{Socket, SocketId};
use super::transport::{linger, write_all, Io, Transport};
use crate::net::per_ip::{IpRefusal, IpSlot};
use crate::net::takeover::Rewind;

/// The upgrade request as the auth hook and the connection handler see it: method, URI,
/// headers, the peer's address, the route's path parameters (`/ws/{room}`) and the
/// request extensions set by the host app's middleware. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ConnectRequest {
    inner: Arc<ReqInner>,
}

#[derive(Debug)]
struct ReqInner {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    remote_addr: Option<SocketAddr>,
    params: Vec<(Box<str>, Box<str>)>,
    extensions: http::Extensions,
}

impl ConnectRequest {
    pub(crate) fn new(
        method: Method,
        uri: Uri,
        headers: HeaderMap,
        remote_addr: Option<SocketAddr>,
        params: Vec<(Box<str>, Box<str>)>,
        extensions: http::Extensions,
    ) -> Self {
        Self {
            inner: Arc::new(ReqInner {
                method,
                uri,
                headers,
                remote_addr,
                params,
                extensions,
            }),
        }
    }

    /// The request method (always GET for a valid upgrade).
    pub fn method(&self) -> &Method {
        &self.inner.method
    }
    /// The request URI, with its query string.
    pub fn uri(&self) -> &Uri {
        &self.inner.uri
    }
    /// The request headers.
    pub fn headers(&self) -> &HeaderMap {
        &self.inner.headers
    }
    /// The client's address: the `ConnectInfo<SocketAddr>` the server put on the request
    /// (street's own listener, or `into_make_service_with_connect_info` in your
    /// `axum::serve`; behind a proxy, as resolved by
    /// [`TrustedProxies`](crate::net::TrustedProxies)). `None` without one, and then no
    /// per-address limit applies.
    pub fn remote_addr(&self) -> Option<SocketAddr> {
        self.inner.remote_addr
    }
    /// A path parameter of the route the server is mounted on, percent-decoded: with
    /// `.route("/ws/{room}", wss.route())`, `path_param("room")`.
    pub fn path_param(&self, name: &str) -> Option<&str> {
        self.inner
            .params
            .iter()
            .find(|(k, _)| &**k == name)
            .map(|(_, v)| &**v)
    }
    /// Every path parameter, in route order.
    pub fn path_params(&self) -> impl Iterator<Item = (&str, &str)> {
        self.inner.params.iter().map(|(k, v)| (&**k, &**v))
    }
    /// The request's extensions: what middleware put there (an authenticated user from
    /// your auth layer, a request id), besides axum's own.
    ///
    /// ```no_run
    /// # fn f(req: street::ws::ConnectRequest) {
    /// #[derive(Clone)]
    /// struct User(String);
    /// let user: Option<&User> = req.extensions().get::<User>();
    /// # }
    /// ```
    pub fn extensions(&self) -> &http::Extensions {
        &self.inner.extensions
    }
    /// The first value of query parameter `name`, percent-decoded.
    ///
    /// ```
    /// # use street::ws::ConnectRequest;
    /// let req = ConnectRequest::for_test("/ws?token=a%20b&x=1");
    /// assert_eq!(req.query_param("token").as_deref(), Some("a b"));
    /// assert_eq!(req.query_param("nope"), None);
    /// ```
    pub fn query_param(&self, name: &str) -> Option<String> {
        let q = self.inner.uri.query()?;
        form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    }

    /// A request for `uri` with no headers (for tests and examples).
    pub fn for_test(uri: &str) -> Self {
        Self::new(
            Method::GET,
            uri.parse().unwrap_or_default(),
            HeaderMap::new(),
            None,
            Vec::new(),
            http::Extensions::new(),
        )
    }
}

const WS_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

fn header_has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.to_str()
            .map(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
            .unwrap_or(false)
    })
}

/// A refusal the client may retry after 5 seconds (503 or 429).
fn retry_later(status: StatusCode, body: &'static str) -> Response {
    (
        status,
        [(header::RETRY_AFTER, "5"), (header::CONNECTION, "close")],
        body,
    )
        .into_response()
}

fn plain(status: StatusCode, body: &'static str) -> Response {
    (status, [(header::CONNECTION, "close")], body).into_response()
}

/// Why a request is not a valid WebSocket handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HandshakeError {
    NotGet,
    NotUpgrade,
    Version,
    Key,
}

impl IntoResponse for HandshakeError {
    fn into_response(self) -> Response {
        match self {
            Self::NotGet => plain(
                StatusCode::METHOD_NOT_ALLOWED,
                "WebSocket upgrade requires GET",
            ),
            Self::NotUpgrade => (
                StatusCode::UPGRADE_REQUIRED,
                [
                    (header::UPGRADE, "websocket"),
                    (header::CONNECTION, "Upgrade"),
                ],
                "this endpoint speaks WebSocket",
            )
                .into_response(),
            Self::Version => (
                StatusCode::UPGRADE_REQUIRED,
                [(header::SEC_WEBSOCKET_VERSION, "13")],
                "unsupported WebSocket version",
            )
                .into_response(),
            Self::Key => plain(StatusCode::BAD_REQUEST, "invalid Sec-WebSocket-Key"),
        }
    }
}

/// Validate the handshake headers; returns the `Sec-WebSocket-Accept` value.
fn validate_handshake(method: &Method, headers: &HeaderMap) -> Result<String, HandshakeError> {
    if method != Method::GET {
        return Err(HandshakeError::NotGet);
    }
    if !header_has_token(headers, header::UPGRADE, "websocket")
        || !header_has_token(headers, header::CONNECTION, "upgrade")
    {
        return Err(HandshakeError::NotUpgrade);
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_none_or(|v| v.as_bytes() != b"13")
    {
        return Err(HandshakeError::Version);
    }
    let key = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .map(HeaderValue::as_bytes)
        .unwrap_or_default();
    let decoded_ok = base64::engine::general_purpose::STANDARD
        .decode(key)
        .is_ok_and(|k| k.len() == 16);
    if !decoded_ok {
        return Err(HandshakeError::Key);
    }
    Ok(accept_key(key))
}

/// The handshake checks, for the fuzz target.
pub(crate) fn check_for_fuzz(method: &Method, headers: &HeaderMap) {
    let _ = validate_handshake(method, headers);
}

/// `Sec-WebSocket-Accept` for a key (RFC 6455 §4.2.2).
pub(crate) fn accept_key(key: &[u8]) -> String {
    let mut sha = sha1_smol::Sha1::new();
    sha.update(key);
    sha.update(WS_GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(sha.digest().bytes())
}

/// The axum handler behind a mounted [`WebSocketServer`] (see [`WebSocketServer::route`]).
pub(crate) async fn handle(wss: WebSocketServer, req: Request<Body>) -> Response {
    let (mut parts, _body) = req.into_parts();
    let shared = &wss.shared;
    let stats = &shared.stats;

    let accept = match validate_handshake(&parts.method, &parts.headers) {
        Ok(a) => a,
        Err(e) => {
            stats.rejected_handshake.inc();
            return e.into_response();
        }
    };
    if wss.is_closing() {
        stats.rejected_shutdown.inc();
        return retry_later(StatusCode::SERVICE_UNAVAILABLE, "server is shutting down");
    }
    match origin::check(
        parts.headers.get(header::ORIGIN),
        parts.headers.get(header::HOST),
        &shared.allowed,
    ) {
        OriginVerdict::Allowed => {}
        OriginVerdict::Malformed => {
            stats.rejected_origin.inc();
            return plain(StatusCode::FORBIDDEN, "malformed Origin");
        }
        OriginVerdict::Foreign => {
            stats.rejected_origin.inc();
            return plain(StatusCode::FORBIDDEN, "Origin not allowed");
        }
    }

    let remote = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    // Per-IP connection cap and handshake rate; the slot is held for the connection's
    // life and given back when the task ends, however it ends.
    let ip_slot = match remote {
        Some(addr) => match shared.per_ip.admit(addr.ip(), std::time::Instant::now()) {
            Ok(slot) => slot,
            Err(why) => {
                stats.rejected_ip.inc();
                let (status, body) = match why {
                    IpRefusal::TooMany => (
                        StatusCode::TOO_MANY_REQUESTS,
                        "too many connections from this address",
                    ),
                    IpRefusal::TooFast => (
                        StatusCode::TOO_MANY_REQUESTS,
                        "too many connection attempts from this address",
                    ),
                    IpRefusal::TableFull => (StatusCode::SERVICE_UNAVAILABLE, "server busy"),
                };
                return retry_later(status, body);
            }
        },
        None => IpSlot::none(),
    };

    // Capacity first: an over-capacity client costs no auth work.
    let permit: Option<OwnedSemaphorePermit> = shared.permits.clone().try_acquire_owned().ok();
    if permit.is_none() && shared.opts.capacity_policy == CapacityPolicy::Http503 {
        stats.rejected_capacity.inc();
        return retry_later(StatusCode::SERVICE_UNAVAILABLE, "Server at capacity");
    }

    let on_upgrade = parts.extensions.remove::<hyper::upgrade::OnUpgrade>();
    // The route's parameters (axum keeps them in a private extension).
    let params = match axum::extract::RawPathParams::from_request_parts(&mut parts, &()).await {
        Ok(p) => p.iter().map(|(k, v)| (k.into(), v.into())).collect(),
        // mounted on a route without parameters
        Err(axum::extract::rejection::RawPathParamsRejection::MissingPathParams(_)) => Vec::new(),
        // a parameter that is not UTF-8 once decoded (`/ws/%FF`): refused, rather than
        // seen as absent (and defaulted) by the handler
        Err(_) => {
            stats.rejected_handshake.inc();
            return plain(StatusCode::BAD_REQUEST, "invalid path parameter");
        }
    };
    let request = ConnectRequest::new(
        std::mem::take(&mut parts.method),
        std::mem::take(&mut parts.uri),
        std::mem::take(&mut parts.headers),
        remote,
        params,
        std::mem::take(&mut parts.extensions),
    );
    let headers = request.headers();

    let mut data = http::Extensions::new();
    if permit.is_some() {
        let auth = super::server::read(&shared.auth).clone();
        if let Some(auth) = auth {
            // A panicking hook is an auth failure (401), never a dropped connection.
            let fut = std::panic::AssertUnwindSafe(async { auth(request.clone()).await });
            let verdict = futures_util::FutureExt::catch_unwind(fut)
                .await
                .unwrap_or_else(|p| Err(AuthRejection::new(super::handler::panic_message(&p))));
            match verdict {
                Ok(ext) => data = ext,
                Err(rej) => {
                    stats.rejected_auth.inc();
                    tracing::debug!(reason = %rej, "auth hook rejected upgrade");
                    // The reason goes to the log, not to the client (it may be internal).
                    return plain(StatusCode::UNAUTHORIZED, "Unauthorized");
                }
            }
        }
    }

    // Subprotocol: the first one the client offers that we serve.
    let protocol = {
        let served = super::server::read(&shared.protocols);
        headers
            .get_all(header::SEC_WEBSOCKET_PROTOCOL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .find(|p| served.iter().any(|(n, _)| n == p))
            .map(str::to_owned)
    };

    let Some(on_upgrade) = on_upgrade else {
        // Not served by a hyper connection with upgrades enabled.
        return plain(StatusCode::INTERNAL_SERVER_ERROR, "upgrade not available");
    };

    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(v) = HeaderValue::from_str(&accept) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    if let Some(p) = &protocol {
        if let Ok(v) = HeaderValue::from_str(p) {
            h.insert(header::SEC_WEBSOCKET_PROTOCOL, v);
        }
    }
    // permessage-deflate: the first acceptable offer, when compression is on (not for a
    // connection over capacity: it is closed with 1013 at once and needs no compressor)
    let compression = shared
        .opts
        .compression
        .as_ref()
        .filter(|_| permit.is_some());
    let deflate = compression.and_then(|cfg| {
        let offers = request.headers().get_all(header::SEC_WEBSOCKET_EXTENSIONS);
        deflate::negotiate(offers.iter(), cfg)
    });
    let deflate = deflate.map(|(agreed, answer)| {
        h.insert(header::SEC_WEBSOCKET_EXTENSIONS, answer);
        shared.stats.compressed_connections.inc();
        PerMessage::new(&agreed)
    });

    let task_wss = wss.clone();
    // Everything the connection logs — street's events and the app's handlers, which run
    // inside this task — carries the connection id.
    // (Only when a subscriber wants the span: a disabled one would still cost 72 bytes in
    // every connection's task.)
    // The socket is made here, not in the task: the task then carries one pointer instead
    // of the protocol, the auth data and the id until the upgrade completes.
    let socket = Socket::new(
        SocketId::new(),
        wss.shared.stats.clone(),
        super::socket::SocketLimits::of(&wss.shared.opts),
        request.remote_addr(),
        protocol.map(String::into_boxed_str),
        data,
    );
    let span = tracing::info_span!("ws", conn = %socket.id());
    let start = Box::new(Start {
        wss: task_wss,
        socket,
        on_upgrade: Some(on_upgrade),
        admission: Admission {
            _ip: ip_slot,
            permit,
        },
        request,
        deflate,
    });
    let task = serve_upgraded(start);
    if span.is_disabled() {
        wss.shared.tasks.spawn(task);
    } else {
        wss.shared.tasks.spawn(task.instrument(span));
    }
    resp
}

/// The stream hyper hands over after `101 Switching Protocols`.
enum Taken {
    /// A plain TCP connection (street's listener, or the host's `axum::serve`): street
    /// frames it itself on the fast path (see `transport.rs`), starting with the bytes
    /// hyper read past the request head.
    Tcp(Box<Accepted<TcpStream>>),
    /// Anything else (TLS, a Unix socket, the host's own hyper stack), through its
    /// `AsyncRead + AsyncWrite`; `Upgraded` replays what hyper read past the head itself.
    Other(Box<Accepted<Io<TokioIo<hyper::upgrade::Upgraded>>>>),
}

/// Wait for hyper to hand over the connection.
async fn take_stream(mut start: Box<Start>) -> Option<Taken> {
    let on_upgrade = start.on_upgrade.take()?;
    let upgraded = match on_upgrade.await {
        Ok(u) => u,
        Err(e) => {
            tracing::debug!(error = %e, "upgrade failed");
            return None;
        }
    };
    // A TCP stream as it came (`axum::serve`), or behind what street's own server read
    // of its first request (see `net::takeover`): either way the TCP fast path.
    let (stream, read_buf) = match upgraded.downcast::<TokioIo<TcpStream>>() {
        Ok(parts) => (parts.io.into_inner(), parts.read_buf),
        Err(upgraded) => match upgraded.downcast::<TokioIo<Rewind<TcpStream>>>() {
            Ok(parts) => {
                let (rest, stream) = parts.io.into_inner().into_parts();
                // hyper's unread bytes come first, then any it had not read yet
                let read_buf = if rest.is_empty() {
                    parts.read_buf
                } else {
                    [parts.read_buf, rest].concat().into()
                };
                (stream, read_buf)
            }
            Err(upgraded) => {
                return Some(Taken::Other(
                    (*start).accepted(Io(TokioIo::new(upgraded)), Bytes::new()),
                ))
            }
        },
    };
    if let Some(n) = start.wss.shared.opts.send_buffer_bytes {
        if let Err(e) = socket2::SockRef::from(&stream).set_send_buffer_size(n) {
            tracing::debug!(error = %e, "cannot set SO_SNDBUF");
        }
    }
    Some(Taken::Tcp((*start).accepted(stream, read_buf)))
}

/// What a connection holds of the server's limits: its per-address slot and, when it
/// got one, its place under `max_connections`. Both go back when this is dropped,
/// however the connection ends (rejected after `101`, closed, its task panicking).
pub(crate) struct Admission {
    _ip: IpSlot,
    permit: Option<OwnedSemaphorePermit>,
}

impl Admission {
    /// Whether it holds a place under `max_connections` (without one the connection is
    /// refused with 1013 right after the upgrade).
    fn has_capacity(&self) -> bool {
        self.permit.is_some()
    }

    /// No place and no slot (tests).
    #[cfg(test)]
    pub(crate) fn none() -> Self {
        Self {
            _ip: IpSlot::none(),
            permit: None,
        }
    }

    /// A place under `max_connections` and no per-address slot (tests).
    #[cfg(test)]
    pub(crate) fn of(wss: &WebSocketServer) -> Self {
        Self {
            _ip: IpSlot::none(),
            permit: wss.shared.permits.clone().try_acquire_owned().ok(),
        }
    }
}

/// Drop guard: whatever happens to the connection task (even a panic), the socket leaves
/// the registry, its close handlers run once and its permit returns to the semaphore.
struct Registered {
    wss: WebSocketServer,
    socket: Socket,
    _admission: Admission,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.wss.unregister(self.socket.id());
        self.socket
            .finish(CloseInfo::new(CloseCode::ABNORMAL, "connection task ended"));
    }
}

/// What the connection task needs only until the connection is up. Boxed: a future keeps
/// its arguments for its whole life, so what is passed unboxed costs every idle connection.
struct Start {
    wss: WebSocketServer,
    socket: Socket,
    on_upgrade: Option<hyper::upgrade::OnUpgrade>,
    admission: Admission,
    request: ConnectRequest,
    deflate: Option<Box<PerMessage>>,
}

impl<T> Accepted<T> {
    // Consuming the box frees it here, not at the end of the caller's (async) scope.
    #[allow(clippy::boxed_local)]
    fn into_parts(
        self: Box<Self>,
    ) -> (
        WebSocketServer,
        Socket,
        Admission,
        ConnectRequest,
        T,
        Bytes,
        Option<Box<PerMessage>>,
    ) {
        let a = *self;
        (
            a.wss,
            a.socket,
            a.admission,
            a.request,
            a.stream,
            a.pre,
            a.deflate,
        )
    }
}

/// What a connection needs once its stream is there. Boxed, for the reason `Start` is.
pub(crate) struct Accepted<T> {
    pub(crate) wss: WebSocketServer,
    pub(crate) socket: Socket,
    pub(crate) admission: Admission,
    pub(crate) request: ConnectRequest,
    pub(crate) stream: T,
    /// Bytes that arrived with the handshake.
    pub(crate) pre: Bytes,
    /// permessage-deflate's state, when agreed.
    pub(crate) deflate: Option<Box<PerMessage>>,
}

/// The connection's task: take the stream from hyper, then run the connection.
///
/// A hand-written state machine rather than `async { match take.await { … run(acc).await } }`:
/// that form keeps the outer future's own state (its argument, the match's value) beside
/// `run`'s for the connection's whole life, and every idle connection pays for it (tokio
/// rounds task cells to 128 bytes, so 40 bytes more cost 128). Here the running state
/// *is* `run`'s future, and the other states overlap it.
fn serve_upgraded(start: Box<Start>) -> ConnTask<impl Future<Output = ()> + Send> {
    ConnTask::Taking {
        take: Box::pin(take_stream(start)),
        run: run::<TcpStream>,
    }
}

type TakeFuture = Pin<Box<dyn Future<Output = Option<Taken>> + Send>>;
type BoxedRun = Pin<Box<dyn Future<Output = ()> + Send>>;

pin_project_lite::pin_project! {
    #[project = ConnTaskProj]
    enum ConnTask<F> {
        /// Waiting for hyper to hand the connection over.
        Taking { take: TakeFuture, run: fn(Box<Accepted<TcpStream>>) -> F },
        /// Plain TCP: the fast path, inline.
        Tcp { #[pin] run: F },
        /// Any other stream (TLS, a Unix socket): boxed, so the fast path's task does not
        /// grow by this one's state.
        Other { run: BoxedRun },
        Done,
    }
}

impl<F: Future<Output = ()>> Future for ConnTask<F> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            match self.as_mut().project() {
                ConnTaskProj::Taking { take, run } => {
                    let next = match ready!(take.as_mut().poll(cx)) {
                        Some(Taken::Tcp(acc)) => ConnTask::Tcp { run: run(acc) },
                        Some(Taken::Other(acc)) => ConnTask::Other {
                            run: Box::pin(self::run(acc)),
                        },
                        None => ConnTask::Done,
                    };
                    self.set(next);
                }
                ConnTaskProj::Tcp { run } => {
                    ready!(run.poll(cx));
                    self.set(ConnTask::Done);
                }
                ConnTaskProj::Other { run } => {
                    ready!(run.as_mut().poll(cx));
                    self.set(ConnTask::Done);
                }
                ConnTaskProj::Done => return Poll::Ready(()),
            }
        }
    }
}

impl Start {
    fn accepted<T>(self, stream: T, pre: Bytes) -> Box<Accepted<T>> {
        let Start {
            wss,
            socket,
            admission,
            request,
            deflate,
            ..
        } = self;
        Box::new(Accepted {
            wss,
            socket,
            admission,
            request,
            stream,
            pre,
            deflate,
        })
    }
}

/// Run a connection over `stream` (after `101`) to its end: the capacity and shutdown
/// gates, the connection handler, the steady state, the closing handshake.
pub(crate) async fn run<T: Transport>(acc: Box<Accepted<T>>) {
    // Unboxed in a plain function, so the box is freed now rather than kept (moved-from)
    // for the connection's whole life.
    let (wss, socket, admission, request, mut stream, pre, deflate) = acc.into_parts();
    let shared = &wss.shared;
    let opts = &shared.opts;
    if !admission.has_capacity() {
        shared.stats.rejected_capacity.inc();
        Box::pin(reject_after_handshake(
            &mut stream,
            CloseCode::TRY_AGAIN_LATER,
            &opts.close_reason("Server at capacity"),
            opts.close_timeout,
        ))
        .await;
        return;
    };
    let mode = if socket.protocol().is_some() || opts.frames == super::server::Frames::Raw {
        Mode::Raw
    } else {
        Mode::Envelope
    };
    let handler = wss.connection_handler(socket.protocol());
    if !wss.register(&socket) {
        shared.stats.rejected_shutdown.inc();
        Box::pin(reject_after_handshake(
            &mut stream,
            CloseCode::GOING_AWAY,
            &opts.close_reason("Going Away"),
            opts.close_timeout,
        ))
        .await;
        return;
    }
    // the guard owns the server and the socket from here (one copy of each in the task)
    let guard = Registered {
        wss,
        socket,
        _admission: admission,
    };
    let (wss, socket) = (&guard.wss, &guard.socket);
    let shared = &wss.shared;
    let opts = &shared.opts;
    shared.stats.accepted.inc();
    super::heartbeat::ensure_started(wss);
    tracing::debug!(socket = %socket.id(), peer = ?socket.remote_addr(), "connected");

    if let Some(handler) = handler {
        let s = socket.clone();
        // the connection's reader starts after this handler: until then the heartbeat
        // spares it, and its emit_with_ack calls fail at once (InHandler)
        socket.handling_started();
        let run =
            super::dispatch::HANDLING.scope(socket.id(), run_dispatch(move || handler(s, request)));
        let outcome = Box::pin(run).await;
        socket.handling_ended();
        if let Err(e) = outcome {
            shared.stats.handler_errors.inc();
            tracing::warn!(socket = %socket.id(), error = %e, "connection handler failed; closing with 1011");
            let _ = socket.close(CloseCode::INTERNAL_ERROR, "internal error");
        }
    }
    socket.compact();
    let mut conn = Conn::new(stream, pre, socket, mode, opts, deflate);
    let end = (&mut conn).await;
    let Conn { mut stream, .. } = conn;
    let info = Box::pin(connection::conclude(
        end,
        &mut stream,
        socket,
        opts.close_timeout,
    ))
    .await;
    drop(stream);
    tracing::debug!(socket = %socket.id(), code = info.code.0, reason = %info.reason, "disconnected");
    wss.unregister(socket.id());
    socket.finish(info);
    drop(guard);
}

async fn reject_after_handshake<T: Transport>(
    stream: &mut T,
    code: CloseCode,
    reason: &str,
    timeout: std::time::Duration,
) {
    // One close frame, then let the client answer; bounded by `timeout`.
    let (h, n) = proto::header(proto::OP_CLOSE, 2 + reason.len());
    let mut frame = h[..n].to_vec();
    frame.extend_from_slice(&proto::close_payload(code.0, reason));
    let written = tokio::time::timeout(timeout, write_all(stream, &frame)).await;
    if matches!(written, Ok(Ok(()))) {
        // let the client answer, as after any close we send
        linger(stream, timeout).await;
    }
}

#[cfg(test)]
mod size_tests {
    /// The whole per-connection task future (what every idle connection costs besides
    /// its `Socket`): keep it small.
    #[test]
    fn the_connection_task_stays_small() {
        let wss = super::WebSocketServer::new(Default::default());
        use tracing::Instrument;
        let id = super::SocketId::new();
        let socket = super::Socket::new(
            id,
            Default::default(),
            crate::ws::socket::SocketLimits {
                max_queue_bytes: 1,
                max_listeners: 1,
                ..Default::default()
            },
            None,
            None,
            http::Extensions::new(),
        );
        let f = super::serve_upgraded(Box::new(super::Start {
            wss,
            socket,
            on_upgrade: Some(hyper::upgrade::on(http::Request::new(()))),
            admission: super::Admission::none(),
            request: super::ConnectRequest::for_test("/"),
            deflate: None,
        }))
        .instrument(tracing::info_span!("ws", conn = %id));
        let n = std::mem::size_of_val(&f);
        eprintln!(
            "sizes: serve_upgraded {n} (span {})",
            std::mem::size_of::<tracing::Span>()
        );
        assert!(n <= 640, "serve_upgraded future is {n} bytes");
    }
}

#[cfg(test)]
mod span_tests {
    use std::sync::{Arc, Mutex};

    /// Captures formatted log lines.
    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Capture {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// What an app's handler logs carries the connection id (the `ws{conn=…}` span).
    #[test]
    fn handler_logs_carry_the_connection_id() {
        let cap = Capture::default();
        let writer = cap.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .finish();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let id = tracing::subscriber::with_default(subscriber, || {
            rt.block_on(async {
                let wss = crate::ws::WebSocketServer::new(crate::ws::WsOptions::default());
                let (tx, rx) = tokio::sync::oneshot::channel();
                let tx = Mutex::new(Some(tx));
                wss.on_connection(move |s: crate::ws::Socket, _: crate::ws::ConnectRequest| {
                    tracing::info!("handler says hi");
                    if let Some(tx) = tx.lock().ok().and_then(|mut t| t.take()) {
                        let _ = tx.send(s.id());
                    }
                });
                let app = crate::app(crate::AppOptions {
                    port: 0,
                    host: "127.0.0.1".into(),
                    ..Default::default()
                })
                .websocket(&wss);
                let srv = app.bind().await.expect("bind").spawn();
                let url = format!("ws://{}/ws", srv.local_addr());
                let (c, _) = tokio_tungstenite::connect_async(url)
                    .await
                    .expect("connect");
                let id = tokio::time::timeout(std::time::Duration::from_secs(10), rx)
                    .await
                    .expect("in time")
                    .expect("id");
                drop(c);
                srv.shutdown().await;
                id
            })
        });
        let text = String::from_utf8(cap.0.lock().expect("lock").clone()).expect("utf8");
        let line = text
            .lines()
            .find(|l| l.contains("handler says hi"))
            .unwrap_or_else(|| panic!("no handler line in:\n{text}"));
        assert!(line.contains(&format!("ws{{conn={id}}}")), "{line}");
    }
}
