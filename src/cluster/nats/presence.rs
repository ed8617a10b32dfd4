//! Presence over core NATS, which keeps no state: each node holds its own presence and a
//! view of every other node's, kept in step by messages on one subject. Pure (time is
//! passed in), so the protocol is tested here without a server.
//!
//! - A node's presence changes are **deltas** numbered 1, 2, 3, … within its
//!   **incarnation** (a random number per start: a node restarted under the same id starts
//!   over). A delta carries the new count of one member in one room (absolute, so
//!   applying one twice is harmless).
//! - Every heartbeat a node sends a **beat** with its incarnation and latest delta
//!   number. A node that is not heard from for `liveness` heartbeats is left out of
//!   presence, and forgotten.
//! - A receiver applies a delta only when it is the next one of a node it holds in full;
//!   anything else — a gap (a message lost in an outage or dropped by a full queue), an
//!   unknown node, a new incarnation, a beat ahead of what it holds — makes it send a
//!   **want**, at most once a heartbeat per node, until it holds that node in full again.
//! - A wanted node sends a **snapshot** of its whole presence at its latest delta number,
//!   in parts of a bounded size (numbered, the last marked), which replaces the view of it.
//!   A node whose own delta was lost before it went out sends one unasked.
//! - A node that stops gracefully says **bye**: the others drop it at once.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// Most bytes of entries in one snapshot part (a NATS message is at most 1 MiB by
/// default).
const PART_BYTES: usize = 64 * 1024;

/// A presence message, as JSON on the presence subject.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "k", rename_all = "lowercase")]
pub(super) enum Msg {
    /// Alive, at delta `seq` of incarnation `inc`.
    Beat { node: String, inc: u64, seq: u64 },
    /// Delta `seq`: `member` has `n` connections in `room` on `node` (0: none).
    Delta {
        node: String,
        inc: u64,
        seq: u64,
        room: String,
        member: String,
        n: usize,
    },
    /// `node`, send your snapshot.
    Want { node: String },
    /// Part `part` of `node`'s presence at delta `seq`; `last` ends it.
    Snap {
        node: String,
        inc: u64,
        seq: u64,
        part: u32,
        last: bool,
        entries: Vec<(String, String, usize)>,
    },
    /// `node` (incarnation `inc`) left the cluster.
    Bye { node: String, inc: u64 },
}

impl Msg {
    pub(super) fn encode(&self) -> Bytes {
        Bytes::from(serde_json::to_vec(self).unwrap_or_default())
    }

    pub(super) fn decode(b: &[u8]) -> Option<Self> {
        serde_json::from_slice(b).ok()
    }
}

type Members = HashMap<String, HashMap<String, usize>>;

fn set(m: &mut Members, room: &str, member: &str, n: usize) {
    if n == 0 {
        if let Some(r) = m.get_mut(room) {
            r.remove(member);
            if r.is_empty() {
                m.remove(room);
            }
        }
    } else {
        m.entry(room.to_owned())
            .or_default()
            .insert(member.to_owned(), n);
    }
}

/// This node's own presence and its delta numbering.
pub(super) struct Own {
    node: String,
    inc: u64,
    seq: u64,
    members: Members,
}

impl Own {
    pub(super) fn new(node: &str) -> Self {
        Self {
            node: node.to_owned(),
            inc: fastrand::u64(..),
            seq: 0,
            members: Members::new(),
        }
    }

    /// Record a change; the delta to send.
    pub(super) fn change(&mut self, room: &str, member: &str, n: usize) -> Msg {
        set(&mut self.members, room, member, n);
        self.seq += 1;
        Msg::Delta {
            node: self.node.clone(),
            inc: self.inc,
            seq: self.seq,
            room: room.to_owned(),
            member: member.to_owned(),
            n,
        }
    }

    pub(super) fn bye(&self) -> Msg {
        Msg::Bye {
            node: self.node.clone(),
            inc: self.inc,
        }
    }

