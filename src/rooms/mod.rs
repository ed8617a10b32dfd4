//! Rooms, presence and typing, on one node or across many (StreetJS's `ChannelHub`).
//!
//! A socket joins a room *as a member* (a user id). Presence is reference-counted per
//! connection: a member on two devices stays present until the last connection leaves,
//! so a reconnect that overlaps the old socket never flickers. A socket leaves every room
//! when it closes, however it closed (including a heartbeat reap); empty rooms are
//! dropped.
//!
//! Built-in events, with StreetJS's payload shapes, sent to the room's *other*
//! connections (the connection whose join or leave caused it never gets its own):
//! - `presence:join` / `presence:leave` `{"channel","memberId"}` when a member becomes
//!   present / absent;
//! - `typing` `{"channel","memberId","typing"}` when a member's typing state changes; with
//!   a `typing_ttl` (default 5 s) a `typing: true` clears itself unless refreshed. Unlike
//!   StreetJS, a refresh (`true` while already typing) sends nothing, so a client
//!   repeating `typing` on every keystroke does not flood the room.
//!
//! ```no_run
//! use street::rooms::{PublishOptions, Rooms, RoomsOptions};
//! use street::ws::{ConnectRequest, Socket, WebSocketServer, WsOptions};
//!
//! type BoxError = Box<dyn std::error::Error + Send + Sync>;
//!
//! # async fn run() -> Result<(), BoxError> {
//! let wss = WebSocketServer::new(WsOptions::default());
//! let rooms = Rooms::new(&wss, RoomsOptions::default()).await?; // in-memory, one node
//! let r = rooms.clone();
//! wss.on_connection(move |socket: Socket, req: ConnectRequest| {
//!     let member = req.query_param("user").unwrap_or_else(|| "anonymous".into());
//!     r.join(&socket, "lobby", &member)?;
//!     let (r2, s) = (r.clone(), socket.clone());
//!     socket.on("say", move |text: String| {
//!         // to everyone in the lobby, on every node, except the sender's connection
//!         let _ = r2.publish("lobby", "said", &text, PublishOptions::except_socket(s.id()));
//!     })?;
//!     Ok::<_, BoxError>(())
//! });
//! # Ok(()) }
//! ```
//!
//! Across nodes, give every node a broker (see [`crate::cluster`]): publishes, broadcasts
//! and targeted emits then reach clients on every node, and [`Rooms::presence`] is the
//! union over the live nodes. Presence *events* follow each node's own transitions: a
//! member who is present on node A and joins on node B too triggers a `presence:join` on
//! B; query [`Rooms::presence`] for the authoritative union.
//!
//! Opt-in client protocol ([`RoomsOptions::client_protocol`], then [`Rooms::attach`] in
//! the connection handler): a browser sends `room:join` / `room:leave` `{"channel"}`,
//! `room:publish` `{"channel","event","payload"}` and `typing` `{"channel","typing"}`;
//! it gets `room:joined` `{"channel","members"}`, `room:left` `{"channel"}`, messages as
//! `{"type": event, "payload": {"channel","memberId","payload"}}`, and `room:error`
//! `{"channel","action","reason"}` when something is refused (nothing is joined then).
//! [`Rooms::authorize`] decides who may join which room.
//!
//! # History and recovery
//!
//! Rooms named by [`RoomsOptions::history`] keep their recent past in the broker. Each
//! publication there gets a position `(epoch, offset)` from the broker (offsets 1, 2, 3,
//! … per room, the same on every node; the epoch changes when the past is lost) and
//! reaches every node, this one included, through the broker, in offset order. Clients of
//! the client protocol join with `{"channel","since":{"epoch","offset"}}` and get, after
//! `room:joined` (`epoch`, `offset`, `recovered`), exactly the publications they missed,
//! then the live ones, with no gap and no duplicate at the seam; when the history no
//! longer holds it all, `recovered: false` and nothing is replayed. A page that opens a
//! room loads its newest publications first ([`Rooms::latest`]; the client protocol's
//! request `room:history` `{"channel","limit"}`, for a member or whoever may join), then
//! joins `since` their position: what was published in between is replayed, nothing is
//! missed or repeated. [`Rooms::sse`]
//! subscribes SSE streams to the same rooms, with positions as event ids. The README's
//! "Channels with history" section is the protocol, for any client.

