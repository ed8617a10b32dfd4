//! Channel history over JetStream (see the [broker's docs](super)).
//!
//! Each publication is stored as its bus encoding ([`ClusterMessage::encode`], position
//! and all) on the channel's subject, `{prefix}.h.{channel in base64url}`, with the
//! header `Nats-Expected-Last-Subject-Sequence` naming the stream sequence of the
//! channel's previous message: JetStream refuses it when another node appended first
//! (the appender then reads the new last and tries again), and the stored header links
//! each publication to the one before, which is how a recovery walks back from the last.
//! A channel with no fresh publication gets its epoch from a **marker** (offset 0, no
//! envelope) written by the first read, so that a joiner's position `(epoch, 0)` is
//! continued by the first publication.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::message::StreamMessage;
use async_nats::jetstream::{self, consumer, stream};
use async_nats::{Client, HeaderMap};
use base64::Engine as _;
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::mpsc;

use super::{lock, reserve, HistoryStorage, NatsOptions};
use crate::cluster::{
    BrokerError, ClusterMessage, Counters, History, HistoryOptions, NodeHooks, Position, Target,
};
use crate::ws::envelope;

const EXPECTED: &str = "Nats-Expected-Last-Subject-Sequence";

/// Channels whose last stream sequence an appender remembers (beyond, it forgets them
/// all and reads again).
const MAX_CACHED: usize = 10_000;

/// Times a read tries again after another node wrote first.
const ATTEMPTS: usize = 8;

/// How long an append keeps trying while other nodes append to the same channel first,
/// in `response_timeout`s: each try after a conflict waits a random while (up to 10 ms)
/// first, so that a node appending back to back cannot starve another for long.
const CONTENDED_TIMEOUTS: u32 = 4;

/// A publication dropped before it was stored.
pub(super) struct Lost {
    pub(super) over_bytes: bool,
}

/// A channel's stored message, as much as the appender and reads need of it.
#[derive(Clone)]
struct Last {
    seq: u64,
    /// Its position; `None` for a message that is not a publication of ours.
    pos: Option<Position>,
    at_ms: i64,
    /// Its channel (when decoded).
    channel: Option<String>,
    payload: Bytes,
}

impl Last {
    fn of(seq: u64, payload: &Bytes, at_ms: i64) -> Self {
        let m = ClusterMessage::decode(payload.clone()).ok();
        let channel = m.as_ref().and_then(|m| match &m.target {
            Target::Room { room, .. } => Some(room.clone()),
            _ => None,
        });
        Self {
            seq,
            pos: m.and_then(|m| m.position),
            at_ms,
            channel,
            payload: payload.clone(),
        }
    }

    /// The envelope it carries (with its offset).
    fn envelope(&self) -> Option<Bytes> {
        ClusterMessage::decode(self.payload.clone())
            .ok()
            .map(|m| m.envelope)
    }
}

/// Where the delivering consumer is: the stream (by when it was made) and the last
/// sequence delivered.
#[derive(Clone, Copy)]
struct Seen {
    created: i128,
    seq: u64,
}

/// Missed publications read one by one, walking back; more are searched for and
/// batched.
const WALK: u64 = 16;

struct Append {
    msg: ClusterMessage,
    history: HistoryOptions,
}

/// The stream, made (or grown) to the largest limits asked for so far.
struct Made {
    stream: stream::Stream,
    size: usize,
    ttl: Duration,
    /// When the server made it (a stream made again starts its sequences over).
    created: i128,
}

pub(super) struct Historian {
    js: jetstream::Context,
    node: Arc<str>,
    prefix: String,
    name: String,
    storage: HistoryStorage,
    base: HistoryOptions,
    timeout: Duration,
    max_bytes: u64,
    /// Most messages one pull asks for (within what the client buffers).
    batch: usize,
    made: tokio::sync::Mutex<Option<Made>>,
    cache: Mutex<HashMap<String, Last>>,
    tx: mpsc::Sender<Append>,
    rx: Mutex<Option<mpsc::Receiver<Append>>>,
    queued_bytes: AtomicUsize,
    max_queue_bytes: usize,
    counters: Arc<Counters>,
}

fn unavailable(e: impl std::fmt::Display) -> BrokerError {
    BrokerError::Unavailable(e.to_string())
}