    pub(super) fn beat(&self) -> Msg {
        Msg::Beat {
            node: self.node.clone(),
            inc: self.inc,
            seq: self.seq,
        }
    }

    /// Members of `room` here.
    pub(super) fn room(&self, room: &str) -> Vec<(String, usize)> {
        self.members
            .get(room)
            .map(|r| r.iter().map(|(m, n)| (m.clone(), *n)).collect())
            .unwrap_or_default()
    }

    /// The whole presence at the latest delta, in parts of about [`PART_BYTES`].
    pub(super) fn snapshot(&self) -> Vec<Msg> {
        let mut parts = Vec::new();
        let mut entries = Vec::new();
        let mut bytes = 0;
        let mut flush = |entries: &mut Vec<_>, last: bool| {
            parts.push(Msg::Snap {
                node: self.node.clone(),
                inc: self.inc,
                seq: self.seq,
                part: u32::try_from(parts.len()).unwrap_or(u32::MAX),
                last,
                entries: std::mem::take(entries),
            });
        };
        for (room, members) in &self.members {
            for (member, n) in members {
                bytes += room.len() + member.len() + 16;
                entries.push((room.clone(), member.clone(), *n));
                if bytes >= PART_BYTES {
                    flush(&mut entries, false);
                    bytes = 0;
                }
            }
        }
        flush(&mut entries, true);
        parts
    }
}

/// Another node, as this one holds it.
struct Peer {
    inc: u64,
    seq: u64,
    /// `members` is that node's whole presence at `seq`.
    whole: bool,
    members: Members,
    heard: Instant,
    asked: Option<Instant>,
    /// A snapshot being received: `(inc, seq, next part, entries so far)`.
    pending: Option<(u64, u64, u32, Members)>,
}

impl Peer {
    fn new(inc: u64, now: Instant) -> Self {
        Self {
            inc,
            seq: 0,
            whole: false,
            members: Members::new(),
            heard: now,
            asked: None,
            pending: None,
        }
    }
}

/// The other nodes' presence, as messages make it.
pub(super) struct View {
    me: String,
    heartbeat: Duration,
    liveness: u32,
    peers: HashMap<Arc<str>, Peer>,
}

impl View {
    pub(super) fn new(me: &str, heartbeat: Duration, liveness: u32) -> Self {
        Self {
            me: me.to_owned(),
            heartbeat,
            liveness: liveness.max(1),
            peers: HashMap::new(),
        }
    }

    fn lifetime(&self) -> Duration {
        self.heartbeat * self.liveness
    }

    /// Take a message in; the node to send a want for, if one is due.
    pub(super) fn on(&mut self, msg: Msg, now: Instant) -> Option<String> {
        let node = match &msg {
            Msg::Beat { node, .. }
            | Msg::Delta { node, .. }
            | Msg::Snap { node, .. }
            | Msg::Bye { node, .. } => node.clone(),
            Msg::Want { .. } => return None,
        };
        if node == self.me {
            return None;
        }
        if let Msg::Bye { inc, .. } = msg {
            // a late goodbye of an earlier run removes nothing of this one
            if self.peers.get(node.as_str()).is_some_and(|p| p.inc == inc) {
                self.peers.remove(node.as_str());
            }
            return None;
        }
        let inc = match &msg {
            Msg::Beat { inc, .. } | Msg::Delta { inc, .. } | Msg::Snap { inc, .. } => *inc,
            _ => return None,
        };
        let peer = self
            .peers
            .entry(Arc::from(node.as_str()))
            .or_insert_with(|| Peer::new(inc, now));
        peer.heard = now;
        if peer.inc != inc && !matches!(msg, Msg::Snap { .. }) {
            // restarted: what we held of it is gone
            *peer = Peer::new(inc, now);
        }
        let behind = match msg {
            Msg::Beat { seq, .. } => !peer.whole || seq > peer.seq,
            Msg::Delta {
                seq,
                room,
                member,
                n,
                ..
            } => {
                if peer.whole && seq == peer.seq + 1 {
                    set(&mut peer.members, &room, &member, n);
                    peer.seq = seq;
                    false
                } else {
                    // a gap (or one before we held it whole): the snapshot will say
                    peer.whole = peer.whole && seq <= peer.seq;
                    !peer.whole
                }
            }
            Msg::Snap {
                inc,
                seq,
                part,
                last,
                entries,
                ..
            } => {
                let mut pending = match peer.pending.take() {
                    Some(p) if part > 0 && (p.0, p.1, p.2) == (inc, seq, part) => p,
                    _ if part == 0 => (inc, seq, 0, Members::new()),
                    // a part of one we did not see begin
                    _ => return Self::ask(peer, now, self.heartbeat, &node),
                };
                for (room, member, n) in entries {
                    set(&mut pending.3, &room, &member, n);
                }
                if last {
                    *peer = Peer {
                        inc,
                        seq,
                        whole: true,
                        members: pending.3,
                        heard: now,
                        asked: None,
                        pending: None,
                    };
                } else {
                    pending.2 = part + 1;
                    peer.pending = Some(pending);
                }
                false
            }
            Msg::Want { .. } | Msg::Bye { .. } => false,
        };
        if behind {
            Self::ask(peer, now, self.heartbeat, &node)
        } else {
            None
        }
    }

