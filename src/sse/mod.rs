//! Server-Sent Events.
//!
//! - [`encode`]: the `text/event-stream` frame encoder (no I/O), safe for any string;
//! - [`stream`]: one stream, a sending handle [`Sse`] and its response;
//! - [`registry`]: the [`SseRequest`] extractor (`Last-Event-ID`, the app's stream cap,
//!   shutdown) and the app's [`SseRegistry`];
//!
//! Fan-out to many streams, across nodes and with resume, is a room's: see
//! [`Rooms::sse`](crate::rooms::Rooms::sse). A room's subscribers are WebSocket sockets
//! and SSE streams alike, and its history gives SSE ids that mean the same on every node.

pub mod encode;
pub mod registry;
pub mod stream;

pub use encode::{encode_comment, encode_event, SseEvent};
pub use registry::{SseRegistry, SseRejection, SseRequest, SseStats};
pub use stream::{create, create_with, Sse, SseError, SseOptions};
