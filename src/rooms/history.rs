//! Rooms with history (see [the rooms docs](super#history-and-recovery)): the
//! positioned publish, its delivery to this node's connections, and the client's join
//! that recovers what it missed.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use axum::response::Response;

use super::cursor::{self, Admit, Cursor, Out};
use super::registry::SubKey;
use super::sink::{parse_sse_id, sse_id, Frame, Sink};
use super::{encode, lock, RoomError, Rooms};
use crate::cluster::{ClusterMessage, History, HistoryOptions, Position, Target};
use crate::sse::encode::{encode_event, SseEvent};
use crate::sse::stream::open;
use crate::sse::{Sse, SseOptions, SseRequest};
use crate::ws::{envelope, CloseCode, Socket};

/// The SSE event a stream subscribed with [`Rooms::sse`] gets first in a room with
/// history, with the position as its `id` and, as data, what `room:joined` carries:
/// `{"channel","epoch","offset"}` plus `"recovered"` when the request resumed with a
/// `Last-Event-ID`. `recovered: false` says the resume could not be honoured (nothing
/// was replayed: reload); the same event, unsolicited, says the stream lost its past.
pub const JOINED_EVENT: &str = "street:joined";

/// How long a join waits for the broker's history before it fails
/// (`room:error` "history unavailable").
const HISTORY_TIMEOUT: Duration = Duration::from_secs(5);

/// [`Rooms::latest`] reads in progress at once on one node; beyond, the next one is
/// refused at once ([`RoomError::HistoryUnavailable`]).
pub(super) const MAX_LATEST_READS: usize = 32;

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

impl Sink {
    /// Tell the subscriber where it stands: `room:joined` to a socket; to a stream, the
    /// [`JOINED_EVENT`] event with the position as its id (so the browser's next
    /// `Last-Event-ID` resumes from there).
    fn send_joined(&self, joined: &Joined<'_>) {
        match self {
            Sink::Socket(s) => {
                let _ = s.emit("room:joined", joined);
            }
            Sink::Stream(s) => {
                if let Ok(data) = serde_json::to_string(joined) {
                    let _ = s.push(encode_event(&SseEvent {
                        id: Some(sse_id(&Position {
                            epoch: joined.epoch.into(),
                            offset: joined.offset,
                        })),
                        event: Some(JOINED_EVENT.into()),
                        data,
                        retry: None,
                    }));
                }
            }
        }
    }

    /// Tell a live subscriber its position is void (its stream changed epoch): the new
    /// position just before `pos`, not recovered.
    fn send_reset(&self, room: &str, pos: &Position) {
        self.send_joined(&Joined {
            channel: room,
            members: None,
            epoch: &pos.epoch,
            offset: pos.offset.saturating_sub(1),
            recovered: Some(false),
        });
    }
}

/// Who is joining, for [`Rooms::complete_join`].
struct Joiner<'a> {
    room: &'a str,
    key: SubKey,
    token: u64,
    /// Members to list in the answer (sockets only).
    members: Option<&'a [String]>,
    since: Option<Position>,
    /// Most bytes one replay may take.
    budget: usize,
}

impl Rooms {
    /// Most bytes of publications held for one pending join, and most bytes one
    /// recovery replays: half the connection's queue each, so that the replay and what
    /// arrives meanwhile fit without closing it as a slow consumer.
    pub(super) fn hold_budget(&self) -> usize {
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
        let bytes = encode(event, payload)?;
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
            let frame = Frame::new(bytes, Some(pos));
            for (s, admit) in &p.send {
                if *admit == Admit::Reset {
                    s.send_reset(room, pos);
                }
                if s.send(&frame) {
                    n += 1;
                }
            }
            p.overflow
        };
        for s in overflow {
            self.inner.counters.joins_failed.inc();
            match s {
                Sink::Socket(s) => {
                    let _ = s.close(
                        CloseCode::SLOW_CONSUMER,
                        "too much published during recovery",
                    );
                }
                Sink::Stream(s) => s.close(),
            }
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
    ) -> Result<(), RoomError> {
        let id = socket.id();
        let repended = lock(&self.inner.state).repend(id, room);
        if !repended {
            self.join_as(socket, room, member, true)?;
        }
        let key = SubKey::Socket(id);
        let Some(token) = lock(&self.inner.state).token(room, key) else {
            return Ok(()); // left (or closed) already
        };
        let members = self.members_now(room).await;
        let since = since.map(|s| s.position());
        let Some(answer) = self.ask_history(room, since.as_ref(), history).await else {
            self.inner.counters.joins_failed.inc();
            let mut st = lock(&self.inner.state);
            if st.token(room, key) == Some(token) {
                if repended {
                    // a member already: it stays (and gets live publications again, its
                    // gap unfilled); the refusal tells it to try again
                    st.set_cursor(room, key, Cursor::default());
                } else {
                    drop(st);
                    self.leave(socket, room);
                }
            }
            return Err(RoomError::HistoryUnavailable);
        };
        self.complete_join(
            answer,
            &Joiner {
                room,
                key,
                token,
                members: Some(&members),
                since,
                budget: self.hold_budget(),
            },
        );
        Ok(())
    }