mod authorize;
mod cluster;
mod cursor;
mod history;
mod members;
mod options;
mod outcome;
mod policy;
mod protocol;
mod registry;
mod sink;
mod stats;
#[cfg(test)]
mod tests;
mod typing;

pub use history::JOINED_EVENT;
pub use options::{PublishOptions, RoomsOptions};
pub use outcome::{JoinOutcome, LeaveOutcome, RoomError};
pub use policy::ClientPolicy;
pub use stats::RoomsStats;

use std::sync::{Arc, Mutex, MutexGuard, Weak};

use serde::Serialize;

use crate::cluster::memory::MemoryBroker;
use crate::cluster::{Broker, BrokerError, Target};
use crate::ws::envelope;
use crate::ws::{Socket, SocketId, WebSocketServer};

use authorize::Authorizer;
use registry::Registry;
use stats::RoomsCounters;
use typing::TimerIds;

struct Inner {
    node: Arc<str>,
    wss: WebSocketServer,
    broker: Arc<dyn Broker>,
    opts: RoomsOptions,
    state: Mutex<Registry>,
    /// Every hook given to [`Rooms::authorize`].
    authorizer: Authorizer,
    counters: RoomsCounters,
    /// Ids of typing timers (a timer acts only on the state that names it).
    timers: TimerIds,
    /// The cluster's member lists, for `room:joined`.
    members: members::MemberCache,
    /// Reads of rooms' newest publications in progress ([`Rooms::latest`]): a bound on
    /// what clients' `room:history` requests ask of the broker at once.
    latest_reads: tokio::sync::Semaphore,
}

/// Rooms and presence for one `WebSocketServer`, on one node of a cluster. Cheap to
/// clone. See the [module docs](self).
#[derive(Clone)]
pub struct Rooms {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Rooms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rooms")
            .field("node", &self.inner.node)
            .finish_non_exhaustive()
    }
}

/// `{"type","payload","ts"}`, encoded once for every recipient.
fn encode<P: Serialize + ?Sized>(event: &str, payload: &P) -> Result<bytes::Bytes, RoomError> {
    envelope::encode(event, payload).map_err(|e| RoomError::Serialize(e.to_string()))
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[derive(Serialize)]
struct PresencePayload<'a> {
    channel: &'a str,
    #[serde(rename = "memberId")]
    member_id: &'a str,
}

impl Rooms {
    /// Rooms for `wss`, joined to the cluster through `opts.broker` (in-memory, one node,
    /// by default).
    ///
    /// # Errors
    /// [`BrokerError::Unavailable`] when the broker cannot be reached at start (see the
    /// broker's own degraded-mode option).
    pub async fn new(wss: &WebSocketServer, opts: RoomsOptions) -> Result<Self, BrokerError> {
        let node: Arc<str> = Arc::from(
            opts.node_id
                .clone()
                .unwrap_or_else(|| format!("node-{:016x}", fastrand::u64(..))),
        );
        let broker = opts
            .broker
            .clone()
            .unwrap_or_else(|| Arc::new(MemoryBroker::new()));
        let inner = Arc::new(Inner {
            node: node.clone(),
            wss: wss.clone(),
            broker: broker.clone(),
            opts,
            state: Mutex::new(Registry::default()),
            authorizer: Authorizer::default(),
            counters: RoomsCounters::default(),
            timers: TimerIds::default(),
            members: members::MemberCache::default(),
            latest_reads: tokio::sync::Semaphore::new(history::MAX_LATEST_READS),
        });
        let hooks = cluster::node_hooks(&inner);
        broker.start(node, hooks).await?;
        Ok(Self { inner })
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.inner.node
    }

    /// The WebSocket server these rooms belong to.
    pub fn server(&self) -> &WebSocketServer {
        &self.inner.wss
    }

