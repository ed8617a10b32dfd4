//! Metrics: a Prometheus `/metrics` route over street's own counters, and a small
//! `TelemetryTracker`-like facade for the app's numbers.
//!
//! Opt-in: nothing is collected that street does not count anyway, and nothing global is
//! installed — the registry only reads the counters of the servers, streams and rooms you
//! hand it when it renders. So it coexists with any `metrics`/`prometheus` recorder the
//! application already installed.
//!
//! ```no_run
//! use street::metrics::Metrics;
//! use street::ws::{WebSocketServer, WsOptions};
//! # async fn run() -> Result<(), street::app::AppError> {
//! let wss = WebSocketServer::new(WsOptions::default());
//! let app = street::app(street::AppOptions::default());
//! let metrics = Metrics::new();
//! metrics.websocket("chat", &wss);
//! metrics.sse(app.sse_registry());
//! metrics.track("logins", 1);                      // the app's own counters
//! app.websocket(&wss).route("/metrics", metrics.route()).listen().await
//! # }
//! ```
//!
//! Label sets stay bounded: servers, hubs and rooms are labelled by the name you register
//! them under (never by room or client), and app counters are limited to
//! [`MAX_APP_SERIES`] names (more are counted under `other`).
//!
//! The counters themselves ([`WebSocketServer::stats`](crate::ws::WebSocketServer::stats),
//! [`Rooms::stats`](crate::rooms::Rooms::stats), …) and [`Histogram`] are always
//! available; the exposition ([`Metrics`]) needs the `metrics` feature (on by default).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

#[cfg(feature = "metrics")]
mod exposition;

#[cfg(feature = "metrics")]
#[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
pub use exposition::{Metrics, MAX_APP_SERIES};

/// Upper bounds of [`Histogram`] buckets, in seconds.
pub const BUCKETS: [f64; 14] = [
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025,
    0.05, 0.1, 0.25,
];

/// A fixed-bucket latency histogram: lock-free, a few atomics per observation.
#[derive(Debug, Default)]
pub struct Histogram {
    counts: [AtomicU64; BUCKETS.len() + 1],
    sum_ns: AtomicU64,
}

/// A histogram's state (cumulative bucket counts, as Prometheus wants them).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[non_exhaustive]
pub struct HistogramSnapshot {
    /// `(upper bound in seconds, observations ≤ it)`, the last bound being `+Inf`.
    pub buckets: Vec<(f64, u64)>,
    /// Sum of the observations, in seconds.
    pub sum: f64,
    /// Number of observations.
    pub count: u64,
}

impl Histogram {
    /// Record one duration.
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(BUCKETS.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(
            u64::try_from(d.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    /// The current state.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut cum = 0;
        let mut buckets = Vec::with_capacity(BUCKETS.len() + 1);
        for (i, c) in self.counts.iter().enumerate() {
            cum += c.load(Ordering::Relaxed);
            buckets.push((BUCKETS.get(i).copied().unwrap_or(f64::INFINITY), cum));
        }
        HistogramSnapshot {
            buckets,
            sum: self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9,
            count: cum,
        }
    }
}

/// This process's resident memory (Linux `/proc/self/status`).
pub fn process_rss_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: u64 = s
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(5));
        h.observe(Duration::from_micros(700));
        h.observe(Duration::from_secs(3));
        let s = h.snapshot();
        assert_eq!(s.count, 3);
        assert_eq!(s.buckets[0], (0.000_01, 1));
        assert_eq!(s.buckets[6], (0.001, 2));
        assert_eq!(s.buckets.last().map(|b| b.1), Some(3));
        assert!((s.sum - 3.000_705).abs() < 1e-9);
    }
}
