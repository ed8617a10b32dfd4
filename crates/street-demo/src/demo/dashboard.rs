//! The dashboard's feed: once a second, this node's numbers as one SSE event to every
//! dashboard open on it: a channel of the rooms (`metrics:<node>`, no history: a sample
//! is about now), encoded once for every stream.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use serde_json::json;
use street::rooms::{PublishOptions, Rooms};
use street::sse::{SseOptions, SseRegistry, SseRequest};

use super::chat::AUTH_REJECTED;
use super::Demo;

/// The channel of this node's samples.
fn channel(rooms: &Rooms) -> String {
    format!("metrics:{}", rooms.node_id())
}

pub(crate) fn routes(rooms: Rooms) -> Router {
    Router::new().route(
        "/api/metrics/stream",
        get(move |req: SseRequest| {
            let rooms = rooms.clone();
            async move {
                match rooms
                    .sse(req, &channel(&rooms), SseOptions::default())
                    .await
                {
                    Ok((_, response)) => response,
                    Err(e) => e.into_response(),
                }
            }
        }),
    )
}

/// Publish a sample every second until aborted.
pub(crate) async fn sample(demo: Demo, sse: SseRegistry) {
    let feed = channel(&demo.rooms);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut prev = demo.wss.stats();
    let mut prev_h = demo.wss.fanout_histogram();
    let mut prev_at = Instant::now();
    loop {
        tick.tick().await;
        let s = demo.wss.stats();
        let h = demo.wss.fanout_histogram();
        let dt = prev_at.elapsed().as_secs_f64().max(0.001);
        prev_at = Instant::now();
        let per_sec = |now: u64, before: u64| ((now.saturating_sub(before)) as f64 / dt).round();
        let fanouts = h.count.saturating_sub(prev_h.count);
        let fanout_avg_ms = if fanouts > 0 {
            (h.sum - prev_h.sum) / fanouts as f64 * 1000.0
        } else {
            0.0
        };
        let rooms = demo.rooms.stats();
        let sample = json!({
            "t": street::ws::envelope::now_ms(),
            "node": demo.rooms.node_id(),
            "connections": s.connections,
            "peakConnections": s.peak_connections,
            "accepted": s.accepted,
            "messagesInPerSec": per_sec(s.messages_in, prev.messages_in),
            "messagesOutPerSec": per_sec(s.messages_out, prev.messages_out),
            "messagesIn": s.messages_in,
            "messagesOut": s.messages_out,
            "fanouts": fanouts,
            "fanoutAvgMs": (fanout_avg_ms * 1000.0).round() / 1000.0,
            "rssBytes": street::metrics::process_rss_bytes(),
            "rejected": {
                "capacity": s.rejected_capacity,
                "origin": s.rejected_origin,
                "auth": s.rejected_auth + AUTH_REJECTED.load(Ordering::Relaxed),
                "rate": s.rate_limited + s.rejected_ip,
                "slowConsumer": s.slow_consumers,
                "heartbeat": s.reaped,
            },
            "sseStreams": sse.stats().open,
            "rooms": rooms.rooms,
            "chatMessages": demo.metrics.tracked("chat_messages"),
            // the rooms' answers to room:history (pages loading a room's recent past)
            "historySent": rooms.latest_reads,
            "cluster": rooms.broker,
        });
        let _ = demo
            .rooms
            .publish(&feed, "metrics", &sample, PublishOptions::default());
        prev = s;
        prev_h = h;
    }
}
