//! SSE fan-out: publish one event to every subscriber of a topic, encoded once, with a
//! bounded replay buffer so a reconnecting browser gets what it missed.
//!
//! ```no_run
//! use axum::extract::Path;
//! use street::sse::{HubOptions, SseHub, SseRejection, SseRequest};
//!
//! # async fn demo() {
//! let hub = SseHub::new(HubOptions::default());
//! let h = hub.clone();
//! let route: axum::routing::MethodRouter = axum::routing::get(move |Path(topic): Path<String>, req: SseRequest| {
//!     let h = h.clone();
//!     // replays the events after the browser's Last-Event-ID, then continues live
//!     async move { h.subscribe(req, &topic).map(|(_sse, response)| response) }
//! });
//! // elsewhere: every subscriber of "prices" gets the same bytes
//! let _ = hub.publish("prices", &serde_json::json!({"EURUSD": 1.08}), Some("price"));
//! # let _ = route;
//! # }
//! ```
//!
//! Ids are per topic: 1, 2, 3, … A subscriber whose `Last-Event-ID` is `n` first gets the
//! buffered events with ids above `n`, then live ones, with no gap or duplicate between
//! the two (both happen under the topic's lock). Ids start again at 1 when the process
//! restarts (or, for a topic, after `u64::MAX`); keep state you cannot lose elsewhere.
//!
//! **Gaps.** A resume cannot always get every event after `n`: older events aged out or
//! were evicted from the buffer, or what was missed is more than the stream's queue can
//! hold. A resume replays at most half of the stream's queue
//! ([`SseOptions::max_queue_bytes`](super::SseOptions::max_queue_bytes)` / 2`, the other
//! half is room for live events published before the client starts reading), the
//! **newest** events that fit, because they are what continues into the live stream. The
//! ids it cannot replay are announced first, by one event named [`GAP_EVENT`]
//! (`street:gap`) whose data is `{"from":first,"to":last}` (the ids lost, inclusive) and
//! whose `id` is `last`; then the replayed events and live ones follow. A client that
//! listens for `street:gap` knows what to re-fetch elsewhere; one that does not simply
//! continues. Either way the stream stays open and the browser's next `Last-Event-ID` is
//! past the gap, so a reconnect never asks for the same backlog again (no resume loop).
//! Each gap event is counted in [`HubStats::replay_gaps`].
//!
//! Bounds: `max_topics` topics (subscribing to one more is refused with 503), the replay
//! buffer by count and age, each resume's replay by half the stream's queue (a gap event
//! beyond), and each subscriber's queue by bytes (a slow reader's stream ends, counted in
//! `slow_readers`).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::response::Response;
use bytes::Bytes;
use serde::Serialize;

use super::encode::{encode_event, SseEvent};
use super::registry::{SseRejection, SseRequest};
use super::stream::{open, Shared};
use super::{Sse, SseError, SseOptions};
use crate::counters::stats;

/// The name of the event that tells a resuming subscriber which ids it will not get
/// (see the [module docs](self)): data `{"from":first,"to":last}`, id `last`.
pub const GAP_EVENT: &str = "street:gap";

/// Options for [`SseHub::new`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct HubOptions {
    /// Options of every subscriber's stream (heartbeat, queue cap, retry hint).
    pub stream: SseOptions,
    /// Events kept per topic for replay; 0 turns replay off. Default 256.
    pub replay_events: usize,
    /// Events older than this are not replayed. Default 5 minutes.
    pub replay_age: Duration,
    /// Most topics held at once (with subscribers or replayable events). Default 10 000.
    pub max_topics: usize,
}

impl Default for HubOptions {
    fn default() -> Self {
        Self {
            stream: SseOptions::default(),
            replay_events: 256,
            replay_age: Duration::from_secs(300),
            max_topics: 10_000,
        }
    }
}

