//! Fan-out across nodes: the [`Broker`] trait, the message that crosses it, and three
//! brokers — [`memory::MemoryBroker`] (the default: one process, no external service),
//! `redis::RedisBroker` (cargo feature `redis`) and `nats::NatsBroker` (cargo feature
//! `nats`; both on by default). README's "Scaling out" says when to pick which.
//!
//! A node is one [`Rooms`](crate::rooms::Rooms) (with its `WebSocketServer`). What it
//! publishes — a broadcast, a room message, an emit to a socket id or a member id — is
//! encoded **once** at the origin into the `{type,payload,ts}` envelope, delivered to the
//! node's own clients, and handed to the broker as a [`ClusterMessage`]; every other node
//! delivers the same bytes to its clients. Presence is kept per node in the broker, and
//! [`Broker::presence`] answers with the union over the nodes that are alive.
//!
//! Delivery contract of every broker:
//! - **at most once**: a message published while the broker is unreachable is lost (and
//!   counted in [`BrokerStats::dropped`] or [`BrokerStats::publish_errors`]); nothing is
//!   buffered without bound;
//! - **ordered per publishing node**: messages one node publishes reach every other node in
//!   the order it published them;
//! - a node never receives its own messages back (it delivered them locally already).
//!
//! A channel with history ([`Broker::publish_with_history`]) is a stream: the broker
//! gives each publication the channel's next **offset** (1, 2, 3, … with no hole, the
//! same on every node) atomically with appending it to the channel's history, and
//! delivers it to **every** node, the publishing one included, in offset order. The
//! stream's **epoch** names its past: it changes whenever that past is lost (the
//! broker's storage was wiped, the history expired entirely, a single-process broker
//! restarted), so a [`Position`] `(epoch, offset)` from before means nothing after.
//! [`Broker::history`] answers where a channel's stream stands and what followed a
//! given offset, when the history still holds all of it.

pub mod memory;
#[cfg(feature = "nats")]
#[cfg_attr(docsrs, doc(cfg(feature = "nats")))]
pub mod nats;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub mod redis;
mod streams;

use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

use crate::counters::stats;
use crate::ws::SocketId;

/// A boxed future, as brokers return them.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Who receives a [`ClusterMessage`] on each node.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Target {
    /// Every client of the node's WebSocket server.
    All,
    /// The room's connections, minus one connection and/or every connection of one member.
    Room {
        /// The room.
        room: String,
        /// Skip this connection (usually the sender).
        except_socket: Option<SocketId>,
        /// Skip every connection of this member.
        except_member: Option<String>,
    },
    /// One connection, wherever it is.
    Socket(SocketId),
    /// Every connection of a member (joined to a room or attached with this member id).
    Member(String),
}

/// A publication's place in its channel's stream (see the [module docs](self)).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Position {
    /// Names the stream's past; another epoch means that past was lost.
    pub epoch: Arc<str>,
    /// 1 for the channel's first publication in this epoch, then one more for each.
    pub offset: u64,
}

/// How much of a channel's past a broker keeps: at most `size` publications, none older
/// than `ttl`; a channel with no publication for `ttl` loses its whole stream (and gets
/// a new epoch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct HistoryOptions {
    /// Most publications kept per channel.
    pub size: usize,
    /// Oldest publication kept; also how long an idle channel's stream lives.
    pub ttl: Duration,
}

impl HistoryOptions {
    /// Keep the last `size` publications, for at most `ttl`.
    ///
    /// ```
    /// let h = street::cluster::HistoryOptions::new(100, std::time::Duration::from_secs(300));
    /// assert_eq!(h.size, 100);
    /// ```
    pub fn new(size: usize, ttl: Duration) -> Self {
        Self { size, ttl }
    }
}

/// Where a channel's stream stands, as [`Broker::history`] answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct History {
    /// The stream's epoch (made when the channel had none).
    pub epoch: Arc<str>,
    /// The latest offset; 0 when nothing was published in this epoch.
    pub offset: u64,
    /// The publications after the offset asked for, in order, as delivered (envelopes
    /// with `"offset"`), when the history still holds every one of them; `None` when it
    /// does not (trimmed by size or age) or nothing was asked.
    pub since: Option<Vec<(u64, Bytes)>>,
}