fn new_epoch() -> Arc<str> {
    Arc::from(format!("{:016x}", fastrand::u64(..)))
}

fn ttl_ms(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX)
}

/// Unix nanoseconds (a server timestamp's) in milliseconds.
fn ms(nanos: i128) -> i64 {
    i64::try_from(nanos / 1_000_000).unwrap_or(0)
}

/// When the server stored it, in Unix milliseconds.
fn unix_ms(m: &StreamMessage) -> i64 {
    ms(m.time.unix_timestamp_nanos())
}

impl Historian {
    pub(super) fn new(
        client: Client,
        opts: &NatsOptions,
        node: Arc<str>,
        counters: Arc<Counters>,
    ) -> Self {
        let mut js = jetstream::new(client.clone());
        js.set_timeout(opts.response_timeout);
        let (tx, rx) = mpsc::channel(opts.max_queue.max(1));
        Self {
            js,
            node,
            prefix: opts.prefix.clone(),
            name: format!("{}_history", opts.prefix.to_uppercase()),
            storage: opts.history_storage,
            base: opts.history_limits,
            timeout: opts.response_timeout,
            max_bytes: opts.history_max_bytes,
            batch: (opts.max_queue / 2).clamp(1, 200),
            made: tokio::sync::Mutex::new(None),
            cache: Mutex::new(HashMap::new()),
            tx,
            rx: Mutex::new(Some(rx)),
            queued_bytes: AtomicUsize::new(0),
            max_queue_bytes: opts.max_queue_bytes,
            counters,
        }
    }

    fn subject(&self, channel: &str) -> String {
        let c = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(channel);
        format!("{}.h.{c}", self.prefix)
    }

    /// Queue a publication for the appender. Never blocks.
    pub(super) fn append(&self, msg: ClusterMessage, history: HistoryOptions) -> Result<(), Lost> {
        let n = msg.envelope.len();
        if !reserve(&self.queued_bytes, n, self.max_queue_bytes) {
            return Err(Lost { over_bytes: true });
        }
        if self.tx.try_send(Append { msg, history }).is_err() {
            self.queued_bytes.fetch_sub(n, Ordering::AcqRel);
            return Err(Lost { over_bytes: false });
        }
        Ok(())
    }

    /// The stream, made or grown to hold `want` (and the base limits).
    async fn stream(&self, want: HistoryOptions) -> Result<stream::Stream, BrokerError> {
        let mut made = self.made.lock().await;
        let size = want.size.max(self.base.size).max(1);
        let ttl = want.ttl.max(self.base.ttl);
        if let Some(m) = made.as_ref() {
            if m.size >= size && m.ttl >= ttl {
                return Ok(m.stream.clone());
            }
        }
        let (size, ttl) = match made.as_ref() {
            Some(m) => (m.size.max(size), m.ttl.max(ttl)),
            None => (size, ttl),
        };
        let config = stream::Config {
            name: self.name.clone(),
            subjects: vec![format!("{}.h.>", self.prefix)],
            max_messages_per_subject: i64::try_from(size).unwrap_or(i64::MAX),
            max_age: ttl,
            max_bytes: i64::try_from(self.max_bytes).unwrap_or(i64::MAX),
            storage: match self.storage {
                HistoryStorage::File => stream::StorageType::File,
                HistoryStorage::Memory => stream::StorageType::Memory,
            },
            discard: stream::DiscardPolicy::Old,
            allow_direct: true,
            ..Default::default()
        };
        let mut s = self
            .js
            .get_or_create_stream(config)
            .await
            .map_err(unavailable)?;
        let info = s.info().await.map_err(unavailable)?.clone();
        // another node (or an operator) may have made it, with other limits: grow the two
        // we need on its own configuration, never shrink them, leave the rest as it is
        let mut have = info.config.clone();
        let have_size = usize::try_from(have.max_messages_per_subject).unwrap_or(usize::MAX);
        let short_size = have.max_messages_per_subject > 0 && have_size < size;
        let short_ttl = !have.max_age.is_zero() && have.max_age < ttl;
        if short_size || short_ttl {
            if short_size {
                have.max_messages_per_subject = i64::try_from(size).unwrap_or(i64::MAX);
            }
            if short_ttl {
                have.max_age = ttl;
            }
            self.js.update_stream(have).await.map_err(unavailable)?;
        }
        let created = info.created.unix_timestamp_nanos();
        if made.as_ref().is_some_and(|m| m.created != created) || made.is_none() {
            // another stream than the one our cache knows: its positions mean nothing here
            lock(&self.cache).clear();
        }
        *made = Some(Made {
            stream: s.clone(),
            size,
            ttl,
            created,
        });
        Ok(s)
    }