    fn check_name(&self, what: &'static str, s: &str) -> Result<(), RoomError> {
        let limit = self.inner.opts.max_name_bytes;
        if s.is_empty() {
            Err(RoomError::Empty { what })
        } else if s.len() > limit {
            Err(RoomError::TooLong { what, limit })
        } else if s.chars().any(char::is_control) {
            Err(RoomError::ControlCharacter { what })
        } else {
            Ok(())
        }
    }

    /// Leave every room when the socket closes, however it closes.
    fn install_close_hook(&self, socket: &Socket) {
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        let s = socket.clone();
        socket.on_close_internal(move |_| {
            if let Some(i) = weak.upgrade() {
                Rooms { inner: i }.disconnect(&s);
            }
        });
    }

    /// Join `socket` to `room` as `member`. Idempotent per connection. When this makes
    /// the member present, the room's other connections get `presence:join`.
    ///
    /// # Errors
    /// Invalid names, the per-socket and per-node room limits, a closed socket.
    pub fn join(
        &self,
        socket: &Socket,
        room: &str,
        member: &str,
    ) -> Result<JoinOutcome, RoomError> {
        self.join_as(socket, room, member, false)
    }

    /// [`Rooms::join`]; `pending`: its place in the room's stream waits for a recovery
    /// (see [`history`]).
    fn join_as(
        &self,
        socket: &Socket,
        room: &str,
        member: &str,
        pending: bool,
    ) -> Result<JoinOutcome, RoomError> {
        self.check_name("room", room)?;
        self.check_name("member", member)?;
        if socket.closed() {
            return Err(RoomError::SocketClosed);
        }
        let id = socket.id();
        let joined =
            lock(&self.inner.state).join(socket, room, member, &self.inner.opts, pending)?;
        let Some(j) = joined else {
            return Ok(JoinOutcome {
                newly_present: false,
            });
        };
        self.inner.counters.joins.inc();
        self.inner.broker.set_presence(&j.room, &j.member, j.count);
        if j.newly {
            let _ = self.publish_ephemeral(
                &j.room,
                "presence:join",
                &PresencePayload {
                    channel: &j.room,
                    member_id: &j.member,
                },
                PublishOptions::except_socket(id),
            );
        }
        if j.hook {
            // last: if the socket closed meanwhile, the hook runs now and undoes all this
            self.install_close_hook(socket);
        }
        Ok(JoinOutcome {
            newly_present: j.newly,
        })
    }

    /// Take `socket` out of `room`. When that was the member's last connection there,
    /// the other connections get `presence:leave` (and the member's typing indicator is
    /// cleared). An empty room is dropped.
    pub fn leave(&self, socket: &Socket, room: &str) -> LeaveOutcome {
        let out = self.remove(socket.id(), room);
        lock(&self.inner.state).forget_room(socket.id(), room);
        out
    }

    fn remove(&self, id: SocketId, room: &str) -> LeaveOutcome {
        let removed = lock(&self.inner.state).remove(id, room);
        let Some((member, count)) = removed else {
            return LeaveOutcome {
                left: false,
                now_absent: false,
            };
        };
        self.inner.counters.leaves.inc();
        self.inner.broker.set_presence(room, &member, count);
        let now_absent = count == 0;
        if now_absent {
            let _ = self.publish_ephemeral(
                room,
                "presence:leave",
                &PresencePayload {
                    channel: room,
                    member_id: &member,
                },
                PublishOptions::except_socket(id),
            );
        }
        LeaveOutcome {
            left: true,
            now_absent,
        }
    }

    /// Take `socket` out of every room (runs by itself when a socket closes).
    pub fn disconnect(&self, socket: &Socket) {
        let id = socket.id();
        let rooms = lock(&self.inner.state).disconnect(id);
        for r in rooms {
            self.remove(id, &r);
        }
    }

