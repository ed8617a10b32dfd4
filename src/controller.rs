//! Controllers: a group of routes under one prefix (the seed's `@Controller('/api/events')`
//! with `@Get('/stream')`), plain axum underneath.
//!
//! Handlers are ordinary axum handlers, so they reach the request through extractors
//! (`HeaderMap`, `Query`, `Json`, `Request`, …), the app's container through
//! [`Inject`](crate::container::Inject), and typed controller state through `State`:
//!
//! ```no_run
//! use std::sync::Arc;
//! use std::sync::atomic::{AtomicU64, Ordering};
//! use axum::extract::State;
//! use street::container::Inject;
//! use street::jwt::JwtService;
//! use street::Controller;
//!
//! #[derive(Clone, Default)]
//! struct Hits(Arc<AtomicU64>);
//!
//! async fn count(State(hits): State<Hits>) -> String {
//!     hits.0.fetch_add(1, Ordering::Relaxed).to_string()
//! }
//! async fn token(Inject(jwt): Inject<JwtService>) -> String {
//!     jwt.sign(&serde_json::json!({ "sub": "u1" })).unwrap_or_default()
//! }
//!
//! # async fn run() -> Result<(), street::app::AppError> {
//! let api = Controller::new("/api")
//!     .get("/hits", count)   // GET /api/hits
//!     .post("/token", token) // POST /api/token
//!     .with_state(Hits::default());
//! street::app(street::AppOptions::default()).controller(api).listen().await
//! # }
//! ```

use axum::handler::Handler;
use axum::routing::{self, MethodRouter};
use axum::Router;

/// Routes under a common prefix, with optional state `S`. Mount with
/// [`App::controller`](crate::App::controller) once the state is supplied
/// ([`Controller::with_state`]); a controller without state is ready as is.
#[derive(Debug)]
#[must_use = "a controller does nothing until it is mounted with App::controller"]
pub struct Controller<S = ()> {
    prefix: String,
    router: Router<S>,
}

impl<S: Clone + Send + Sync + 'static> Controller<S> {
    /// A controller for routes under `prefix` (`"/api/events"`; `""` or `"/"` for the
    /// root). A trailing `/` is ignored.
    pub fn new(prefix: &str) -> Self {
        let p = prefix.trim_end_matches('/');
        let prefix = if p.is_empty() || p.starts_with('/') {
            p.to_owned()
        } else {
            format!("/{p}")
        };
        Self {
            prefix,
            router: Router::new(),
        }
    }

    /// The prefix, normalized (no trailing `/`).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The full path of `path` under this controller: `"/stream"` under `"/api/events"`
    /// is `"/api/events/stream"`; `"/"` or `""` is the prefix itself.
    pub fn path(&self, path: &str) -> String {
        let p = path.trim_start_matches('/');
        match (self.prefix.is_empty(), p.is_empty()) {
            (true, true) => "/".to_owned(),
            (false, true) => self.prefix.clone(),
            _ => format!("{}/{p}", self.prefix),
        }
    }

    /// Add any method router at `path` (axum's `Router::route`, under the prefix).
    ///
    /// # Panics
    /// As axum: on an invalid or conflicting path (a wiring mistake, found at startup).
    #[track_caller]
    pub fn route(mut self, path: &str, method_router: MethodRouter<S>) -> Self {
        let full = self.path(path);
        self.router = self.router.route(&full, method_router);
        self
    }

    /// `GET path` (the seed's `@Get`).
    ///
    /// # Panics
    /// As [`Controller::route`].
    #[track_caller]
    pub fn get<H: Handler<T, S>, T: 'static>(self, path: &str, handler: H) -> Self {
        self.route(path, routing::get(handler))
    }

    /// `POST path`.
    ///
    /// # Panics
    /// As [`Controller::route`].
    #[track_caller]
    pub fn post<H: Handler<T, S>, T: 'static>(self, path: &str, handler: H) -> Self {
        self.route(path, routing::post(handler))
    }

    /// `PUT path`.
    ///
    /// # Panics
    /// As [`Controller::route`].
    #[track_caller]
    pub fn put<H: Handler<T, S>, T: 'static>(self, path: &str, handler: H) -> Self {
        self.route(path, routing::put(handler))
    }

    /// `PATCH path`.
    ///
    /// # Panics
    /// As [`Controller::route`].
    #[track_caller]
    pub fn patch<H: Handler<T, S>, T: 'static>(self, path: &str, handler: H) -> Self {
        self.route(path, routing::patch(handler))
    }

    /// `DELETE path`.
    ///
    /// # Panics
    /// As [`Controller::route`].
    #[track_caller]
    pub fn delete<H: Handler<T, S>, T: 'static>(self, path: &str, handler: H) -> Self {
        self.route(path, routing::delete(handler))
    }

    /// Supply the state its handlers extract with `State<S>`.
    pub fn with_state<S2>(self, state: S) -> Controller<S2> {
        Controller {
            prefix: self.prefix,
            router: self.router.with_state(state),
        }
    }
}

impl Controller<()> {
    /// The routes as an axum `Router` (paths already prefixed).
    pub fn into_router(self) -> Router {
        self.router
    }
}
