//! street.js, the browser client (the `street-client` package in the repository's
//! `client/`), shipped in the crate: a server serves the very client it speaks with, at
//! the version it was built with.
//!
//! [`routes`] serves `/street.js` (a script: a global `Street`, or CommonJS) and
//! `/street.mjs` (an ES module) from your own router; [`SCRIPT`] and [`MODULE`] are the
//! files, to serve or bundle your own way.
//!
//! ```no_run
//! use axum::Router;
//!
//! # async fn run() -> std::io::Result<()> {
//! let app: Router = Router::new().merge(street::client::routes());
//! // in a page: <script src="/street.js"></script>, or
//! //            import Street from '/street.mjs';
//! let listener = tokio::net::TcpListener::bind("0.0.0.0:3000").await?;
//! axum::serve(listener, app).await
//! # }
//! ```

use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

/// `street.js`: the client as a script (a global `Street`) or a CommonJS module.
pub const SCRIPT: &str = include_str!("../client/street.js");

/// `street.mjs`: the same client as an ES module (`import Street from './street.mjs'`).
pub const MODULE: &str = include_str!("../client/street.mjs");

/// A router serving [`SCRIPT`] at `/street.js` and [`MODULE`] at `/street.mjs`, as
/// `text/javascript` with `Cache-Control: no-cache` (revalidated, so a new server's client
/// replaces the old one). Merge it into your router, or nest it under a prefix.
pub fn routes<S>() -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    Router::new()
        .route("/street.js", get(|| async { javascript(SCRIPT) }))
        .route("/street.mjs", get(|| async { javascript(MODULE) }))
}

fn javascript(body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}
