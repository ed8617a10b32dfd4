//! The bounded WebSocket server.
//!
//! - [`server`]: [`WebSocketServer`] and [`WsOptions`] (capacity, heartbeat, limits, gates,
//!   broadcast, shutdown);
//! - [`socket`]: the per-connection [`Socket`] with its typed event API;
//! - [`envelope`]: the `{type, payload, ts}` wire codec (no I/O);
//! - [`heartbeat`](self#heartbeat): one sweep per server reaps dead peers;
//! - `upgrade` and `connection`: the handshake gates and the per-connection task.

mod close;
mod connection;
pub mod envelope;
mod handler;
mod heartbeat;
mod limits;
mod origin;
mod proto;
pub mod server;
pub mod socket;
mod stats;
mod upgrade;

pub use close::{CloseCode, CloseInfo, MAX_REASON_BYTES};
pub use envelope::{Envelope, EnvelopeError};
pub use handler::{Awaited, Handler, Handler2, Inline, Outcome};
pub use origin::Origin;
pub use server::{
    AuthRejection, CapacityPolicy, Frames, WebSocketServer, WsOptions, SLOW_CONSUMER_CODE,
};
pub use socket::{ErrorEvent, ListenerId, RawMessage, Socket, SocketError, SocketId};
pub use stats::StatsSnapshot;
pub use upgrade::ConnectRequest;

pub(crate) use upgrade::handle as handle_upgrade;

/// The header of an unmasked server frame (for benchmarks; not a stable API).
#[doc(hidden)]
pub fn __frame_header(opcode: u8, len: usize) -> ([u8; 10], usize) {
    proto::header(opcode, len)
}
