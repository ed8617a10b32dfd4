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

mod protocol;

pub use protocol::ClientPolicy;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, Weak};
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;

use crate::cluster::memory::MemoryBroker;
use crate::cluster::{Broker, BrokerError, BrokerStats, ClusterMessage, NodeHooks, Target};
use crate::counters::stats;
use crate::net::per_ip::ip_key;
use crate::ws::envelope;
use crate::ws::{Socket, SocketId, WebSocketServer};

/// Options for [`Rooms::new`]. Every field has a default.
#[derive(Clone)]
#[non_exhaustive]
pub struct RoomsOptions {
    /// The broker to the other nodes. Default: an in-memory broker of its own (one node,
    /// no external service).
    pub broker: Option<Arc<dyn Broker>>,
    /// This node's id in the cluster. Default: a random one.
    pub node_id: Option<String>,
    /// A `typing: true` clears itself (a `typing: false` is sent) after this long unless
    /// refreshed. Default 5 s; `None` keeps it until cleared.
    pub typing_ttl: Option<Duration>,
    /// Longest room name and member id, in bytes. Default 128.
    pub max_name_bytes: usize,
    /// Most rooms one socket may be in. Default 64.
    pub max_rooms_per_socket: usize,
    /// Most rooms on this node. Default 100 000.
    pub max_rooms: usize,
    /// Most rooms the sockets of one address (IPv6: one /64) may be in at once, summed
    /// over its sockets; one more join is refused with
    /// [`RoomError::TooManyRoomsForAddress`]. With `max_rooms_per_socket` it keeps a few
    /// addresses from filling the node's `max_rooms` table (it takes 50 addresses at the
    /// defaults). 0 disables. Default 2 000.
    pub max_rooms_per_ip: usize,
    /// Handle `room:join`, `room:leave`, `room:publish` and `typing` from clients of
    /// sockets passed to [`Rooms::attach`]. Default off. Client joins are refused unless
    /// the app opens rooms with [`Rooms::authorize`].
    pub client_protocol: bool,
    /// What clients may publish, and how much. See [`ClientPolicy`].
    pub client: ClientPolicy,
}

impl Default for RoomsOptions {
    fn default() -> Self {
        Self {
            broker: None,
            node_id: None,
            typing_ttl: Some(Duration::from_secs(5)),
            max_name_bytes: 128,
            max_rooms_per_socket: 64,
            max_rooms: 100_000,
            max_rooms_per_ip: 2_000,
            client_protocol: false,
            client: ClientPolicy::default(),
        }
    }
}

impl std::fmt::Debug for RoomsOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RoomsOptions")
            .field("broker", &self.broker.as_ref().map(|_| "custom"))
            .field("node_id", &self.node_id)
            .field("typing_ttl", &self.typing_ttl)
            .field("max_name_bytes", &self.max_name_bytes)
            .field("max_rooms_per_socket", &self.max_rooms_per_socket)
            .field("max_rooms", &self.max_rooms)
            .field("max_rooms_per_ip", &self.max_rooms_per_ip)
            .field("client_protocol", &self.client_protocol)
            .field("client", &self.client)
            .finish()
    }
}

/// Why a room operation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RoomError {
    /// An empty room name or member id.
    #[error("{what} must not be empty")]
    Empty {
        /// `"room"` or `"member"`.
        what: &'static str,
    },
    /// A room name or member id over `max_name_bytes`.
    #[error("{what} is longer than {limit} bytes")]
    TooLong {
        /// `"room"` or `"member"`.
        what: &'static str,
        /// The limit.
        limit: usize,
    },
    /// A control character in a room name or member id.
    #[error("{what} contains a control character")]
    ControlCharacter {
        /// `"room"` or `"member"`.
        what: &'static str,
    },
    /// The socket is already in `max_rooms_per_socket` rooms.
    #[error("the socket is in too many rooms (limit {limit})")]
    TooManyRoomsForSocket {
        /// The limit.
        limit: usize,
    },
    /// The sockets of this address are already in `max_rooms_per_ip` rooms.
    #[error("this address is in too many rooms (limit {limit})")]
    TooManyRoomsForAddress {
        /// The limit.
        limit: usize,
    },
    /// The node already holds `max_rooms` rooms.
    #[error("too many rooms on this node (limit {limit})")]
    TooManyRooms {
        /// The limit.
        limit: usize,
    },
    /// The socket is closed.
    #[error("the socket is closed")]
    SocketClosed,
    /// The socket (or member) is not in the room.
    #[error("not in room {room}")]
    NotInRoom {
        /// The room.
        room: String,
    },
    /// The payload does not serialize.
    #[error("payload does not serialize: {0}")]
    Serialize(String),
}

