//! # street
//!
//! A bounded realtime server for Rust: WebSockets with a typed event API, wire-compatible
//! with `@streetjs/websocket` 1.0.0 (`{"type","payload","ts"}` JSON text frames), on
//! tokio, hyper and axum.
//!
//! - [`app()`]: an HTTP app with routes, a bounded accept loop and graceful shutdown;
//! - [`ws::WebSocketServer`]: connection cap (1013), heartbeat, payload limit, origin and
//!   auth gates before the upgrade, broadcast that serializes once;
//! - [`ws::Socket`]: `emit`, `on` with serde-typed payloads, `off`, `*`, close handlers,
//!   typed per-socket data;
//! - [`rooms`]: rooms, presence and typing, with history; the one hub, whose subscribers
//!   are sockets and SSE streams; [`cluster`]: fan-out across nodes (in memory, or Redis);
//! - [`Controller`]: routes grouped under a prefix, with state and the container;
//! - [`sse`]: Server-Sent Events with heartbeat, `Last-Event-ID` resume, a stream cap and
//!   shutdown (fan-out to many streams: [`rooms::Rooms::sse`]);
//! - [`Container`] and [`jwt::JwtService`];
//! - [`client`]: street.js, the browser client, to serve from your app.
//!
//! ```no_run
//! use street::ws::{ConnectRequest, Socket, SocketError, WebSocketServer, WsOptions};
//! use std::time::Duration;
//!
//! #[tokio::main]
//! async fn main() -> Result<(), street::app::AppError> {
//!     let app = street::app(street::AppOptions::default().with_port(3000));
//!     let wss = WebSocketServer::new(
//!         WsOptions::default()
//!             .with_heartbeat_interval(Duration::from_secs(30))
//!             .with_max_connections(10_000),
//!     );
//!     street::container().register(wss.clone());
//!     wss.on_connection(|socket: Socket, _req: ConnectRequest| {
//!         let s = socket.clone();
//!         socket.on("message", move |data: serde_json::Value| s.emit("echo", &data))?;
//!         socket.on_close(|_: street::ws::CloseInfo| println!("Client disconnected"))?;
//!         Ok::<_, SocketError>(())
//!     });
//!     app.websocket(&wss).listen().await
//! }
//! ```
#![warn(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod app;
pub mod client;
pub mod cluster;
pub mod container;
pub mod controller;
mod counters;
#[cfg(feature = "jwt")]
#[cfg_attr(docsrs, doc(cfg(feature = "jwt")))]
pub mod jwt;
pub mod metrics;
pub mod net;
mod options;
pub mod rooms;
pub mod sse;
#[cfg(feature = "tls")]
#[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
pub mod tls;
pub mod ws;

// The README's compiled examples (the hello world, the axum app, compression, TLS) are
// doctests: a README that stops compiling fails `cargo test`.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

pub use app::{app, App, AppOptions};
pub use container::{container, Container};
pub use controller::Controller;
