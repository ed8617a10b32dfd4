//! What room operations return: the error, and what a join or leave changed.

#[cfg(doc)]
use super::Rooms;

/// Why a room operation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RoomError {
    /// An empty room name or member id.
    #[error("{what} must not be empty")]
    Empty {
        /// `"room"` or `"member"`.
        what: &'static str,
    },
    /// A room name or member id over `max_name_bytes`.
    #[error("{what} is longer than {limit} bytes")]
    TooLong {
        /// `"room"` or `"member"`.
        what: &'static str,
        /// The limit.
        limit: usize,
    },
    /// A control character in a room name or member id.
    #[error("{what} contains a control character")]
    ControlCharacter {
        /// `"room"` or `"member"`.
        what: &'static str,
    },
    /// The socket is already in `max_rooms_per_socket` rooms.
    #[error("the socket is in too many rooms (limit {limit})")]
    TooManyRoomsForSocket {
        /// The limit.
        limit: usize,
    },
    /// The sockets of this address are already in `max_rooms_per_ip` rooms.
    #[error("this address is in too many rooms (limit {limit})")]
    TooManyRoomsForAddress {
        /// The limit.
        limit: usize,
    },
    /// The node already holds `max_rooms` rooms.
    #[error("too many rooms on this node (limit {limit})")]
    TooManyRooms {
        /// The limit.
        limit: usize,
    },
    /// The socket is closed.
    #[error("the socket is closed")]
    SocketClosed,
    /// The broker could not be asked for the room's history (unreachable, or slower
    /// than 5 s): the subscription is not made.
    #[error("history unavailable")]
    HistoryUnavailable,
    /// The socket (or member) is not in the room.
    #[error("not in room {room}")]
    NotInRoom {
        /// The room.
        room: String,
    },
    /// The payload does not serialize.
    #[error("payload does not serialize: {0}")]
    Serialize(String),
}

/// What [`Rooms::join`] changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JoinOutcome {
    /// This was the member's first connection in the room on this node (a
    /// `presence:join` was sent).
    pub newly_present: bool,
}

/// What [`Rooms::leave`] changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaveOutcome {
    /// The socket was in the room.
    pub left: bool,
    /// That was the member's last connection in the room on this node (a
    /// `presence:leave` was sent).
    pub now_absent: bool,
}