/// A message between nodes: where it goes, and the envelope bytes, encoded once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterMessage {
    /// The node that published it.
    pub origin: Arc<str>,
    /// Who receives it.
    pub target: Target,
    /// The encoded `{"type","payload","ts"}` text frame payload.
    pub envelope: Bytes,
    /// Its place in the channel's stream, for a publication in a channel with history
    /// (set by the broker; see [`Broker::publish_with_history`]).
    pub position: Option<Position>,
}

/// Why a cluster message could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed cluster message: {0}")]
pub struct DecodeError(String);

/// The header line. Strings are `Cow`: borrowed unless JSON escapes forced a copy.
#[derive(Serialize, Deserialize)]
struct Header<'a> {
    /// origin node
    #[serde(borrow)]
    o: Cow<'a, str>,
    /// kind: a(ll), r(oom), s(ocket), m(ember)
    k: char,
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    r: Option<Cow<'a, str>>,
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    xs: Option<Cow<'a, str>>,
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    xm: Option<Cow<'a, str>>,
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    s: Option<Cow<'a, str>>,
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    m: Option<Cow<'a, str>>,
    /// epoch and offset of a positioned publication
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    e: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    n: Option<u64>,
}

impl ClusterMessage {
    /// The bytes a broker carries: a one-line JSON header, `\n`, then the envelope as is.
    pub fn encode(&self) -> Bytes {
        let xs = match &self.target {
            Target::Room {
                except_socket: Some(x),
                ..
            } => Some(x.to_string()),
            _ => None,
        };
        let s = match &self.target {
            Target::Socket(id) => Some(id.to_string()),
            _ => None,
        };
        let header = match &self.target {
            Target::All => Header {
                o: Cow::Borrowed(&self.origin),
                k: 'a',
                r: None,
                xs: None,
                xm: None,
                s: None,
                m: None,
                e: None,
                n: None,
            },
            Target::Room {
                room,
                except_member,
                ..
            } => Header {
                o: Cow::Borrowed(&self.origin),
                k: 'r',
                r: Some(Cow::Borrowed(room)),
                xs: xs.as_deref().map(Cow::Borrowed),
                xm: except_member.as_deref().map(Cow::Borrowed),
                s: None,
                m: None,
                e: None,
                n: None,
            },
            Target::Socket(_) => Header {
                o: Cow::Borrowed(&self.origin),
                k: 's',
                r: None,
                xs: None,
                xm: None,
                s: s.as_deref().map(Cow::Borrowed),
                m: None,
                e: None,
                n: None,
            },
            Target::Member(m) => Header {
                o: Cow::Borrowed(&self.origin),
                k: 'm',
                r: None,
                xs: None,
                xm: None,
                s: None,
                m: Some(Cow::Borrowed(m)),
                e: None,
                n: None,
            },
        };
        let mut header = header;
        if let Some(p) = &self.position {
            header.e = Some(Cow::Borrowed(&p.epoch));
            header.n = Some(p.offset);
        }
        let head = serde_json::to_vec(&header).unwrap_or_default();
        let mut b = BytesMut::with_capacity(head.len() + 1 + self.envelope.len());
        b.put_slice(&head);
        b.put_u8(b'\n');
        b.put_slice(&self.envelope);
        b.freeze()
    }

    /// The header of [`ClusterMessage::encode`] left open for a position: without its
    /// closing brace, ending in a comma. A broker that positions publications itself
    /// (the Redis broker's script) appends `"e":"EPOCH","n":OFFSET}`, the newline and
    /// the envelope.
    pub(crate) fn open_header(&self) -> Bytes {
        let plain = ClusterMessage {
            position: None,
            envelope: Bytes::new(),
            ..self.clone()
        }
        .encode();
        // encode() wrote `{…}\n`
        let mut b = BytesMut::from(&plain[..plain.len().saturating_sub(2)]);
        b.put_u8(b',');
        b.freeze()
    }