    /// Forget the stream (it was deleted, e.g. a server restarted without its storage).
    async fn lost_stream(&self) {
        *self.made.lock().await = None;
        lock(&self.cache).clear();
    }

    /// The channel's last stored message, and the message itself.
    async fn last(
        &self,
        s: &stream::Stream,
        subject: &str,
    ) -> Result<Option<(Last, StreamMessage)>, BrokerError> {
        match s.get_last_raw_message_by_subject(subject).await {
            Ok(m) => Ok(Some((read_last(&m), m))),
            Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => Ok(None),
            Err(e) => {
                // the stream may be gone (a server restarted without its storage): look
                // again next time
                self.lost_stream().await;
                Err(unavailable(e))
            }
        }
    }

    /// Store one message on `subject` after the one at stream sequence `expect` (0: the
    /// subject is empty). `Ok(None)`: another node went first.
    async fn put(
        &self,
        subject: &str,
        expect: u64,
        payload: Bytes,
    ) -> Result<Option<u64>, BrokerError> {
        let mut headers = HeaderMap::new();
        headers.insert(EXPECTED, expect.to_string().as_str());
        let ack = self
            .js
            .publish_with_headers(subject.to_owned(), headers, payload)
            .await
            .map_err(unavailable)?;
        match ack.await {
            Ok(a) => Ok(Some(a.sequence)),
            Err(e) if e.kind() == jetstream::context::PublishErrorKind::WrongLastSequence => {
                Ok(None)
            }
            Err(e) => {
                if e.kind() == jetstream::context::PublishErrorKind::StreamNotFound {
                    self.lost_stream().await;
                }
                Err(unavailable(e))
            }
        }
    }

    /// Position and store one publication.
    async fn store(&self, a: &Append) -> Result<(), BrokerError> {
        let Target::Room { room, .. } = &a.msg.target else {
            return Ok(());
        };
        let s = self.stream(a.history).await?;
        let subject = self.subject(room);
        let until = tokio::time::Instant::now() + self.timeout * CONTENDED_TIMEOUTS;
        for attempt in 0u64.. {
            if attempt > 0 {
                if tokio::time::Instant::now() >= until {
                    break;
                }
                let jitter = fastrand::u64(0..=200 * attempt.min(50));
                tokio::time::sleep(Duration::from_micros(jitter)).await;
            }
            // after a lost race, ask the server: the cache may lag behind it
            let cached = if attempt == 0 {
                lock(&self.cache).get(room).cloned()
            } else {
                None
            };
            let last = match cached {
                Some(l) => Some(l),
                None => self.last(&s, &subject).await?.map(|(l, _)| l),
            };
            let now = envelope::now_ms();
            let fresh = |l: &Last| now.saturating_sub(l.at_ms) < ttl_ms(a.history.ttl);
            let (expect, epoch, offset) = match &last {
                Some(l) => match &l.pos {
                    Some(p) if fresh(l) && p.offset < u64::MAX => {
                        (l.seq, p.epoch.clone(), p.offset + 1)
                    }
                    _ => (l.seq, new_epoch(), 1),
                },
                None => (0, new_epoch(), 1),
            };
            let pos = Position { epoch, offset };
            let payload = ClusterMessage {
                envelope: envelope::with_offset(&a.msg.envelope, offset),
                position: Some(pos.clone()),
                ..a.msg.clone()
            }
            .encode();
            match self.put(&subject, expect, payload).await {
                Ok(Some(seq)) => {
                    self.remember(room, seq, pos, now);
                    return Ok(());
                }
                Ok(None) => {
                    lock(&self.cache).remove(room);
                }
                Err(e) => {
                    lock(&self.cache).remove(room);
                    return Err(e);
                }
            }
        }
        Err(BrokerError::Unavailable(
            "channel too contended to append".into(),
        ))
    }