    /// Index `socket` under `member` (for [`Rooms::emit_to_member`]) without joining a
    /// room, and, when [`RoomsOptions::client_protocol`] is on, handle the client's
    /// `room:*` and `typing` events for it.
    ///
    /// # Errors
    /// An invalid member id, a closed socket, or the socket's listener limit.
    pub fn attach(&self, socket: &Socket, member: &str) -> Result<(), RoomError> {
        self.check_name("member", member)?;
        if socket.closed() {
            return Err(RoomError::SocketClosed);
        }
        let hook = lock(&self.inner.state).attach(socket, member);
        if hook {
            self.install_close_hook(socket);
        }
        if self.inner.opts.client_protocol {
            protocol::install(self, socket, member)?;
        }
        Ok(())
    }

    /// Decide who may join which room through the client protocol: `(socket, room,
    /// member) -> allowed`. Rooms are closed by default: without a hook every client join
    /// is refused (`room:error` "forbidden"); `rooms.authorize(|_, _, _| true)` opens
    /// them all.
    ///
    /// Calling it again adds a hook (it does not replace the first): a join is allowed
    /// only when every hook allows it. They run in registration order and stop at the
    /// first refusal; a hook that panics refuses.
    ///
    /// ```no_run
    /// # fn f(rooms: street::rooms::Rooms) {
    /// // rooms "public:…" are open to all, "staff" only to the boss
    /// rooms.authorize(|_socket, room, _member| room.starts_with("public:") || room == "staff");
    /// rooms.authorize(|_socket, room, member| room != "staff" || member == "boss");
    /// # }
    /// ```
    pub fn authorize(&self, hook: impl Fn(&Socket, &str, &str) -> bool + Send + Sync + 'static) {
        self.inner.authorizer.add(hook);
    }

    fn count_refused_publish(&self) {
        self.inner.counters.publishes_refused.inc();
    }

    fn count_refused_action(&self) {
        self.inner.counters.actions_refused.inc();
    }

    /// Take one client publication of `len` bytes from `room`'s budget (shared by all its
    /// publishers); false when it is spent.
    fn take_room_budget(&self, room: &str, len: usize) -> bool {
        let rates = self.inner.opts.client.room_rates();
        lock(&self.inner.state).take_room_budget(room, rates, len)
    }

    fn allowed(&self, socket: &Socket, room: &str, member: &str) -> bool {
        let ok = self.inner.authorizer.allows(socket, room, member);
        if !ok {
            self.inner.counters.denied.inc();
        }
        ok
    }

    /// Send `{"type":event,"payload":…}` to the room's connections on every node, minus
    /// the exceptions. Encoded once. Returns how many local connections it was queued for.
    ///
    /// In a room with history ([`RoomsOptions::history`]) the publication goes through
    /// the broker, which gives it its offset and delivers it to every node, this one
    /// included, once it has it: the return value is then 0, and the exceptions do not
    /// apply (every connection gets the whole stream, or its gap detection would fire;
    /// a sender recognizes its own publications by their payload).
    ///
    /// # Errors
    /// [`RoomError::Serialize`].
    pub fn publish<P: Serialize + ?Sized>(
        &self,
        room: &str,
        event: &str,
        payload: &P,
        opts: PublishOptions,
    ) -> Result<usize, RoomError> {
        if let Some(history) = self.inner.opts.history_of(room) {
            return self.publish_positioned(room, event, payload, history);
        }
        self.publish_ephemeral(room, event, payload, opts)
    }

    /// [`Rooms::publish`] without history, whatever the room: presence and typing
    /// events, which are about now and take no place in the stream.
    fn publish_ephemeral<P: Serialize + ?Sized>(
        &self,
        room: &str,
        event: &str,
        payload: &P,
        opts: PublishOptions,
    ) -> Result<usize, RoomError> {
        let bytes = encode(event, payload)?;
        self.inner.counters.published.inc();
        let target = Target::Room {
            room: room.to_owned(),
            except_socket: opts.except_socket,
            except_member: opts.except_member,
        };
        Ok(self.send(target, bytes))
    }