    /// Parse what [`ClusterMessage::encode`] wrote. The envelope is a slice of `bytes`
    /// (no copy). It is checked to be UTF-8: it goes out as a text frame, and one that is
    /// not UTF-8 makes browsers close the connection (1007).
    ///
    /// # Errors
    /// [`DecodeError`] on anything else.
    pub fn decode(bytes: Bytes) -> Result<Self, DecodeError> {
        let nl = bytes
            .iter()
            .position(|&b| b == b'\n')
            .ok_or_else(|| DecodeError("no header line".into()))?;
        let h: Header<'_> =
            serde_json::from_slice(&bytes[..nl]).map_err(|e| DecodeError(e.to_string()))?;
        let sid = |s: Option<Cow<'_, str>>| -> Result<Option<SocketId>, DecodeError> {
            s.map(|s| {
                s.parse()
                    .map_err(|_| DecodeError(format!("bad socket id {s}")))
            })
            .transpose()
        };
        let need = |v: Option<Cow<'_, str>>, what: &str| {
            v.map(Cow::into_owned)
                .ok_or_else(|| DecodeError(format!("missing {what}")))
        };
        if std::str::from_utf8(&bytes[nl + 1..]).is_err() {
            return Err(DecodeError("envelope is not UTF-8".into()));
        }
        let target = match h.k {
            'a' => Target::All,
            'r' => Target::Room {
                room: need(h.r, "room")?,
                except_socket: sid(h.xs)?,
                except_member: h.xm.map(Cow::into_owned),
            },
            's' => Target::Socket(sid(h.s)?.ok_or_else(|| DecodeError("missing socket".into()))?),
            'm' => Target::Member(need(h.m, "member")?),
            k => return Err(DecodeError(format!("unknown kind {k}"))),
        };
        let position = match (h.e, h.n) {
            (Some(e), Some(n)) => Some(Position {
                epoch: Arc::from(e.as_ref()),
                offset: n,
            }),
            (None, None) => None,
            _ => return Err(DecodeError("half a position".into())),
        };
        Ok(Self {
            origin: Arc::from(h.o.as_ref()),
            target,
            envelope: bytes.slice(nl + 1..),
            position,
        })
    }
}

/// Take `n` bytes of a queue's byte budget `max` (`used` counts what the queue holds):
/// `false`, and nothing taken, when that would go over it, unless the queue was empty (it
/// takes one message of any size). What the brokers' `max_queue_bytes` is made of.
#[cfg_attr(not(any(feature = "redis", feature = "nats")), allow(dead_code))]
pub(crate) fn reserve(used: &std::sync::atomic::AtomicUsize, n: usize, max: usize) -> bool {
    use std::sync::atomic::Ordering;
    if n == 0 {
        return true;
    }
    let before = used.fetch_add(n, Ordering::AcqRel);
    if before == 0 || before.saturating_add(n) <= max {
        return true;
    }
    used.fetch_sub(n, Ordering::AcqRel);
    false
}

/// One member's connections on the live nodes (see [`Broker::presence`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceEntry {
    /// The member id.
    pub member: String,
    /// Connections in the room, summed over live nodes.
    pub connections: usize,
}

/// Sum per-node `(member, connections)` pairs into one entry per member, sorted by member
/// (what every broker's [`Broker::presence`] answers).
pub(crate) fn union<'a>(
    per_node: impl IntoIterator<Item = (&'a str, usize)>,
) -> Vec<PresenceEntry> {
    let mut members: std::collections::BTreeMap<&str, usize> = Default::default();
    for (member, n) in per_node {
        *members.entry(member).or_default() += n;
    }
    members
        .into_iter()
        .map(|(member, connections)| PresenceEntry {
            member: member.to_owned(),
            connections,
        })
        .collect()
}

