//! The Prometheus text exposition (the `metrics` feature): [`Metrics`] and its writer.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::routing::MethodRouter;

use super::{process_rss_bytes, HistogramSnapshot};
use crate::counters::Series;
use crate::rooms::Rooms;
use crate::sse::SseRegistry;
use crate::ws::WebSocketServer;

/// Most distinct app counter and gauge names; more are folded into `other`.
pub const MAX_APP_SERIES: usize = 256;

enum Source {
    Ws(String, WebSocketServer),
    Sse(SseRegistry),
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
/// format allows a family in one group only, so samples of two servers or rooms
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

    /// One declared series (see `stats!`) of a source labelled `source` (if any).
    fn series(&mut self, source: Option<(&str, &str)>, s: Series, v: u64) {
        let labels: Vec<(&str, &str)> = source.into_iter().chain(s.label).collect();
        self.metric(s.name, s.kind.as_str(), s.help, &labels, v as f64);
    }

    fn websocket(&mut self, name: &str, wss: &WebSocketServer) {
        let l = Some(("server", name));
        wss.stats().visit(&mut |s, v| self.series(l, s, v));
        self.histogram(
            "street_ws_fanout_duration_seconds",
            "Time to queue one broadcast or room message for every local recipient.",
            &[("server", name)],
            &wss.fanout_histogram(),
        );
    }

    fn sse(&mut self, reg: &SseRegistry) {
        reg.stats().visit(&mut |s, v| self.series(None, s, v));
    }

    fn http(&mut self, h: &crate::app::HttpStatsHandle) {
        h.get().visit(&mut |s, v| self.series(None, s, v));
    }

    fn rooms(&mut self, name: &str, rooms: &Rooms) {
        let l = Some(("rooms", name));
        let s = rooms.stats();
        s.visit(&mut |s, v| self.series(l, s, v));
        s.broker.visit(&mut |s, v| self.series(l, s, v));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::counters::Kind;

    /// Fields of the snapshot types that are deliberately not written to `/metrics`.
    const UNEXPOSED: &[&str] = &[
        "SseStats.ended_by_shutdown",
        "RoomsStats.broker", // its own fields are, through BrokerStats
    ];

    fn declared() -> Vec<(&'static str, Option<&'static str>, Vec<Series>)> {
        fn collect(visit: impl FnOnce(&mut dyn FnMut(Series, u64))) -> Vec<Series> {
            let mut v = Vec::new();
            visit(&mut |s, _| v.push(s));
            v
        }
        vec![
            (
                "StatsSnapshot",
                Some("server"),
                collect(|f| crate::ws::StatsSnapshot::default().visit(f)),
            ),
            (
                "SseStats",
                None,
                collect(|f| crate::sse::SseStats::default().visit(f)),
            ),
            (
                "HttpStats",
                None,
                collect(|f| crate::net::HttpStats::default().visit(f)),
            ),
            (
                "RoomsStats",
                Some("rooms"),
                collect(|f| crate::rooms::RoomsStats::default().visit(f)),
            ),
            (
                "BrokerStats",
                Some("rooms"),
                collect(|f| crate::cluster::BrokerStats::default().visit(f)),
            ),
        ]
    }

    #[test]
    fn every_snapshot_field_is_exposed_or_listed() {
        let fields = [
            ("StatsSnapshot", crate::ws::StatsSnapshot::FIELDS),
            ("SseStats", crate::sse::SseStats::FIELDS),
            ("HttpStats", crate::net::HttpStats::FIELDS),
            ("RoomsStats", crate::rooms::RoomsStats::FIELDS),
            ("BrokerStats", crate::cluster::BrokerStats::FIELDS),
        ];
        let mut unexposed = Vec::new();
        for (ty, fields) in fields {
            for (field, exposed) in fields {
                let path = format!("{ty}.{field}");
                assert!(
                    *exposed || UNEXPOSED.contains(&path.as_str()),
                    "{path} has no `=> series` in its stats! block: expose it, or list it in UNEXPOSED"
                );
                if !exposed {
                    unexposed.push(path);
                }
            }
        }
        unexposed.sort();
        let mut listed: Vec<String> = UNEXPOSED.iter().map(|s| s.to_string()).collect();
        listed.sort();
        assert_eq!(
            unexposed, listed,
            "UNEXPOSED lists a field that is exposed or gone"
        );
    }

    /// Every declared series is in the exposition, each family once (one `# HELP`, one
    /// `# TYPE` of the declared type) however many sources report it, and one sample per
    /// series and source.
    #[tokio::test]
    async fn every_declared_counter_is_one_family_in_the_exposition() {
        let m = Metrics::new();
        let app = crate::app(crate::AppOptions::default());
        for name in ["a", "b"] {
            let wss = WebSocketServer::new(crate::ws::WsOptions::default());
            let rooms = Rooms::new(&wss, crate::rooms::RoomsOptions::default())
                .await
                .expect("rooms");
            m.websocket(name, &wss);
            m.rooms(name, &rooms);
        }
        m.sse(app.sse_registry());
        m.http(&app.http_stats());
        let text = m.render();

        let mut families: std::collections::HashMap<&str, (&str, Kind)> = Default::default();
        for (ty, source, series) in declared() {
            assert!(!series.is_empty(), "{ty} declares no series");
            for s in series {
                let (help, kind) = *families.entry(s.name).or_insert((s.help, s.kind));
                assert_eq!(
                    (help, kind),
                    (s.help, s.kind),
                    "{}: help or type differ",
                    s.name
                );
                let sources: &[&str] = if source.is_some() { &["a", "b"] } else { &[""] };
                for src in sources {
                    let labels: Vec<String> = source
                        .map(|k| format!("{k}=\"{src}\""))
                        .into_iter()
                        .chain(s.label.map(|(k, v)| format!("{k}=\"{v}\"")))
                        .collect();
                    let series = if labels.is_empty() {
                        s.name.to_owned()
                    } else {
                        format!("{}{{{}}}", s.name, labels.join(","))
                    };
                    let n = text
                        .lines()
                        .filter(|l| l.strip_prefix(&series).is_some_and(|r| r.starts_with(' ')))
                        .count();
                    assert_eq!(n, 1, "{ty}: {series} sampled {n} times in\n{text}");
                }
            }
        }
        for (name, (help, kind)) in families {
            let head = format!("# HELP {name} {help}\n# TYPE {name} {}\n", kind.as_str());
            assert_eq!(
                text.matches(&head).count(),
                1,
                "{name}: head not once in\n{text}"
            );
            assert_eq!(
                text.matches(&format!("# HELP {name} ")).count(),
                1,
                "{name}"
            );
            assert_eq!(
                text.matches(&format!("# TYPE {name} ")).count(),
                1,
                "{name}"
            );
        }
    }

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
