//! The cluster side of the rooms: sending through the broker, delivering messages (from
//! this node or others) to local connections, and the hooks the broker calls back
//! (delivery, and this node's presence to re-send after it lost it).

use std::sync::{Arc, Weak};

use bytes::Bytes;

use super::sink::{Frame, Sink};
use super::{lock, Inner, Rooms};
use crate::cluster::{ClusterMessage, NodeHooks, Target};

/// The hooks through which the broker reaches the rooms of `inner` (weakly: dropped
/// rooms get nothing).
pub(super) fn node_hooks(inner: &Arc<Inner>) -> NodeHooks {
    let (w1, w2): (Weak<Inner>, Weak<Inner>) = (Arc::downgrade(inner), Arc::downgrade(inner));
    NodeHooks {
        deliver: Arc::new(move |m: ClusterMessage| {
            if let Some(i) = w1.upgrade() {
                let rooms = Rooms { inner: i };
                match (&m.target, &m.position) {
                    (Target::Room { room, .. }, Some(pos)) => {
                        rooms.deliver_positioned(room, pos, &m.envelope);
                    }
                    _ => {
                        rooms.deliver_local(&m.target, &m.envelope);
                    }
                }
            }
        }),
        snapshot: Arc::new(move || {
            w2.upgrade()
                .map(|i| Rooms { inner: i }.snapshot())
                .unwrap_or_default()
        }),
    }
}

impl Rooms {
    /// Hand to the broker, then deliver locally: the other nodes deliver while this one
    /// does (the other way round, a broadcast reached them a whole local fan-out late).
    /// A socket is looked for here first, and only handed on when it is not here.
    pub(super) fn send(&self, target: Target, envelope: Bytes) -> usize {
        if let Target::Socket(_) = target {
            let n = self.deliver_local(&target, &envelope);
            if n == 0 {
                self.hand_on(target, envelope);
            }
            return n;
        }
        self.hand_on(target.clone(), envelope.clone());
        self.deliver_local(&target, &envelope)
    }

    /// To the other nodes, through the broker.
    fn hand_on(&self, target: Target, envelope: Bytes) {
        self.inner.broker.publish(ClusterMessage {
            origin: self.inner.node.clone(),
            target,
            envelope,
            position: None,
        });
    }

    /// Queue `bytes` for the local subscribers `target` names.
    fn deliver_local(&self, target: &Target, bytes: &Bytes) -> usize {
        let started = std::time::Instant::now();
        let recipients: Vec<Sink> = match target {
            Target::All => {
                let n = self.inner.wss.broadcast_encoded(bytes);
                self.inner.counters.delivered.add(n as u64);
                return n;
            }
            Target::Socket(id) => self
                .inner
                .wss
                .client(*id)
                .map(Sink::Socket)
                .into_iter()
                .collect(),
            Target::Member(m) => lock(&self.inner.state)
                .member_sockets(m.as_str())
                .into_iter()
                .map(Sink::Socket)
                .collect(),
            Target::Room {
                room,
                except_socket,
                except_member,
            } => lock(&self.inner.state).room_sinks(
                room.as_str(),
                *except_socket,
                except_member.as_deref(),
            ),
        };
        // queued outside the lock: a full queue closes that client, never blocks others
        let frame = Frame::new(bytes, None);
        let n = recipients.iter().filter(|s| s.send(&frame)).count();
        self.inner.counters.delivered.add(n as u64);
        if matches!(target, Target::Room { .. }) {
            self.inner.wss.observe_fanout(started.elapsed());
        }
        n
    }

    /// This node's presence, for the broker to re-send after it lost it.
    pub(super) fn snapshot(&self) -> Vec<(String, String, usize)> {
        lock(&self.inner.state).snapshot()
    }
}