    /// The newest publications of `room`, a room with history, wherever they were
    /// published: at most `limit` (and at most the history's size), oldest first, as
    /// delivered (envelopes with `"offset"`), in `since`; with where the stream stands
    /// (`epoch`, `offset`: a position to join from, so that nothing after them is
    /// missed). What a page shows when it opens a room; the client protocol's
    /// `room:history` request asks it for a member of the room, or for whoever the
    /// authorization hook lets join it.
    ///
    /// # Errors
    /// [`RoomError::NoHistory`] for a room without history; a room name that is not
    /// valid, as for a join; [`RoomError::HistoryUnavailable`] when the broker could not
    /// answer within 5 s, or when 32 reads are in progress on this node already (a
    /// bound on what clients can ask of the broker at once).
    ///
    /// ```no_run
    /// # async fn f(rooms: street::rooms::Rooms) -> Result<(), street::rooms::RoomError> {
    /// let recent = rooms.latest("chat:general", 50).await?;
    /// for (offset, envelope) in recent.since.unwrap_or_default() {
    ///     println!("{offset}: {}", String::from_utf8_lossy(&envelope));
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn latest(&self, room: &str, limit: usize) -> Result<History, RoomError> {
        self.check_name("room", room)?;
        let Some(history) = self.inner.opts.history_of(room) else {
            return Err(RoomError::NoHistory {
                room: room.to_owned(),
            });
        };
        let Ok(_slot) = self.inner.latest_reads.try_acquire() else {
            return Err(RoomError::HistoryUnavailable);
        };
        let asked = self
            .inner
            .broker
            .latest(room, limit.min(history.size), history);
        let found = self
            .bounded(room, asked)
            .await
            .ok_or(RoomError::HistoryUnavailable)?;
        self.inner.counters.latest_reads.inc();
        Ok(found)
    }

    /// The broker's answer for `room` (bounded by [`HISTORY_TIMEOUT`]); `None` when it
    /// could not be had.
    async fn ask_history(
        &self,
        room: &str,
        since: Option<&Position>,
        history: HistoryOptions,
    ) -> Option<History> {
        self.bounded(room, self.inner.broker.history(room, since, history))
            .await
    }

