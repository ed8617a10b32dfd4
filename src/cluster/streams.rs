//! Channel streams held in memory: what [`MemoryBroker`](super::memory::MemoryBroker)
//! keeps for channels with history. Pure (time is passed in), so the policy is tested
//! here without a clock.
//!
//! A stream is born, with a random epoch, by its first read (a join) or publication.
//! Each append takes the next offset and keeps the publication; the oldest go beyond
//! `size` or `ttl`. A stream with no append for `ttl` is gone (the next one starts a new
//! epoch). At most `max_streams` streams are held: making one more first drops a stream
//! that never had a publication (oldest first, at no search: joins to ever new names
//! cannot push out the history of rooms that have one), else the expired ones, else the
//! one idle longest (its subscribers' positions stop being recoverable, which they learn
//! from the new epoch); each is counted in `evicted`. A position of another epoch
//! continues nothing, not even offset 0: what the old epoch had after it is unknown.

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
    /// Streams made by a read, oldest first (some may have had publications since).
    unpublished: VecDeque<String>,
    max_streams: usize,
    evicted: u64,
}

impl Streams {
    pub(crate) fn new(max_streams: usize) -> Self {
        Self {
            streams: HashMap::new(),
            unpublished: VecDeque::new(),
            max_streams: max_streams.max(1),
            evicted: 0,
        }
    }

    /// Streams dropped to make room for another (see the module docs).
    pub(crate) fn evicted(&self) -> u64 {
        self.evicted
    }

    /// The live stream of `channel`, if any.
    fn live(&mut self, channel: &str, opts: HistoryOptions, now: Instant) -> Option<&mut Stream> {
        if self
            .streams
            .get(channel)
            .is_some_and(|s| s.expired(opts, now))
        {
            self.streams.remove(channel);
        }
        self.streams.get_mut(channel)
    }

    /// The live stream of `channel`, made (with a new epoch) when it has none.
    fn stream(&mut self, channel: &str, opts: HistoryOptions, now: Instant) -> &mut Stream {
        if self.live(channel, opts, now).is_none() {
            if self.streams.len() >= self.max_streams {
                self.make_room(opts, now);
            }
            if self.unpublished.len() >= self.max_streams {
                // names of streams gone by other ways
                self.unpublished
                    .retain(|k| self.streams.get(k).is_some_and(|s| s.top == 0));
            }
            self.unpublished.push_back(channel.to_owned());
        }
        self.streams
            .entry(channel.to_owned())
            .or_insert_with(|| Stream::new(now))
    }

    /// Drop one stream (see the module docs for which).
    fn make_room(&mut self, opts: HistoryOptions, now: Instant) {
        while let Some(k) = self.unpublished.pop_front() {
            if self.streams.get(&k).is_some_and(|s| s.top == 0) {
                self.streams.remove(&k);
                self.evicted += 1;
                return;
            }
        }
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

    /// Where `channel` stands, and what came after `since` when all of it is still kept
    /// (and `since` is of this epoch).
    pub(crate) fn read(
        &mut self,
        channel: &str,
        since: Option<&Position>,
        opts: HistoryOptions,
        now: Instant,
    ) -> History {
        let s = self.stream(channel, opts, now);
        s.trim(opts, now);
        let since = since.and_then(|p| {
            let k = p.offset;
            if k > s.top || p.epoch != s.epoch {
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

    /// A position in the only epoch these tests' streams have, whatever it is.
    fn at(s: &Streams, offset: u64) -> Position {
        let epoch = s
            .streams
            .values()
            .next()
            .map_or_else(|| Arc::from(""), |st| st.epoch.clone());
        Position { epoch, offset }
    }

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
        // a client at 0 of this epoch gets the whole history
        assert_eq!(
            s.read("c", Some(&at(&s, 0)), o, t0).since.map(|v| v.len()),
            Some(4)
        );
        let h = s.read("c", Some(&at(&s, 2)), o, t0);
        let got: Vec<u64> = h.since.unwrap_or_default().iter().map(|e| e.0).collect();
        assert_eq!((h.offset, got), (4, vec![3, 4]));
        assert_eq!(s.read("c", Some(&at(&s, 4)), o, t0).since, Some(vec![]));
        assert_eq!(
            s.read("c", Some(&at(&s, 5)), o, t0).since,
            None,
            "from the future"
        );
    }

    #[test]
    fn trimmed_by_size_or_age_means_not_recoverable() {
        let (mut s, t0, o) = (Streams::new(10), Instant::now(), opts(3, 10));
        for _ in 0..5 {
            s.append("c", b"{}", o, t0);
        }
        // kept 3, 4, 5: from 2 on is whole, from 1 is not
        assert!(s.read("c", Some(&at(&s, 2)), o, t0).since.is_some());
        assert!(s.read("c", Some(&at(&s, 1)), o, t0).since.is_none());
        let t1 = t0 + Duration::from_secs(6);
        s.append("c", b"{}", o, t1);
        let t2 = t0 + Duration::from_secs(11);
        // 3..5 aged out, 6 is kept
        assert!(s.read("c", Some(&at(&s, 4)), o, t2).since.is_none());
        assert_eq!(
            s.read("c", Some(&at(&s, 5)), o, t2).since.map(|v| v.len()),
            Some(1)
        );
    }

    #[test]
    fn an_idle_stream_expires_and_comes_back_with_another_epoch() {
        let (mut s, t0, o) = (Streams::new(10), Instant::now(), opts(3, 10));
        let (p, _) = s.append("c", b"{}", o, t0);
        let (q, _) = s.append("c", b"{}", o, t0 + Duration::from_secs(11));
        assert_ne!(q.epoch, p.epoch);
        assert_eq!(q.offset, 1);
    }

    #[test]
    fn joins_to_ever_new_names_never_push_out_a_history() {
        let (mut s, t0, o) = (Streams::new(3), Instant::now(), opts(3, 60));
        let (a, _) = s.append("a", b"{}", o, t0);
        for i in 0..1000 {
            let _ = s.read(&format!("junk{i}"), None, o, t0);
        }
        assert_eq!(s.streams.len(), 3);
        assert_eq!(s.evicted(), 998);
        let h = s.read("a", Some(&at(&s, 0)), o, t0);
        assert_eq!((h.epoch, h.offset), (a.epoch, 1));
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