/// What [`Rooms::join`] changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JoinOutcome {
    /// This was the member's first connection in the room on this node (a
    /// `presence:join` was sent).
    pub newly_present: bool,
}

/// What [`Rooms::leave`] changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaveOutcome {
    /// The socket was in the room.
    pub left: bool,
    /// That was the member's last connection in the room on this node (a
    /// `presence:leave` was sent).
    pub now_absent: bool,
}

/// Who not to send a room message to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PublishOptions {
    /// Skip this connection (usually the sender's).
    pub except_socket: Option<SocketId>,
    /// Skip every connection of this member, on every node.
    pub except_member: Option<String>,
}

impl PublishOptions {
    /// Everyone but this connection.
    pub fn except_socket(id: SocketId) -> Self {
        Self {
            except_socket: Some(id),
            except_member: None,
        }
    }

    /// Everyone but this member's connections.
    pub fn except_member(member: &str) -> Self {
        Self {
            except_socket: None,
            except_member: Some(member.to_owned()),
        }
    }
}

stats! {
    /// Counters of a [`Rooms`].
    #[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
    #[serde(rename_all = "camelCase")]
    #[non_exhaustive]
    pub struct RoomsStats counted in RoomsCounters {
        /// Rooms on this node now.
        set rooms => gauge("street_rooms", "Rooms on this node."),
        /// Joins since start.
        count joins => counter("street_rooms_joins_total", "Room joins."),
        /// Leaves since start (including by close).
        count leaves => counter("street_rooms_leaves_total", "Room leaves."),
        /// Room messages published from this node.
        count published => counter("street_rooms_published_total", "Room messages published here."),
        /// Messages queued to local sockets (from this node or others).
        count delivered => counter(
            "street_rooms_delivered_total",
            "Messages queued to local sockets.",
        ),
        /// Client joins refused by the authorization hook (or for want of one).
        count denied => counter(
            "street_rooms_denied_total",
            "Client joins refused by the authorization hook.",
        ),
        /// Client publications refused: an event not on the allow-list, a payload over
        /// `max_publish_bytes`, or over the connection's or the room's publish budget.
        count publishes_refused => counter(
            "street_rooms_publishes_refused_total",
            "Client publications refused (event not allowed, too large, over budget).",
        ),
        /// Client joins, leaves and typing changes refused: over the connection's action
        /// budget, or a join over `max_rooms_per_socket`, `max_rooms_per_ip` or `max_rooms`.
        count actions_refused => counter(
            "street_rooms_actions_refused_total",
            "Client joins, leaves and typing changes refused (over budget or a room limit).",
        ),
        /// The broker's counters (exposed by their own `visit`).
        set broker: BrokerStats,
    }
}

#[derive(Default)]
struct Member {
    conns: Vec<SocketId>,
    /// Join order, for `presence()`.
    order: u64,
    /// Typing, and (with a `typing_ttl`) until when.
    typing: Typing,
}

/// A member's typing state in one room. One timer per (room, member) at most: a refresh
/// only moves `until`, and the running timer sleeps again until the deadline it finds.
#[derive(Default, Clone, Copy)]
struct Typing {
    on: bool,
    /// With a `typing_ttl`: when the indicator clears itself.
    until: Option<tokio::time::Instant>,
    /// The id of the TTL timer task running for this (room, member), if any. A timer
    /// acts only while its id is here, so one left over from before a leave and a rejoin
    /// ends instead of serving the new member alongside a new timer.
    timer: Option<u64>,
}

impl Typing {
    fn is_typing(self) -> bool {
        self.on
    }
}

#[derive(Default)]
struct Room {
    conns: HashMap<SocketId, (Socket, Arc<str>)>,
    members: HashMap<Arc<str>, Member>,
    next_order: u64,
    /// What clients may still publish into the room (made at the first publication).
    budget: Option<protocol::Budget>,
}

