//! The counters of a [`Rooms`](super::Rooms): the snapshot type and the live counters
//! behind it, declared once.

use serde::Serialize;

#[cfg(doc)]
use super::Rooms;
use crate::cluster::BrokerStats;
use crate::counters::stats;

stats! {
    /// Counters of a [`Rooms`].
    #[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
    #[serde(rename_all = "camelCase")]
    #[non_exhaustive]
    pub struct RoomsStats counted in RoomsCounters {
        /// Rooms on this node now.
        set rooms => gauge("street_rooms", "Rooms on this node."),
        /// SSE streams subscribed to rooms on this node now ([`Rooms::sse`]).
        set streams => gauge("street_rooms_streams", "SSE streams subscribed to rooms on this node."),
        /// Joins since start.
        count joins => counter("street_rooms_joins_total", "Room joins."),
        /// Leaves since start (including by close).
        count leaves => counter("street_rooms_leaves_total", "Room leaves."),
        /// Room messages published from this node.
        count published => counter("street_rooms_published_total", "Room messages published here."),
        /// Messages queued to local subscribers, sockets and SSE streams (from this node
        /// or others).
        count delivered => counter(
            "street_rooms_delivered_total",
            "Messages queued to local subscribers (sockets and SSE streams).",
        ),
        /// Client joins refused by the authorization hook (or for want of one).
        count denied => counter(
            "street_rooms_denied_total",
            "Client joins refused by the authorization hook.",
        ),
        /// Client publications refused: an event not on the allow-list, a payload over
        /// `max_publish_bytes`, or over the connection's or the room's publish budget.
        count publishes_refused => counter(
            "street_rooms_publishes_refused_total",
            "Client publications refused (event not allowed, too large, over budget).",
        ),
        /// Client joins, leaves and typing changes refused: over the connection's action
        /// budget, or a join over `max_rooms_per_socket`, `max_rooms_per_ip` or `max_rooms`.
        count actions_refused => counter(
            "street_rooms_actions_refused_total",
            "Client joins, leaves and typing changes refused (over budget or a room limit).",
        ),
        /// Client joins with `since` that recovered: the client got every publication
        /// after its position.
        count recovered => counter(
            "street_rooms_recovered_total",
            "Client joins with since that recovered every missed publication.",
        ),
        /// Client joins with `since` that could not recover (another epoch, history
        /// trimmed by size or age, over the replay budget, or no history in the room).
        count not_recovered => counter(
            "street_rooms_not_recovered_total",
            "Client joins with since that could not recover (the client must reload).",
        ),
        /// Joins that could not complete: the broker could not be asked for the history
        /// (`room:error` "history unavailable"), or more was published while waiting for
        /// it than the connection may hold (closed with 4008).
        count joins_failed => counter(
            "street_rooms_joins_failed_total",
            "Joins of rooms with history that failed (history unavailable, or held too much).",
        ),
        /// Reads of a room's newest publications ([`Rooms::latest`], the client's
        /// `room:history`) answered.
        count latest_reads => counter(
            "street_rooms_latest_reads_total",
            "Reads of a room's newest publications answered.",
        ),
        /// Publications to rooms with history (through the broker, positioned).
        count positioned => counter(
            "street_rooms_positioned_total",
            "Publications to rooms with history.",
        ),
        /// The broker's counters (exposed by their own `visit`).
        set broker: BrokerStats,
    }
}
