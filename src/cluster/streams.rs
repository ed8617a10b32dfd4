//! Channel streams held in memory: what [`MemoryBroker`](super::memory::MemoryBroker)
//! keeps for channels with history. Pure (time is passed in), so the policy is tested
//! here without a clock.
//!
//! A stream is born with a random epoch and offset 0. Each append takes the next offset
//! and keeps the publication; the oldest go beyond `size` or `ttl`. A stream with no
//! append for `ttl` is gone (the next one starts a new epoch). At most `max_streams`
//! streams are held: making one more first drops the expired ones, then the one idle
//! longest (its subscribers' positions stop being recoverable, which they learn from
//! the new epoch), counted in `evicted`.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use super::{History, HistoryOptions, Position};
use crate::ws::envelope;

struct Stream {
    epoch: Arc<str>,
    top: u64,
    /// `(offset, appended at, envelope with offset)`, oldest first.
    kept: VecDeque<(u64, Instant, Bytes)>,
    touched: Instant,
}

impl Stream {
    fn new(now: Instant) -> Self {
        Self {
            epoch: Arc::from(format!("{:016x}", fastrand::u64(..))),
            top: 0,
            kept: VecDeque::new(),
            touched: now,
        }
    }

    fn expired(&self, opts: HistoryOptions, now: Instant) -> bool {
        now.saturating_duration_since(self.touched) >= opts.ttl
    }

    /// Drop what is beyond `size` or older than `ttl`.
    fn trim(&mut self, opts: HistoryOptions, now: Instant) {
        while self.kept.len() > opts.size {
            self.kept.pop_front();
        }
        while self
            .kept
            .front()
            .is_some_and(|(_, at, _)| now.saturating_duration_since(*at) >= opts.ttl)
        {
            self.kept.pop_front();
        }
    }
}

/// The streams of every channel with history on one bus.
pub(crate) struct Streams {
    streams: HashMap<String, Stream>,
    max_streams: usize,
    evicted: u64,
}

impl Streams {
    pub(crate) fn new(max_streams: usize) -> Self {
        Self {
            streams: HashMap::new(),
            max_streams: max_streams.max(1),
            evicted: 0,
        }
    }

    /// Streams dropped to make room for another (see the module docs).
    pub(crate) fn evicted(&self) -> u64 {
        self.evicted
    }

    /// The live stream of `channel`, made (with a new epoch) when it has none.
    fn stream(&mut self, channel: &str, opts: HistoryOptions, now: Instant) -> &mut Stream {
        if self
            .streams
            .get(channel)
            .is_some_and(|s| s.expired(opts, now))
        {
            self.streams.remove(channel);
        }
        if !self.streams.contains_key(channel) && self.streams.len() >= self.max_streams {
            self.streams.retain(|_, s| !s.expired(opts, now));
            if self.streams.len() >= self.max_streams {
                let idlest = self
                    .streams
                    .iter()
                    .min_by_key(|(_, s)| s.touched)
                    .map(|(k, _)| k.clone());
                if let Some(k) = idlest {
                    self.streams.remove(&k);
                    self.evicted += 1;
                }
            }
        }
        self.streams
            .entry(channel.to_owned())
            .or_insert_with(|| Stream::new(now))
    }

    /// Give `env` the channel's next offset and keep it: its position, and the envelope
    /// with `"offset"` as every subscriber gets it.
    pub(crate) fn append(
        &mut self,
        channel: &str,
        env: &[u8],
        opts: HistoryOptions,
        now: Instant,
    ) -> (Position, Bytes) {
        let s = self.stream(channel, opts, now);
        s.top += 1;
        s.touched = now;
        let bytes = envelope::with_offset(env, s.top);
        s.kept.push_back((s.top, now, bytes.clone()));
        s.trim(opts, now);
        (
            Position {
                epoch: s.epoch.clone(),
                offset: s.top,
            },
            bytes,
        )
    }