#[derive(Default)]
struct State {
    rooms: HashMap<Arc<str>, Room>,
    /// Rooms of each socket we track (an entry means the close hook is installed).
    socket_rooms: HashMap<SocketId, Vec<Arc<str>>>,
    /// Every tracked connection of each member, for [`Rooms::emit_to_member`].
    members: HashMap<Arc<str>, HashMap<SocketId, Socket>>,
    /// Rooms the sockets of each address are in (for `max_rooms_per_ip`).
    per_ip: HashMap<std::net::IpAddr, usize>,
}

type Authorize = Arc<dyn Fn(&Socket, &str, &str) -> bool + Send + Sync>;

struct Inner {
    node: Arc<str>,
    wss: WebSocketServer,
    broker: Arc<dyn Broker>,
    opts: RoomsOptions,
    state: Mutex<State>,
    /// Every hook given to [`Rooms::authorize`], in order (shared with readers: checking a
    /// join clones one `Arc`).
    authorize: RwLock<Arc<[Authorize]>>,
    counters: RoomsCounters,
    /// Ids of typing timers (a timer acts only on the state that names it).
    next_timer: AtomicU64,
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

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[derive(Serialize)]
struct PresencePayload<'a> {
    channel: &'a str,
    #[serde(rename = "memberId")]
    member_id: &'a str,
}

#[derive(Serialize)]
struct TypingPayload<'a> {
    channel: &'a str,
    #[serde(rename = "memberId")]
    member_id: &'a str,
    typing: bool,
}