stats! {
    /// Counters of a broker. Every gap in delivery shows up here.
    #[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
    #[serde(rename_all = "camelCase")]
    #[non_exhaustive]
    pub struct BrokerStats {
        /// Messages handed to the broker by this node.
        set published => counter(
            "street_cluster_published_total",
            "Messages handed to the broker.",
        ),
        /// Messages received from other nodes.
        set received => counter(
            "street_cluster_received_total",
            "Messages received from other nodes.",
        ),
        /// Messages dropped because the outgoing or incoming queue was full (by count or by
        /// bytes).
        set dropped => counter(
            "street_cluster_dropped_total",
            "Cluster messages dropped (queue full, by count or by bytes).",
        ),
        /// Of [`BrokerStats::dropped`], those dropped because the queue's bytes reached the
        /// broker's byte bound (e.g. `RedisOptions::max_queue_bytes`).
        set dropped_over_bytes => counter(
            "street_cluster_dropped_over_bytes_total",
            "Cluster messages dropped because a queue reached its byte bound.",
        ),
        /// Messages from the bus dropped before delivery because they were invalid: not a
        /// [`ClusterMessage`] (see [`ClusterMessage::decode`]), e.g. an envelope that is not
        /// UTF-8, which would make browsers close the connection with 1007.
        set invalid => counter(
            "street_cluster_invalid_total",
            "Invalid messages from the cluster bus dropped before delivery.",
        ),
        /// Messages lost because the broker failed to take them (e.g. Redis down).
        set publish_errors => counter(
            "street_cluster_publish_errors_total",
            "Cluster messages lost to broker errors.",
        ),
        /// Times the connection to the broker was lost (each is a possible gap).
        set disconnects => counter(
            "street_cluster_disconnects_total",
            "Broker connections lost (possible gaps).",
        ),
        /// Channel streams dropped to make room for another (their past is lost: a new
        /// epoch; only brokers that bound their stream count, e.g. the memory broker).
        set streams_evicted => counter(
            "street_cluster_streams_evicted_total",
            "Channel streams (history) evicted to make room for another.",
        ),
        /// Times this node replaced its whole presence in the broker (after a reconnect, a
        /// lapsed liveness, or a presence write that was dropped or failed).
        set resyncs => counter(
            "street_cluster_resyncs_total",
            "Presence replaced in the broker (reconnect, lapsed liveness, lost write).",
        ),
    }
}

/// The counters behind a Redis or NATS broker's [`BrokerStats`] (its `stats()` reads
/// them; every part of the broker adds to the same ones).
#[derive(Default)]
#[cfg_attr(not(any(feature = "redis", feature = "nats")), allow(dead_code))]
pub(crate) struct Counters {
    pub(crate) published: std::sync::atomic::AtomicU64,
    pub(crate) received: std::sync::atomic::AtomicU64,
    pub(crate) dropped: std::sync::atomic::AtomicU64,
    pub(crate) dropped_over_bytes: std::sync::atomic::AtomicU64,
    pub(crate) invalid: std::sync::atomic::AtomicU64,
    pub(crate) publish_errors: std::sync::atomic::AtomicU64,
    pub(crate) disconnects: std::sync::atomic::AtomicU64,
    pub(crate) resyncs: std::sync::atomic::AtomicU64,
}

#[cfg_attr(not(any(feature = "redis", feature = "nats")), allow(dead_code))]
impl Counters {
    pub(crate) fn snapshot(&self) -> BrokerStats {
        use std::sync::atomic::Ordering::Relaxed;
        BrokerStats {
            published: self.published.load(Relaxed),
            received: self.received.load(Relaxed),
            dropped: self.dropped.load(Relaxed),
            dropped_over_bytes: self.dropped_over_bytes.load(Relaxed),
            invalid: self.invalid.load(Relaxed),
            publish_errors: self.publish_errors.load(Relaxed),
            disconnects: self.disconnects.load(Relaxed),
            resyncs: self.resyncs.load(Relaxed),
            streams_evicted: 0,
        }
    }
}

/// Why the broker failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BrokerError {
    /// The broker could not be reached (at start, or for a presence query).
    #[error("broker unavailable: {0}")]
    Unavailable(String),
}

/// What a node gives its broker at start: where to deliver messages from other nodes,
/// and its current presence (to re-send after the broker lost it, e.g. a Redis restart).
#[derive(Clone)]
pub struct NodeHooks {
    /// Deliver a message from another node to local clients. Must not block.
    pub deliver: Arc<dyn Fn(ClusterMessage) + Send + Sync>,
    /// This node's presence: `(room, member, connections)` for every local member.
    pub snapshot: Arc<dyn Fn() -> Vec<(String, String, usize)> + Send + Sync>,
}

