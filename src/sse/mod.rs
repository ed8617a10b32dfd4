//! Server-Sent Events.
//!
//! - [`encode`]: the `text/event-stream` frame encoder (no I/O), safe for any string;
//! - [`stream`]: [`create`] gives a sending handle and the streaming response.

pub mod encode;
pub mod stream;

pub use encode::{encode_comment, encode_event, SseEvent};
pub use stream::{create, create_with, Sse, SseError, SseOptions};
