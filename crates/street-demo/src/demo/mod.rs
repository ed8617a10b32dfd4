//! The demo: what `cargo run --release` serves.
//!
//! - `/` the chat (`assets/chat.html`): log in with a name (`POST /api/login` → a JWT),
//!   connect to `/ws?token=…` with `street.js`, rooms, presence, typing, history;
//! - `/dashboard` live numbers over SSE (`/api/metrics/stream`) with a chart;
//! - `/street.js` the browser client (`/street.mjs` as an ES module), `/metrics`
//!   Prometheus, `/health`.
//!
//! Everything is embedded in the binary; no front-end build step.
//!
//! It is meant to be reachable from the internet, so:
//!
//! - login is open: anyone gets a token for any name that passes the name rule (see
//!   `chat::valid_name`: no invisible, control or direction-changing characters), and the
//!   login page says so;
//! - tokens are signed with `STREET_JWT_SECRET`, or, when it is not set, with a random
//!   secret made at startup (a warning is logged: tokens then do not survive a restart, and
//!   the nodes of a cluster must share a `STREET_JWT_SECRET`);
//! - behind a reverse proxy, `STREET_TRUSTED_PROXIES` (comma-separated CIDRs) lets the
//!   proxy name the client in `X-Forwarded-For`, for the per-IP limits and the logs;
//! - `/metrics` is served only when `STREET_METRICS_TOKEN` is set, and only to requests
//!   with `Authorization: Bearer <that token>` (401 otherwise; 404 when it is not set);
//! - every HTTP response of the site (pages, assets, API, `/metrics`, 404s) carries a strict
//!   CSP (`default-src 'self'`, `connect-src 'self'`, `frame-ancestors 'none'`),
//!   `X-Content-Type-Options: nosniff`, `X-Frame-Options: DENY` and
//!   `Referrer-Policy: no-referrer`. The WebSocket upgrade at `/ws` is answered by street
//!   itself, without them.

mod chat;
mod dashboard;

use std::sync::Arc;
use std::time::Duration;

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use street::cluster::nats::{NatsBroker, NatsOptions};
use street::cluster::redis::{RedisBroker, RedisOptions};
use street::cluster::Broker;
use street::cluster::HistoryOptions;
use street::jwt::{JwtOptions, JwtService};
use street::metrics::Metrics;
use street::rooms::{Rooms, RoomsOptions};
use street::ws::{Compression, WebSocketServer, WsOptions};

/// The demo's settings, from the environment.
pub(crate) struct Config {
    app: street::AppOptions,
    redis_url: Option<String>,
    nats_url: Option<String>,
    jwt_secret: Option<String>,
    metrics_token: Option<String>,
    trusted_proxies: Option<String>,
}

impl Config {
    pub(crate) fn from_env() -> Self {
        Self {
            app: street::AppOptions::from_env(),
            redis_url: std::env::var("REDIS_URL").ok().filter(|u| !u.is_empty()),
            nats_url: std::env::var("NATS_URL").ok().filter(|u| !u.is_empty()),
            jwt_secret: std::env::var("STREET_JWT_SECRET").ok(),
            metrics_token: std::env::var("STREET_METRICS_TOKEN")
                .ok()
                .filter(|t| !t.is_empty()),
            trusted_proxies: std::env::var("STREET_TRUSTED_PROXIES").ok(),
        }
    }
}