impl std::fmt::Debug for NodeHooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeHooks").finish_non_exhaustive()
    }
}

/// A fan-out backend between nodes. See the [module docs](self) for the delivery
/// contract every implementation keeps.
pub trait Broker: Send + Sync + 'static {
    /// Join the cluster as `node`; from now on messages from other nodes go to
    /// `hooks.deliver`.
    ///
    /// # Errors
    /// [`BrokerError::Unavailable`] when the broker cannot be reached and the broker is
    /// not configured to start degraded.
    fn start(&self, node: Arc<str>, hooks: NodeHooks) -> BoxFuture<'_, Result<(), BrokerError>>;

    /// Send a message to the other nodes. Never blocks: a bounded queue; when it is full
    /// the message is dropped and counted.
    fn publish(&self, msg: ClusterMessage);

    /// Record that this node has `connections` connections of `member` in `room` (0
    /// removes the entry). Never blocks.
    fn set_presence(&self, room: &str, member: &str, connections: usize);

    /// The room's members on every live node (a crashed node's members are left out once
    /// its liveness expires).
    ///
    /// # Errors
    /// [`BrokerError::Unavailable`] when the broker cannot be asked.
    fn presence(&self, room: &str) -> BoxFuture<'_, Result<Vec<PresenceEntry>, BrokerError>>;

    /// Publish into a channel that keeps history (`msg.target` is the channel's room).
    /// The broker gives the message the channel's next offset, atomically with
    /// appending it to the history (kept as `history` says), and delivers it to
    /// **every** node, this one included, through `deliver` with
    /// [`ClusterMessage::position`] set, in offset order per channel. What is delivered
    /// and kept is `msg.envelope` with `,"offset":K` added before its closing brace
    /// ([`envelope::with_offset`](crate::ws::envelope::with_offset)).
    /// Never blocks: when the queue is full, or the broker is unreachable, the message
    /// is lost for every node (no offset is taken) and counted, as with
    /// [`Broker::publish`].
    ///
    /// The default, for a broker without history, is [`Broker::publish`]: no position,
    /// and the other nodes only.
    fn publish_with_history(&self, msg: ClusterMessage, history: HistoryOptions) {
        let _ = history;
        self.publish(msg);
    }

    /// Where `channel`'s stream stands, and, when `since` is given, the publications
    /// after it if the history still holds every one of them (within `history`'s size
    /// and age) and `since` is of the stream's epoch (another epoch's position continues
    /// nothing, not even offset 0: the old epoch may have had publications after it that
    /// are lost). Makes the channel's epoch when it has none, so the
    /// answer is a position later publications continue.
    ///
    /// # Errors
    /// [`BrokerError::Unavailable`] when the broker cannot be asked; the default, for a
    /// broker without history, always is.
    fn history(
        &self,
        channel: &str,
        since: Option<&Position>,
        history: HistoryOptions,
    ) -> BoxFuture<'_, Result<History, BrokerError>> {
        let _ = (channel, since, history);
        Box::pin(async {
            Err(BrokerError::Unavailable(
                "this broker keeps no history".into(),
            ))
        })
    }

    /// Where `channel`'s stream stands, and its newest publications the history still
    /// holds: at most `limit`, oldest first, in `since` (always `Some`, empty when none
    /// is held). Makes the channel's epoch when it has none, as [`Broker::history`] does.
    /// What a client loading a room's recent past on any node asks for (Centrifugo's
    /// `history` with a limit), where [`Broker::history`] answers a resume from a
    /// position.
    ///
    /// The default asks [`Broker::history`]: where the stream stands, then what came after
    /// `offset - limit`: two asks. When the stream moved in between (publications, a new
    /// epoch) it reads again from where it stands, up to three times; when the history no
    /// longer holds all of that (trimmed by age, or by a size under `limit`: it holds a
    /// suffix of the stream), a binary search finds the oldest start it holds, at most
    /// `log2(limit)` asks more. A broker that can read its newest publications directly
    /// overrides it.
    ///
    /// # Errors
    /// As [`Broker::history`].
    fn latest(
        &self,
        channel: &str,
        limit: usize,
        history: HistoryOptions,
    ) -> BoxFuture<'_, Result<History, BrokerError>> {
        let channel = channel.to_owned();
        Box::pin(async move { latest_by_history(self, &channel, limit, history).await })
    }

    /// The counters.
    fn stats(&self) -> BrokerStats;

    /// Leave the cluster: remove this node's presence at once and stop.
    fn stop(&self) -> BoxFuture<'_, ()>;
}