    fn remember(&self, channel: &str, seq: u64, pos: Position, at_ms: i64) {
        let mut c = lock(&self.cache);
        if c.len() >= MAX_CACHED && !c.contains_key(channel) {
            c.clear();
        }
        let newer = c.get(channel).is_none_or(|l| l.seq < seq);
        if newer {
            c.insert(
                channel.to_owned(),
                Last {
                    seq,
                    pos: Some(pos),
                    at_ms,
                    channel: None,
                    payload: Bytes::new(),
                },
            );
        }
    }

    /// Where the channel's stream stands and, when asked, what followed `since`.
    pub(super) async fn read(
        &self,
        channel: &str,
        since: Option<&Position>,
        history: HistoryOptions,
    ) -> Result<History, BrokerError> {
        let s = self.stream(history).await?;
        let subject = self.subject(channel);
        for _ in 0..ATTEMPTS {
            let last = self.last(&s, &subject).await?;
            let now = envelope::now_ms();
            if let Some((l, m)) = &last {
                if let Some(p) = &l.pos {
                    if now.saturating_sub(l.at_ms) < ttl_ms(history.ttl) {
                        let since = match since {
                            Some(k) => self.since(&s, k, p, m, history, now).await,
                            None => None,
                        };
                        return Ok(History {
                            epoch: p.epoch.clone(),
                            offset: p.offset,
                            since,
                        });
                    }
                }
            }
            // no fresh stream: make its epoch, with a marker later publications continue
            let expect = last.as_ref().map_or(0, |(l, _)| l.seq);
            let epoch = new_epoch();
            let marker = ClusterMessage {
                origin: self.node.clone(),
                target: Target::Room {
                    room: channel.to_owned(),
                    except_socket: None,
                    except_member: None,
                },
                envelope: Bytes::new(),
                position: Some(Position {
                    epoch: epoch.clone(),
                    offset: 0,
                }),
            };
            if let Some(seq) = self.put(&subject, expect, marker.encode()).await? {
                self.remember(
                    channel,
                    seq,
                    Position {
                        epoch: epoch.clone(),
                        offset: 0,
                    },
                    now,
                );
                return Ok(History {
                    epoch,
                    offset: 0,
                    since: None,
                });
            }
        }
        Err(BrokerError::Unavailable(
            "channel too contended to read".into(),
        ))
    }

    /// The publications after `k` up to `top` (the last, `m`), when every one is still
    /// stored and young enough: a few are read walking back the chain of expected
    /// sequences, one request each; more are found with a binary search for the first
    /// (one request per halving of the stream) and read in one batch.
    async fn since(
        &self,
        s: &stream::Stream,
        k: &Position,
        top: &Position,
        m: &StreamMessage,
        history: HistoryOptions,
        now: i64,
    ) -> Option<Vec<(u64, Bytes)>> {
        if k.epoch != top.epoch || k.offset > top.offset {
            return None;
        }
        let missed = top.offset - k.offset;
        if missed > history.size as u64 {
            return None;
        }
        let young = |l: &Last| now.saturating_sub(l.at_ms) < ttl_ms(history.ttl);
        let is = |l: &Last, offset: u64| {
            l.pos
                .as_ref()
                .is_some_and(|p| p.epoch == top.epoch && p.offset == offset)
        };
        if missed <= WALK {
            let mut out = Vec::new();
            let mut cur = m.clone();
            for want in (k.offset + 1..=top.offset).rev() {
                let l = read_last(&cur);
                if !is(&l, want) || !young(&l) {
                    return None;
                }
                out.push((
                    want,
                    ClusterMessage::decode(cur.payload.clone()).ok()?.envelope,
                ));
                if want > k.offset + 1 {
                    cur = s.get_raw_message(prev_seq(&cur)?).await.ok()?;
                }
            }
            out.reverse();
            return Some(out);
        }
        let first = self
            .find(s, &read_last(m), k.offset + 1, &top.epoch)
            .await?;
        let batch = self.batch(s, &first, missed).await?;
        let mut out = Vec::with_capacity(batch.len());
        for (want, cur) in (k.offset + 1..=top.offset).zip(batch) {
            if !is(&cur, want) || !young(&cur) {
                return None;
            }
            out.push((want, cur.envelope()?));
        }
        (out.len() as u64 == missed).then_some(out)
    }

