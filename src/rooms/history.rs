//! Rooms with history (see [the rooms docs](super#history-and-recovery)): the
//! positioned publish, its delivery to this node's connections, and the client's join
//! that recovers what it missed.

use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::cursor::{self, Admit, Out};
use super::{lock, RoomError, Rooms};
use crate::cluster::{ClusterMessage, HistoryOptions, Position, Target};
use crate::ws::{envelope, CloseCode, Socket};

/// How long a join waits for the broker's history before it fails
/// (`room:error` "history unavailable").
const HISTORY_TIMEOUT: Duration = Duration::from_secs(5);

/// A client's position, as `room:join` carries it in `since`.
#[derive(Debug, Clone, Deserialize)]
pub(super) struct Since {
    epoch: String,
    offset: u64,
}

impl Since {
    fn position(&self) -> Position {
        Position {
            epoch: self.epoch.as_str().into(),
            offset: self.offset,
        }
    }
}

#[derive(Serialize)]
struct Joined<'a> {
    channel: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    members: Option<&'a [String]>,
    epoch: &'a str,
    offset: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    recovered: Option<bool>,
}

/// The `room:joined` that tells a live client its position is void (its stream changed
/// epoch): the new position just before `pos`, not recovered.
fn reset_notice(room: &str, pos: &Position) -> Option<Bytes> {
    envelope::encode(
        "room:joined",
        &Joined {
            channel: room,
            members: None,
            epoch: &pos.epoch,
            offset: pos.offset.saturating_sub(1),
            recovered: Some(false),
        },
    )
    .ok()
}

impl Rooms {
    /// Most bytes of publications held for one pending join, and most bytes one
    /// recovery replays: half the connection's queue each, so that the replay and what
    /// arrives meanwhile fit without closing it as a slow consumer.
    fn hold_budget(&self) -> usize {
        self.inner.wss.options().max_queue_bytes / 2
    }

    /// [`Rooms::publish`] in a room with history: through the broker, which positions it
    /// and delivers it everywhere (here too, by [`Rooms::deliver_positioned`]).
    pub(super) fn publish_positioned<P: Serialize + ?Sized>(
        &self,
        room: &str,
        event: &str,
        payload: &P,
        history: HistoryOptions,
    ) -> Result<usize, RoomError> {
        let bytes =
            envelope::encode(event, payload).map_err(|e| RoomError::Serialize(e.to_string()))?;
        self.inner.counters.published.inc();
        self.inner.counters.positioned.inc();
        self.inner.broker.publish_with_history(
            ClusterMessage {
                origin: self.inner.node.clone(),
                target: Target::Room {
                    room: room.to_owned(),
                    except_socket: None,
                    except_member: None,
                },
                envelope: envelope::with_channel(&bytes, room),
                position: None,
            },
            history,
        );
        Ok(0)
    }

    /// Queue a positioned publication for this node's connections in `room`: each gets
    /// it once, in offset order, or holds it while its join recovers. Sent under the
    /// rooms' lock, like a recovery's replay, so the two never interleave.
    pub(super) fn deliver_positioned(&self, room: &str, pos: &Position, bytes: &Bytes) -> usize {
        let started = std::time::Instant::now();
        let max_held = self.hold_budget();
        let mut n = 0;
        let overflow = {
            let mut st = lock(&self.inner.state);
            let p = st.positioned(room, pos, bytes, max_held);
            for (s, admit) in &p.send {
                if *admit == Admit::Reset {
                    if let Some(notice) = reset_notice(room, pos) {
                        let _ = s.send_text_bytes(notice);
                    }
                }
                if s.send_text_bytes(bytes.clone()).is_ok() {
                    n += 1;
                }
            }
            p.overflow
        };
        for s in overflow {
            self.inner.counters.joins_failed.inc();
            let _ = s.close(
                CloseCode::SLOW_CONSUMER,
                "too much published during recovery",
            );
        }
        self.inner.counters.delivered.add(n as u64);
        self.inner.wss.observe_fanout(started.elapsed());
        n
    }

    /// The client protocol's `room:join` of a room with history (authorized already):
    /// join (or, when already in the room, start over from `since`), ask the broker,
    /// then send `room:joined` with the position, the replay when recovered, and go
    /// live. Refusals go to the client as `room:error`.
    pub(super) async fn join_with_history(
        &self,
        socket: &Socket,
        room: &str,
        member: &str,
        since: Option<Since>,
        history: HistoryOptions,
    ) -> Result<(), String> {
        let id = socket.id();
        let repended = lock(&self.inner.state).repend(id, room);
        if !repended {
            self.join_as(socket, room, member, true)
                .map_err(|e| e.to_string())?;
        }
        let Some(token) = lock(&self.inner.state).token(id, room) else {
            return Ok(()); // left (or closed) already
        };
        let members = self.members_now(room).await;
        let since = since.map(|s| s.position());
        let asked = self
            .inner
            .broker
            .history(room, since.as_ref().map(|p| p.offset), history);
        let answer = match tokio::time::timeout(HISTORY_TIMEOUT, asked).await {
            Ok(Ok(h)) => h,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, room, "history unavailable");
                return self.fail_join(socket, room, token);
            }
            Err(_) => {
                tracing::debug!(room, "history timed out");
                return self.fail_join(socket, room, token);
            }
        };
        let mut st = lock(&self.inner.state);
        let Some((_, held)) = st.take_held(id, room, token) else {
            return Ok(()); // left, or joined again, meanwhile
        };
        let (epoch, top) = (answer.epoch.clone(), answer.offset);
        let rec = cursor::recover(answer, since.as_ref(), held, self.hold_budget());
        let joined = envelope::encode(
            "room:joined",
            &Joined {
                channel: room,
                members: Some(&members),
                epoch: &epoch,
                offset: top,
                recovered: rec.recovered,
            },
        )
        .map_err(|e| e.to_string())?;
        let _ = socket.send_text_bytes(joined);
        for out in rec.out {
            match out {
                Out::Frame(b) => {
                    let _ = socket.send_text_bytes(b);
                }
                Out::Reset(p) => {
                    if let Some(notice) = reset_notice(room, &p) {
                        let _ = socket.send_text_bytes(notice);
                    }
                }
            }
        }
        st.set_cursor(id, room, rec.cursor);
        drop(st);
        match rec.recovered {
            Some(true) => self.inner.counters.recovered.inc(),
            Some(false) => self.inner.counters.not_recovered.inc(),
            None => {}
        }
        Ok(())
    }

    /// The history could not be had: out of the room, and a refusal.
    fn fail_join(&self, socket: &Socket, room: &str, token: u64) -> Result<(), String> {
        self.inner.counters.joins_failed.inc();
        if lock(&self.inner.state).token(socket.id(), room) == Some(token) {
            self.leave(socket, room);
        }
        Err("history unavailable".into())
    }

    /// The room's members on every node, plus this node's (its own presence writes may
    /// still be queued).
    pub(super) async fn members_now(&self, room: &str) -> Vec<String> {
        let mut members = self.presence(room).await.unwrap_or_default();
        members.extend(self.local_presence(room));
        members.sort();
        members.dedup();
        members
    }
}
