//! The Redis broker (cargo feature `redis`): pub/sub for fan-out, hashes for presence,
//! a key with a TTL per node for liveness.
//!
//! - **Fan-out**: every node subscribes to one channel, `{prefix}:bus`, and publishes
//!   [`ClusterMessage`]s there from a single writer task, so a node's messages arrive in
//!   the order it sent them. Pub/sub is at most once: what is published while Redis is
//!   unreachable is lost and counted.
//! - **Validation**: what arrives on the bus is decoded with [`ClusterMessage::decode`]
//!   (header, target, a UTF-8 envelope) before it reaches a socket; anything else is
//!   dropped, counted in `invalid` and logged (a `warn` for the first and every 1000th),
//!   so one bad message cannot make every browser of every node close with 1007. The bus
//!   is not authenticated: whoever can `PUBLISH` on the Redis can still send valid
//!   messages to every client (protect the Redis itself).
//! - **Connections**: three redis-rs `ConnectionManager`s over RESP3, which reconnect by
//!   themselves: the writer's (publishes, presence writes, queries), the subscriber's
//!   (resubscribes automatically) and the heartbeat's own, so liveness never waits behind
//!   large publishes. Each lost subscriber connection is counted in `disconnects`.
//! - **Presence**: `{prefix}:presence:{room}` is a hash of `node␟member → connections`,
//!   and `{prefix}:fields:{node}` indexes the fields a node has written. Each node
//!   refreshes `{prefix}:node:{id}` every `heartbeat` with a TTL of `heartbeat × liveness`
//!   (default 1 s × 3); a query keeps only the fields of nodes whose key exists, so a
//!   crashed node's members disappear within `liveness` heartbeats, and removes the dead
//!   fields it saw. A graceful [`Broker::stop`] deletes the node's fields and key at once.
//! - **Resync**: whenever Redis may disagree with the node — a presence write dropped
//!   (queue full) or failed (Redis down), a lost connection, a lapsed liveness key (Redis
//!   restarted, or the node stalled) — presence is marked dirty, and at the next
//!   successful heartbeat the node *replaces* its presence: one Lua script removes every
//!   field its index lists and writes the current ones (atomic: other nodes never see a
//!   half-written presence), counted in `resyncs`. A member who left during an outage is
//!   gone once Redis is back, whether Redis restarted empty or kept its data.
//! - **Bounds**: the writer's queue holds `max_queue` commands (default 10 000) and
//!   `max_queue_bytes` of messages (default 64 MiB), the reader's queue the same; beyond,
//!   the newest message is dropped and counted in `dropped` (and `dropped_over_bytes` for
//!   the byte bound). Commands time out after `response_timeout` (default 2 s).
//! - **Redis down at start**: [`RedisOptions::require_at_start`] (default `true`) makes
//!   `Rooms::new` fail with a clear error; `false` starts degraded — local clients are
//!   served, cluster messages are dropped and counted — and connects in the background.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{PushInfo, PushKind, Value};
use tokio::sync::{mpsc, oneshot};

use super::{
    reserve, BoxFuture, Broker, BrokerError, BrokerStats, ClusterMessage, Counters, History,
    HistoryOptions, NodeHooks, PresenceEntry, Target,
};

/// Options for [`RedisBroker::new`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RedisOptions {
    /// `redis://host:port[/db]`, or `rediss://` for TLS (feature `tls`); RESP3 is
    /// requested for you (the broker needs its push messages). Default
    /// `redis://127.0.0.1:6379`.
    pub url: String,
    /// Prefix of every key and channel, to share one Redis between clusters. Default
    /// `street`.
    pub prefix: String,
    /// How often a node refreshes its liveness key. Default 1 s.
    pub heartbeat: Duration,
    /// Missed heartbeats after which a node counts as gone. Default 3.
    pub liveness: u32,
    /// Fail at start when Redis is unreachable (`true`, the default), or start degraded
    /// and connect in the background (`false`).
    pub require_at_start: bool,
    /// Bound of the outgoing and incoming queues, in messages. Default 10 000.
    pub max_queue: usize,
    /// Bound of the outgoing and incoming queues, in bytes of messages (each queue): what
    /// a Redis outage or a slow Redis can make a node hold. A message that would take a
    /// queue over it is dropped — the **newest**, the one being queued — and counted in
    /// `dropped` and `dropped_over_bytes`; messages already queued keep their order. (A
    /// channel can only refuse at its tail without a lock, and delivery is at most once
    /// either way: dropping at the tail leaves one gap instead of reordering.) An empty
    /// queue takes one message of any size. Presence writes are not counted here (they are
    /// small, bounded by `max_queue`, and a dropped one triggers a resync). Default 64 MiB.
    pub max_queue_bytes: usize,
    /// Timeout of each Redis command. Default 2 s.
    pub response_timeout: Duration,
    /// For `rediss://` URLs (feature `tls`): a CA certificate (PEM) to trust for the
    /// server's certificate, e.g. your own CA or a self-signed one; `None` trusts the
    /// system's roots. Default `None`.
    #[cfg(feature = "tls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
    pub tls_ca_pem: Option<Vec<u8>>,
}

