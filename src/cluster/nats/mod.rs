//! The NATS broker (cargo feature `nats`): core NATS subjects for fan-out and presence,
//! JetStream for channel history.
//!
//! - **Fan-out**: every node subscribes to `{prefix}.bus` and publishes
//!   [`ClusterMessage`]s there from a single writer task, over one connection, so a node's
//!   messages arrive in the order it sent them. (Publications in channels with history go
//!   through JetStream instead, in offset order per channel: their order against the same
//!   node's other messages is not kept, unlike on Redis.) Core NATS is at most once: what
//!   is published while the server is unreachable and does not fit the queue is lost and
//!   counted. What arrives is decoded with [`ClusterMessage::decode`] before it reaches a
//!   socket (anything else is dropped and counted in `invalid`). The bus is not
//!   authenticated beyond what the NATS server enforces: give the street nodes their own
//!   account or permissions.
//! - **Presence**: NATS keeps no state, so every node holds its own presence and a view of
//!   the others', kept in step on `{prefix}.presence` by numbered deltas, a beat every
//!   `heartbeat`, and snapshots on demand (a gap — a delta lost in an outage — makes the
//!   receiver ask for one; a node asks everyone at start). A node not heard from for
//!   `liveness` heartbeats (default 1 s × 3) is left out of [`Broker::presence`]; a
//!   graceful [`Broker::stop`] says goodbye, and the others drop it at once. A query is
//!   answered from memory, no round trip; after `liveness` heartbeats without a connection
//!   it is [`BrokerError::Unavailable`] (the others' entries have expired).
//! - **Reconnects**: the client reconnects by itself (backing off from 100 ms to 2 s) and
//!   resubscribes; each lost connection is counted in `disconnects`. While disconnected,
//!   the writer holds its queue (bounded, below) and sends it once back; presence deltas
//!   lost meanwhile show up as gaps and are mended by snapshots within a heartbeat or two,
//!   and each node sends its snapshot unasked at its first beat back (`resyncs`).
//! - **History** (when [`NatsOptions::jetstream`] is on and the server runs JetStream,
//!   `nats-server -js`): one stream, `{PREFIX}_history` on `{prefix}.h.>`, holds every
//!   channel's publications, one subject per channel. A publication takes the channel's
//!   next offset with JetStream's optimistic concurrency (`Nats-Expected-Last-Subject-
//!   Sequence`): two nodes publishing at once cannot take the same offset or leave a
//!   hole; the loser reads the new last and tries again (after a random wait of up to
//!   10 ms, for up to 4 × `response_timeout`; then the publication is lost and counted
//!   in `publish_errors`). One appender per node: about one publication per round trip to
//!   the server. Every node reads the stream with a consumer of its own, so each
//!   channel's publications arrive everywhere in offset order; when the consumer fails
//!   (a restart, a lost connection) it is made again after the last one delivered, or
//!   from the start of a stream made again. The stream's limits per subject and age are
//!   those of the largest [`HistoryOptions`] asked for (at least
//!   [`NatsOptions::history_limits`]), its size [`NatsOptions::history_max_bytes`]; each
//!   query applies its own. A channel whose last publication is older than its TTL starts
//!   a new epoch. Without JetStream, publications in channels with history are lost
//!   (counted in `publish_errors`) and joins to them are refused as when history is
//!   down (`room:error` "history unavailable").
//! - **Bounds**: the writer's queue holds `max_queue` messages (default 10 000) and
//!   `max_queue_bytes` of them (default 64 MiB, presence messages included, one snapshot
//!   queued at most); beyond, the newest is dropped and counted in `dropped` (and
//!   `dropped_over_bytes`). The history appender's queue has the same bounds. The
//!   client's own buffers are small (128 commands out; in, `max_queue` messages per
//!   subscription, beyond which the client drops them, counted in `dropped`).
//! - **NATS down at start**: [`NatsOptions::require_at_start`] (default `true`) makes
//!   `Rooms::new` fail with a clear error; `false` starts degraded and connects in the
//!   background.

mod history;
mod presence;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use async_nats::connection::State;
use async_nats::{Client, ConnectOptions, Event};
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::{mpsc, oneshot};

use self::history::Historian;
use self::presence::{Msg, Own, View};
use super::{
    reserve, BoxFuture, Broker, BrokerError, BrokerStats, ClusterMessage, Counters, History,
    HistoryOptions, NodeHooks, Position, PresenceEntry, Target,
};