stats! {
    /// Counters of a hub (see [`SseHub::stats`]).
    #[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
    #[serde(rename_all = "camelCase")]
    #[non_exhaustive]
    pub struct HubStats counted in HubCounters {
        /// Events published.
        count published => counter("street_sse_hub_published_total", "Events published to a hub."),
        /// Event deliveries queued to subscribers.
        count delivered => counter(
            "street_sse_hub_delivered_total",
            "Event deliveries queued by a hub.",
        ),
        /// Subscribers whose stream ended because they read too slowly.
        count slow_readers,
        /// Events re-sent from replay buffers after a `Last-Event-ID`.
        count replayed => counter(
            "street_sse_hub_replayed_total",
            "Events replayed after Last-Event-ID.",
        ),
        /// Resumes that could not replay every event after their `Last-Event-ID` (aged out,
        /// evicted, or more than half the stream's queue) and got a [`GAP_EVENT`] instead.
        count replay_gaps => counter(
            "street_sse_hub_replay_gaps_total",
            "Resumes sent a street:gap event (aged out, evicted, or over half the queue).",
        ),
        /// Subscriptions refused because `max_topics` was reached.
        count rejected_topics,
    }
}

#[derive(Debug, Default)]
struct Topic {
    subs: Vec<Arc<Shared>>,
    /// Prune closed subscribers when `subs` reaches this length (amortized O(1)).
    prune_at: usize,
    /// The last id given out.
    last_id: u64,
    /// `(id, when, frame)`, oldest first.
    replay: VecDeque<(u64, Instant, Bytes)>,
}

impl Topic {
    fn expire(&mut self, max_age: Duration, now: Instant) {
        while let Some((_, at, _)) = self.replay.front() {
            if now.duration_since(*at) > max_age {
                self.replay.pop_front();
            } else {
                break;
            }
        }
    }

    fn idle(&self) -> bool {
        self.replay.is_empty() && self.subs.iter().all(|s| s.is_done())
    }
}

#[derive(Debug)]
struct HubInner {
    opts: HubOptions,
    topics: Mutex<HashMap<String, Arc<Mutex<Topic>>>>,
    counters: HubCounters,
}