    /// The channel's message at `offset` of `epoch`, at or before `top`: a binary search on
    /// stream sequences, each probe the subject's first message at or after one (within
    /// the epoch, offsets grow with sequences, and every older epoch's messages come
    /// before).
    async fn find(
        &self,
        s: &stream::Stream,
        top: &Last,
        offset: u64,
        epoch: &Arc<str>,
    ) -> Option<Last> {
        let subject = self.subject_of(top)?;
        // invariant: the message wanted is the subject's first at or after some sequence
        // in lo..=hi, and `found` is the first at or after hi
        let (mut lo, mut hi) = (1u64, top.seq);
        let mut found = top.clone();
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let m = s
                .raw_message_builder()
                .sequence(mid)
                .next_by_subject(subject.clone())
                .send()
                .await
                .ok()?;
            let l = read_last(&m);
            let at_or_after = l
                .pos
                .as_ref()
                .is_some_and(|p| p.epoch == *epoch && p.offset >= offset);
            if at_or_after {
                // (not `l.seq`: the probe may have skipped past other channels' messages
                // to the one that is `hi`'s already, and the search would stand still)
                hi = mid;
                found = l;
            } else {
                lo = l.seq + 1;
            }
        }
        let f = found;
        f.pos
            .as_ref()
            .is_some_and(|p| p.offset == offset)
            .then_some(f)
    }

    fn subject_of(&self, l: &Last) -> Option<String> {
        l.channel.as_deref().map(|c| self.subject(c))
    }

    /// `n` of the channel's messages from `first` on, in one batch (an ephemeral
    /// consumer, gone after).
    async fn batch(&self, s: &stream::Stream, first: &Last, n: u64) -> Option<Vec<Last>> {
        let c = s
            .create_consumer(consumer::pull::Config {
                filter_subject: self.subject_of(first)?,
                deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: first.seq,
                },
                ack_policy: consumer::AckPolicy::None,
                inactive_threshold: Duration::from_secs(10),
                ..Default::default()
            })
            .await
            .ok()?;
        let name = c.cached_info().name.clone();
        let read = async {
            let mut msgs = c
                .fetch()
                .max_messages(usize::try_from(n).ok()?)
                .expires(self.timeout)
                .messages()
                .await
                .ok()?;
            let mut out = Vec::new();
            while let Some(m) = msgs.next().await {
                let m = m.ok()?;
                let info = m.info().ok()?;
                out.push(Last::of(
                    info.stream_sequence,
                    &m.message.payload,
                    ms(info.published.unix_timestamp_nanos()),
                ));
                if out.len() as u64 == n {
                    break;
                }
            }
            Some(out)
        };
        let out = read.await;
        // on every path: an ephemeral consumer would otherwise live on for its threshold
        let _ = s.delete_consumer(&name).await;
        out
    }

    /// Store what is queued, in order; read the stream and deliver what every node
    /// stored, in order. Runs until the broker stops.
    pub(super) async fn run(self: Arc<Self>, hooks: NodeHooks) {
        let rx = lock(&self.rx).take();
        let appender = {
            let me = self.clone();
            async move {
                let Some(mut rx) = rx else { return };
                while let Some(a) = rx.recv().await {
                    let n = a.msg.envelope.len();
                    if let Err(e) = me.store(&a).await {
                        me.counters.publish_errors.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(error = %e, "nats history publish failed");
                    }
                    me.queued_bytes.fetch_sub(n, Ordering::AcqRel);
                }
            }
        };
        tokio::join!(appender, self.consume(hooks));
    }

    /// Deliver the stream's new messages, in order, for as long as the broker runs; when
    /// the consumer fails (the server restarted, the connection was lost), make another
    /// where this one stopped.
    async fn consume(&self, hooks: NodeHooks) {
        let mut delay = Duration::from_millis(100);
        let mut seen: Option<Seen> = None;
        let mut warned = false;
        loop {
            match self.follow(&hooks, &mut seen).await {
                Ok(()) => {
                    delay = Duration::from_millis(100);
                    warned = false;
                }
                Err(e) if !warned => {
                    tracing::warn!(
                        error = %e,
                        "nats history unavailable (server down, or JetStream off: \
                         nats-server -js); retrying"
                    );
                    warned = true;
                }
                Err(e) => tracing::debug!(error = %e, "nats history consumer failed"),
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(2));
        }
    }

    /// One consumer's life: made after the last message delivered (or at the stream's
    /// end, the first time; from the start of a stream made again), delivering until it
    /// fails. Its own reconnection is not relied on: it starts over from what it last
    /// delivered, which is not ours to know after a server restart.
    async fn follow(&self, hooks: &NodeHooks, seen: &mut Option<Seen>) -> Result<(), BrokerError> {
        let mut s = self.stream(self.base).await?;
        let info = match s.info().await {
            Ok(i) => i.clone(),
            Err(e) => {
                // deleted, perhaps: make it again next time
                self.lost_stream().await;
                return Err(unavailable(e));
            }
        };
        let created = info.created.unix_timestamp_nanos();
        let last = info.state.last_sequence;
        let start = match *seen {
            None => last + 1,
            Some(sn) if sn.created == created && sn.seq <= last => sn.seq + 1,
            // it lost its tail (file storage after a crash): what we delivered past its
            // end is gone for it; go on from its end
            Some(sn) if sn.created == created => {
                lock(&self.cache).clear();
                last + 1
            }
            // made again: everything in it was published since; deliver it all
            Some(_) => {
                lock(&self.cache).clear();
                info.state.first_sequence.max(1)
            }
        };
        let mut at = Seen {
            created,
            seq: start - 1,
        };
        *seen = Some(at);
        let c = s
            .create_consumer(consumer::pull::Config {
                filter_subject: format!("{}.h.>", self.prefix),
                deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: start,
                },
                ack_policy: consumer::AckPolicy::None,
                inactive_threshold: Duration::from_secs(30),
                ..Default::default()
            })
            .await
            .map_err(unavailable)?;
        let mut msgs = c
            .stream()
            .max_messages_per_batch(self.batch)
            .heartbeat(Duration::from_secs(1))
            .expires(Duration::from_secs(5))
            .messages()
            .await
            .map_err(unavailable)?;
        // the consumer numbers what it sends 1, 2, 3…: a jump is a message lost on the
        // way (sent while the connection was down, or dropped by a full client buffer),
        // which this consumer will never send again (no acks): make another
        let mut next = 1;
        while let Some(m) = msgs.next().await {
            let m = m.map_err(unavailable)?;
            let Ok(info) = m.info() else { continue };
            if info.consumer_sequence != next {
                return Err(BrokerError::Unavailable(format!(
                    "history consumer skipped from {next} to {}",
                    info.consumer_sequence
                )));
            }
            next += 1;
            let seq = info.stream_sequence;
            if seq <= at.seq {
                continue; // delivered already
            }
            at.seq = seq;
            *seen = Some(at);
            self.deliver(
                hooks,
                m.message.payload.clone(),
                seq,
                ms(info.published.unix_timestamp_nanos()),
            );
        }
        Ok(())
    }

    fn deliver(&self, hooks: &NodeHooks, payload: Bytes, seq: u64, at_ms: i64) {
        match ClusterMessage::decode(payload) {
            Ok(m) => {
                let (Some(pos), Target::Room { room, .. }) = (&m.position, &m.target) else {
                    self.counters.invalid.fetch_add(1, Ordering::Relaxed);
                    return;
                };
                self.remember(room, seq, pos.clone(), at_ms);
                // a marker carries an epoch, not a publication
                if pos.offset == 0 {
                    return;
                }
                if m.origin != self.node {
                    self.counters.received.fetch_add(1, Ordering::Relaxed);
                }
                (hooks.deliver)(m);
            }
            Err(e) => {
                self.counters.invalid.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(error = %e, "invalid message in the history stream");
            }
        }
    }
}

/// What a stored message says of itself.
fn read_last(m: &StreamMessage) -> Last {
    Last::of(m.sequence, &m.payload, unix_ms(m))
}

/// The stream sequence of the message before this one in its channel.
fn prev_seq(m: &StreamMessage) -> Option<u64> {
    m.headers.get(EXPECTED)?.as_str().parse().ok()
}