/// Where JetStream keeps channel history ([`NatsOptions::history_storage`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum HistoryStorage {
    /// On the server's disk: history outlives a server restart.
    File,
    /// In the server's memory: faster; a server restart loses it (a new epoch).
    Memory,
}

/// Options for [`NatsBroker::new`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct NatsOptions {
    /// `nats://host:port` (several, comma-separated, for a cluster). Default
    /// `nats://127.0.0.1:4222`.
    pub url: String,
    /// Prefix of every subject (and, upper-cased, of the history stream's name), to share
    /// one NATS between clusters: letters, digits, `-` and `_`. Default `street`.
    pub prefix: String,
    /// How often a node says it is alive. Default 1 s.
    pub heartbeat: Duration,
    /// Missed heartbeats after which a node counts as gone. Default 3.
    pub liveness: u32,
    /// Fail at start when NATS is unreachable (`true`, the default), or start degraded
    /// and connect in the background (`false`).
    pub require_at_start: bool,
    /// Bound of the outgoing queue, in messages. Default 10 000.
    pub max_queue: usize,
    /// Bound of the outgoing queue, in bytes of messages: what an outage or a slow
    /// server can make a node hold. A message that would take the queue over it is
    /// dropped — the newest — and counted in `dropped` and `dropped_over_bytes`. An empty
    /// queue takes one message of any size. Default 64 MiB.
    pub max_queue_bytes: usize,
    /// Timeout of a connection attempt and of each JetStream request. Default 2 s.
    pub response_timeout: Duration,
    /// Keep channel history in JetStream. Default `true` (it takes effect when the server
    /// runs JetStream).
    pub jetstream: bool,
    /// Where JetStream keeps it. Default [`HistoryStorage::File`].
    pub history_storage: HistoryStorage,
    /// The history stream's smallest limits per channel (publications kept, their age);
    /// a channel's own [`HistoryOptions`] raise them when larger. Default 1 000 and 1 h.
    pub history_limits: HistoryOptions,
    /// The history stream's bound in bytes, over every channel (epoch markers included:
    /// joins to ever new names with history write one each). Beyond, the oldest
    /// publications go first (JetStream's `discard: old`); a channel that loses what a
    /// client needs answers `recovered: false`. Default 1 GiB.
    pub history_max_bytes: u64,
}

impl Default for NatsOptions {
    fn default() -> Self {
        Self {
            url: "nats://127.0.0.1:4222".into(),
            prefix: "street".into(),
            heartbeat: Duration::from_secs(1),
            liveness: 3,
            require_at_start: true,
            max_queue: 10_000,
            max_queue_bytes: 64 * 1024 * 1024,
            response_timeout: Duration::from_secs(2),
            jetstream: true,
            history_storage: HistoryStorage::File,
            history_limits: HistoryOptions::new(1000, Duration::from_secs(3600)),
            history_max_bytes: 1 << 30,
        }
    }
}

impl NatsOptions {
    /// Defaults with this URL.
    ///
    /// ```
    /// let o = street::cluster::nats::NatsOptions::url("nats://10.0.0.5:4222");
    /// assert_eq!(o.prefix, "street");
    /// ```
    pub fn url(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            ..Self::default()
        }
    }
}

/// What the writer sends, in order.
enum Out {
    Bus(Bytes),
    /// A presence message; a delta's number, to tell the beat what went out.
    Presence(Bytes, Option<u64>),
    /// The last part of a snapshot.
    SnapshotEnd(Bytes),
    Stop(oneshot::Sender<()>),
}

struct Shared {
    opts: NatsOptions,
    node: OnceLock<Arc<str>>,
    tx: OnceLock<mpsc::Sender<Out>>,
    client: OnceLock<Client>,
    /// Since when the heartbeat has seen the connection down (`None`: up).
    down_since: Mutex<Option<Instant>>,
    /// Shared with the historian: one set of counters for the broker.
    counters: Arc<Counters>,
    /// Bytes of messages in the writer's queue.
    out_bytes: AtomicUsize,
    own: Mutex<Own>,
    view: Mutex<View>,
    /// The last delta the writer handed to the client (what a beat may claim).
    sent_seq: AtomicU64,
    /// A presence message was lost before it went out: send a snapshot unasked.
    needs_resync: AtomicBool,
    /// When our last snapshot was queued (answering wants at most every quarter beat).
    last_snapshot: Mutex<Option<Instant>>,
    /// A snapshot is in the writer's queue: another would say nothing more (the deltas
    /// behind it continue it).
    snapshot_queued: AtomicBool,
    history: OnceLock<Arc<Historian>>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The NATS broker. See the [module docs](self).
///
/// ```no_run
/// use std::sync::Arc;
/// use street::cluster::nats::{NatsBroker, NatsOptions};
/// use street::rooms::{Rooms, RoomsOptions};
/// # async fn run(wss: street::ws::WebSocketServer) -> Result<(), Box<dyn std::error::Error>> {
/// let broker = NatsBroker::new(NatsOptions::url("nats://127.0.0.1:4222"));
/// let rooms = Rooms::new(&wss, RoomsOptions::default().with_broker(Some(Arc::new(broker)))).await?;
/// # let _ = rooms; Ok(()) }
/// ```
pub struct NatsBroker {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for NatsBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsBroker")
            .field("prefix", &self.shared.opts.prefix)
            .field("node", &self.shared.node.get())
            .finish_non_exhaustive()
    }
}

