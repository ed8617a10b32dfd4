//! The heartbeat: one sweep task per server (not a timer per connection).
//!
//! Every `heartbeat_interval` the sweep visits each socket. A socket whose peer sent
//! anything since the previous sweep (a pong, a message, a ping) gets a fresh ping; one
//! that sent nothing is terminated without a close handshake and its close handlers see
//! 1006 "heartbeat timeout". A peer that goes silent is therefore gone within two
//! intervals, and a live peer (which answers pings) is not reaped: while a handler of
//! one of its messages runs, its pongs wait unread, so the sweep spares a socket with a
//! handler running (it is pinged as usual) and counts its silence from the handler's end.
//! For a while: `2 + request_timeout / heartbeat_interval` silent sweeps (rounded up;
//! with the defaults, 3). A handler that runs longer than that, say one that never ends,
//! no longer holds its peer: it is reaped (1006) and the handler dropped.
//! The sweep holds only a weak reference to the server and stops on shutdown.
//!
//! The same sweep enforces credentials' expiries ([`Socket::set_expiry`]): a warning
//! (`street:expired`) at the first sweep past one, a close with 4010 at the first sweep
//! past it plus `expiry_grace` (and after the warning's).
//!
//! [`Socket::set_expiry`]: super::Socket::set_expiry

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::close::{CloseCode, CloseInfo};
use super::server::{read, WebSocketServer};

/// The envelope a client gets at each sweep with [`WsOptions::ping_envelopes`].
///
/// [`WsOptions::ping_envelopes`]: super::WsOptions::ping_envelopes
pub const PING_EVENT: &str = "street:ping";

/// Silent sweeps that spare a socket whose handler runs: two, and as many as a request
/// handler may take (`request_timeout`), in intervals rounded up.
fn spared_sweeps(request_timeout: std::time::Duration, interval: std::time::Duration) -> u8 {
    let intervals = request_timeout
        .as_nanos()
        .div_ceil(interval.as_nanos().max(1));
    u8::try_from(intervals.saturating_add(2)).map_or(u8::MAX - 1, |n| n.min(u8::MAX - 1))
}

pub(crate) fn ensure_started(wss: &WebSocketServer) {
    let shared = &wss.shared;
    let interval = shared.opts.heartbeat_interval;
    if interval.is_zero() || shared.heartbeat_started.swap(true, Ordering::AcqRel) {
        return;
    }
    let weak = Arc::downgrade(shared);
    let stop = shared.shutdown.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            let Some(shared) = weak.upgrade() else { break };
            shared.per_ip.sweep(std::time::Instant::now());
            let now = std::time::SystemTime::now();
            let grace = shared.opts.expiry_grace;
            let spare = spared_sweeps(shared.opts.request_timeout, interval);
            // encoded once for every client, as a broadcast
            let envelopes = shared.opts.frames == super::Frames::Envelope;
            let ping = (shared.opts.ping_envelopes && envelopes)
                .then(|| {
                    let ms = u64::try_from(interval.as_millis()).unwrap_or(u64::MAX);
                    super::envelope::encode(PING_EVENT, &serde_json::json!({ "intervalMs": ms }))
                        .ok()
                })
                .flatten();
            let clients = read(&shared.clients);
            for s in clients.values() {
                if s.heartbeat_alive(spare) {
                    s.ping();
                    // (no envelopes to a custom subprotocol's connections: they speak
                    // their own)
                    let speaks_envelopes = envelopes && s.protocol().is_none();
                    if let Some(p) = ping.as_ref().filter(|_| speaks_envelopes) {
                        let _ = s.send_text_bytes_volatile(p.clone());
                    }
                    if s.check_expiry(now, grace, speaks_envelopes) {
                        shared.stats.expired.inc();
                    }
                } else {
                    shared.stats.reaped.inc();
                    s.kill(CloseInfo::new(CloseCode::ABNORMAL, "heartbeat timeout"));
                }
            }
        }
    });
}