    /// A want for `node`, unless one went out within a heartbeat.
    fn ask(peer: &mut Peer, now: Instant, heartbeat: Duration, node: &str) -> Option<String> {
        if peer
            .asked
            .is_some_and(|at| now.saturating_duration_since(at) < heartbeat)
        {
            return None;
        }
        peer.asked = Some(now);
        Some(node.to_owned())
    }

    /// Forget the nodes not heard from for `liveness` heartbeats.
    pub(super) fn expire(&mut self, now: Instant) {
        let life = self.lifetime();
        self.peers
            .retain(|_, p| now.saturating_duration_since(p.heard) < life);
    }

    /// `room`'s members on the live nodes, `(member, connections)` per node.
    pub(super) fn room(&self, room: &str, now: Instant) -> Vec<(String, usize)> {
        let life = self.lifetime();
        self.peers
            .values()
            .filter(|p| now.saturating_duration_since(p.heard) < life)
            .filter_map(|p| p.members.get(room))
            .flat_map(|r| r.iter().map(|(m, n)| (m.clone(), *n)))
            .collect()
    }

    /// Nodes held, whole or not (for tests and stats).
    #[cfg(test)]
    fn whole(&self, node: &str) -> bool {
        self.peers.get(node).is_some_and(|p| p.whole)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HB: Duration = Duration::from_secs(1);

    fn sorted(mut v: Vec<(String, usize)>) -> Vec<(String, usize)> {
        v.sort();
        v
    }

    fn feed(view: &mut View, msgs: Vec<Msg>, now: Instant) -> Vec<String> {
        msgs.into_iter().filter_map(|m| view.on(m, now)).collect()
    }

    #[test]
    fn a_new_node_is_wanted_then_held_whole_from_its_snapshot_and_deltas() {
        let t = Instant::now();
        let mut a = Own::new("a");
        let mut v = View::new("b", HB, 3);
        a.change("r", "ana", 1);
        // a delta from a node not held: want it
        let d = a.change("r", "bo", 2);
        assert_eq!(feed(&mut v, vec![d], t), ["a"]);
        // asked once a heartbeat at most
        assert!(feed(&mut v, vec![a.beat()], t).is_empty());
        assert!(!v.whole("a"));
        assert_eq!(feed(&mut v, a.snapshot(), t), Vec::<String>::new());
        assert!(v.whole("a"));
        assert_eq!(
            sorted(v.room("r", t)),
            [("ana".into(), 1), ("bo".into(), 2)]
        );
        let d = a.change("r", "ana", 0);
        assert!(feed(&mut v, vec![d, a.beat()], t).is_empty());
        assert_eq!(v.room("r", t), [("bo".into(), 2)]);
    }

    #[test]
    fn a_lost_delta_is_a_gap_that_a_snapshot_mends() {
        let t = Instant::now();
        let mut a = Own::new("a");
        let mut v = View::new("b", HB, 3);
        feed(&mut v, a.snapshot(), t);
        let _lost = a.change("r", "ana", 1);
        let d2 = a.change("r", "bo", 1);
        assert_eq!(feed(&mut v, vec![d2], t), ["a"]);
        feed(&mut v, a.snapshot(), t);
        assert_eq!(
            sorted(v.room("r", t)),
            [("ana".into(), 1), ("bo".into(), 1)]
        );
        // a lost last delta shows in the next beat
        let _lost = a.change("r", "cy", 1);
        let later = t + 2 * HB;
        assert_eq!(feed(&mut v, vec![a.beat()], later), ["a"]);
    }

    #[test]
    fn a_snapshot_in_many_parts_needs_every_part_in_order() {
        let t = Instant::now();
        let mut a = Own::new("a");
        for i in 0..10_000 {
            a.change("r", &format!("member-{i:05}-{}", "x".repeat(20)), 1);
        }
        let parts = a.snapshot();
        assert!(parts.len() > 3, "{} parts", parts.len());
        let mut v = View::new("b", HB, 3);
        // a missing part: not whole, asked again
        let mut broken = parts.clone();
        broken.remove(2);
        assert_eq!(feed(&mut v, broken, t), ["a"]);
        assert!(!v.whole("a"));
        feed(&mut v, parts, t);
        assert!(v.whole("a"));
        assert_eq!(v.room("r", t).len(), 10_000);
    }

    #[test]
    fn a_silent_node_is_left_out_after_liveness_heartbeats_and_bye_is_at_once() {
        let t = Instant::now();
        let (mut a, c) = (Own::new("a"), Own::new("c"));
        let mut v = View::new("b", HB, 3);
        a.change("r", "ana", 1);
        feed(&mut v, a.snapshot(), t);
        feed(&mut v, c.snapshot(), t);
        assert_eq!(v.room("r", t + 2 * HB), [("ana".into(), 1)]);
        assert!(v.room("r", t + 3 * HB).is_empty());
        v.expire(t + 3 * HB);
        assert!(!v.whole("a"));
        feed(&mut v, a.snapshot(), t);
        // a goodbye from an earlier run of a is not this run's
        let earlier = Own::new("a").bye();
        feed(&mut v, vec![earlier], t);
        assert_eq!(v.room("r", t), [("ana".into(), 1)]);
        feed(&mut v, vec![a.bye()], t);
        assert!(v.room("r", t).is_empty());
    }

    #[test]
    fn a_restarted_node_starts_over() {
        let t = Instant::now();
        let mut a = Own::new("a");
        let mut v = View::new("b", HB, 3);
        a.change("r", "ana", 1);
        feed(&mut v, a.snapshot(), t);
        let mut a2 = Own::new("a");
        let d = a2.change("r", "bo", 1);
        assert_eq!(feed(&mut v, vec![d], t), ["a"]);
        assert!(
            v.room("r", t).is_empty(),
            "the old incarnation's members are gone"
        );
        feed(&mut v, a2.snapshot(), t);
        assert_eq!(v.room("r", t), [("bo".into(), 1)]);
    }

    #[test]
    fn messages_round_trip_and_garbage_is_none() {
        let mut a = Own::new("a\"é");
        let d = a.change("r\n", "m", 3);
        assert_eq!(Msg::decode(&d.encode()), Some(d));
        for m in a.snapshot() {
            assert_eq!(Msg::decode(&m.encode()), Some(m));
        }
        assert_eq!(Msg::decode(b"{\"k\":\"nope\"}"), None);
        assert_eq!(Msg::decode(b"\xff"), None);
    }
}