impl Default for RedisOptions {
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:6379".into(),
            prefix: "street".into(),
            heartbeat: Duration::from_secs(1),
            liveness: 3,
            require_at_start: true,
            max_queue: 10_000,
            max_queue_bytes: 64 * 1024 * 1024,
            response_timeout: Duration::from_secs(2),
            #[cfg(feature = "tls")]
            tls_ca_pem: None,
        }
    }
}

impl RedisOptions {
    /// Defaults with this URL.
    pub fn url(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            ..Self::default()
        }
    }
}

/// `url` asking for RESP3 (unless it names a protocol), before any `#fragment`
/// (`rediss://host/#insecure`).
fn with_resp3(url: &str) -> String {
    let (base, fragment) = match url.split_once('#') {
        Some((b, f)) => (b, Some(f)),
        None => (url, None),
    };
    // An explicit protocol parameter is replaced: the subscriber needs RESP3's pushes.
    let base = match base.split_once('?') {
        Some((head, query)) => {
            let kept: Vec<&str> = query
                .split('&')
                .filter(|kv| !kv.starts_with("protocol="))
                .collect();
            if kept.iter().all(|kv| kv.is_empty()) {
                head.to_owned()
            } else {
                format!("{head}?{}", kept.join("&"))
            }
        }
        None => base.to_owned(),
    };
    let mut out = if base.contains('?') {
        format!("{base}&protocol=resp3")
    } else {
        format!("{base}?protocol=resp3")
    };
    if let Some(f) = fragment {
        out.push('#');
        out.push_str(f);
    }
    out
}

enum Cmd {
    Publish(Bytes),
    /// A publication in a channel with history: positioned by [`PUBLISH_POSITIONED`].
    Positioned {
        channel: String,
        /// The bus header, open for the position (see [`ClusterMessage::open_header`]).
        head: Bytes,
        envelope: Bytes,
        history: HistoryOptions,
        at_ms: i64,
    },
    Presence {
        room: String,
        member: String,
        connections: usize,
    },
    Resync,
    Stop(oneshot::Sender<()>),
}

impl Cmd {
    /// Bytes it holds against `max_queue_bytes`.
    fn bytes(&self) -> usize {
        match self {
            Cmd::Publish(b) => b.len(),
            Cmd::Positioned { head, envelope, .. } => head.len() + envelope.len(),
            _ => 0,
        }
    }
}

/// Remove every presence field this node's index lists, then write the given ones (and
/// index them), atomically. KEYS[1]: the node's index; ARGV[1]: the presence key prefix;
/// ARGV[2]: the node's field prefix; then `room, member, connections` triples. An index
/// entry is `{room length}:{room}{member}`.
const REPLACE_PRESENCE: &str = r"
local old = redis.call('SMEMBERS', KEYS[1])
for _, e in ipairs(old) do
  local c = string.find(e, ':', 1, true)
  if c then
    local n = tonumber(string.sub(e, 1, c - 1)) or 0
    redis.call('HDEL', ARGV[1] .. string.sub(e, c + 1, c + n), ARGV[2] .. string.sub(e, c + n + 1))
  end
end
redis.call('DEL', KEYS[1])
for i = 3, #ARGV - 2, 3 do
  redis.call('HSET', ARGV[1] .. ARGV[i], ARGV[2] .. ARGV[i + 1], ARGV[i + 2])
  redis.call('SADD', KEYS[1], string.len(ARGV[i]) .. ':' .. ARGV[i] .. ARGV[i + 1])
end
return #old
";

/// Position a publication and publish it, atomically: the channel's next offset (a new
/// epoch first when the stream has none: its past is lost), appended to the history
/// (trimmed to its size, expiring after its TTL) and published on the bus with its
/// position; every node, the publishing one too, delivers it from the bus. KEYS[1]: the
/// channel's meta hash (`e` epoch, `o` offset); KEYS[2]: its stream (entry id
/// `{offset}-0`, fields `t` ms and `d` envelope). ARGV: a new epoch, size, TTL (ms), now
/// (ms), the bus, the open bus header, the envelope. The envelope gets `,"offset":K`
/// before its closing brace, as `envelope::with_offset` does.
const PUBLISH_POSITIONED: &str = r#"
local epoch = redis.call('HGET', KEYS[1], 'e')
if not epoch then
  epoch = ARGV[1]
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'e', epoch)
end
local off = redis.call('HINCRBY', KEYS[1], 'o', 1)
local env = string.sub(ARGV[7], 1, -2) .. ',"offset":' .. off .. '}'
redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[2], off .. '-0', 't', ARGV[4], 'd', env)
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
redis.call('PUBLISH', ARGV[5], ARGV[6] .. '"e":"' .. epoch .. '","n":' .. off .. '}\n' .. env)
return off
"#;

