//! Counters every WebSocket server keeps. Cheap relaxed atomics; read them with
//! [`WebSocketServer::stats`](super::WebSocketServer::stats).

use std::sync::atomic::{AtomicU64, Ordering};

use crate::counters::stats;

stats! {
    families {
        REJECTED = counter(
            "street_ws_connections_rejected_total",
            "WebSocket upgrades refused, by reason.",
        );
        DISCONNECTS = counter(
            "street_ws_disconnects_total",
            "Connections the server ended, by reason.",
        );
        ERRORS = counter(
            "street_ws_errors_total",
            "Bad input and handler failures, by kind (the connection stays).",
        );
    }
    /// A snapshot of a server's counters.
    #[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
    #[non_exhaustive]
    pub struct StatsSnapshot counted in Stats with {
        pub(crate) peak: AtomicU64,
        /// Time to queue a broadcast or room message for every local recipient.
        pub(crate) fanout: crate::metrics::Histogram,
    } {
        /// Connections that completed the handshake and reached the connection handler.
        count accepted => counter(
            "street_ws_connections_accepted_total",
            "WebSocket connections accepted.",
        ),
        /// Upgrades refused because the server was at capacity (1013 or 503).
        count rejected_capacity => REJECTED.with("reason", "capacity"),
        /// Upgrades refused by the origin gate (403).
        count rejected_origin => REJECTED.with("reason", "origin"),
        /// Upgrades refused by the auth hook (401).
        count rejected_auth => REJECTED.with("reason", "auth"),
        /// Upgrades refused because the server is shutting down (503).
        count rejected_shutdown => REJECTED.with("reason", "shutdown"),
        /// Malformed handshakes (400/426).
        count rejected_handshake => REJECTED.with("reason", "handshake"),
        /// Upgrades refused by the per-IP connection cap or handshake rate (429/503).
        count rejected_ip => REJECTED.with("reason", "ip"),
        /// Connections closed for sending too fast (1008).
        count rate_limited => DISCONNECTS.with("reason", "rate_limit"),
        /// Connections closed for sending no first message in time (1008).
        count first_message_timeouts => DISCONNECTS.with("reason", "first_message_timeout"),
        /// Text and binary messages received.
        count messages_in => counter("street_ws_messages_in_total", "Messages received."),
        /// Payload bytes received.
        count bytes_in => counter("street_ws_bytes_in_total", "Payload bytes received."),
        /// Messages written to clients.
        count messages_out => counter("street_ws_messages_out_total", "Messages written."),
        /// Payload bytes written to clients.
        count bytes_out => counter("street_ws_bytes_out_total", "Payload bytes written."),
        /// Text frames that were not JSON.
        count malformed_json => ERRORS.with("kind", "malformed_json"),
        /// JSON frames that were not envelopes.
        count not_envelope => ERRORS.with("kind", "not_envelope"),
        /// Payloads that did not deserialize into a handler's type.
        count payload_errors => ERRORS.with("kind", "payload"),
        /// Binary or raw frames with no raw handler.
        count unexpected_raw => ERRORS.with("kind", "unexpected_raw"),
        /// Handlers that returned an error or panicked (a request handler's `Err` is an
        /// answer, counted in `requests_failed` only; its panic is counted here).
        count handler_errors => ERRORS.with("kind", "handler"),
        /// Client requests (envelopes with an `id`) answered, with a result or an error.
        count requests => counter(
            "street_ws_requests_total",
            "Client requests answered (with a result or an error).",
        ),
        /// Of [`requests`](Self::requests), those answered with an error (no handler, a
        /// payload that did not fit, the handler's error, a timeout).
        count requests_failed => counter(
            "street_ws_requests_failed_total",
            "Client requests answered with an error.",
        ),
        /// Requests to clients (`emit_with_ack`) that got no reply in time.
        count acks_timed_out => counter(
            "street_ws_acks_timed_out_total",
            "Requests to clients without a reply in time.",
        ),
        /// Peers terminated by the heartbeat.
        count reaped => DISCONNECTS.with("reason", "heartbeat"),
        /// Connections closed with 4010: their credentials expired and were not refreshed
        /// within `expiry_grace`.
        count expired => DISCONNECTS.with("reason", "expired"),
        /// Clients disconnected because their outbound queue was full.
        count slow_consumers => DISCONNECTS.with("reason", "slow_consumer"),
        /// Volatile messages dropped for clients whose queue was full.
        count volatile_dropped => counter(
            "street_ws_volatile_dropped_total",
            "Volatile messages dropped for full queues.",
        ),
        /// Connections closed for a protocol error (1002), invalid UTF-8 (1007) or size (1009).
        count protocol_errors => DISCONNECTS.with("reason", "protocol_error"),
        /// Broadcasts sent.
        count broadcasts => counter("street_ws_broadcasts_total", "Broadcasts sent."),
        /// Connections that agreed on permessage-deflate.
        count compressed_connections => counter(
            "street_ws_compressed_connections_total",
            "Connections that agreed on permessage-deflate.",
        ),
        /// Messages written compressed.
        count compressed_out => counter(
            "street_ws_compressed_messages_out_total",
            "Messages written compressed (permessage-deflate).",
        ),
        /// Times the compressor ran for them: in the shared mode a broadcast is
        /// compressed once per worker thread, and its other recipients share the result.
        count compressions => counter(
            "street_ws_compressions_total",
            "Times a message was compressed (shared mode: once per broadcast and thread).",
        ),
        /// Bytes those messages took on the wire (compare with their `bytes_out` share).
        count compressed_bytes_out => counter(
            "street_ws_compressed_bytes_out_total",
            "Compressed payload bytes written (permessage-deflate).",
        ),
        /// Highest number of simultaneously registered connections seen.
        set peak_connections => gauge(
            "street_ws_connections_peak",
            "Most WebSocket connections open at once.",
        ),
        /// Connections registered now.
        set connections => gauge(
            "street_ws_connections",
            "WebSocket connections open now.",
        ),
    }
}

impl Stats {
    /// The snapshot with the live connection count.
    pub(crate) fn snapshot_with(&self, connections: usize) -> StatsSnapshot {
        let mut s = self.snapshot();
        s.peak_connections = self.peak.load(Ordering::Relaxed);
        s.connections = connections as u64;
        s
    }

    pub(crate) fn observe_connections(&self, n: usize) {
        self.peak.fetch_max(n as u64, Ordering::Relaxed);
    }
}
