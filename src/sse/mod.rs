//! Server-Sent Events.
//!
//! - [`encode`]: the `text/event-stream` frame encoder (no I/O), safe for any string.

pub mod encode;

pub use encode::{encode_comment, encode_event, SseEvent};
