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
    /// The room keeps no history (see `RoomsOptions::with_history`).
    #[error("room {room} keeps no history")]
    NoHistory {
        /// The room.
        room: String,
    },
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

/// The answer to an HTTP request that a room refused (as [`Rooms::sse`] can): `400` for
/// a name that is not valid, `429` for a per-socket or per-address limit, `503` with
/// `Retry-After: 5` for the node's room limit or a history that could not be had, `404`
/// when not in the room or for a room without history, `409` for a closed socket, `500` for a payload that does not
/// serialize. The body is the error's text.
///
/// ```
/// use axum::response::IntoResponse;
/// use street::rooms::RoomError;
/// let r = RoomError::HistoryUnavailable.into_response();
/// assert_eq!(r.status(), 503);
/// assert_eq!(r.headers()["retry-after"], "5");
/// ```
impl axum::response::IntoResponse for RoomError {
    fn into_response(self) -> axum::response::Response {
        use http::StatusCode;
        let status = match &self {
            Self::Empty { .. } | Self::TooLong { .. } | Self::ControlCharacter { .. } => {
                StatusCode::BAD_REQUEST
            }
            Self::TooManyRoomsForSocket { .. } | Self::TooManyRoomsForAddress { .. } => {
                StatusCode::TOO_MANY_REQUESTS
            }
            Self::TooManyRooms { .. } | Self::HistoryUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::SocketClosed => StatusCode::CONFLICT,
            Self::NotInRoom { .. } | Self::NoHistory { .. } => StatusCode::NOT_FOUND,
            Self::Serialize(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let mut r = (status, self.to_string()).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            r.headers_mut().insert(
                http::header::RETRY_AFTER,
                http::HeaderValue::from_static("5"),
            );
        }
        r
    }
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