/// Reads from where the stream stands that [`latest_by_history`] makes while it moves
/// (publications, or a new epoch, between two reads) before it searches.
const LATEST_MOVES: usize = 3;

/// [`Broker::latest`] for any broker, by its [`Broker::history`] (see there).
async fn latest_by_history<B: Broker + ?Sized>(
    broker: &B,
    channel: &str,
    limit: usize,
    history: HistoryOptions,
) -> Result<History, BrokerError> {
    let limit = u64::try_from(limit).unwrap_or(u64::MAX);
    let mut now = broker.history(channel, None, history).await?;
    let mut found = None;
    for moves in 1..=LATEST_MOVES {
        if now.offset == 0 || limit == 0 {
            break;
        }
        let from = now.offset.saturating_sub(limit);
        let all = broker
            .history(channel, Some(&position(&now, from)), history)
            .await?;
        if all.since.is_some() {
            found = Some(all);
            break;
        }
        let moved = all.epoch != now.epoch || all.offset != now.offset;
        if moved && moves < LATEST_MOVES {
            now = all; // read again from where it stands now
            continue;
        }
        if all.epoch == now.epoch {
            // it holds less than `limit` after `from` (aged out): find its oldest
            found = oldest_held(broker, channel, &now, from, history).await?;
        }
        break;
    }
    let mut found = found.unwrap_or(History {
        since: Some(Vec::new()),
        ..now
    });
    // publications made meanwhile came along: the newest `limit` of them all
    if let Some(p) = found.since.as_mut() {
        let extra = p
            .len()
            .saturating_sub(usize::try_from(limit).unwrap_or(usize::MAX));
        p.drain(..extra);
    }
    Ok(found)
}

fn position(h: &History, offset: u64) -> Position {
    Position {
        epoch: h.epoch.clone(),
        offset,
    }
}

