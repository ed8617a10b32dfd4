//! The in-memory broker: nodes in one process share a bus. With a single node (the
//! default of [`Rooms`](crate::rooms::Rooms)) it is the embedded, zero-dependency mode;
//! with several ([`MemoryBroker::node`]) it lets tests and examples run a cluster without
//! any external service.
//!
//! Delivery is synchronous: `publish` calls every other node's delivery hook before it
//! returns, so order per publisher is kept and nothing is queued. Channels with history
//! keep their streams on the bus (at most 100 000; the idlest is evicted): a publication takes
//! its offset and reaches every node under one lock, so each channel's offsets arrive in
//! order everywhere. The streams live as long as the bus: a process restart is a new
//! epoch.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use super::streams::Streams;
use super::{
    BoxFuture, Broker, BrokerError, BrokerStats, ClusterMessage, History, HistoryOptions,
    NodeHooks, PresenceEntry, Target,
};

/// Channel streams one bus holds at most (see [`Streams`](super::streams)).
const MAX_STREAMS: usize = 100_000;

type Presence = HashMap<String, HashMap<(Arc<str>, String), usize>>;

type Deliver = Arc<dyn Fn(ClusterMessage) + Send + Sync>;

struct Bus {
    nodes: Mutex<HashMap<Arc<str>, Deliver>>,
    presence: Mutex<Presence>,
    /// Held while a positioned publication is delivered: one channel order everywhere.
    streams: Mutex<Streams>,
}

impl Default for Bus {
    fn default() -> Self {
        Self {
            nodes: Mutex::default(),
            presence: Mutex::default(),
            streams: Mutex::new(Streams::new(MAX_STREAMS)),
        }
    }
}

#[derive(Default)]
struct Counters {
    published: AtomicU64,
    received: Arc<AtomicU64>,
}

/// An in-process broker. See the [module docs](self).
///
/// ```
/// use street::cluster::memory::MemoryBroker;
/// let a = MemoryBroker::new();
/// let b = a.node(); // a second node on the same bus
/// # let _ = b;
/// ```
pub struct MemoryBroker {
    bus: Arc<Bus>,
    me: Mutex<Option<Arc<str>>>,
    counters: Counters,
}

impl std::fmt::Debug for MemoryBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryBroker")
            .field("node", &*lock(&self.me))
            .finish_non_exhaustive()
    }
}

impl Default for MemoryBroker {
    fn default() -> Self {
        Self::new()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl MemoryBroker {
    /// A broker on a bus of its own.
    pub fn new() -> Self {
        Self {
            bus: Arc::new(Bus::default()),
            me: Mutex::new(None),
            counters: Counters::default(),
        }
    }

    /// Another broker on the same bus, for another node.
    pub fn node(&self) -> Self {
        Self {
            bus: self.bus.clone(),
            me: Mutex::new(None),
            counters: Counters::default(),
        }
    }

    fn me(&self) -> Option<Arc<str>> {
        lock(&self.me).clone()
    }
}

impl Broker for MemoryBroker {
    fn start(&self, node: Arc<str>, hooks: NodeHooks) -> BoxFuture<'_, Result<(), BrokerError>> {
        let received = self.counters.received.clone();
        let deliver = hooks.deliver;
        let me = node.clone();
        lock(&self.bus.nodes).insert(
            node.clone(),
            Arc::new(move |m: ClusterMessage| {
                if m.origin != me {
                    received.fetch_add(1, Ordering::Relaxed);
                }
                deliver(m);
            }),
        );
        *lock(&self.me) = Some(node);
        Box::pin(async { Ok(()) })
    }

    fn publish(&self, msg: ClusterMessage) {
        self.counters.published.fetch_add(1, Ordering::Relaxed);
        let others: Vec<_> = lock(&self.bus.nodes)
            .iter()
            .filter(|(id, _)| **id != msg.origin)
            .map(|(_, d)| d.clone())
            .collect();
        for d in others {
            d(msg.clone());
        }
    }

    fn publish_with_history(&self, msg: ClusterMessage, history: HistoryOptions) {
        let Target::Room { room, .. } = &msg.target else {
            return self.publish(msg);
        };
        self.counters.published.fetch_add(1, Ordering::Relaxed);
        let mut streams = lock(&self.bus.streams);
        let (position, envelope) = streams.append(room, &msg.envelope, history, Instant::now());
        let all: Vec<_> = lock(&self.bus.nodes).values().cloned().collect();
        let m = ClusterMessage {
            envelope,
            position: Some(position),
            ..msg
        };
        for d in all {
            d(m.clone());
        }
    }

    fn history(
        &self,
        channel: &str,
        since: Option<&super::Position>,
        history: HistoryOptions,
    ) -> BoxFuture<'_, Result<History, BrokerError>> {
        let h = lock(&self.bus.streams).read(channel, since, history, Instant::now());
        Box::pin(async move { Ok(h) })
    }

    fn set_presence(&self, room: &str, member: &str, connections: usize) {
        let Some(me) = self.me() else { return };
        let mut p = lock(&self.bus.presence);
        let key = (me, member.to_owned());
        if connections == 0 {
            if let Some(r) = p.get_mut(room) {
                r.remove(&key);
                if r.is_empty() {
                    p.remove(room);
                }
            }
        } else {
            p.entry(room.to_owned())
                .or_default()
                .insert(key, connections);
        }
    }

    fn presence(&self, room: &str) -> BoxFuture<'_, Result<Vec<PresenceEntry>, BrokerError>> {
        let alive: Vec<Arc<str>> = lock(&self.bus.nodes).keys().cloned().collect();
        let out = lock(&self.bus.presence)
            .get(room)
            .map_or_else(Vec::new, |r| {
                super::union(
                    r.iter()
                        .filter(|((node, _), _)| alive.contains(node))
                        .map(|((_, member), n)| (member.as_str(), *n)),
                )
            });
        Box::pin(async move { Ok(out) })
    }

    fn stats(&self) -> BrokerStats {
        BrokerStats {
            published: self.counters.published.load(Ordering::Relaxed),
            received: self.counters.received.load(Ordering::Relaxed),
            streams_evicted: lock(&self.bus.streams).evicted(),
            ..BrokerStats::default()
        }
    }

    fn stop(&self) -> BoxFuture<'_, ()> {
        if let Some(me) = lock(&self.me).take() {
            lock(&self.bus.nodes).remove(&me);
            let mut p = lock(&self.bus.presence);
            for r in p.values_mut() {
                r.retain(|(node, _), _| *node != me);
            }
            p.retain(|_, r| !r.is_empty());
        }
        Box::pin(async {})
    }
}