/// A topic-based SSE fan-out. Cheap to clone. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct SseHub {
    inner: Arc<HubInner>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl SseHub {
    /// A hub with these options.
    pub fn new(opts: HubOptions) -> Self {
        Self {
            inner: Arc::new(HubInner {
                opts,
                topics: Mutex::new(HashMap::new()),
                counters: HubCounters::default(),
            }),
        }
    }

    /// The topic, created if needed (`None` when `max_topics` is reached even after
    /// dropping idle topics).
    fn topic(&self, name: &str, create: bool) -> Option<Arc<Mutex<Topic>>> {
        let mut topics = lock(&self.inner.topics);
        if let Some(t) = topics.get(name) {
            return Some(t.clone());
        }
        if !create {
            return None;
        }
        if topics.len() >= self.inner.opts.max_topics {
            let (age, now) = (self.inner.opts.replay_age, Instant::now());
            topics.retain(|_, t| {
                let mut t = lock(t);
                t.expire(age, now);
                !t.idle()
            });
            if topics.len() >= self.inner.opts.max_topics {
                return None;
            }
        }
        let t = Arc::new(Mutex::new(Topic {
            prune_at: 16,
            ..Topic::default()
        }));
        topics.insert(name.to_owned(), t.clone());
        Some(t)
    }

    /// Subscribe the request to `topic`: replay what it missed after its
    /// `Last-Event-ID`, then live events. Returns the subscriber's own handle (to send it
    /// events of its own, or close it) and the response to return.
    ///
    /// # Errors
    /// [`SseRejection::TooManyTopics`] (a 503 response) when the hub is full.
    pub fn subscribe(&self, req: SseRequest, topic: &str) -> Result<(Sse, Response), SseRejection> {
        let last = req.last_event_number();
        let Some(t) = self.topic(topic, true) else {
            self.inner.counters.rejected_topics.inc();
            return Err(SseRejection::TooManyTopics {
                limit: self.inner.opts.max_topics,
            });
        };
        let (sse, response) = open(self.inner.opts.stream.clone(), 0, req.into_slot());
        let mut t = lock(&t);
        if let Some(last) = last {
            self.replay(&mut t, last, sse.shared());
        }
        if t.subs.len() >= t.prune_at {
            t.subs.retain(|s| !s.is_done());
            t.prune_at = (t.subs.len() * 2).max(16);
        }
        t.subs.push(sse.shared().clone());
        Ok((sse, response))
    }

    /// Queue for a subscriber resuming after `last` what it missed that fits in half its
    /// queue (the newest events), preceded by a [`GAP_EVENT`] for the ids it will not get.
    fn replay(&self, t: &mut Topic, last: u64, to: &Shared) {
        if last >= t.last_id {
            // nothing missed (or an id from before a restart: nothing to match it with)
            return;
        }
        // `last < t.last_id`, so this does not overflow
        let first_missing = last + 1;
        t.expire(self.inner.opts.replay_age, Instant::now());
        let after = t.replay.partition_point(|(id, _, _)| *id <= last);
        let budget = self.inner.opts.stream.max_queue_bytes / 2;
        let (mut from, mut bytes) = (t.replay.len(), 0usize);
        while from > after {
            let len = t.replay[from - 1].2.len();
            if bytes.saturating_add(len) > budget {
                break;
            }
            bytes += len;
            from -= 1;
        }
        // the first id replayed; every id before it (and after `last`) is lost
        let first_sent = t
            .replay
            .get(from)
            .map_or(t.last_id.saturating_add(1), |(id, _, _)| *id);
        if first_sent > first_missing {
            let lost_to = first_sent - 1;
            let gap = encode_event(&SseEvent {
                id: Some(lost_to.to_string()),
                event: Some(GAP_EVENT.into()),
                data: format!(r#"{{"from":{first_missing},"to":{lost_to}}}"#),
                retry: None,
            });
            self.inner.counters.replay_gaps.inc();
            tracing::debug!(first_missing, lost_to, "SSE resume with a gap");
            if to.push(gap).is_err() {
                return;
            }
        }
        let mut n = 0;
        for (_, _, frame) in t.replay.range(from..) {
            if to.push(frame.clone()).is_err() {
                break;
            }
            n += 1;
        }
        self.inner.counters.replayed.add(n);
    }

    /// Publish `data` (a string as-is, anything else as JSON) as event `event` to every
    /// subscriber of `topic`: encoded once, the bytes shared. Returns the number of
    /// subscribers it was queued to.
    ///
    /// # Errors
    /// [`SseError::Serialize`] when `data` does not serialize.
    pub fn publish<T: Serialize + ?Sized>(
        &self,
        topic: &str,
        data: &T,
        event: Option<&str>,
    ) -> Result<usize, SseError> {
        let data =
            match serde_json::to_value(data).map_err(|e| SseError::Serialize(e.to_string()))? {
                serde_json::Value::String(s) => s,
                other => other.to_string(),
            };
        let replay = self.inner.opts.replay_events > 0;
        self.inner.counters.published.inc();
        let Some(t) = self.topic(topic, replay) else {
            return Ok(0);
        };
        let mut t = lock(&t);
        t.last_id = match t.last_id.checked_add(1) {
            Some(id) => id,
            None => {
                // after u64::MAX ids start again at 1, as after a restart
                t.replay.clear();
                1
            }
        };
        let frame = encode_event(&SseEvent {
            id: Some(t.last_id.to_string()),
            event: event.map(Into::into),
            data,
            retry: None,
        });
        if replay {
            let now = Instant::now();
            t.expire(self.inner.opts.replay_age, now);
            if t.replay.len() >= self.inner.opts.replay_events {
                t.replay.pop_front();
            }
            let id = t.last_id;
            t.replay.push_back((id, now, frame.clone()));
        }
        let (mut sent, mut slow) = (0usize, 0u64);
        t.subs.retain(|s| match s.push(frame.clone()) {
            Ok(()) => {
                sent += 1;
                true
            }
            Err(SseError::SlowReader { .. }) => {
                slow += 1;
                false
            }
            Err(_) => false,
        });
        let idle = t.subs.is_empty() && !replay;
        drop(t);
        if idle {
            lock(&self.inner.topics).remove(topic);
        }
        self.inner.counters.delivered.add(sent as u64);
        self.inner.counters.slow_readers.add(slow);
        Ok(sent)
    }

    /// Open subscribers of `topic`.
    pub fn subscriber_count(&self, topic: &str) -> usize {
        self.topic(topic, false)
            .map_or(0, |t| lock(&t).subs.iter().filter(|s| !s.is_done()).count())
    }

    /// Topics held (with subscribers or replayable events).
    pub fn topic_count(&self) -> usize {
        lock(&self.inner.topics).len()
    }

    /// The counters.
    pub fn stats(&self) -> HubStats {
        self.inner.counters.snapshot()
    }
}