/// Why the demo could not start.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DemoError {
    #[error(transparent)]
    App(#[from] street::app::AppError),
    #[error("JWT: {0}")]
    Jwt(#[from] street::jwt::JwtError),
    #[error("cannot join the cluster at REDIS_URL or NATS_URL: {0}")]
    Cluster(#[from] street::cluster::BrokerError),
    #[error("no randomness from the OS for the JWT secret ({0}); set STREET_JWT_SECRET")]
    Random(getrandom::Error),
    #[error("STREET_TRUSTED_PROXIES: {0}")]
    Proxies(#[from] street::net::CidrError),
}

/// `STREET_JWT_SECRET`, or else 32 random bytes for this process only (a secret in the
/// source would let anyone sign a token for any name).
fn jwt_secret(configured: Option<String>) -> Result<String, DemoError> {
    if let Some(s) = configured {
        return Ok(s);
    }
    let mut bytes = [0u8; 32];
    getrandom::getrandom(&mut bytes).map_err(DemoError::Random)?;
    tracing::warn!(
        "STREET_JWT_SECRET is not set: signing tokens with a random secret for this process \
         only; tokens will not survive a restart, and other nodes of a cluster will refuse them"
    );
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Everything the handlers share.
#[derive(Clone)]
pub(crate) struct Demo {
    pub(crate) wss: WebSocketServer,
    pub(crate) rooms: Rooms,
    pub(crate) jwt: Arc<JwtService>,
    pub(crate) metrics: Metrics,
}

pub(crate) async fn run(cfg: Config) -> Result<(), DemoError> {
    let secret = jwt_secret(cfg.jwt_secret.clone())?;
    let jwt = Arc::new(JwtService::new(
        JwtOptions::default()
            .with_secret(Some(secret))
            .with_expires_in(Duration::from_secs(12 * 3600)),
    )?);
    let wss = WebSocketServer::new(
        WsOptions::default()
            .with_path("/ws")
            // clients wait this long (plus jitter) after a restart or a full server
            .with_reconnect_hint(Some(Duration::from_millis(1000)))
            // browsers offer permessage-deflate: chat and history JSON shrink several
            // times, compressed once per message for every recipient
            .with_compression(Some(Compression::default()))
            // street:ping every heartbeat: a page whose connection died silently (a laptop
            // woken from sleep) notices within two intervals and reconnects
            .with_ping_envelopes(true),
    );
    // Redis when both are given
    let broker: Option<Arc<dyn Broker>> = match (&cfg.redis_url, &cfg.nats_url) {
        (Some(url), _) => Some(Arc::new(RedisBroker::new(RedisOptions::url(url.clone())))),
        (None, Some(url)) => Some(Arc::new(NatsBroker::new(NatsOptions::url(url.clone())))),
        (None, None) => None,
    };
    let clustered = broker.is_some();
    let mut rooms_options = RoomsOptions::default()
        .with_broker(broker)
        .with_client_protocol(true);
    for room in chat::OPEN_ROOMS {
        // a reconnecting page (after a blip, a deploy, on another node with Redis) gets
        // what it missed instead of reloading the room's history
        rooms_options =
            rooms_options.with_history(room, HistoryOptions::new(200, Duration::from_secs(600)));
    }
    let rooms = Rooms::new(&wss, rooms_options).await?;
    rooms.authorize(|_socket, room, _member| chat::OPEN_ROOMS.contains(&room));

    let mut app_options = cfg.app;
    if let Some(list) = &cfg.trusted_proxies {
        // comma-separated CIDRs of the reverse proxies in front (see the README's deployment
        // section): their X-Forwarded-For names the client for the per-IP limits
        app_options.trusted_proxies = street::net::TrustedProxies::parse(
            list.split(',').map(str::trim).filter(|s| !s.is_empty()),
        )?;
    }
    let app = street::app(app_options);
    let metrics = Metrics::new();
    metrics.websocket("chat", &wss);
    metrics.rooms("chat", &rooms);
    metrics.sse(app.sse_registry());
    metrics.http(&app.http_stats());

    let demo = Demo {
        wss: wss.clone(),
        rooms: rooms.clone(),
        jwt,
        metrics: metrics.clone(),
    };
    chat::wire(&demo);
    let sampler = tokio::spawn(dashboard::sample(demo.clone(), app.sse_registry().clone()));

    let mut site = Router::new()
        .route(
            "/",
            get(|| async { page(include_str!("assets/chat.html")) }),
        )
        .route(
            "/dashboard",
            get(|| async { page(include_str!("assets/dashboard.html")) }),
        )
        .route(
            "/app.css",
            get(|| async { asset("text/css", include_str!("assets/app.css")) }),
        )
        .route(
            "/chat.js",
            get(|| async { asset("text/javascript", include_str!("assets/chat.js")) }),
        )
        .route(
            "/dashboard.js",
            get(|| async { asset("text/javascript", include_str!("assets/dashboard.js")) }),
        )
        // the client, as a script and as an ES module (`import Street from '/street.mjs'`)
        .merge(street::client::routes())
        .route("/health", get(|| async { "ok" }))
        .merge(chat::routes(demo.clone()))
        .merge(dashboard::routes(rooms.clone()));
    match cfg.metrics_token {
        Some(token) => {
            let m = metrics.clone();
            site = site.route(
                "/metrics",
                get(move |headers: HeaderMap| {
                    let (m, token) = (m.clone(), token.clone());
                    async move { protected_metrics(&m, &token, &headers) }
                }),
            );
        }
        None => tracing::info!("STREET_METRICS_TOKEN is not set: /metrics is not served"),
    }
    let site = site
        .fallback(|| async { StatusCode::NOT_FOUND })
        .layer(axum::middleware::map_response(strict_headers));
    let app = app.merge(site).websocket(&wss);
    let server = app.bind().await?;
    tracing::info!(
        addr = %server.local_addr(),
        node = rooms.node_id(),
        cluster = if clustered { "redis" } else { "single node" },
        "street demo: open http://localhost:{}/ (dashboard at /dashboard)",
        server.local_addr().port()
    );
    server.serve(street::app::shutdown_signal()).await;
    sampler.abort();
    rooms.shutdown().await;
    Ok(())
}

/// What every response of the site carries: scripts, styles, images and connections
/// (`'self'` covers this origin's ws:/wss: in CSP 3) only from this origin, no inline
/// script (injected markup cannot run even if it reached the DOM as HTML), no framing, no
/// MIME sniffing, no referrer.
async fn strict_headers(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; connect-src 'self'; img-src 'self' data:; style-src 'self'; \
             frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    r
}

fn page(html: &'static str) -> Response {
    (
        [(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"))],
        axum::response::Html(html),
    )
        .into_response()
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        body,
    )
        .into_response()
}

/// `/metrics` for `Authorization: Bearer <STREET_METRICS_TOKEN>` only (compared in constant
/// time); 401 otherwise.
fn protected_metrics(metrics: &Metrics, token: &str, headers: &HeaderMap) -> Response {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map_or("", |(_, t)| t.trim());
    let same = given.len() == token.len()
        && given
            .bytes()
            .zip(token.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    if !same {
        tracing::debug!("/metrics without the right bearer token: 401");
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            "unauthorized\n",
        )
            .into_response();
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        metrics.render(),
    )
        .into_response()
}
