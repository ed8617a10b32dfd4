//! Counters every WebSocket server keeps. Cheap relaxed atomics; read them with
//! [`WebSocketServer::stats`](super::WebSocketServer::stats).

use std::sync::atomic::{AtomicU64, Ordering};

/// A monotonically increasing counter.
#[derive(Debug, Default)]
pub(crate) struct Counter(AtomicU64);

impl Counter {
    pub(crate) fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub(crate) fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

macro_rules! stats {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        #[derive(Debug, Default)]
        pub(crate) struct Stats {
            $(pub(crate) $name: Counter,)*
            pub(crate) peak: AtomicU64,
            /// Time to queue a broadcast or room message for every local recipient.
            pub(crate) fanout: crate::metrics::Histogram,
        }

        /// A snapshot of a server's counters.
        #[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
        #[non_exhaustive]
        pub struct StatsSnapshot {
            $($(#[$doc])* pub $name: u64,)*
            /// Highest number of simultaneously registered connections seen.
            pub peak_connections: u64,
            /// Connections registered now.
            pub connections: u64,
        }

        impl Stats {
            pub(crate) fn snapshot(&self, connections: usize) -> StatsSnapshot {
                StatsSnapshot {
                    $($name: self.$name.get(),)*
                    peak_connections: self.peak.load(Ordering::Relaxed),
                    connections: connections as u64,
                }
            }
        }
    };
}

stats! {
    /// Connections that completed the handshake and reached the connection handler.
    accepted,
    /// Upgrades refused because the server was at capacity (1013 or 503).
    rejected_capacity,
    /// Upgrades refused by the origin gate (403).
    rejected_origin,
    /// Upgrades refused by the auth hook (401).
    rejected_auth,
    /// Upgrades refused because the server is shutting down (503).
    rejected_shutdown,
    /// Malformed handshakes (400/426).
    rejected_handshake,
    /// Upgrades refused by the per-IP connection cap or handshake rate (429/503).
    rejected_ip,
    /// Connections closed for sending too fast (1008).
    rate_limited,
    /// Connections closed for sending no first message in time (1008).
    first_message_timeouts,
    /// Text and binary messages received.
    messages_in,
    /// Payload bytes received.
    bytes_in,
    /// Messages written to clients.
    messages_out,
    /// Payload bytes written to clients.
    bytes_out,
    /// Text frames that were not JSON.
    malformed_json,
    /// JSON frames that were not envelopes.
    not_envelope,
    /// Payloads that did not deserialize into a handler's type.
    payload_errors,
    /// Binary or raw frames with no raw handler.
    unexpected_raw,
    /// Handlers that returned an error or panicked.
    handler_errors,
    /// Peers terminated by the heartbeat.
    reaped,
    /// Clients disconnected because their outbound queue was full.
    slow_consumers,
    /// Volatile messages dropped for clients whose queue was full.
    volatile_dropped,
    /// Connections closed for a protocol error (1002), invalid UTF-8 (1007) or size (1009).
    protocol_errors,
    /// Broadcasts sent.
    broadcasts,
}

impl Stats {
    pub(crate) fn observe_connections(&self, n: usize) {
        self.peak.fetch_max(n as u64, Ordering::Relaxed);
    }
}