impl NatsBroker {
    /// A broker with these options (it connects in [`Broker::start`]).
    pub fn new(opts: NatsOptions) -> Self {
        let view = View::new("", opts.heartbeat, opts.liveness);
        Self {
            shared: Arc::new(Shared {
                opts,
                node: OnceLock::new(),
                tx: OnceLock::new(),
                client: OnceLock::new(),
                down_since: Mutex::new(None),
                counters: Arc::default(),
                out_bytes: AtomicUsize::new(0),
                own: Mutex::new(Own::new("")),
                view: Mutex::new(view),
                sent_seq: AtomicU64::new(0),
                needs_resync: AtomicBool::new(false),
                last_snapshot: Mutex::new(None),
                snapshot_queued: AtomicBool::new(false),
                history: OnceLock::new(),
                tasks: Mutex::new(Vec::new()),
            }),
        }
    }
}

/// A prefix NATS takes in subjects and stream names.
fn valid_prefix(p: &str) -> bool {
    !p.is_empty()
        && p.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl Shared {
    fn bus(&self) -> String {
        format!("{}.bus", self.opts.prefix)
    }
    fn presence_subject(&self) -> String {
        format!("{}.presence", self.opts.prefix)
    }
    fn node(&self) -> Arc<str> {
        self.node.get().cloned().unwrap_or_else(|| Arc::from(""))
    }

    /// Queue a message for the writer, within `max_queue` and `max_queue_bytes`;
    /// `false` when it was dropped (counted).
    fn send(&self, out: Out) -> bool {
        let bytes = match &out {
            Out::Bus(b) | Out::Presence(b, _) | Out::SnapshotEnd(b) => b.len(),
            Out::Stop(_) => 0,
        };
        if !reserve(&self.out_bytes, bytes, self.opts.max_queue_bytes) {
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
            self.counters
                .dropped_over_bytes
                .fetch_add(1, Ordering::Relaxed);
            return false;
        }
        let sent = self.tx.get().is_some_and(|tx| tx.try_send(out).is_ok());
        if !sent {
            self.out_bytes.fetch_sub(bytes, Ordering::AcqRel);
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
        }
        sent
    }

    /// Queue presence messages made under the lock of our own presence (so they are
    /// queued in the order they are numbered); a loss makes a snapshot due.
    fn send_presence(&self, msgs: Vec<Msg>) -> bool {
        for m in msgs {
            let out = match &m {
                Msg::Delta { seq, .. } => Out::Presence(m.encode(), Some(*seq)),
                Msg::Snap { last: true, .. } => Out::SnapshotEnd(m.encode()),
                _ => Out::Presence(m.encode(), None),
            };
            if !self.send(out) {
                self.needs_resync.store(true, Ordering::Relaxed);
                return false;
            }
        }
        true
    }

    /// Our whole presence, to everyone (asked, or to mend a loss), unless one is queued
    /// already (then a resync stays due: what is lost after it is not in it). Whether one
    /// was queued.
    fn send_snapshot(&self) -> bool {
        if self.snapshot_queued.swap(true, Ordering::AcqRel) {
            self.needs_resync.store(true, Ordering::Relaxed);
            return false;
        }
        *lock(&self.last_snapshot) = Some(Instant::now());
        let own = lock(&self.own);
        if !self.send_presence(own.snapshot()) {
            // what went in goes out; the rest is sent again at the next beat
            self.snapshot_queued.store(false, Ordering::Release);
            return false;
        }
        true
    }
}

/// The single writer: messages in order, held while the connection is down.
async fn writer(shared: Arc<Shared>, client: Client, mut rx: mpsc::Receiver<Out>) {
    let (bus, presence) = (shared.bus(), shared.presence_subject());
    while let Some(out) = rx.recv().await {
        // the queue is the outage buffer: nothing goes into the client's until it is back
        // (its state, not its events: an event can be lost when its queue is full)
        while client.connection_state() != State::Connected {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        match out {
            Out::Bus(b) => {
                let n = b.len();
                if let Err(e) = client.publish(bus.clone(), b).await {
                    shared
                        .counters
                        .publish_errors
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(error = %e, "nats publish failed");
                }
                shared.out_bytes.fetch_sub(n, Ordering::AcqRel);
            }
            Out::Presence(b, seq) => {
                let n = b.len();
                if client.publish(presence.clone(), b).await.is_err() {
                    shared.needs_resync.store(true, Ordering::Relaxed);
                }
                if let Some(seq) = seq {
                    shared.sent_seq.store(seq, Ordering::Relaxed);
                }
                shared.out_bytes.fetch_sub(n, Ordering::AcqRel);
            }
            Out::SnapshotEnd(b) => {
                let n = b.len();
                if client.publish(presence.clone(), b).await.is_err() {
                    shared.needs_resync.store(true, Ordering::Relaxed);
                }
                shared.snapshot_queued.store(false, Ordering::Release);
                shared.out_bytes.fetch_sub(n, Ordering::AcqRel);
            }
            Out::Stop(done) => {
                let bye = lock(&shared.own).bye();
                let _ = client.publish(presence.clone(), bye.encode()).await;
                let _ = tokio::time::timeout(shared.opts.response_timeout, client.flush()).await;
                let _ = done.send(());
                return;
            }
        }
    }
}

/// Every `heartbeat`: say we are alive (at the last delta that went out), forget the
/// silent nodes, and send a snapshot when one of ours was lost.
async fn heartbeat(shared: Arc<Shared>, client: Client) {
    let mut tick = tokio::time::interval(shared.opts.heartbeat);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let subject = shared.presence_subject();
    loop {
        tick.tick().await;
        lock(&shared.view).expire(Instant::now());
        if client.connection_state() != State::Connected {
            lock(&shared.down_since).get_or_insert_with(Instant::now);
            shared.needs_resync.store(true, Ordering::Relaxed);
            continue;
        }
        let back = lock(&shared.down_since).take().is_some();
        if back {
            // the others may have forgotten us, and we them: everyone's snapshot
            shared.send_presence(vec![Msg::Want {
                node: String::new(),
            }]);
        }
        if shared.needs_resync.swap(false, Ordering::Relaxed) && shared.send_snapshot() {
            shared.counters.resyncs.fetch_add(1, Ordering::Relaxed);
        }
        // straight to the client, not behind the writer's queue: a busy node stays alive
        let beat = {
            let own = lock(&shared.own);
            match own.beat() {
                Msg::Beat { node, inc, .. } => Msg::Beat {
                    node,
                    inc,
                    seq: shared.sent_seq.load(Ordering::Relaxed),
                },
                other => other,
            }
        };
        let sent = tokio::time::timeout(
            shared.opts.heartbeat,
            client.publish(subject.clone(), beat.encode()),
        )
        .await;
        if !matches!(sent, Ok(Ok(()))) {
            tracing::debug!("nats heartbeat not sent");
        }
    }
}

/// The bus: messages from other nodes to local delivery.
async fn bus_reader(shared: Arc<Shared>, mut sub: async_nats::Subscriber, hooks: NodeHooks) {
    let node = shared.node();
    while let Some(m) = sub.next().await {
        match ClusterMessage::decode(m.payload) {
            Ok(m) if m.origin == node => {}
            Ok(m) => {
                shared.counters.received.fetch_add(1, Ordering::Relaxed);
                (hooks.deliver)(m);
            }
            Err(e) => {
                let n = shared.counters.invalid.fetch_add(1, Ordering::Relaxed) + 1;
                if n == 1 || n.is_multiple_of(1000) {
                    tracing::warn!(
                        error = %e,
                        invalid = n,
                        "dropped an invalid message from the cluster bus (logged for the \
                         first and every 1000th)"
                    );
                }
            }
        }
    }
}

/// Presence messages: into the view; wants for us answered, ours sent.
async fn presence_reader(shared: Arc<Shared>, mut sub: async_nats::Subscriber) {
    let node = shared.node();
    while let Some(m) = sub.next().await {
        let Some(msg) = Msg::decode(&m.payload) else {
            shared.counters.invalid.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        if let Msg::Want { node: wanted } = &msg {
            // "" is everyone (a node that just started)
            if wanted.is_empty() || **wanted == *node {
                let recent = lock(&shared.last_snapshot)
                    .is_some_and(|at| at.elapsed() < shared.opts.heartbeat / 4);
                if recent {
                    shared.needs_resync.store(true, Ordering::Relaxed);
                } else {
                    let _ = shared.send_snapshot();
                }
            }
            continue;
        }
        let want = lock(&shared.view).on(msg, Instant::now());
        if let Some(wanted) = want {
            shared.send_presence(vec![Msg::Want { node: wanted }]);
        }
    }
}

fn unavailable(e: impl std::fmt::Display) -> BrokerError {
    BrokerError::Unavailable(e.to_string())
}

impl NatsBroker {
    fn connect_options(&self) -> ConnectOptions {
        // weak: the client holds the callback, and the broker's state holds the client
        let s = Arc::downgrade(&self.shared);
        let opts = &self.shared.opts;
        let mut o = ConnectOptions::new()
            .name(format!("street {}", self.shared.node()))
            .no_echo()
            .connection_timeout(opts.response_timeout)
            // a stalled server is found by unanswered pings (two): within a few beats
            .ping_interval(opts.heartbeat.max(Duration::from_millis(100)))
            .request_timeout(Some(opts.response_timeout))
            .client_capacity(128)
            .subscription_capacity(opts.max_queue.max(1))
            .max_reconnects(None)
            .reconnect_delay_callback(|attempts| {
                let ms = 100u64.saturating_mul(1 << attempts.min(5));
                Duration::from_millis(ms.min(2000))
            })
            .event_callback(move |e| {
                let s = s.upgrade();
                async move {
                    let Some(s) = s else { return };
                    match e {
                        Event::Disconnected => {
                            s.counters.disconnects.fetch_add(1, Ordering::Relaxed);
                            s.needs_resync.store(true, Ordering::Relaxed);
                        }
                        // one event per message the client dropped (when the event
                        // itself is not lost: its queue is bounded too)
                        Event::SlowConsumer(_) => {
                            s.counters.dropped.fetch_add(1, Ordering::Relaxed);
                        }
                        other => tracing::debug!(event = %other, "nats"),
                    }
                }
            });
        if !self.shared.opts.require_at_start {
            o = o.retry_on_initial_connect();
        }
        o
    }
}

impl Broker for NatsBroker {
    fn start(&self, node: Arc<str>, hooks: NodeHooks) -> BoxFuture<'_, Result<(), BrokerError>> {
        Box::pin(async move {
            let shared = self.shared.clone();
            if !valid_prefix(&shared.opts.prefix) {
                return Err(BrokerError::Unavailable(format!(
                    "invalid NATS prefix {:?}: letters, digits, - and _ only",
                    shared.opts.prefix
                )));
            }
            let _ = shared.node.set(node.clone());
            *lock(&shared.own) = Own::new(&node);
            *lock(&shared.view) = View::new(&node, shared.opts.heartbeat, shared.opts.liveness);
            let client = self
                .connect_options()
                .connect(shared.opts.url.as_str())
                .await
                .map_err(unavailable)?;
            let bus = client.subscribe(shared.bus()).await.map_err(unavailable)?;
            let presence = client
                .subscribe(shared.presence_subject())
                .await
                .map_err(unavailable)?;
            // the server has both subscriptions once it answers a flush (it takes a
            // connection's commands in order): from start()'s return on, what another
            // node publishes reaches this one (a degraded start, not connected yet,
            // subscribes when it connects)
            if client.connection_state() == async_nats::connection::State::Connected {
                match tokio::time::timeout(shared.opts.response_timeout, client.flush()).await {
                    Ok(Ok(())) => {}
                    // a slow server still gets them: this node starts, as it did before
                    Ok(Err(e)) => tracing::warn!(error = %e, "NATS flush after subscribing"),
                    Err(_) => tracing::warn!("NATS did not answer a flush after subscribing"),
                }
            }
            if shared.client.set(client.clone()).is_err() {
                return Err(BrokerError::Unavailable(
                    "this NATS broker was started already".into(),
                ));
            }
            let (tx, rx) = mpsc::channel(shared.opts.max_queue.max(1));
            let _ = shared.tx.set(tx);
            let mut tasks = vec![
                tokio::spawn(writer(shared.clone(), client.clone(), rx)),
                tokio::spawn(heartbeat(shared.clone(), client.clone())),
                tokio::spawn(bus_reader(shared.clone(), bus, hooks.clone())),
                tokio::spawn(presence_reader(shared.clone(), presence)),
            ];
            if shared.opts.jetstream {
                let h = Arc::new(Historian::new(
                    client.clone(),
                    &shared.opts,
                    node.clone(),
                    shared.counters.clone(),
                ));
                let _ = shared.history.set(h.clone());
                tasks.push(tokio::spawn(h.run(hooks)));
            }
            // everyone's snapshot, to know the cluster's presence at once
            shared.send_presence(vec![Msg::Want {
                node: String::new(),
            }]);
            lock(&shared.tasks).extend(tasks);
            Ok(())
        })
    }

    fn publish(&self, msg: ClusterMessage) {
        self.shared
            .counters
            .published
            .fetch_add(1, Ordering::Relaxed);
        self.shared.send(Out::Bus(msg.encode()));
    }

    fn publish_with_history(&self, msg: ClusterMessage, history: HistoryOptions) {
        if !matches!(msg.target, Target::Room { .. }) {
            return self.publish(msg);
        }
        let c = &self.shared.counters;
        c.published.fetch_add(1, Ordering::Relaxed);
        match self.shared.history.get() {
            Some(h) => {
                if let Err(lost) = h.append(msg, history) {
                    c.dropped.fetch_add(1, Ordering::Relaxed);
                    if lost.over_bytes {
                        c.dropped_over_bytes.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            None => {
                c.publish_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn history(
        &self,
        channel: &str,
        since: Option<&Position>,
        history: HistoryOptions,
    ) -> BoxFuture<'_, Result<History, BrokerError>> {
        let h = self.shared.history.get().cloned();
        let channel = channel.to_owned();
        let since = since.cloned();
        Box::pin(async move {
            let Some(h) = h else {
                return Err(BrokerError::Unavailable(
                    "JetStream is off for this broker".into(),
                ));
            };
            h.read(&channel, since.as_ref(), history).await
        })
    }

    fn set_presence(&self, room: &str, member: &str, connections: usize) {
        let mut own = lock(&self.shared.own);
        let delta = own.change(room, member, connections);
        // queued under the lock: deltas go out in the order they are numbered
        self.shared.send_presence(vec![delta]);
    }

    fn presence(&self, room: &str) -> BoxFuture<'_, Result<Vec<PresenceEntry>, BrokerError>> {
        let s = &self.shared;
        let lost = s.opts.heartbeat * s.opts.liveness.max(1);
        let down = lock(&s.down_since).is_some_and(|t| t.elapsed() >= lost);
        if down || s.client.get().is_none() {
            // the other nodes' entries have expired: only ours would be a wrong answer
            return Box::pin(async {
                Err(BrokerError::Unavailable("not connected to NATS".into()))
            });
        }
        let mut all = lock(&self.shared.own).room(room);
        all.extend(lock(&self.shared.view).room(room, Instant::now()));
        let out = super::union(all.iter().map(|(m, n)| (m.as_str(), *n)));
        Box::pin(async move { Ok(out) })
    }

    fn stats(&self) -> BrokerStats {
        self.shared.counters.snapshot()
    }

    fn stop(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let (done_tx, done_rx) = oneshot::channel();
            if let Some(tx) = self.shared.tx.get() {
                // behind what is queued, so the last leaves go first
                let sent = tokio::time::timeout(
                    self.shared.opts.response_timeout,
                    tx.send(Out::Stop(done_tx)),
                )
                .await;
                if matches!(sent, Ok(Ok(()))) {
                    let _ =
                        tokio::time::timeout(self.shared.opts.response_timeout * 2, done_rx).await;
                }
            }
            for t in lock(&self.shared.tasks).drain(..) {
                t.abort();
            }
            // the connection goes with the last of its users: flush what is left and close
            if let Some(c) = self.shared.client.get() {
                let _ = tokio::time::timeout(self.shared.opts.response_timeout, c.drain()).await;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_single_subject_tokens() {
        for ok in ["street", "a-b_C9"] {
            assert!(valid_prefix(ok), "{ok}");
        }
        for bad in ["", "a.b", "a b", "*", ">", "é"] {
            assert!(!valid_prefix(bad), "{bad}");
        }
    }
}