/// What `now`'s stream holds after the oldest start it holds, between `missing` (not
/// held) and its top (always held: nothing comes after it); `None` when it holds
/// nothing. A binary search: the history holds a suffix of the stream (trimmed by size
/// and age from its old end).
async fn oldest_held<B: Broker + ?Sized>(
    broker: &B,
    channel: &str,
    now: &History,
    mut missing: u64,
    history: HistoryOptions,
) -> Result<Option<History>, BrokerError> {
    let mut held = now.offset;
    let mut found = None;
    while held - missing > 1 {
        let mid = missing + (held - missing) / 2;
        let h = broker
            .history(channel, Some(&position(now, mid)), history)
            .await?;
        if h.epoch != now.epoch {
            break; // the stream ended meanwhile: what was found stands
        }
        if h.since.is_some() {
            held = mid;
            found = Some(h);
        } else {
            missing = mid;
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stream for [`latest_by_history`]: offsets `oldest..=top` held, and what each
    /// read does to it first (publications, a new epoch), to stand for other nodes.
    struct Fake {
        epoch: &'static str,
        top: u64,
        oldest: u64,
        publish_per_read: u64,
        new_epoch_at_read: Option<usize>,
        reads: usize,
    }

    struct FakeBroker(std::sync::Mutex<Fake>);

    impl FakeBroker {
        fn new(top: u64, oldest: u64) -> Self {
            Self(std::sync::Mutex::new(Fake {
                epoch: "e1",
                top,
                oldest,
                publish_per_read: 0,
                new_epoch_at_read: None,
                reads: 0,
            }))
        }

        fn with(self, f: impl FnOnce(&mut Fake)) -> Self {
            f(&mut self.0.lock().expect("fake"));
            self
        }

        fn reads(&self) -> usize {
            self.0.lock().expect("fake").reads
        }
    }

    impl Broker for FakeBroker {
        fn start(&self, _: Arc<str>, _: NodeHooks) -> BoxFuture<'_, Result<(), BrokerError>> {
            Box::pin(async { Ok(()) })
        }
        fn publish(&self, _: ClusterMessage) {}
        fn set_presence(&self, _: &str, _: &str, _: usize) {}
        fn presence(&self, _: &str) -> BoxFuture<'_, Result<Vec<PresenceEntry>, BrokerError>> {
            Box::pin(async { Ok(Vec::new()) })
        }
        fn history(
            &self,
            _: &str,
            since: Option<&Position>,
            _: HistoryOptions,
        ) -> BoxFuture<'_, Result<History, BrokerError>> {
            let mut f = self.0.lock().expect("fake");
            f.reads += 1;
            f.top += f.publish_per_read;
            if f.new_epoch_at_read == Some(f.reads) {
                (f.epoch, f.top, f.oldest) = ("e2", 2, 1);
            }
            let since = since.and_then(|p| {
                let held = &*p.epoch == f.epoch && p.offset <= f.top && p.offset + 1 >= f.oldest;
                held.then(|| {
                    (p.offset + 1..=f.top)
                        .map(|o| (o, Bytes::from(o.to_string())))
                        .collect()
                })
            });
            let h = History {
                epoch: Arc::from(f.epoch),
                offset: f.top,
                since,
            };
            Box::pin(async move { Ok(h) })
        }
        fn stats(&self) -> BrokerStats {
            BrokerStats::default()
        }
        fn stop(&self) -> BoxFuture<'_, ()> {
            Box::pin(async {})
        }
    }

    fn latest(b: &FakeBroker, limit: usize) -> (Arc<str>, u64, Vec<u64>) {
        let opts = HistoryOptions::new(1000, Duration::from_secs(60));
        let h = futures_util::FutureExt::now_or_never(b.latest("c", limit, opts))
            .expect("ready")
            .expect("answered");
        let offsets = h
            .since
            .expect("always some")
            .iter()
            .map(|(o, _)| *o)
            .collect();
        (h.epoch, h.offset, offsets)
    }

    #[test]
    fn latest_reads_twice_when_the_history_holds_the_limit() {
        let b = FakeBroker::new(10, 1);
        assert_eq!(latest(&b, 3), (Arc::from("e1"), 10, vec![8, 9, 10]));
        assert_eq!(b.reads(), 2);
        // fewer published than asked: all of them
        let b = FakeBroker::new(2, 1);
        assert_eq!(latest(&b, 50).2, vec![1, 2]);
        assert_eq!(b.reads(), 2);
        // nothing published, or nothing asked: one read, no publication
        for (b, limit) in [(FakeBroker::new(0, 1), 5), (FakeBroker::new(9, 1), 0)] {
            assert!(latest(&b, limit).2.is_empty());
            assert_eq!(b.reads(), 1);
        }
    }

    #[test]
    fn latest_searches_the_oldest_held_when_older_ones_aged_out() {
        for oldest in [2, 5, 9, 10, 11] {
            let b = FakeBroker::new(10, oldest);
            let want: Vec<u64> = (oldest..=10).collect();
            assert_eq!(latest(&b, 10).2, want, "oldest held {oldest}");
            // two reads, then at most log2(10) rounded up
            assert!(b.reads() <= 2 + 4, "{} reads", b.reads());
        }
    }

    #[test]
    fn latest_follows_a_stream_that_moves_between_reads() {
        // every read sees one more publication: read again from the new top
        let b = FakeBroker::new(10, 1).with(|f| f.publish_per_read = 1);
        let (_, top, got) = latest(&b, 3);
        assert_eq!(got.len(), 3);
        assert_eq!(
            got.last(),
            Some(&top),
            "the newest, up to the top it answered"
        );
        assert!(b.reads() <= 2, "{} reads", b.reads());
        // trimmed as it moves (a size of 3 under the limit of 5): re-read, then search
        let b = FakeBroker::new(10, 8).with(|f| f.publish_per_read = 1);
        let got = latest(&b, 5).2;
        assert!(!got.is_empty() && got.len() <= 5, "{got:?}");
        assert!(b.reads() <= 1 + LATEST_MOVES + 3, "{} reads", b.reads());
        // a new epoch between the first two reads: the new stream's newest
        let b = FakeBroker::new(10, 1).with(|f| f.new_epoch_at_read = Some(2));
        assert_eq!(latest(&b, 3), (Arc::from("e2"), 2, vec![1, 2]));
    }

    #[test]
    fn messages_round_trip_and_the_envelope_is_not_copied() {
        let sid: SocketId = "67e55044-10b1-426f-9247-bb680e5fe0c8".parse().expect("id");
        for target in [
            Target::All,
            Target::Room {
                room: "lobby \"1\"\n".into(),
                except_socket: Some(sid),
                except_member: Some("ana".into()),
            },
            Target::Room {
                room: "r".into(),
                except_socket: None,
                except_member: None,
            },
            Target::Socket(sid),
            Target::Member("bo\u{e9}".into()),
        ] {
            let positioned = matches!(target, Target::Room { .. });
            let m = ClusterMessage {
                origin: Arc::from("node-1"),
                target,
                envelope: Bytes::from_static(br#"{"type":"x","payload":"a\nb","ts":1}"#),
                position: positioned.then(|| Position {
                    epoch: Arc::from("e1"),
                    offset: 7,
                }),
            };
            let wire = m.encode();
            let back = ClusterMessage::decode(wire.clone()).expect("decode");
            assert_eq!(back, m);
            let at = wire.len() - m.envelope.len();
            assert_eq!(back.envelope.as_ptr(), wire[at..].as_ptr());
        }
    }

    #[test]
    fn an_open_header_completed_as_the_redis_script_does_decodes_to_its_position() {
        let m = ClusterMessage {
            origin: Arc::from("n\"1"),
            target: Target::Room {
                room: "chat:\u{e9}".into(),
                except_socket: None,
                except_member: None,
            },
            envelope: crate::ws::envelope::with_channel(
                br#"{"type":"x","payload":1,"ts":1}"#,
                "chat:\u{e9}",
            ),
            position: None,
        };
        let env = crate::ws::envelope::with_offset(&m.envelope, 12);
        let wire = [&m.open_header()[..], br#""e":"ab12","n":12}"#, b"\n", &env].concat();
        let back = ClusterMessage::decode(Bytes::from(wire)).expect("decode");
        let want = Position {
            epoch: Arc::from("ab12"),
            offset: 12,
        };
        assert_eq!((back.position, back.target), (Some(want), m.target));
        assert_eq!(back.envelope, env);
    }

    #[test]
    fn the_byte_budget_refuses_the_newest_and_lets_one_into_an_empty_queue() {
        let used = std::sync::atomic::AtomicUsize::new(0);
        assert!(reserve(&used, 600, 1000));
        assert!(!reserve(&used, 600, 1000), "over the bound: refused");
        assert_eq!(
            used.load(std::sync::atomic::Ordering::Relaxed),
            600,
            "a refusal takes nothing"
        );
        assert!(reserve(&used, 400, 1000), "up to the bound exactly");
        used.store(0, std::sync::atomic::Ordering::Relaxed);
        assert!(
            reserve(&used, 5000, 1000),
            "an empty queue takes one of any size"
        );
        assert!(!reserve(&used, 1, 1000));
        assert!(
            reserve(&used, 0, 1000),
            "what holds no bytes is never refused"
        );
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bad in [
            &b""[..],
            b"no newline",
            b"{}\n",
            b"{\"o\":\"n\",\"k\":\"z\"}\n{}",
            b"{\"o\":\"n\",\"k\":\"s\",\"s\":\"nope\"}\n{}",
            b"{\"o\":\"n\",\"k\":\"r\"}\n{}",
            b"\xff\xfe\n",
            b"{\"o\":\"n\",\"k\":\"a\"}\n{\"type\":\"x\xff\"}",
            b"{\"o\":\"n\",\"k\":\"a\",\"n\":3}\n{}",
        ] {
            assert!(ClusterMessage::decode(Bytes::copy_from_slice(bad)).is_err());
        }
    }
}