    /// Send to every client on every node (the cluster-wide `wss.broadcast`).
    ///
    /// # Errors
    /// [`RoomError::Serialize`].
    pub fn broadcast<P: Serialize + ?Sized>(
        &self,
        event: &str,
        payload: &P,
    ) -> Result<usize, RoomError> {
        let bytes = encode(event, payload)?;
        Ok(self.send(Target::All, bytes))
    }

    /// Send to one connection, on whichever node it is. Returns whether it is on this
    /// node (and was queued).
    ///
    /// # Errors
    /// [`RoomError::Serialize`].
    pub fn emit_to_socket<P: Serialize + ?Sized>(
        &self,
        id: SocketId,
        event: &str,
        payload: &P,
    ) -> Result<bool, RoomError> {
        let bytes = encode(event, payload)?;
        Ok(self.send(Target::Socket(id), bytes) > 0)
    }

    /// Send to every connection of `member` on every node. Returns how many local
    /// connections it was queued for.
    ///
    /// # Errors
    /// [`RoomError::Serialize`].
    pub fn emit_to_member<P: Serialize + ?Sized>(
        &self,
        member: &str,
        event: &str,
        payload: &P,
    ) -> Result<usize, RoomError> {
        let bytes = encode(event, payload)?;
        Ok(self.send(Target::Member(member.to_owned()), bytes))
    }

    /// Members present in `room` on this node, in the order they became present.
    pub fn local_presence(&self, room: &str) -> Vec<String> {
        lock(&self.inner.state).members_where(room, |_| true)
    }

    /// Whether `member` is present in `room` on this node.
    pub fn is_present_locally(&self, room: &str, member: &str) -> bool {
        lock(&self.inner.state).is_present(room, member)
    }

    /// Connections in `room` on this node.
    pub fn local_connection_count(&self, room: &str) -> usize {
        lock(&self.inner.state).connection_count(room)
    }

    /// SSE streams subscribed to `room` on this node ([`Rooms::sse`]).
    pub fn local_stream_count(&self, room: &str) -> usize {
        lock(&self.inner.state).stream_count_in(room)
    }

    /// Members present in `room` on every live node (sorted by id).
    ///
    /// # Errors
    /// [`BrokerError::Unavailable`] when the broker cannot be asked.
    pub async fn presence(&self, room: &str) -> Result<Vec<String>, BrokerError> {
        Ok(self
            .inner
            .broker
            .presence(room)
            .await?
            .into_iter()
            .map(|e| e.member)
            .collect())
    }

    /// Members present in `room` on every live node.
    ///
    /// # Errors
    /// As [`Rooms::presence`].
    pub async fn member_count(&self, room: &str) -> Result<usize, BrokerError> {
        Ok(self.inner.broker.presence(room).await?.len())
    }

    /// Connections in `room` on every live node.
    ///
    /// # Errors
    /// As [`Rooms::presence`].
    pub async fn connection_count(&self, room: &str) -> Result<usize, BrokerError> {
        Ok(self
            .inner
            .broker
            .presence(room)
            .await?
            .iter()
            .map(|e| e.connections)
            .sum())
    }

    /// Rooms on this node.
    pub fn room_names(&self) -> Vec<String> {
        lock(&self.inner.state).room_names()
    }

    /// Rooms `socket` is in.
    pub fn rooms_of(&self, socket: &Socket) -> Vec<String> {
        lock(&self.inner.state).rooms_of(socket.id())
    }

    /// Whether `socket` is in `room` (without copying its room list).
    fn is_in(&self, socket: &Socket, room: &str) -> bool {
        lock(&self.inner.state).is_in(socket.id(), room)
    }

    /// The counters.
    pub fn stats(&self) -> RoomsStats {
        let i = &self.inner;
        let mut s = i.counters.snapshot();
        let st = lock(&i.state);
        s.rooms = st.room_count() as u64;
        s.streams = st.stream_count() as u64;
        drop(st);
        s.broker = i.broker.stats();
        s
    }

    /// Leave the cluster: this node's presence is removed from the broker at once. Call
    /// it after the WebSocket server closed (its clients' leaves have then been sent).
    pub async fn shutdown(&self) {
        self.inner.broker.stop().await;
    }
}
