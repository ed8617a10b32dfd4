//! What clients may do through the client protocol, and the budgets that enforce it.

use std::time::Instant;

use crate::ws::limits::Bucket;

/// What clients may do through the client protocol, and how much (see
/// [`RoomsOptions::client`](super::RoomsOptions)). Every field has a default.
///
/// A room multiplies what a member sends by its size, so publications have budgets of
/// their own, well inside what a reader at a normal pace takes in:
/// - per connection: `publish_messages_per_sec` and `publish_bytes_per_sec` (bursts of
///   twice the messages and the larger of four seconds' bytes and `max_publish_bytes`);
/// - per room, for all its publishers together: `room_messages_per_sec` and
///   `room_bytes_per_sec` (bursts of twice as much). This is what protects fair readers
///   however many sockets a publisher opens: everything clients publish into a room in a
///   burst (512 KiB by default) stays below a reader's `max_queue_bytes` (1 MiB), so no
///   reader is closed as a slow consumer because others sent a lot at once. The price: a
///   flood can use up a room's budget, and the others' publications are refused until it
///   refills (nobody is disconnected).
///
/// Joins, leaves and typing *changes* (each one is an event to the whole room) take from a
/// third, per-connection budget, `actions_per_sec` (burst twice as many); repeating
/// `typing: true` is free.
///
/// Over a budget, the action is refused with `room:error` (`"reason": "rate limit"`, or
/// `"room rate limit"`, or `"payload too large"`) and counted in
/// [`RoomsStats::publishes_refused`](super::RoomsStats) or `actions_refused`; the
/// connection stays open. (Centrifugo leaves client publications off by default; Phoenix
/// and Socket.IO leave budgets to the app.)
///
/// ```
/// use street::rooms::{ClientPolicy, RoomsOptions};
/// let opts = RoomsOptions::default()
///     .with_client_protocol(true)
///     .with_client(
///         ClientPolicy::default()
///             .with_publishable_events(vec!["message".into(), "reaction".into()]),
///     );
/// assert_eq!(opts.client.max_publish_bytes, 64 * 1024);
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ClientPolicy {
    /// Event names a client may publish under with `room:publish` (an allow-list: the
    /// server's own events — presence, typing, the app's — can never be impersonated).
    /// `room:*`, `presence:*` and `typing` are refused even when listed. Default
    /// `["message"]`, the event used when a publication names none.
    pub publishable_events: Vec<String>,
    /// Largest `payload` of one publication, in bytes of JSON. Default 64 KiB.
    pub max_publish_bytes: usize,
    /// Publications per second per connection. 0 disables. Default 10.
    pub publish_messages_per_sec: u32,
    /// Payload bytes per second per connection. 0 disables. Default 64 KiB.
    pub publish_bytes_per_sec: u32,
    /// Client publications per second into one room, all publishers together. 0
    /// disables. Default 100.
    pub room_messages_per_sec: u32,
    /// Payload bytes per second into one room, all publishers together. 0 disables.
    /// Default 256 KiB.
    pub room_bytes_per_sec: u32,
    /// Joins, leaves and typing changes per second per connection. 0 disables. Default 20.
    pub actions_per_sec: u32,
}

impl Default for ClientPolicy {
    fn default() -> Self {
        Self {
            publishable_events: vec!["message".into()],
            max_publish_bytes: 64 * 1024,
            publish_messages_per_sec: 10,
            publish_bytes_per_sec: 64 * 1024,
            room_messages_per_sec: 100,
            room_bytes_per_sec: 256 * 1024,
            actions_per_sec: 20,
        }
    }
}

impl ClientPolicy {
    pub(super) fn may_publish(&self, event: &str) -> bool {
        !reserved(event) && self.publishable_events.iter().any(|e| e == event)
    }

    pub(super) fn connection_rates(&self) -> Rates {
        Rates::new(
            self.publish_messages_per_sec,
            self.publish_bytes_per_sec,
            (4.0 * self.publish_bytes_per_sec as f32).max(self.max_publish_bytes as f32),
        )
    }

    pub(super) fn room_rates(&self) -> Rates {
        Rates::new(
            self.room_messages_per_sec,
            self.room_bytes_per_sec,
            2.0 * self.room_bytes_per_sec as f32,
        )
    }

    pub(super) fn action_rates(&self) -> Rates {
        Rates::new(self.actions_per_sec, 0, 0.0)
    }
}

/// Rates (per second) and bursts of a [`Budget`]; a rate of 0 is no limit.
#[derive(Debug, Clone, Copy)]
pub(super) struct Rates {
    msgs: f32,
    msg_burst: f32,
    bytes: f32,
    byte_burst: f32,
}

impl Rates {
    fn new(msgs: u32, bytes: u32, byte_burst: f32) -> Self {
        Self {
            msgs: msgs as f32,
            msg_burst: 2.0 * msgs as f32,
            bytes: bytes as f32,
            byte_burst,
        }
    }
}

/// A budget of messages and bytes (two token buckets).
#[derive(Debug)]
pub(super) struct Budget {
    rates: Rates,
    msgs: Bucket,
    bytes: Bucket,
}

impl Budget {
    pub(super) fn new(rates: Rates, now: Instant) -> Self {
        Self {
            rates,
            msgs: Bucket::full(rates.msg_burst, now),
            bytes: Bucket::full(rates.byte_burst, now),
        }
    }

    /// Take one message of `len` bytes, if the budget allows it (both buckets are checked
    /// before either is charged).
    pub(super) fn take(&mut self, len: usize, now: Instant) -> bool {
        let r = self.rates;
        let (mut msgs, mut bytes) = (self.msgs, self.bytes);
        let ok = (r.msgs == 0.0 || msgs.take(1.0, r.msgs, r.msg_burst, now))
            && (r.bytes == 0.0 || bytes.take(len as f32, r.bytes, r.byte_burst, now));
        if ok {
            (self.msgs, self.bytes) = (msgs, bytes);
        }
        ok
    }
}

/// Event names a client may not publish under: they would impersonate the server.
fn reserved(event: &str) -> bool {
    event.starts_with("presence:") || event.starts_with("room:") || event == "typing"
}