/// The TTL timer of one (room, member): sleeps until the typing deadline, again while
/// refreshes move it, and clears the indicator once it passes. Ends when the member stops
/// typing, leaves, or the rooms are dropped.
async fn typing_timer(inner: Weak<Inner>, room: String, member: String, id: u64) {
    loop {
        let Some(rooms) = inner.upgrade().map(|inner| Rooms { inner }) else {
            return;
        };
        let now = tokio::time::Instant::now();
        let wake = {
            let mut st = lock(&rooms.inner.state);
            let Some(m) = st
                .rooms
                .get_mut(room.as_str())
                .and_then(|r| r.members.get_mut(member.as_str()))
            else {
                return;
            };
            let t = &mut m.typing;
            if t.timer != Some(id) {
                // not ours any more (the member left and came back): another timer serves it
                return;
            }
            match t.until {
                Some(until) if t.on && until > now => Some(until),
                _ => {
                    // expired (or cleared meanwhile): this timer ends, under the lock, so
                    // a `true` arriving next starts a new one
                    let expired = t.on;
                    *t = Typing::default();
                    if !expired {
                        return;
                    }
                    None
                }
            }
        };
        match wake {
            Some(until) => {
                drop(rooms);
                tokio::time::sleep_until(until).await;
            }
            None => {
                rooms.announce_typing(&room, &member, false, None);
                return;
            }
        }
    }
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
            state: Mutex::new(State::default()),
            authorize: RwLock::new(Arc::new([])),
            counters: RoomsCounters::default(),
            next_timer: AtomicU64::new(1),
        });
        let (w1, w2) = (Arc::downgrade(&inner), Arc::downgrade(&inner));
        let hooks = NodeHooks {
            deliver: Arc::new(move |m: ClusterMessage| {
                if let Some(i) = w1.upgrade() {
                    Rooms { inner: i }.deliver_local(&m.target, &m.envelope);
                }
            }),
            snapshot: Arc::new(move || {
                w2.upgrade()
                    .map(|i| Rooms { inner: i }.snapshot())
                    .unwrap_or_default()
            }),
        };
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

    /// Start tracking a socket (index its member). Returns whether the close hook must be
    /// installed — by the caller, after releasing the state lock: on a socket that just
    /// closed the hook runs at once, and it takes the lock.
    fn track(&self, st: &mut State, socket: &Socket, member: &Arc<str>) -> bool {
        let id = socket.id();
        st.members
            .entry(member.clone())
            .or_default()
            .insert(id, socket.clone());
        match st.socket_rooms.entry(id) {
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(Vec::new());
                true
            }
            std::collections::hash_map::Entry::Occupied(_) => false,
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
        self.check_name("room", room)?;
        self.check_name("member", member)?;
        if socket.closed() {
            return Err(RoomError::SocketClosed);
        }
        let opts = &self.inner.opts;
        let id = socket.id();
        let (newly, count, room_key, member_key, hook) = {
            let mut st = lock(&self.inner.state);
            let in_rooms = st.socket_rooms.get(&id).map_or(0, Vec::len);
            let room_exists = st.rooms.contains_key(room);
            if let Some(r) = st.rooms.get(room) {
                if r.conns.contains_key(&id) {
                    return Ok(JoinOutcome {
                        newly_present: false,
                    });
                }
            }
            if in_rooms >= opts.max_rooms_per_socket {
                return Err(RoomError::TooManyRoomsForSocket {
                    limit: opts.max_rooms_per_socket,
                });
            }
            if !room_exists && st.rooms.len() >= opts.max_rooms {
                return Err(RoomError::TooManyRooms {
                    limit: opts.max_rooms,
                });
            }
            let ip = socket.remote_addr().map(|a| ip_key(a.ip()));
            if let Some(ip) = ip {
                let held = st.per_ip.entry(ip).or_default();
                if opts.max_rooms_per_ip > 0 && *held >= opts.max_rooms_per_ip {
                    return Err(RoomError::TooManyRoomsForAddress {
                        limit: opts.max_rooms_per_ip,
                    });
                }
                *held += 1;
            }
            let room_key: Arc<str> = st
                .rooms
                .get_key_value(room)
                .map_or_else(|| Arc::from(room), |(k, _)| k.clone());
            let member_key: Arc<str> = st
                .members
                .get_key_value(member)
                .map_or_else(|| Arc::from(member), |(k, _)| k.clone());
            let hook = self.track(&mut st, socket, &member_key);
            if let Some(v) = st.socket_rooms.get_mut(&id) {
                v.push(room_key.clone());
            }
            let r = st.rooms.entry(room_key.clone()).or_default();
            r.conns.insert(id, (socket.clone(), member_key.clone()));
            let order = r.next_order;
            let m = r
                .members
                .entry(member_key.clone())
                .or_insert_with(|| Member {
                    order,
                    ..Member::default()
                });
            let newly = m.conns.is_empty();
            m.conns.push(id);
            let count = m.conns.len();
            if newly {
                r.next_order += 1;
            }
            (newly, count, room_key, member_key, hook)
        };
        self.inner.counters.joins.inc();
        self.inner
            .broker
            .set_presence(&room_key, &member_key, count);
        if newly {
            let _ = self.publish(
                &room_key,
                "presence:join",
                &PresencePayload {
                    channel: &room_key,
                    member_id: &member_key,
                },
                PublishOptions::except_socket(id),
            );
        }
        if hook {
            // last: if the socket closed meanwhile, the hook runs now and undoes all this
            self.install_close_hook(socket);
        }
        Ok(JoinOutcome {
            newly_present: newly,
        })
    }

    /// Take `socket` out of `room`. When that was the member's last connection there,
    /// the other connections get `presence:leave` (and the member's typing indicator is
    /// cleared). An empty room is dropped.
    pub fn leave(&self, socket: &Socket, room: &str) -> LeaveOutcome {
        let out = self.remove(socket.id(), room);
        if let Some(v) = lock(&self.inner.state).socket_rooms.get_mut(&socket.id()) {
            v.retain(|r| &**r != room);
        }
        out
    }

    fn remove(&self, id: SocketId, room: &str) -> LeaveOutcome {
        let (member, count) = {
            let mut st = lock(&self.inner.state);
            let Some(r) = st.rooms.get_mut(room) else {
                return LeaveOutcome {
                    left: false,
                    now_absent: false,
                };
            };
            let Some((socket, member)) = r.conns.remove(&id) else {
                return LeaveOutcome {
                    left: false,
                    now_absent: false,
                };
            };
            let mut count = 0;
            if let Some(m) = r.members.get_mut(&member) {
                m.conns.retain(|c| *c != id);
                count = m.conns.len();
                if count == 0 {
                    r.members.remove(&member);
                }
            }
            if r.conns.is_empty() && r.members.is_empty() {
                st.rooms.remove(room);
            }
            if let Some(ip) = socket.remote_addr().map(|a| ip_key(a.ip())) {
                if let std::collections::hash_map::Entry::Occupied(mut e) = st.per_ip.entry(ip) {
                    *e.get_mut() = e.get().saturating_sub(1);
                    if *e.get() == 0 {
                        e.remove();
                    }
                }
            }
            (member, count)
        };
        self.inner.counters.leaves.inc();
        self.inner.broker.set_presence(room, &member, count);
        let now_absent = count == 0;
        if now_absent {
            let _ = self.publish(
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
        let rooms = {
            let mut st = lock(&self.inner.state);
            let rooms = st.socket_rooms.remove(&id).unwrap_or_default();
            st.members.retain(|_, conns| {
                conns.remove(&id);
                !conns.is_empty()
            });
            rooms
        };
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
        let hook = {
            let mut st = lock(&self.inner.state);
            let key: Arc<str> = st
                .members
                .get_key_value(member)
                .map_or_else(|| Arc::from(member), |(k, _)| k.clone());
            self.track(&mut st, socket, &key)
        };
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
        let mut all = self
            .inner
            .authorize
            .write()
            .unwrap_or_else(|p| p.into_inner());
        let hook: Authorize = Arc::new(hook);
        *all = all.iter().cloned().chain([hook]).collect();
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
        let mut st = lock(&self.inner.state);
        let Some(r) = st.rooms.get_mut(room) else {
            return false;
        };
        let now = std::time::Instant::now();
        r.budget
            .get_or_insert_with(|| protocol::Budget::new(rates, now))
            .take(len, now)
    }

    /// Whether `member` is flagged as typing in `room` on this node.
    fn is_typing(&self, room: &str, member: &str) -> bool {
        lock(&self.inner.state)
            .rooms
            .get(room)
            .and_then(|r| r.members.get(member))
            .is_some_and(|m| m.typing.on)
    }

    fn allowed(&self, socket: &Socket, room: &str, member: &str) -> bool {
        let hooks = self
            .inner
            .authorize
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        // Closed without a hook; with hooks, every one must allow.
        let ok = !hooks.is_empty()
            && hooks.iter().all(|h| {
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| h(socket, room, member)))
                    .unwrap_or(false)
            });
        if !ok {
            self.inner.counters.denied.inc();
        }
        ok
    }

    /// Send `{"type":event,"payload":…}` to the room's connections on every node, minus
    /// the exceptions. Encoded once. Returns how many local connections it was queued for.
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
        let bytes =
            envelope::encode(event, payload).map_err(|e| RoomError::Serialize(e.to_string()))?;
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
        let bytes =
            envelope::encode(event, payload).map_err(|e| RoomError::Serialize(e.to_string()))?;
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
        let bytes =
            envelope::encode(event, payload).map_err(|e| RoomError::Serialize(e.to_string()))?;
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
        let bytes =
            envelope::encode(event, payload).map_err(|e| RoomError::Serialize(e.to_string()))?;
        Ok(self.send(Target::Member(member.to_owned()), bytes))
    }

    /// Deliver locally, then hand to the broker (unless it is a socket found here).
    fn send(&self, target: Target, envelope: Bytes) -> usize {
        let n = self.deliver_local(&target, &envelope);
        if matches!(target, Target::Socket(_)) && n > 0 {
            return n;
        }
        self.inner.broker.publish(ClusterMessage {
            origin: self.inner.node.clone(),
            target,
            envelope,
        });
        n
    }

    /// Queue `bytes` for the local connections `target` names.
    fn deliver_local(&self, target: &Target, bytes: &Bytes) -> usize {
        let started = std::time::Instant::now();
        let recipients: Vec<Socket> = match target {
            Target::All => {
                let n = self.inner.wss.broadcast_encoded(bytes);
                self.inner.counters.delivered.add(n as u64);
                return n;
            }
            Target::Socket(id) => self.inner.wss.client(*id).into_iter().collect(),
            Target::Member(m) => lock(&self.inner.state)
                .members
                .get(m.as_str())
                .map(|c| c.values().cloned().collect())
                .unwrap_or_default(),
            Target::Room {
                room,
                except_socket,
                except_member,
            } => {
                let st = lock(&self.inner.state);
                match st.rooms.get(room.as_str()) {
                    None => Vec::new(),
                    Some(r) => r
                        .conns
                        .iter()
                        .filter(|(id, (_, m))| {
                            Some(**id) != *except_socket && except_member.as_deref() != Some(&**m)
                        })
                        .map(|(_, (s, _))| s.clone())
                        .collect(),
                }
            }
        };
        // queued outside the lock: a full queue closes that client, never blocks others
        let n = recipients
            .iter()
            .filter(|s| s.send_text_bytes(bytes.clone()).is_ok())
            .count();
        self.inner.counters.delivered.add(n as u64);
        if matches!(target, Target::Room { .. }) {
            self.inner.wss.observe_fanout(started.elapsed());
        }
        n
    }

    /// Set `member`'s typing state in `room` and tell the room's other connections
    /// (`typing` event) when it changed; `from` is left out. With a `typing_ttl`, `true`
    /// clears itself unless refreshed.
    ///
    /// # Errors
    /// [`RoomError::NotInRoom`] when the member is not in the room on this node.
    pub fn set_typing(
        &self,
        room: &str,
        member: &str,
        typing: bool,
        from: Option<&Socket>,
    ) -> Result<(), RoomError> {
        let ttl = self.inner.opts.typing_ttl;
        let rt = tokio::runtime::Handle::try_current().ok();
        let (changed, start_timer) = {
            let mut st = lock(&self.inner.state);
            let m = st
                .rooms
                .get_mut(room)
                .and_then(|r| r.members.get_mut(member))
                .ok_or_else(|| RoomError::NotInRoom {
                    room: room.to_owned(),
                })?;
            let t = &mut m.typing;
            let changed = t.on != typing;
            t.on = typing;
            // a timer is started only when none runs: a refresh just moves the deadline
            let start_timer = (typing && ttl.is_some() && t.timer.is_none() && rt.is_some())
                .then(|| self.inner.next_timer.fetch_add(1, Ordering::Relaxed));
            if typing {
                t.until = ttl.map(|d| tokio::time::Instant::now() + d);
                t.timer = t.timer.or(start_timer);
            }
            (changed, start_timer)
        };
        if changed {
            self.announce_typing(room, member, typing, from);
        }
        if let (Some(id), Some(rt)) = (start_timer, rt) {
            rt.spawn(typing_timer(
                Arc::downgrade(&self.inner),
                room.to_owned(),
                member.to_owned(),
                id,
            ));
        }
        Ok(())
    }

    fn announce_typing(&self, room: &str, member: &str, typing: bool, from: Option<&Socket>) {
        let opts = from
            .map(|s| PublishOptions::except_socket(s.id()))
            .unwrap_or_default();
        let _ = self.publish(
            room,
            "typing",
            &TypingPayload {
                channel: room,
                member_id: member,
                typing,
            },
            opts,
        );
    }

    /// Members flagged as typing in `room` on this node.
    pub fn typing_members(&self, room: &str) -> Vec<String> {
        self.members_where(room, |m| m.typing.is_typing())
    }

    /// Members present in `room` on this node, in the order they became present.
    pub fn local_presence(&self, room: &str) -> Vec<String> {
        self.members_where(room, |_| true)
    }

    /// The room's members that `keep` accepts, in the order they became present.
    fn members_where(&self, room: &str, keep: impl Fn(&Member) -> bool) -> Vec<String> {
        let st = lock(&self.inner.state);
        let Some(r) = st.rooms.get(room) else {
            return Vec::new();
        };
        let mut v: Vec<(u64, String)> = r
            .members
            .iter()
            .filter(|(_, m)| keep(m))
            .map(|(k, m)| (m.order, k.to_string()))
            .collect();
        v.sort();
        v.into_iter().map(|(_, k)| k).collect()
    }

    /// Whether `member` is present in `room` on this node.
    pub fn is_present_locally(&self, room: &str, member: &str) -> bool {
        lock(&self.inner.state)
            .rooms
            .get(room)
            .is_some_and(|r| r.members.contains_key(member))
    }

    /// Connections in `room` on this node.
    pub fn local_connection_count(&self, room: &str) -> usize {
        lock(&self.inner.state)
            .rooms
            .get(room)
            .map_or(0, |r| r.conns.len())
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
        lock(&self.inner.state)
            .rooms
            .keys()
            .map(|k| k.to_string())
            .collect()
    }

    /// Rooms `socket` is in.
    pub fn rooms_of(&self, socket: &Socket) -> Vec<String> {
        lock(&self.inner.state)
            .socket_rooms
            .get(&socket.id())
            .map(|v| v.iter().map(|r| r.to_string()).collect())
            .unwrap_or_default()
    }

    /// Whether `socket` is in `room` (without copying its room list).
    fn is_in(&self, socket: &Socket, room: &str) -> bool {
        lock(&self.inner.state)
            .socket_rooms
            .get(&socket.id())
            .is_some_and(|v| v.iter().any(|r| &**r == room))
    }

    /// This node's presence, for the broker to re-send after it lost it.
    fn snapshot(&self) -> Vec<(String, String, usize)> {
        let st = lock(&self.inner.state);
        st.rooms
            .iter()
            .flat_map(|(room, r)| {
                r.members
                    .iter()
                    .map(move |(m, mem)| (room.to_string(), m.to_string(), mem.conns.len()))
            })
            .collect()
    }

    /// The counters.
    pub fn stats(&self) -> RoomsStats {
        let i = &self.inner;
        let mut s = i.counters.snapshot();
        s.rooms = lock(&i.state).rooms.len() as u64;
        s.broker = i.broker.stats();
        s
    }

    /// Leave the cluster: this node's presence is removed from the broker at once. Call
    /// it after the WebSocket server closed (its clients' leaves have then been sent).
    pub async fn shutdown(&self) {
        self.inner.broker.stop().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ws::WsOptions;

    fn socket() -> Socket {
        Socket::new(
            SocketId::new(),
            Arc::default(),
            1 << 20,
            64,
            None,
            None,
            http::Extensions::new(),
        )
    }

    /// The envelope types queued for a socket, oldest first (and clears the queue).
    fn sent(s: &Socket) -> Vec<String> {
        s.inner
            .outbox
            .drain_data()
            .into_iter()
            .filter_map(|payload| {
                let v: serde_json::Value = serde_json::from_slice(&payload).ok()?;
                Some(format!("{} {}", v["type"].as_str()?, v["payload"]))
            })
            .collect()
    }

    #[tokio::test]
    async fn refcounted_presence_events_and_the_broker_view() {
        let wss = WebSocketServer::new(WsOptions::default());
        let rooms = Rooms::new(&wss, RoomsOptions::default())
            .await
            .expect("rooms");
        let (a1, a2, b) = (socket(), socket(), socket());
        rooms.join(&b, "r", "bo").expect("join");
        rooms.join(&a1, "r", "ana").expect("join");
        rooms.join(&a2, "r", "ana").expect("join");
        assert_eq!(
            sent(&b),
            [r#"presence:join {"channel":"r","memberId":"ana"}"#]
        );
        assert_eq!(sent(&a1), Vec::<String>::new());
        assert_eq!(rooms.snapshot().len(), 2);
        assert_eq!(rooms.connection_count("r").await.expect("count"), 3);
        assert!(!rooms.leave(&a1, "r").now_absent);
        assert!(sent(&b).is_empty());
        rooms.disconnect(&a2);
        assert_eq!(
            sent(&b),
            [r#"presence:leave {"channel":"r","memberId":"ana"}"#]
        );
        assert!(sent(&a2).is_empty());
        assert_eq!(rooms.presence("r").await.expect("presence"), ["bo"]);
        rooms.disconnect(&b);
        assert!(rooms.room_names().is_empty());
        assert!(rooms.snapshot().is_empty());
        assert_eq!(
            rooms.presence("r").await.expect("presence"),
            Vec::<String>::new()
        );
    }

    #[tokio::test]
    async fn a_leave_clears_the_members_typing_and_typing_refreshes_are_silent() {
        let wss = WebSocketServer::new(WsOptions::default());
        let rooms = Rooms::new(
            &wss,
            RoomsOptions {
                typing_ttl: None,
                ..RoomsOptions::default()
            },
        )
        .await
        .expect("rooms");
        let (a, b) = (socket(), socket());
        rooms.join(&a, "r", "ana").expect("join");
        rooms.join(&b, "r", "bo").expect("join");
        let _ = sent(&a);
        rooms
            .set_typing("r", "ana", true, Some(&a))
            .expect("typing");
        rooms
            .set_typing("r", "ana", true, Some(&a))
            .expect("refresh");
        rooms
            .set_typing("r", "ana", false, Some(&a))
            .expect("typing");
        rooms
            .set_typing("r", "ana", false, Some(&a))
            .expect("no change");
        assert_eq!(
            sent(&b),
            [
                r#"typing {"channel":"r","memberId":"ana","typing":true}"#,
                r#"typing {"channel":"r","memberId":"ana","typing":false}"#
            ]
        );
        assert!(sent(&a).is_empty());
        rooms.set_typing("r", "ana", true, None).expect("typing");
        rooms.leave(&a, "r");
        assert!(rooms.typing_members("r").is_empty());
    }
}