    /// A question to the broker about `room`, bounded by [`HISTORY_TIMEOUT`]; `None`
    /// when it could not be answered.
    async fn bounded(
        &self,
        room: &str,
        asked: crate::cluster::BoxFuture<'_, Result<History, crate::cluster::BrokerError>>,
    ) -> Option<History> {
        match tokio::time::timeout(HISTORY_TIMEOUT, asked).await {
            Ok(Ok(h)) => Some(h),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, room, "history unavailable");
                None
            }
            Err(_) => {
                tracing::debug!(room, "history timed out");
                None
            }
        }
    }

    /// Finish a pending join with the broker's answer, under the rooms' lock: where it
    /// stands, the replay when recovered, what was held meanwhile; then live.
    fn complete_join(&self, answer: History, j: &Joiner<'_>) {
        let mut st = lock(&self.inner.state);
        let Some((sink, held)) = st.take_held(j.room, j.key, j.token) else {
            return; // left, or joined again, meanwhile
        };
        let (epoch, top) = (answer.epoch.clone(), answer.offset);
        let rec = cursor::recover(answer, j.since.as_ref(), held, j.budget);
        sink.send_joined(&Joined {
            channel: j.room,
            members: j.members,
            epoch: &epoch,
            offset: top,
            recovered: rec.recovered,
        });
        for out in rec.out {
            match out {
                Out::Frame(pos, b) => {
                    sink.send(&Frame::new(&b, Some(&pos)));
                }
                Out::Reset(p) => sink.send_reset(j.room, &p),
            }
        }
        st.set_cursor(j.room, j.key, rec.cursor);
        drop(st);
        match rec.recovered {
            Some(true) => self.inner.counters.recovered.inc(),
            Some(false) => self.inner.counters.not_recovered.inc(),
            None => {}
        }
    }

    /// Subscribe an SSE request to `room`'s publications, from every node. In a room
    /// with history the stream starts with a [`JOINED_EVENT`] (the position as its id);
    /// a request that resumes (`Last-Event-ID` from this stream) recovers what it missed
    /// when the history still holds it, or is told `recovered: false`, never left with a
    /// silent gap. Every publication carries its position as its SSE id: `event:` is the
    /// envelope's type, `data:` its payload as JSON (a string payload arrives quoted).
    /// Streams are not members: they are not in presence. Returns the stream's handle
    /// (to send it events of its own, or close it) and the response to return.
    ///
    /// A room is street's one hub: its subscribers are sockets and streams alike, a
    /// publication is encoded once per kind and shared, and it reaches every node. A
    /// resume replays at most half the stream's queue
    /// ([`SseOptions::max_queue_bytes`]` / 2`, the other half is room for what is
    /// published meanwhile); a longer backlog, an aged or trimmed history, another
    /// epoch, an id that is not a position or a room without history are all
    /// `recovered: false` with nothing replayed, and the stream goes on live from the
    /// position in the event's id (so a browser that reconnects does not ask for the
    /// same backlog again). A reader that falls further behind is ended as a slow
    /// reader ([`SseStats::slow_readers`](crate::sse::SseStats)); the others go on.
    ///
    /// The
    /// [`Rooms::authorize`] hooks are about sockets: decide in your handler who may read
    /// which room (the request's cookies, token or path) before calling this.
    ///
    /// ```no_run
    /// use axum::extract::Path;
    /// use axum::response::{IntoResponse, Response};
    /// use street::rooms::Rooms;
    /// use street::sse::{SseOptions, SseRequest};
    ///
    /// fn route(rooms: Rooms) -> axum::routing::MethodRouter {
    ///     axum::routing::get(move |Path(room): Path<String>, req: SseRequest| {
    ///         let rooms = rooms.clone();
    ///         async move {
    ///             // a refusal is its own answer: 400, 503 with Retry-After, …
    ///             match rooms.sse(req, &room, SseOptions::default()).await {
    ///                 Ok((_stream, response)) => response,
    ///                 Err(e) => e.into_response(),
    ///             }
    ///         }
    ///     })
    /// }
    /// # async fn publish(rooms: Rooms) {
    /// // elsewhere: every subscriber of "prices", socket or stream, on every node
    /// let _ = rooms.publish(
    ///     "prices",
    ///     "price",
    ///     &serde_json::json!({"EURUSD": 1.08}),
    ///     Default::default(),
    /// );
    /// # }
    /// # let _: fn(Rooms) -> axum::routing::MethodRouter = route;
    /// # let _: Option<Response> = None;
    /// ```
    ///
    /// # Errors
    /// An invalid room name or the node's room limit; [`RoomError::HistoryUnavailable`]
    /// when the history could not be had (answer 503).
    pub async fn sse(
        &self,
        req: SseRequest,
        room: &str,
        opts: SseOptions,
    ) -> Result<(Sse, Response), RoomError> {
        self.check_name("room", room)?;
        let since = req.last_event_id().and_then(parse_sse_id);
        let asked_since = req.last_event_id().is_some();
        let budget = opts.max_queue_bytes / 2;
        let (sse, response) = open(opts, 0, req.into_slot());
        let history = self.inner.opts.history_of(room);
        let id = lock(&self.inner.state).add_stream(
            room,
            sse.shared().clone(),
            history.is_some(),
            self.inner.opts.max_rooms,
        )?;
        let key = SubKey::Stream(id);
        // out of the room when the stream's body goes, however it goes (a hook on its
        // drop, not a sweep: a dead stream must not hold a room in the node's table; and
        // not a task waiting for it, which would cost an idle stream ~400 bytes)
        let (weak, name) = (Arc::downgrade(&self.inner), room.to_owned());
        sse.shared().on_gone(move || {
            if let Some(inner) = weak.upgrade() {
                lock(&inner.state).remove_stream(&name, id);
            }
        });
        let Some(history) = history else {
            if asked_since {
                // no history: nothing to resume from, and the client must know it
                let _ = sse.shared().push(encode_event(&SseEvent {
                    event: Some(JOINED_EVENT.into()),
                    data: serde_json::json!({ "channel": room, "recovered": false }).to_string(),
                    ..SseEvent::default()
                }));
            }
            return Ok((sse, response));
        };
        let token = lock(&self.inner.state).token(room, key);
        let answer = self.ask_history(room, since.as_ref(), history).await;
        let (Some(token), Some(answer)) = (token, answer) else {
            self.inner.counters.joins_failed.inc();
            lock(&self.inner.state).remove_stream(room, id);
            return Err(RoomError::HistoryUnavailable);
        };
        // a Last-Event-ID that is not a position (another server's id) resumes nothing
        let since = since.or_else(|| {
            asked_since.then(|| Position {
                epoch: Arc::from(""),
                offset: 0,
            })
        });
        self.complete_join(
            answer,
            &Joiner {
                room,
                key,
                token,
                members: None,
                since,
                budget,
            },
        );
        Ok((sse, response))
    }

    /// The room's members on every node (at most a second old: see
    /// [`MemberCache`](super::members::MemberCache)), plus this node's now (its own
    /// presence writes may still be queued).
    pub(super) async fn members_now(&self, room: &str) -> Vec<String> {
        let cluster = self
            .inner
            .members
            .get(room, async {
                self.presence(room).await.unwrap_or_default()
            })
            .await;
        let mut members: Vec<String> = cluster.iter().cloned().collect();
        members.extend(self.local_presence(room));
        members.sort();
        members.dedup();
        members
    }
}
