//! The Prometheus text exposition (the `metrics` feature): [`Metrics`] and its writer.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::routing::MethodRouter;

use super::{process_rss_bytes, HistogramSnapshot};
use crate::rooms::Rooms;
use crate::sse::{SseHub, SseRegistry};
use crate::ws::WebSocketServer;

/// Most distinct app counter and gauge names; more are folded into `other`.
pub const MAX_APP_SERIES: usize = 256;

enum Source {
    Ws(String, WebSocketServer),
    Sse(SseRegistry),
    Hub(String, SseHub),
    Http(crate::app::HttpStatsHandle),
    Rooms(String, Rooms),
}

#[derive(Default)]
struct App {
    counters: BTreeMap<String, u64>,
    gauges: BTreeMap<String, f64>,
}

struct Inner {
    sources: Mutex<Vec<Source>>,
    app: Mutex<App>,
}

/// The registry: what to render at `/metrics`. Cheap to clone. See the
/// [module docs](crate::metrics).
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A metric or label name as Prometheus accepts it; anything else becomes `_`.
fn sanitize(name: &str) -> String {
    let mut s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect();
    if s.is_empty() || s.starts_with(|c: char| c.is_ascii_digit()) {
        s.insert(0, '_');
    }
    s
}

/// A label value, escaped.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Metrics {
    /// An empty registry.
    pub fn new() -> Self {
        Self {
            inner: Arc::new(Inner {
                sources: Mutex::new(Vec::new()),
                app: Mutex::new(App::default()),
            }),
        }
    }

    /// Report a WebSocket server under `name` (the `server` label).
    pub fn websocket(&self, name: &str, wss: &WebSocketServer) {
        lock(&self.inner.sources).push(Source::Ws(name.to_owned(), wss.clone()));
    }

    /// Report an app's SSE streams.
    pub fn sse(&self, registry: &SseRegistry) {
        lock(&self.inner.sources).push(Source::Sse(registry.clone()));
    }

    /// Report an app's HTTP refusals (per-IP cap, PROXY header, request bodies; see
    /// [`App::http_stats`](crate::App::http_stats)).
    pub fn http(&self, stats: &crate::app::HttpStatsHandle) {
        lock(&self.inner.sources).push(Source::Http(stats.clone()));
    }

    /// Report an SSE hub under `name`.
    pub fn sse_hub(&self, name: &str, hub: &SseHub) {
        lock(&self.inner.sources).push(Source::Hub(name.to_owned(), hub.clone()));
    }

    /// Report rooms (and their cluster broker) under `name`.
    pub fn rooms(&self, name: &str, rooms: &Rooms) {
        lock(&self.inner.sources).push(Source::Rooms(name.to_owned(), rooms.clone()));
    }

    /// Add `by` to the app counter `name` (`street_app_events_total{event="name"}`; the
    /// seed's `TelemetryTracker.track`).
    pub fn track(&self, name: &str, by: u64) {
        let mut app = lock(&self.inner.app);
        let key = if app.counters.contains_key(name) || app.counters.len() < MAX_APP_SERIES {
            name.to_owned()
        } else {
            "other".to_owned()
        };
        *app.counters.entry(key).or_default() += by;
    }

    /// Set the app gauge `name` (`street_app_gauge{name="…"}`).
    pub fn gauge(&self, name: &str, value: f64) {
        let mut app = lock(&self.inner.app);
        if app.gauges.contains_key(name) || app.gauges.len() < MAX_APP_SERIES {
            app.gauges.insert(name.to_owned(), value);
        }
    }

    /// The app counter `name` (0 if never tracked).
    pub fn tracked(&self, name: &str) -> u64 {
        lock(&self.inner.app)
            .counters
            .get(name)
            .copied()
            .unwrap_or(0)
    }

    /// A `GET` route serving [`Metrics::render`] as `text/plain; version=0.0.4`.
    pub fn route(&self) -> MethodRouter {
        let m = self.clone();
        axum::routing::get(move || {
            let m = m.clone();
            async move {
                (
                    [(
                        http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    m.render(),
                )
            }
        })
    }

    /// Everything, in the Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut w = Writer::default();
        for src in lock(&self.inner.sources).iter() {
            match src {
                Source::Ws(name, wss) => w.websocket(name, wss),
                Source::Sse(reg) => w.sse(reg),
                Source::Http(h) => w.http(h),
                Source::Hub(name, hub) => w.hub(name, hub),
                Source::Rooms(name, rooms) => w.rooms(name, rooms),
            }
        }
        if let Some(rss) = process_rss_bytes() {
            w.metric(
                "process_resident_memory_bytes",
                "gauge",
                "Resident memory.",
                &[],
                rss as f64,
            );
        }
        let app = lock(&self.inner.app);
        for (k, v) in &app.counters {
            w.metric(
                "street_app_events_total",
                "counter",
                "App counters (Metrics::track).",
                &[("event", k)],
                *v as f64,
            );
        }
        for (k, v) in &app.gauges {
            w.metric(
                "street_app_gauge",
                "gauge",
                "App gauges (Metrics::gauge).",
                &[("name", k)],
                *v,
            );
        }
        w.finish()
    }
}

