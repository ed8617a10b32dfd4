//! The demo: what `cargo run --release` serves.
//!
//! - `/` the chat (`assets/chat.html`): log in with a name (`POST /api/login` → a JWT),
//!   connect to `/ws?token=…` with `street.js`, rooms, presence, typing, history;
//! - `/dashboard` live numbers over SSE (`/api/metrics/stream`) with a chart;
//! - `/street.js` the browser client, `/metrics` Prometheus, `/health`.
//!
//! Everything is embedded in the binary; no front-end build step.

mod chat;
mod dashboard;

use std::sync::Arc;
use std::time::Duration;

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use street::cluster::redis::{RedisBroker, RedisOptions};
use street::cluster::Broker;
use street::jwt::{JwtOptions, JwtService};
use street::metrics::Metrics;
use street::rooms::{Rooms, RoomsOptions};
use street::sse::{HubOptions, SseHub};
use street::ws::{WebSocketServer, WsOptions};

/// A development secret, used (with a warning) when `STREET_JWT_SECRET` is not set, so
/// tokens survive a restart of the demo.
const DEV_SECRET: &str = "street-demo-development-secret-change-me";

/// The demo's settings, from the environment.
pub(crate) struct Config {
    app: street::AppOptions,
    redis_url: Option<String>,
    jwt_secret: Option<String>,
}

impl Config {
    pub(crate) fn from_env() -> Self {
        Self {
            app: street::AppOptions::from_env(),
            redis_url: std::env::var("REDIS_URL").ok().filter(|u| !u.is_empty()),
            jwt_secret: std::env::var("STREET_JWT_SECRET").ok(),
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
    #[error("cannot join the cluster at REDIS_URL: {0}")]
    Cluster(#[from] street::cluster::BrokerError),
}

/// Everything the handlers share.
#[derive(Clone)]
pub(crate) struct Demo {
    pub(crate) wss: WebSocketServer,
    pub(crate) rooms: Rooms,
    pub(crate) jwt: Arc<JwtService>,
    pub(crate) history: chat::History,
    pub(crate) metrics: Metrics,
}

pub(crate) async fn run(cfg: Config) -> Result<(), DemoError> {
    let secret = cfg.jwt_secret.clone().unwrap_or_else(|| {
        tracing::warn!("STREET_JWT_SECRET is not set: using the demo's development secret");
        DEV_SECRET.to_owned()
    });
    let jwt = Arc::new(JwtService::new(JwtOptions {
        secret: Some(secret),
        expires_in: Duration::from_secs(12 * 3600),
        ..JwtOptions::default()
    })?);
    let wss = WebSocketServer::new(WsOptions {
        path: "/ws".into(),
        // clients wait this long (plus jitter) after a restart or a full server
        reconnect_hint: Some(Duration::from_millis(1000)),
        ..WsOptions::default()
    });
    let broker: Option<Arc<dyn Broker>> = cfg
        .redis_url
        .as_ref()
        .map(|url| Arc::new(RedisBroker::new(RedisOptions::url(url.clone()))) as Arc<dyn Broker>);
    let clustered = broker.is_some();
    let rooms = Rooms::new(
        &wss,
        RoomsOptions {
            broker,
            client_protocol: true,
            ..RoomsOptions::default()
        },
    )
    .await?;
    rooms.authorize(|_socket, room, _member| chat::OPEN_ROOMS.contains(&room));

    let app = street::app(cfg.app);
    let metrics = Metrics::new();
    metrics.websocket("chat", &wss);
    metrics.rooms("chat", &rooms);
    metrics.sse(app.sse_registry());
    let feed = SseHub::new(HubOptions {
        replay_events: 0,
        ..HubOptions::default()
    });
    metrics.sse_hub("dashboard", &feed);

    let demo = Demo {
        wss: wss.clone(),
        rooms: rooms.clone(),
        jwt,
        history: chat::History::default(),
        metrics: metrics.clone(),
    };
    chat::wire(&demo);
    let sampler = tokio::spawn(dashboard::sample(
        demo.clone(),
        app.sse_registry().clone(),
        feed.clone(),
    ));

    let app = app
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
        .route(
            "/street.js",
            get(|| async { asset("text/javascript", include_str!("../../client/street.js")) }),
        )
        .route("/health", get(|| async { "ok" }))
        .route("/metrics", metrics.route())
        .merge(chat::routes(demo.clone()))
        .merge(dashboard::routes(feed))
        .websocket(&wss);
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

/// Security headers for the pages: scripts only from this origin (no inline script, so
/// injected markup cannot run even if it reached the DOM as HTML).
fn page(html: &'static str) -> Response {
    let mut r = axum::response::Html(html).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; style-src 'self'",
        ),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    r
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