/// Where a channel's stream stands, and the entries from an offset on. KEYS as
/// [`PUBLISH_POSITIONED`]; ARGV: a new epoch (taken when the stream has none), TTL (ms),
/// the first offset wanted (or empty), the client's epoch (entries are read only for
/// that epoch), most entries to read. Returns `{epoch, offset,
/// entries}`.
const READ_HISTORY: &str = r"
local epoch = redis.call('HGET', KEYS[1], 'e')
if not epoch then
  epoch = ARGV[1]
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'e', epoch)
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
local top = tonumber(redis.call('HGET', KEYS[1], 'o') or '0')
local entries = {}
if ARGV[3] ~= '' and ARGV[4] == epoch then
  entries = redis.call('XRANGE', KEYS[2], ARGV[3], '+', 'COUNT', ARGV[5])
end
return {epoch, top, entries}
";

/// [`PUBLISH_POSITIONED`], sent by its hash.
fn publish_script() -> &'static redis::Script {
    static SCRIPT: std::sync::LazyLock<redis::Script> =
        std::sync::LazyLock::new(|| redis::Script::new(PUBLISH_POSITIONED));
    &SCRIPT
}

/// A history's TTL in milliseconds, at least 1 (what `PEXPIRE` takes).
fn ttl_ms(history: HistoryOptions) -> u64 {
    u64::try_from(history.ttl.as_millis())
        .unwrap_or(u64::MAX)
        .max(1)
}

fn new_epoch() -> String {
    format!("{:016x}", fastrand::u64(..))
}

/// The text of a script reply item.
fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(n) => Some(n.to_string()),
        _ => None,
    }
}

fn items(v: Value) -> Option<Vec<Value>> {
    match v {
        Value::Array(a) | Value::Set(a) => Some(a),
        Value::Map(m) => Some(m.into_iter().flat_map(|(k, v)| [k, v]).collect()),
        _ => None,
    }
}

/// Read [`READ_HISTORY`]'s reply: `since` as asked, `now_ms` to judge the entries' age.
fn parse_history(
    reply: Value,
    since: Option<&super::Position>,
    history: HistoryOptions,
    now_ms: i64,
) -> Result<History, BrokerError> {
    let bad = || BrokerError::Unavailable("unexpected history reply from redis".into());
    let mut it = items(reply).ok_or_else(bad)?.into_iter();
    let epoch = it.next().as_ref().and_then(text).ok_or_else(bad)?;
    let top: u64 = it
        .next()
        .as_ref()
        .and_then(text)
        .and_then(|t| t.parse().ok())
        .ok_or_else(bad)?;
    let mut entries = Vec::new();
    for e in it.next().and_then(items).unwrap_or_default() {
        let mut parts = items(e).ok_or_else(bad)?.into_iter();
        let id = parts.next().as_ref().and_then(text).ok_or_else(bad)?;
        let offset: u64 = id
            .split('-')
            .next()
            .and_then(|o| o.parse().ok())
            .ok_or_else(bad)?;
        let (mut at, mut data) = (None, None);
        let fields = parts.next().and_then(items).unwrap_or_default();
        for kv in fields.chunks(2) {
            match (kv.first().and_then(text).as_deref(), kv.get(1)) {
                (Some("t"), Some(v)) => at = text(v).and_then(|t| t.parse::<i64>().ok()),
                (Some("d"), Some(Value::BulkString(b))) => data = Some(Bytes::from(b.clone())),
                _ => {}
            }
        }
        entries.push((offset, at.unwrap_or(0), data.ok_or_else(bad)?));
    }
    let ttl_ms = i64::try_from(history.ttl.as_millis()).unwrap_or(i64::MAX);
    let since = since.and_then(|p| {
        let k = p.offset;
        if k > top || *p.epoch != *epoch {
            return None;
        }
        if k == top {
            return Some(Vec::new());
        }
        // every offset from k + 1 to top, none too old (a script that failed half-way
        // can leave a hole: that is not recoverable either)
        let (first, last) = (entries.first()?, entries.last()?);
        let whole = first.0 == k + 1
            && last.0 == top
            && entries.len() as u64 == top - k
            && now_ms.saturating_sub(first.1) < ttl_ms;
        whole.then(|| entries.into_iter().map(|(o, _, d)| (o, d)).collect())
    });
    Ok(History {
        epoch: Arc::from(epoch),
        offset: top,
        since,
    })
}