    /// Where `channel` stands, and what came after `since` when all of it is still kept.
    pub(crate) fn read(
        &mut self,
        channel: &str,
        since: Option<u64>,
        opts: HistoryOptions,
        now: Instant,
    ) -> History {
        let s = self.stream(channel, opts, now);
        s.trim(opts, now);
        let since = since.and_then(|k| {
            if k > s.top {
                return None;
            }
            let first = s.kept.front().map_or(s.top + 1, |(o, _, _)| *o);
            // every offset after k must still be here (k == top: nothing is missing)
            (k + 1 >= first).then(|| {
                s.kept
                    .iter()
                    .filter(|(o, _, _)| *o > k)
                    .map(|(o, _, b)| (*o, b.clone()))
                    .collect()
            })
        });
        History {
            epoch: s.epoch.clone(),
            offset: s.top,
            since,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn opts(size: usize, ttl_s: u64) -> HistoryOptions {
        HistoryOptions::new(size, Duration::from_secs(ttl_s))
    }

    #[test]
    fn offsets_are_consecutive_and_a_resume_gets_exactly_what_followed() {
        let (mut s, t0, o) = (Streams::new(10), Instant::now(), opts(5, 60));
        let first = s.read("c", None, o, t0);
        assert_eq!((first.offset, first.since), (0, None));
        for k in 1..=4u64 {
            let (p, b) = s.append("c", br#"{"type":"m","payload":1,"ts":1}"#, o, t0);
            assert_eq!((p.offset, &p.epoch), (k, &first.epoch));
            assert!(b.ends_with(format!(",\"offset\":{k}}}").as_bytes()));
        }
        let h = s.read("c", Some(2), o, t0);
        let got: Vec<u64> = h.since.unwrap_or_default().iter().map(|e| e.0).collect();
        assert_eq!((h.offset, got), (4, vec![3, 4]));
        assert_eq!(s.read("c", Some(4), o, t0).since, Some(vec![]));
        assert_eq!(s.read("c", Some(5), o, t0).since, None, "from the future");
    }

    #[test]
    fn trimmed_by_size_or_age_means_not_recoverable() {
        let (mut s, t0, o) = (Streams::new(10), Instant::now(), opts(3, 10));
        for _ in 0..5 {
            s.append("c", b"{}", o, t0);
        }
        // kept 3, 4, 5: from 2 on is whole, from 1 is not
        assert!(s.read("c", Some(2), o, t0).since.is_some());
        assert!(s.read("c", Some(1), o, t0).since.is_none());
        let t1 = t0 + Duration::from_secs(6);
        s.append("c", b"{}", o, t1);
        let t2 = t0 + Duration::from_secs(11);
        // 3..5 aged out, 6 is kept
        assert!(s.read("c", Some(4), o, t2).since.is_none());
        assert_eq!(s.read("c", Some(5), o, t2).since.map(|v| v.len()), Some(1));
    }

    #[test]
    fn an_idle_stream_expires_and_comes_back_with_another_epoch() {
        let (mut s, t0, o) = (Streams::new(10), Instant::now(), opts(3, 10));
        let (p, _) = s.append("c", b"{}", o, t0);
        let h = s.read("c", Some(1), o, t0 + Duration::from_secs(11));
        assert_ne!(h.epoch, p.epoch);
        assert_eq!(h.offset, 0);
    }

    #[test]
    fn at_the_stream_limit_the_idlest_is_evicted_and_counted() {
        let (mut s, t0, o) = (Streams::new(2), Instant::now(), opts(3, 60));
        let (a, _) = s.append("a", b"{}", o, t0);
        s.append("b", b"{}", o, t0 + Duration::from_secs(1));
        s.append("c", b"{}", o, t0 + Duration::from_secs(2));
        assert_eq!(s.evicted(), 1);
        assert_ne!(
            s.read("a", None, o, t0 + Duration::from_secs(3)).epoch,
            a.epoch
        );
    }
}