/// Collects samples by metric family and writes each family once, `# HELP` and `# TYPE`
/// first and all its samples together, in the order families were first seen (the text
/// format allows a family in one group only, so samples of two servers, hubs or rooms
/// must not interleave with other families).
#[derive(Default)]
struct Writer {
    families: Vec<Family>,
    index: std::collections::HashMap<String, usize>,
    current: Option<usize>,
}

struct Family {
    head: String,
    samples: String,
}

impl Writer {
    fn head(&mut self, name: &str, kind: &str, help: &str) {
        let next = self.families.len();
        let i = *self.index.entry(name.to_owned()).or_insert(next);
        if i == next {
            self.families.push(Family {
                head: format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"),
                samples: String::new(),
            });
        }
        self.current = Some(i);
    }

    fn finish(self) -> String {
        let mut out = String::with_capacity(
            self.families
                .iter()
                .map(|f| f.head.len() + f.samples.len())
                .sum(),
        );
        for f in self.families {
            out.push_str(&f.head);
            out.push_str(&f.samples);
        }
        out
    }

    /// A sample of the family named by the last [`Writer::head`].
    fn sample(&mut self, name: &str, labels: &[(&str, &str)], v: f64) {
        let Some(f) = self.current.and_then(|i| self.families.get_mut(i)) else {
            return;
        };
        let out = &mut f.samples;
        out.push_str(name);
        if !labels.is_empty() {
            out.push('{');
            for (i, (k, val)) in labels.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                let _ = write!(out, "{}=\"{}\"", sanitize(k), label(val));
            }
            out.push('}');
        }
        if v.is_infinite() {
            out.push_str(" +Inf\n");
        } else {
            let _ = writeln!(out, " {v}");
        }
    }

    fn metric(&mut self, name: &str, kind: &str, help: &str, labels: &[(&str, &str)], v: f64) {
        self.head(name, kind, help);
        self.sample(name, labels, v);
    }

    fn histogram(
        &mut self,
        name: &str,
        help: &str,
        labels: &[(&str, &str)],
        h: &HistogramSnapshot,
    ) {
        self.head(name, "histogram", help);
        for (le, c) in &h.buckets {
            let le = if le.is_infinite() {
                "+Inf".to_owned()
            } else {
                le.to_string()
            };
            let mut l = labels.to_vec();
            l.push(("le", &le));
            self.sample(&format!("{name}_bucket"), &l, *c as f64);
        }
        self.sample(&format!("{name}_sum"), labels, h.sum);
        self.sample(&format!("{name}_count"), labels, h.count as f64);
    }

    fn websocket(&mut self, name: &str, wss: &WebSocketServer) {
        let s = wss.stats();
        let l = [("server", name)];
        self.metric(
            "street_ws_connections",
            "gauge",
            "WebSocket connections open now.",
            &l,
            s.connections as f64,
        );
        self.metric(
            "street_ws_connections_peak",
            "gauge",
            "Most WebSocket connections open at once.",
            &l,
            s.peak_connections as f64,
        );
        self.metric(
            "street_ws_connections_accepted_total",
            "counter",
            "WebSocket connections accepted.",
            &l,
            s.accepted as f64,
        );
        for (reason, v) in [
            ("capacity", s.rejected_capacity),
            ("origin", s.rejected_origin),
            ("auth", s.rejected_auth),
            ("shutdown", s.rejected_shutdown),
            ("handshake", s.rejected_handshake),
            ("ip", s.rejected_ip),
        ] {
            self.metric(
                "street_ws_connections_rejected_total",
                "counter",
                "WebSocket upgrades refused, by reason.",
                &[("server", name), ("reason", reason)],
                v as f64,
            );
        }
        for (reason, v) in [
            ("rate_limit", s.rate_limited),
            ("first_message_timeout", s.first_message_timeouts),
            ("heartbeat", s.reaped),
            ("slow_consumer", s.slow_consumers),
            ("protocol_error", s.protocol_errors),
        ] {
            self.metric(
                "street_ws_disconnects_total",
                "counter",
                "Connections the server ended, by reason.",
                &[("server", name), ("reason", reason)],
                v as f64,
            );
        }
        self.metric(
            "street_ws_messages_in_total",
            "counter",
            "Messages received.",
            &l,
            s.messages_in as f64,
        );
        self.metric(
            "street_ws_messages_out_total",
            "counter",
            "Messages written.",
            &l,
            s.messages_out as f64,
        );
        self.metric(
            "street_ws_bytes_in_total",
            "counter",
            "Payload bytes received.",
            &l,
            s.bytes_in as f64,
        );
        self.metric(
            "street_ws_bytes_out_total",
            "counter",
            "Payload bytes written.",
            &l,
            s.bytes_out as f64,
        );
        self.metric(
            "street_ws_volatile_dropped_total",
            "counter",
            "Volatile messages dropped for full queues.",
            &l,
            s.volatile_dropped as f64,
        );
        self.metric(
            "street_ws_broadcasts_total",
            "counter",
            "Broadcasts sent.",
            &l,
            s.broadcasts as f64,
        );
        for (kind, v) in [
            ("malformed_json", s.malformed_json),
            ("not_envelope", s.not_envelope),
            ("payload", s.payload_errors),
            ("unexpected_raw", s.unexpected_raw),
            ("handler", s.handler_errors),
        ] {
            self.metric(
                "street_ws_errors_total",
                "counter",
                "Bad input and handler failures, by kind (the connection stays).",
                &[("server", name), ("kind", kind)],
                v as f64,
            );
        }
        self.histogram(
            "street_ws_fanout_duration_seconds",
            "Time to queue one broadcast or room message for every local recipient.",
            &l,
            &wss.fanout_histogram(),
        );
    }

    fn sse(&mut self, reg: &SseRegistry) {
        let s = reg.stats();
        self.metric(
            "street_sse_streams",
            "gauge",
            "SSE streams open now.",
            &[],
            s.open as f64,
        );
        self.metric(
            "street_sse_streams_opened_total",
            "counter",
            "SSE streams opened.",
            &[],
            s.opened as f64,
        );
        for (reason, v) in [
            ("capacity", s.rejected),
            ("shutdown", s.rejected_shutdown),
            ("ip", s.rejected_per_ip),
        ] {
            self.metric(
                "street_sse_streams_rejected_total",
                "counter",
                "SSE requests refused (503, or 429 for the per-IP cap), by reason.",
                &[("reason", reason)],
                v as f64,
            );
        }
        self.metric(
            "street_sse_slow_readers_total",
            "counter",
            "SSE streams ended for reading too slowly.",
            &[],
            s.slow_readers as f64,
        );
    }

    fn http(&mut self, h: &crate::app::HttpStatsHandle) {
        let s = h.get();
        for (reason, v) in [
            ("ip", s.rejected_per_ip),
            ("proxy_header", s.proxy_header_invalid),
        ] {
            self.metric(
                "street_http_connections_rejected_total",
                "counter",
                "HTTP connections refused or closed before any request, by reason.",
                &[("reason", reason)],
                v as f64,
            );
        }
        for (reason, v) in [("too_large", s.body_too_large), ("timeout", s.body_timeout)] {
            self.metric(
                "street_http_bodies_rejected_total",
                "counter",
                "Request bodies refused, by reason.",
                &[("reason", reason)],
                v as f64,
            );
        }
    }

    fn hub(&mut self, name: &str, hub: &SseHub) {
        let s = hub.stats();
        let l = [("hub", name)];
        self.metric(
            "street_sse_hub_published_total",
            "counter",
            "Events published to a hub.",
            &l,
            s.published as f64,
        );
        self.metric(
            "street_sse_hub_delivered_total",
            "counter",
            "Event deliveries queued by a hub.",
            &l,
            s.delivered as f64,
        );
        self.metric(
            "street_sse_hub_replayed_total",
            "counter",
            "Events replayed after Last-Event-ID.",
            &l,
            s.replayed as f64,
        );
        self.metric(
            "street_sse_hub_replay_gaps_total",
            "counter",
            "Resumes sent a street:gap event (aged out, evicted, or over half the queue).",
            &l,
            s.replay_gaps as f64,
        );
        self.metric(
            "street_sse_hub_topics",
            "gauge",
            "Topics held.",
            &l,
            hub.topic_count() as f64,
        );
    }

    fn rooms(&mut self, name: &str, rooms: &Rooms) {
        let s = rooms.stats();
        let l = [("rooms", name)];
        self.metric(
            "street_rooms",
            "gauge",
            "Rooms on this node.",
            &l,
            s.rooms as f64,
        );
        self.metric(
            "street_rooms_joins_total",
            "counter",
            "Room joins.",
            &l,
            s.joins as f64,
        );
        self.metric(
            "street_rooms_leaves_total",
            "counter",
            "Room leaves.",
            &l,
            s.leaves as f64,
        );
        self.metric(
            "street_rooms_published_total",
            "counter",
            "Room messages published here.",
            &l,
            s.published as f64,
        );
        self.metric(
            "street_rooms_delivered_total",
            "counter",
            "Messages queued to local sockets.",
            &l,
            s.delivered as f64,
        );
        self.metric(
            "street_rooms_denied_total",
            "counter",
            "Client joins refused by the authorization hook.",
            &l,
            s.denied as f64,
        );
        self.metric(
            "street_rooms_publishes_refused_total",
            "counter",
            "Client publications refused (event not allowed, too large, over budget).",
            &l,
            s.publishes_refused as f64,
        );
        self.metric(
            "street_rooms_actions_refused_total",
            "counter",
            "Client joins, leaves and typing changes refused (over budget or a room limit).",
            &l,
            s.actions_refused as f64,
        );
        let b = s.broker;
        self.metric(
            "street_cluster_published_total",
            "counter",
            "Messages handed to the broker.",
            &l,
            b.published as f64,
        );
        self.metric(
            "street_cluster_received_total",
            "counter",
            "Messages received from other nodes.",
            &l,
            b.received as f64,
        );
        self.metric(
            "street_cluster_dropped_total",
            "counter",
            "Cluster messages dropped (queue full, by count or by bytes).",
            &l,
            b.dropped as f64,
        );
        self.metric(
            "street_cluster_dropped_over_bytes_total",
            "counter",
            "Cluster messages dropped because a queue reached its byte bound.",
            &l,
            b.dropped_over_bytes as f64,
        );
        self.metric(
            "street_cluster_invalid_total",
            "counter",
            "Invalid messages from the cluster bus dropped before delivery.",
            &l,
            b.invalid as f64,
        );
        self.metric(
            "street_cluster_publish_errors_total",
            "counter",
            "Cluster messages lost to broker errors.",
            &l,
            b.publish_errors as f64,
        );
        self.metric(
            "street_cluster_disconnects_total",
            "counter",
            "Broker connections lost (possible gaps).",
            &l,
            b.disconnects as f64,
        );
        self.metric(
            "street_cluster_resyncs_total",
            "counter",
            "Presence replaced in the broker (reconnect, lapsed liveness, lost write).",
            &l,
            b.resyncs as f64,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_series_are_bounded_and_names_escaped() {
        let m = Metrics::new();
        for i in 0..(MAX_APP_SERIES + 10) {
            m.track(&format!("e{i}"), 1);
        }
        m.track("quote\"and\nnewline", 1);
        assert_eq!(m.tracked("other"), 11);
        let text = m.render();
        assert_eq!(
            text.matches("# TYPE street_app_events_total counter")
                .count(),
            1
        );
        assert!(!text.contains("quote\""));
        assert!(text.contains("street_app_events_total{event=\"other\"} 11"));
    }
}
