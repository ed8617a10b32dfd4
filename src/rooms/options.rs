//! The options of [`Rooms::new`] and of a publication.

use std::sync::Arc;
use std::time::Duration;

use super::ClientPolicy;
#[cfg(doc)]
use super::{RoomError, Rooms};
use crate::cluster::Broker;
use crate::cluster::HistoryOptions;
use crate::ws::SocketId;

/// Options for [`Rooms::new`]. Every field has a default.
#[derive(Clone)]
#[non_exhaustive]
pub struct RoomsOptions {
    /// The broker to the other nodes. Default: an in-memory broker of its own (one node,
    /// no external service).
    pub broker: Option<Arc<dyn Broker>>,
    /// This node's id in the cluster. Default: a random one.
    pub node_id: Option<String>,
    /// A `typing: true` clears itself (a `typing: false` is sent) after this long unless
    /// refreshed. Default 5 s; `None` keeps it until cleared.
    pub typing_ttl: Option<Duration>,
    /// Longest room name and member id, in bytes. Default 128.
    pub max_name_bytes: usize,
    /// Most rooms one socket may be in. Default 64.
    pub max_rooms_per_socket: usize,
    /// Most rooms on this node. Default 100 000.
    pub max_rooms: usize,
    /// Most rooms the sockets of one address (IPv6: one /64) may be in at once, summed
    /// over its sockets; one more join is refused with
    /// [`RoomError::TooManyRoomsForAddress`]. With `max_rooms_per_socket` it keeps a few
    /// addresses from filling the node's `max_rooms` table (it takes 50 addresses at the
    /// defaults). 0 disables. Default 2 000.
    pub max_rooms_per_ip: usize,
    /// Handle `room:join`, `room:leave`, `room:publish` and `typing` from clients of
    /// sockets passed to [`Rooms::attach`]. Default off. Client joins are refused unless
    /// the app opens rooms with [`Rooms::authorize`].
    pub client_protocol: bool,
    /// What clients may publish, and how much. See [`ClientPolicy`].
    pub client: ClientPolicy,
    /// Rooms that keep history, by name pattern: the first rule whose pattern matches
    /// a room's name applies (`"news"` matches that room only, `"chat:*"` every room
    /// whose name starts with `chat:`, `"*"` every room). Default none: no room keeps
    /// history. A rule with a size or TTL of 0 keeps none. Add rules with
    /// [`RoomsOptions::with_history`]; see
    /// [`Rooms`](super#history-and-recovery) for what history gives.
    pub history: Vec<(String, HistoryOptions)>,
}

impl RoomsOptions {
    /// Keep history in rooms whose name matches `pattern` (see
    /// [`RoomsOptions::history`]); rules apply in the order they were added.
    ///
    /// ```
    /// use std::time::Duration;
    /// use street::cluster::HistoryOptions;
    /// use street::rooms::RoomsOptions;
    ///
    /// let opts = RoomsOptions::default()
    ///     .with_history("chat:*", HistoryOptions::new(200, Duration::from_secs(600)));
    /// assert!(opts.history_of("chat:general").is_some());
    /// assert!(opts.history_of("lobby").is_none());
    /// ```
    pub fn with_history(mut self, pattern: impl Into<String>, history: HistoryOptions) -> Self {
        self.history.push((pattern.into(), history));
        self
    }

    /// The history rule that applies to `room`, if any.
    pub fn history_of(&self, room: &str) -> Option<HistoryOptions> {
        self.history
            .iter()
            .find(|(p, _)| match p.strip_suffix('*') {
                Some(prefix) => room.starts_with(prefix),
                None => p == room,
            })
            .map(|(_, h)| *h)
            .filter(|h| h.size > 0 && !h.ttl.is_zero())
    }
}

impl Default for RoomsOptions {
    fn default() -> Self {
        Self {
            broker: None,
            node_id: None,
            typing_ttl: Some(Duration::from_secs(5)),
            max_name_bytes: 128,
            max_rooms_per_socket: 64,
            max_rooms: 100_000,
            max_rooms_per_ip: 2_000,
            client_protocol: false,
            client: ClientPolicy::default(),
            history: Vec::new(),
        }
    }
}

impl std::fmt::Debug for RoomsOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RoomsOptions")
            .field("broker", &self.broker.as_ref().map(|_| "custom"))
            .field("node_id", &self.node_id)
            .field("typing_ttl", &self.typing_ttl)
            .field("max_name_bytes", &self.max_name_bytes)
            .field("max_rooms_per_socket", &self.max_rooms_per_socket)
            .field("max_rooms", &self.max_rooms)
            .field("max_rooms_per_ip", &self.max_rooms_per_ip)
            .field("client_protocol", &self.client_protocol)
            .field("client", &self.client)
            .field("history", &self.history)
            .finish()
    }
}

/// Who not to send a room message to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PublishOptions {
    /// Skip this connection (usually the sender's).
    pub except_socket: Option<SocketId>,
    /// Skip every connection of this member, on every node.
    pub except_member: Option<String>,
}

impl PublishOptions {
    /// Everyone but this connection.
    pub fn except_socket(id: SocketId) -> Self {
        Self {
            except_socket: Some(id),
            except_member: None,
        }
    }

    /// Everyone but this member's connections.
    pub fn except_member(member: &str) -> Self {
        Self {
            except_socket: None,
            except_member: Some(member.to_owned()),
        }
    }
}
