//! Server-Sent Events.
//!
//! - [`encode`]: the `text/event-stream` frame encoder (no I/O), safe for any string;
//! - [`stream`]: one stream, a sending handle [`Sse`] and its response;
//! - [`registry`]: the [`SseRequest`] extractor (`Last-Event-ID`, the app's stream cap,
//!   shutdown) and the app's [`SseRegistry`];
//! - [`hub`]: [`SseHub`], topic fan-out encoded once, with a bounded replay buffer.

pub mod encode;
pub mod hub;
pub mod registry;
pub mod stream;

pub use encode::{encode_comment, encode_event, SseEvent};
pub use hub::{HubOptions, HubStats, SseHub, GAP_EVENT};
pub use registry::{SseRegistry, SseRejection, SseRequest, SseStats};
pub use stream::{create, create_with, Sse, SseError, SseOptions};