struct Shared {
    opts: RedisOptions,
    node: OnceLock<Arc<str>>,
    tx: OnceLock<mpsc::Sender<Cmd>>,
    /// A connection for queries (presence); set once connected.
    query: Mutex<Option<ConnectionManager>>,
    counters: Counters,
    /// Bytes of messages in the writer's queue.
    out_bytes: AtomicUsize,
    /// Bytes of messages in the reader's queue.
    in_bytes: AtomicUsize,
    /// Redis may disagree with our presence: replace it at the next chance.
    needs_resync: AtomicBool,
    /// The subscriber's connection, once made; and whether it was lost since. It sends
    /// no command of its own, and a connection manager reconnects (and resubscribes)
    /// only when asked for one: the heartbeat pings it after a loss, or an outage longer
    /// than its retries would leave the node deaf to the bus for good.
    subscriber: Mutex<Option<ConnectionManager>>,
    subscriber_lost: AtomicBool,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// Rooms whose dead nodes' presence fields are being removed (one cleanup per room
    /// at a time: a crowd joining after a node died would otherwise each send the same
    /// hundreds of deletions, ahead of their own queries).
    cleaning: Arc<Mutex<HashSet<String>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The Redis broker. See the [module docs](self).
///
/// ```no_run
/// use std::sync::Arc;
/// use street::cluster::redis::{RedisBroker, RedisOptions};
/// use street::rooms::{Rooms, RoomsOptions};
/// # async fn run(wss: street::ws::WebSocketServer) -> Result<(), Box<dyn std::error::Error>> {
/// let broker = RedisBroker::new(RedisOptions::url("redis://127.0.0.1:6379"));
/// let rooms = Rooms::new(&wss, RoomsOptions::default().with_broker(Some(Arc::new(broker)))).await?;
/// # let _ = rooms; Ok(()) }
/// ```
pub struct RedisBroker {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for RedisBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBroker")
            .field("prefix", &self.shared.opts.prefix)
            .field("node", &self.shared.node.get())
            .finish_non_exhaustive()
    }
}

impl RedisBroker {
    /// A broker with these options (it connects in [`Broker::start`]).
    pub fn new(opts: RedisOptions) -> Self {
        Self {
            shared: Arc::new(Shared {
                opts,
                node: OnceLock::new(),
                tx: OnceLock::new(),
                query: Mutex::new(None),
                counters: Counters::default(),
                out_bytes: AtomicUsize::new(0),
                in_bytes: AtomicUsize::new(0),
                needs_resync: AtomicBool::new(false),
                subscriber: Mutex::new(None),
                subscriber_lost: AtomicBool::new(false),
                tasks: Mutex::new(Vec::new()),
                cleaning: Arc::default(),
            }),
        }
    }
}

impl Shared {
    fn bus(&self) -> String {
        format!("{}:bus", self.opts.prefix)
    }
    fn presence_prefix(&self) -> String {
        format!("{}:presence:", self.opts.prefix)
    }
    fn presence_key(&self, room: &str) -> String {
        format!("{}{room}", self.presence_prefix())
    }
    /// The set of a node's presence fields, as [`Shared::index_entry`]s.
    fn index_key(&self, node: &str) -> String {
        format!("{}:fields:{node}", self.opts.prefix)
    }
    fn index_entry(room: &str, member: &str) -> String {
        format!("{}:{room}{member}", room.len())
    }
    /// A channel's stream: its meta hash and its entries.
    fn stream_keys(&self, channel: &str) -> (String, String) {
        (
            format!("{}:stream:{channel}:meta", self.opts.prefix),
            format!("{}:stream:{channel}:log", self.opts.prefix),
        )
    }
    fn node_key(&self, node: &str) -> String {
        format!("{}:node:{node}", self.opts.prefix)
    }
    fn field(node: &str, member: &str) -> String {
        format!("{node}\u{1f}{member}")
    }

    fn client(&self) -> Result<redis::Client, BrokerError> {
        let url = with_resp3(&self.opts.url);
        #[cfg(feature = "tls")]
        if let Some(ca) = &self.opts.tls_ca_pem {
            if !self.opts.url.starts_with("rediss://") {
                return Err(BrokerError::Unavailable(
                    "tls_ca_pem is set but the URL is not rediss://".into(),
                ));
            }
            let certs = redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(ca.clone()),
            };
            return redis::Client::build_with_tls(url, certs).map_err(unavailable);
        }
        redis::Client::open(url).map_err(unavailable)
    }

    fn config(&self) -> ConnectionManagerConfig {
        ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.opts.response_timeout))
            .set_response_timeout(Some(self.opts.response_timeout))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500))
    }

    /// Queue a command for the writer, within `max_queue` and `max_queue_bytes`.
    fn send(&self, cmd: Cmd) {
        let bytes = cmd.bytes();
        if !reserve(&self.out_bytes, bytes, self.opts.max_queue_bytes) {
            self.counters
                .dropped_over_bytes
                .fetch_add(1, Ordering::Relaxed);
            self.lost(&cmd);
            return;
        }
        let refused = match self.tx.get() {
            Some(tx) => tx.try_send(cmd).err().map(|e| match e {
                mpsc::error::TrySendError::Full(c) | mpsc::error::TrySendError::Closed(c) => c,
            }),
            None => Some(cmd),
        };
        if let Some(cmd) = refused {
            self.out_bytes.fetch_sub(bytes, Ordering::AcqRel);
            self.lost(&cmd);
        }
    }

    /// A publication Redis did not take: lost for every node, counted; Redis is in
    /// trouble, so presence may be too (a resync is due).
    fn publish_failed(&self, e: &redis::RedisError) {
        self.counters.publish_errors.fetch_add(1, Ordering::Relaxed);
        self.needs_resync.store(true, Ordering::Relaxed);
        tracing::debug!(error = %e, "redis publish failed");
    }

    /// Count a command that never reached the writer; lost presence makes a resync due.
    fn lost(&self, cmd: &Cmd) {
        self.counters.dropped.fetch_add(1, Ordering::Relaxed);
        if matches!(cmd, Cmd::Presence { .. } | Cmd::Resync) {
            self.needs_resync.store(true, Ordering::Relaxed);
        }
    }

    /// The script call that replaces `node`'s presence with `entries`.
    fn replace_presence(&self, node: &str, entries: &[(String, String, usize)]) -> redis::Cmd {
        let mut c = redis::cmd("EVAL");
        c.arg(REPLACE_PRESENCE)
            .arg(1)
            .arg(self.index_key(node))
            .arg(self.presence_prefix())
            .arg(Self::field(node, ""));
        for (room, member, n) in entries {
            c.arg(room).arg(member).arg(*n);
        }
        c
    }
}

/// Run `attempt` once, or — when `forever` — until it succeeds, backing off from 100 ms
/// to 2 s between tries (the degraded start).
async fn retrying<T, F, Fut>(what: &str, forever: bool, mut attempt: F) -> Result<T, BrokerError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, BrokerError>>,
{
    let mut delay = Duration::from_millis(100);
    loop {
        match attempt().await {
            Ok(v) => return Ok(v),
            Err(e) if !forever => return Err(e),
            Err(e) => {
                tracing::warn!(error = %e, "redis {what} unavailable; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
        }
    }
}

fn unavailable(e: redis::RedisError) -> BrokerError {
    BrokerError::Unavailable(e.to_string())
}

/// Connect the command connection.
async fn connect(shared: &Shared, forever: bool) -> Result<ConnectionManager, BrokerError> {
    retrying("connection", forever, || async {
        ConnectionManager::new_with_config(shared.client()?, shared.config())
            .await
            .map_err(unavailable)
    })
    .await
}

/// Bytes of a push against `max_queue_bytes` (a bus message's payload; 0 for the rest).
fn push_bytes(p: &PushInfo) -> usize {
    match (&p.kind, p.data.get(1)) {
        (PushKind::Message, Some(Value::BulkString(b))) => b.len(),
        _ => 0,
    }
}

/// Connect the subscriber (RESP3 pushes into `push_tx`, with their size) and subscribe to
/// the bus.
async fn subscribe(
    shared: &Arc<Shared>,
    forever: bool,
    push_tx: mpsc::Sender<(PushInfo, usize)>,
) -> Result<ConnectionManager, BrokerError> {
    retrying("subscriber", forever, || async {
        let (s, tx) = (shared.clone(), push_tx.clone());
        let cfg = shared
            .config()
            .set_automatic_resubscription()
            .set_push_sender(move |p: PushInfo| {
                if p.kind == PushKind::Disconnection {
                    s.counters.disconnects.fetch_add(1, Ordering::Relaxed);
                    s.needs_resync.store(true, Ordering::Relaxed);
                    s.subscriber_lost.store(true, Ordering::Relaxed);
                }
                let n = push_bytes(&p);
                if !reserve(&s.in_bytes, n, s.opts.max_queue_bytes) {
                    s.counters.dropped.fetch_add(1, Ordering::Relaxed);
                    s.counters
                        .dropped_over_bytes
                        .fetch_add(1, Ordering::Relaxed);
                } else if tx.try_send((p, n)).is_err() {
                    s.in_bytes.fetch_sub(n, Ordering::AcqRel);
                    s.counters.dropped.fetch_add(1, Ordering::Relaxed);
                }
                Ok::<(), ()>(())
            });
        let mut c = ConnectionManager::new_with_config(shared.client()?, cfg)
            .await
            .map_err(unavailable)?;
        c.subscribe(shared.bus()).await.map_err(unavailable)?;
        Ok(c)
    })
    .await
}

/// Most publishes sent in one pipeline.
const MAX_PIPELINE: usize = 256;

/// The single writer: commands in order.
async fn writer(
    shared: Arc<Shared>,
    mut conn: ConnectionManager,
    mut rx: mpsc::Receiver<Cmd>,
    hooks: NodeHooks,
) {
    let bus = shared.bus();
    let node = shared.node.get().cloned().unwrap_or_else(|| Arc::from(""));
    // a command taken from the queue while gathering publishes, to run next (in order)
    let mut next: Option<Cmd> = None;
    loop {
        let cmd = match next.take() {
            Some(cmd) => cmd,
            None => match rx.recv().await {
                Some(cmd) => cmd,
                None => return,
            },
        };
        match cmd {
            Cmd::Publish(b) => {
                // the publishes already queued behind it go in the same pipeline: one
                // round trip for a burst, in order (Redis runs a pipeline's commands in
                // the order sent)
                let mut batch = vec![b];
                while batch.len() < MAX_PIPELINE {
                    match rx.try_recv() {
                        Ok(Cmd::Publish(b)) => batch.push(b),
                        Ok(other) => {
                            next = Some(other);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                let mut pipe = redis::pipe();
                for b in &batch {
                    pipe.cmd("PUBLISH").arg(&bus).arg(&b[..]).ignore();
                }
                let r: redis::RedisResult<()> = pipe.query_async(&mut conn).await;
                let bytes: usize = batch.iter().map(Bytes::len).sum();
                shared.out_bytes.fetch_sub(bytes, Ordering::AcqRel);
                if let Err(e) = r {
                    // the whole pipeline counts as failed (some may have gone out)
                    for _ in &batch {
                        shared.publish_failed(&e);
                    }
                }
            }
            Cmd::Positioned {
                channel,
                head,
                envelope,
                history,
                at_ms,
            } => {
                let (meta, log) = shared.stream_keys(&channel);
                // EVALSHA, loading the script again after a Redis restart
                let r: redis::RedisResult<u64> = publish_script()
                    .key(&meta)
                    .key(&log)
                    .arg(new_epoch())
                    .arg(history.size.max(1))
                    .arg(ttl_ms(history))
                    .arg(at_ms)
                    .arg(&bus)
                    .arg(&head[..])
                    .arg(&envelope[..])
                    .invoke_async(&mut conn)
                    .await;
                shared
                    .out_bytes
                    .fetch_sub(head.len() + envelope.len(), Ordering::AcqRel);
                if let Err(e) = r {
                    shared.publish_failed(&e);
                }
            }
            Cmd::Presence {
                room,
                member,
                connections,
            } => {
                // the field and its index entry together
                let key = shared.presence_key(&room);
                let field = Shared::field(&node, &member);
                let index = shared.index_key(&node);
                let entry = Shared::index_entry(&room, &member);
                let mut pipe = redis::pipe();
                pipe.atomic();
                if connections == 0 {
                    pipe.cmd("HDEL").arg(&key).arg(&field).ignore();
                    pipe.cmd("SREM").arg(&index).arg(&entry).ignore();
                } else {
                    pipe.cmd("HSET")
                        .arg(&key)
                        .arg(&field)
                        .arg(connections)
                        .ignore();
                    pipe.cmd("SADD").arg(&index).arg(&entry).ignore();
                }
                let r: redis::RedisResult<()> = pipe.query_async(&mut conn).await;
                if let Err(e) = r {
                    tracing::debug!(error = %e, "redis presence write failed; resync due");
                    shared.needs_resync.store(true, Ordering::Relaxed);
                }
            }
            Cmd::Resync => {
                let snapshot = (hooks.snapshot)();
                let r: redis::RedisResult<Value> = shared
                    .replace_presence(&node, &snapshot)
                    .query_async(&mut conn)
                    .await;
                match r {
                    Ok(_) => {
                        shared.counters.resyncs.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "redis presence resync failed; retrying");
                        shared.needs_resync.store(true, Ordering::Relaxed);
                    }
                }
            }
            Cmd::Stop(done) => {
                let mut pipe = redis::pipe();
                pipe.cmd("DEL").arg(shared.node_key(&node)).ignore();
                pipe.add_command(shared.replace_presence(&node, &[]))
                    .ignore();
                let _: redis::RedisResult<()> = pipe.query_async(&mut conn).await;
                let _ = done.send(());
                return;
            }
        }
    }
}

/// Refresh this node's liveness key. When it had expired (first beat, a Redis restart, or
/// a stall long enough for other nodes to drop our presence), a resync is due.
async fn beat(shared: &Shared, conn: &mut ConnectionManager) -> redis::RedisResult<()> {
    let node = shared.node.get().cloned().unwrap_or_else(|| Arc::from(""));
    let ttl = shared.opts.heartbeat * shared.opts.liveness.max(1);
    let old: Option<String> = redis::cmd("SET")
        .arg(shared.node_key(&node))
        .arg(1)
        .arg("PX")
        .arg(ttl.as_millis() as u64)
        .arg("GET")
        .query_async(conn)
        .await?;
    if old.is_none() {
        shared.needs_resync.store(true, Ordering::Relaxed);
    }
    Ok(())
}

/// Liveness every `heartbeat`; after a failure or an expiry, queue a presence resync.
async fn heartbeat(shared: Arc<Shared>, mut conn: ConnectionManager) {
    let mut tick = tokio::time::interval(shared.opts.heartbeat);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match beat(&shared, &mut conn).await {
            Err(e) => {
                tracing::debug!(error = %e, "redis heartbeat failed");
                shared.needs_resync.store(true, Ordering::Relaxed);
            }
            Ok(()) => {
                if shared.needs_resync.swap(false, Ordering::Relaxed) {
                    shared.send(Cmd::Resync);
                }
                if shared.subscriber_lost.swap(false, Ordering::Relaxed) {
                    let sub = lock(&shared.subscriber).clone();
                    if let Some(mut sub) = sub {
                        let r: redis::RedisResult<()> =
                            redis::cmd("PING").query_async(&mut sub).await;
                        if let Err(e) = r {
                            tracing::debug!(error = %e, "redis subscriber still down");
                            shared.subscriber_lost.store(true, Ordering::Relaxed);
                        }
                    }
                }
            }
        }
    }
}

/// A room's cleanup in flight; it is over when this drops.
struct Cleaning(Arc<Mutex<HashSet<String>>>, String);

impl Drop for Cleaning {
    fn drop(&mut self) {
        lock(&self.0).remove(&self.1);
    }
}

/// The reader: messages from the bus to local delivery.
async fn reader(shared: Arc<Shared>, mut rx: mpsc::Receiver<(PushInfo, usize)>, hooks: NodeHooks) {
    let node = shared.node.get().cloned().unwrap_or_else(|| Arc::from(""));
    while let Some((p, bytes)) = rx.recv().await {
        if p.kind == PushKind::Message {
            let decoded = match p.data.into_iter().nth(1) {
                Some(Value::BulkString(data)) => ClusterMessage::decode(Bytes::from(data)),
                _ => Err(super::DecodeError("not a bulk string".into())),
            };
            match decoded {
                // our own: delivered locally already, unless the broker positioned it
                Ok(m) if m.origin == node && m.position.is_none() => {}
                Ok(m) => {
                    if m.origin != node {
                        shared.counters.received.fetch_add(1, Ordering::Relaxed);
                    }
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
        shared.in_bytes.fetch_sub(bytes, Ordering::AcqRel);
    }
}

impl Broker for RedisBroker {
    fn start(&self, node: Arc<str>, hooks: NodeHooks) -> BoxFuture<'_, Result<(), BrokerError>> {
        Box::pin(async move {
            let shared = self.shared.clone();
            let _ = shared.node.set(node);
            let degraded = !shared.opts.require_at_start;
            let (tx, rx) = mpsc::channel(shared.opts.max_queue.max(1));
            let _ = shared.tx.set(tx);
            let (push_tx, push_rx) = mpsc::channel(shared.opts.max_queue.max(1));
            let mut tasks = Vec::new();
            if degraded {
                // connect in the background; until then cluster messages are dropped
                let s = shared.clone();
                let h = hooks.clone();
                tasks.push(tokio::spawn(async move {
                    let Ok(conn) = connect(&s, true).await else {
                        return;
                    };
                    let Ok(mut live) = connect(&s, true).await else {
                        return;
                    };
                    let Ok(sub) = subscribe(&s, true, push_tx).await else {
                        return;
                    };
                    let _ = beat(&s, &mut live).await;
                    *lock(&s.query) = Some(conn.clone());
                    {
                        let mut t = lock(&s.tasks);
                        t.push(tokio::spawn(heartbeat(s.clone(), live)));
                        t.push(tokio::spawn(reader(s.clone(), push_rx, h.clone())));
                    }
                    s.needs_resync.store(true, Ordering::Relaxed);
                    *lock(&s.subscriber) = Some(sub);
                    writer(s, conn, rx, h).await;
                }));
            } else {
                let conn = connect(&shared, false).await?;
                let mut live = connect(&shared, false).await?;
                let sub = subscribe(&shared, false, push_tx).await?;
                beat(&shared, &mut live).await.map_err(unavailable)?;
                // a node restarted under the same id may have left fields behind: replace
                // them at the first heartbeat
                shared.needs_resync.store(true, Ordering::Relaxed);
                *lock(&shared.query) = Some(conn.clone());
                tasks.push(tokio::spawn(heartbeat(shared.clone(), live)));
                tasks.push(tokio::spawn(reader(shared.clone(), push_rx, hooks.clone())));
                *lock(&shared.subscriber) = Some(sub);
                let s = shared.clone();
                tasks.push(tokio::spawn(writer(s, conn, rx, hooks)));
            }
            lock(&shared.tasks).extend(tasks);
            Ok(())
        })
    }

    fn publish(&self, msg: ClusterMessage) {
        self.shared
            .counters
            .published
            .fetch_add(1, Ordering::Relaxed);
        self.shared.send(Cmd::Publish(msg.encode()));
    }

    fn publish_with_history(&self, msg: ClusterMessage, history: HistoryOptions) {
        let Target::Room { room, .. } = &msg.target else {
            return self.publish(msg);
        };
        self.shared
            .counters
            .published
            .fetch_add(1, Ordering::Relaxed);
        self.shared.send(Cmd::Positioned {
            channel: room.clone(),
            head: msg.open_header(),
            envelope: msg.envelope.clone(),
            history,
            at_ms: crate::ws::envelope::now_ms(),
        });
    }

    fn history(
        &self,
        channel: &str,
        since: Option<&super::Position>,
        history: HistoryOptions,
    ) -> BoxFuture<'_, Result<History, BrokerError>> {
        let (meta, log) = self.shared.stream_keys(channel);
        let since = since.cloned();
        // an offset of u64::MAX is from no stream of ours: nothing to read
        let from = since
            .as_ref()
            .and_then(|p| p.offset.checked_add(1))
            .map_or_else(String::new, |k| k.to_string());
        let client_epoch = since
            .as_ref()
            .map_or_else(String::new, |p| p.epoch.to_string());
        Box::pin(async move {
            let Some(mut conn) = lock(&self.shared.query).clone() else {
                return Err(BrokerError::Unavailable(
                    "not connected to redis yet".into(),
                ));
            };
            let reply: Value = redis::cmd("EVAL")
                .arg(READ_HISTORY)
                .arg(2)
                .arg(&meta)
                .arg(&log)
                .arg(new_epoch())
                .arg(ttl_ms(history))
                .arg(&from)
                .arg(&client_epoch)
                .arg(history.size.max(1))
                .query_async(&mut conn)
                .await
                .map_err(unavailable)?;
            parse_history(
                reply,
                since.as_ref(),
                history,
                crate::ws::envelope::now_ms(),
            )
        })
    }

    fn set_presence(&self, room: &str, member: &str, connections: usize) {
        self.shared.send(Cmd::Presence {
            room: room.to_owned(),
            member: member.to_owned(),
            connections,
        });
    }

    fn presence(&self, room: &str) -> BoxFuture<'_, Result<Vec<PresenceEntry>, BrokerError>> {
        let key = self.shared.presence_key(room);
        let room = room.to_owned();
        Box::pin(async move {
            let Some(mut conn) = lock(&self.shared.query).clone() else {
                return Err(BrokerError::Unavailable(
                    "not connected to redis yet".into(),
                ));
            };
            let fields: HashMap<String, usize> = redis::cmd("HGETALL")
                .arg(&key)
                .query_async(&mut conn)
                .await
                .map_err(unavailable)?;
            let nodes: Vec<&str> = fields
                .keys()
                .filter_map(|f| f.split_once('\u{1f}').map(|(n, _)| n))
                .collect::<HashSet<_>>()
                .into_iter()
                .collect();
            let mut alive = HashSet::new();
            if !nodes.is_empty() {
                let keys: Vec<String> = nodes.iter().map(|n| self.shared.node_key(n)).collect();
                let vals: Vec<Option<String>> = redis::cmd("MGET")
                    .arg(&keys)
                    .query_async(&mut conn)
                    .await
                    .map_err(unavailable)?;
                for (n, v) in nodes.iter().zip(vals) {
                    if v.is_some() {
                        alive.insert(*n);
                    }
                }
            }
            let mut live = Vec::new();
            let mut dead = Vec::new();
            for (f, n) in &fields {
                let Some((node, member)) = f.split_once('\u{1f}') else {
                    continue;
                };
                if alive.contains(node) {
                    live.push((member, *n));
                } else {
                    dead.push(f.clone());
                }
            }
            let out = super::union(live);
            let first = !dead.is_empty() && lock(&self.shared.cleaning).insert(room.clone());
            if first {
                // a crashed node's leftovers: clean them up (and its index) in the
                // background, once at a time per room
                let mut pipe = redis::pipe();
                pipe.cmd("HDEL").arg(&key).arg(&dead).ignore();
                for f in &dead {
                    if let Some((node, member)) = f.split_once('\u{1f}') {
                        pipe.cmd("SREM")
                            .arg(self.shared.index_key(node))
                            .arg(Shared::index_entry(&room, member))
                            .ignore();
                    }
                }
                let done = Cleaning(self.shared.cleaning.clone(), room);
                tokio::spawn(async move {
                    let _: redis::RedisResult<()> = pipe.query_async(&mut conn).await;
                    drop(done);
                });
            }
            Ok(out)
        })
    }

    fn stats(&self) -> BrokerStats {
        self.shared.counters.snapshot()
    }

    fn stop(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let (done_tx, done_rx) = oneshot::channel();
            if let Some(tx) = self.shared.tx.get() {
                // behind what is queued, so the last leaves are written first
                let sent = tokio::time::timeout(
                    self.shared.opts.response_timeout,
                    tx.send(Cmd::Stop(done_tx)),
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
            lock(&self.shared.subscriber).take();
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resp3_is_asked_for_before_the_fragment() {
        assert_eq!(with_resp3("redis://h:1"), "redis://h:1?protocol=resp3");
        assert_eq!(
            with_resp3("redis://h:1/?a=b"),
            "redis://h:1/?a=b&protocol=resp3"
        );
        assert_eq!(
            with_resp3("rediss://h:1/#insecure"),
            "rediss://h:1/?protocol=resp3#insecure"
        );
        // the subscriber needs RESP3's pushes: another protocol is replaced
        assert_eq!(
            with_resp3("redis://h/?protocol=resp2"),
            "redis://h/?protocol=resp3"
        );
        // only the query's own parameter counts
        assert_eq!(
            with_resp3("redis://u:protocol=x@h/?db=1"),
            "redis://u:protocol=x@h/?db=1&protocol=resp3"
        );
    }

    #[test]
    fn index_entries_split_back_into_room_and_member_whatever_they_contain() {
        // the Lua script reads the length before the first ':' and splits there
        for (room, member) in [("r", "ana"), ("a:b", "c:d"), ("", "x"), ("é\u{1f}", "")] {
            let e = Shared::index_entry(room, member);
            let (n, rest) = e.split_once(':').expect("a length");
            let n: usize = n.parse().expect("a number");
            assert_eq!((&rest[..n], &rest[n..]), (room, member));
        }
    }
}
