//! This node's rooms, members and presence: who is in which room on which connection,
//! with the per-socket, per-address and per-node room limits. The rooms keep one
//! [`Registry`] behind their lock and change it only through its methods.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;

use super::cursor::{Admit, Cursor};
use super::policy::{Budget, Rates};
use super::sink::Sink;
use super::typing::Typing;
use super::{RoomError, RoomsOptions};
use crate::cluster::Position;
use crate::net::per_ip::ip_key;
use crate::sse::stream::Shared;
use crate::ws::{Socket, SocketId};

#[derive(Default)]
struct Member {
    conns: Vec<SocketId>,
    /// Join order, for `presence()`.
    order: u64,
    /// Typing, and (with a `typing_ttl`) until when.
    typing: Typing,
}

/// One connection in a room.
struct Sub {
    socket: Socket,
    member: Arc<str>,
    /// Its place in the room's stream (rooms with history).
    cursor: Cursor,
}

/// An SSE stream subscribed to a room (no member: streams are not presence).
struct StreamSub {
    id: u64,
    stream: Arc<Shared>,
    cursor: Cursor,
    /// A clone of [`Registry::streams`]: the count of subscriptions is its strong count,
    /// right however a subscription goes (removed, pruned, or its room dropped).
    _counted: Arc<()>,
}

/// A subscriber of a room, to find it again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SubKey {
    Socket(SocketId),
    Stream(u64),
}

#[derive(Default)]
struct Room {
    conns: HashMap<SocketId, Sub>,
    streams: Vec<StreamSub>,
    members: HashMap<Arc<str>, Member>,
    next_order: u64,
    /// What clients may still publish into the room (made at the first publication).
    budget: Option<Budget>,
}

#[derive(Default)]
pub(super) struct Registry {
    rooms: HashMap<Arc<str>, Room>,
    /// Rooms of each socket we track (an entry means the close hook is installed).
    socket_rooms: HashMap<SocketId, Vec<Arc<str>>>,
    /// Every tracked connection of each member, for [`Rooms::emit_to_member`](super::Rooms::emit_to_member).
    members: HashMap<Arc<str>, HashMap<SocketId, Socket>>,
    /// Rooms the sockets of each address are in (for `max_rooms_per_ip`).
    per_ip: HashMap<std::net::IpAddr, usize>,
    /// The last token given to a pending join.
    tokens: u64,
    /// One strong reference per stream subscription, plus this one.
    streams: Arc<()>,
}

/// What a positioned publication does for one subscriber of the room.
pub(super) struct Positioned {
    /// Send it (after a reset notice when `admit` is [`Admit::Reset`]).
    pub(super) send: Vec<(Sink, Admit)>,
    /// Their pending join overflowed: close them.
    pub(super) overflow: Vec<Sink>,
}

/// What [`Registry::join`] changed (when the socket was not in the room yet).
pub(super) struct Joined {
    /// The member's first connection in the room.
    pub(super) newly: bool,
    /// The member's connections in the room now.
    pub(super) count: usize,
    pub(super) room: Arc<str>,
    pub(super) member: Arc<str>,
    /// The socket is newly tracked: its close hook must be installed.
    pub(super) hook: bool,
}

impl Registry {
    /// Start tracking a socket (index its member). Returns whether the close hook must be
    /// installed — by the caller, after releasing the state lock: on a socket that just
    /// closed the hook runs at once, and it takes the lock.
    fn track(&mut self, socket: &Socket, member: &Arc<str>) -> bool {
        let id = socket.id();
        self.members
            .entry(member.clone())
            .or_default()
            .insert(id, socket.clone());
        match self.socket_rooms.entry(id) {
            Entry::Vacant(e) => {
                e.insert(Vec::new());
                true
            }
            Entry::Occupied(_) => false,
        }
    }

    /// Index `socket` under `member` without joining a room; returns whether the close
    /// hook must be installed (see `track`).
    pub(super) fn attach(&mut self, socket: &Socket, member: &str) -> bool {
        let key: Arc<str> = self
            .members
            .get_key_value(member)
            .map_or_else(|| Arc::from(member), |(k, _)| k.clone());
        self.track(socket, &key)
    }

    /// Join `socket` to `room` as `member` within the limits of `opts`. `None` when the
    /// socket is already in the room.
    pub(super) fn join(
        &mut self,
        socket: &Socket,
        room: &str,
        member: &str,
        opts: &RoomsOptions,
        pending: bool,
    ) -> Result<Option<Joined>, RoomError> {
        let id = socket.id();
        let in_rooms = self.socket_rooms.get(&id).map_or(0, Vec::len);
        let room_exists = self.rooms.contains_key(room);
        if let Some(r) = self.rooms.get(room) {
            if r.conns.contains_key(&id) {
                return Ok(None);
            }
        }
        if in_rooms >= opts.max_rooms_per_socket {
            return Err(RoomError::TooManyRoomsForSocket {
                limit: opts.max_rooms_per_socket,
            });
        }
        if !room_exists && self.rooms.len() >= opts.max_rooms {
            return Err(RoomError::TooManyRooms {
                limit: opts.max_rooms,
            });
        }
        let ip = socket.remote_addr().map(|a| ip_key(a.ip()));
        if let Some(ip) = ip {
            let held = self.per_ip.entry(ip).or_default();
            if opts.max_rooms_per_ip > 0 && *held >= opts.max_rooms_per_ip {
                return Err(RoomError::TooManyRoomsForAddress {
                    limit: opts.max_rooms_per_ip,
                });
            }
            *held += 1;
        }
        let room_key: Arc<str> = self
            .rooms
            .get_key_value(room)
            .map_or_else(|| Arc::from(room), |(k, _)| k.clone());
        let member_key: Arc<str> = self
            .members
            .get_key_value(member)
            .map_or_else(|| Arc::from(member), |(k, _)| k.clone());
        let hook = self.track(socket, &member_key);
        if let Some(v) = self.socket_rooms.get_mut(&id) {
            v.push(room_key.clone());
        }
        let cursor = if pending {
            self.pending()
        } else {
            Cursor::default()
        };
        let r = self.rooms.entry(room_key.clone()).or_default();
        r.conns.insert(
            id,
            Sub {
                socket: socket.clone(),
                member: member_key.clone(),
                cursor,
            },
        );
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
        Ok(Some(Joined {
            newly,
            count,
            room: room_key,
            member: member_key,
            hook,
        }))
    }

    /// Take connection `id` out of `room`: its member and that member's connections left
    /// in the room, or `None` when it was not in it. An empty room is dropped. The
    /// socket's own room list is left to [`Registry::forget_room`].
    pub(super) fn remove(&mut self, id: SocketId, room: &str) -> Option<(Arc<str>, usize)> {
        let r = self.rooms.get_mut(room)?;
        let Sub { socket, member, .. } = r.conns.remove(&id)?;
        let mut count = 0;
        if let Some(m) = r.members.get_mut(&member) {
            m.conns.retain(|c| *c != id);
            count = m.conns.len();
            if count == 0 {
                r.members.remove(&member);
            }
        }
        if r.conns.is_empty() && r.members.is_empty() && r.streams.is_empty() {
            self.rooms.remove(room);
        }
        if let Some(ip) = socket.remote_addr().map(|a| ip_key(a.ip())) {
            if let Entry::Occupied(mut e) = self.per_ip.entry(ip) {
                *e.get_mut() = e.get().saturating_sub(1);
                if *e.get() == 0 {
                    e.remove();
                }
            }
        }
        Some((member, count))
    }

    /// Drop `room` from the room list of socket `id`.
    pub(super) fn forget_room(&mut self, id: SocketId, room: &str) {
        if let Some(v) = self.socket_rooms.get_mut(&id) {
            v.retain(|r| &**r != room);
        }
    }

    /// Stop tracking socket `id`; returns the rooms it was in (still to be left).
    pub(super) fn disconnect(&mut self, id: SocketId) -> Vec<Arc<str>> {
        let rooms = self.socket_rooms.remove(&id).unwrap_or_default();
        self.members.retain(|_, conns| {
            conns.remove(&id);
            !conns.is_empty()
        });
        rooms
    }

    /// Take one client publication of `len` bytes from `room`'s budget, made with `rates`
    /// at the first one; false when it is spent or there is no such room.
    pub(super) fn take_room_budget(&mut self, room: &str, rates: Rates, len: usize) -> bool {
        let Some(r) = self.rooms.get_mut(room) else {
            return false;
        };
        let now = std::time::Instant::now();
        r.budget
            .get_or_insert_with(|| Budget::new(rates, now))
            .take(len, now)
    }

    /// `member`'s typing state in `room`, if the member is there.
    pub(super) fn typing(&self, room: &str, member: &str) -> Option<Typing> {
        self.rooms
            .get(room)
            .and_then(|r| r.members.get(member))
            .map(|m| m.typing)
    }

    /// `member`'s typing state in `room`, to change, if the member is there.
    pub(super) fn typing_mut(&mut self, room: &str, member: &str) -> Option<&mut Typing> {
        self.rooms
            .get_mut(room)
            .and_then(|r| r.members.get_mut(member))
            .map(|m| &mut m.typing)
    }

    /// The room's members whose typing state `keep` accepts, in the order they became
    /// present.
    pub(super) fn members_where(&self, room: &str, keep: impl Fn(Typing) -> bool) -> Vec<String> {
        let Some(r) = self.rooms.get(room) else {
            return Vec::new();
        };
        let mut v: Vec<(u64, String)> = r
            .members
            .iter()
            .filter(|(_, m)| keep(m.typing))
            .map(|(k, m)| (m.order, k.to_string()))
            .collect();
        v.sort();
        v.into_iter().map(|(_, k)| k).collect()
    }

    /// Whether `member` is present in `room`.
    pub(super) fn is_present(&self, room: &str, member: &str) -> bool {
        self.rooms
            .get(room)
            .is_some_and(|r| r.members.contains_key(member))
    }

    /// Connections in `room`.
    pub(super) fn connection_count(&self, room: &str) -> usize {
        self.rooms.get(room).map_or(0, |r| r.conns.len())
    }

    /// Open SSE streams in `room`.
    pub(super) fn stream_count_in(&self, room: &str) -> usize {
        self.rooms.get(room).map_or(0, |r| {
            r.streams.iter().filter(|s| !s.stream.is_done()).count()
        })
    }

    /// SSE stream subscriptions in every room (an ended stream counts until it is
    /// pruned, which its guard does at once).
    pub(super) fn stream_count(&self) -> usize {
        Arc::strong_count(&self.streams) - 1
    }

    /// How many rooms there are.
    pub(super) fn room_count(&self) -> usize {
        self.rooms.len()
    }

    /// The rooms' names.
    pub(super) fn room_names(&self) -> Vec<String> {
        self.rooms.keys().map(|k| k.to_string()).collect()
    }

    /// Rooms socket `id` is in.
    pub(super) fn rooms_of(&self, id: SocketId) -> Vec<String> {
        self.socket_rooms
            .get(&id)
            .map(|v| v.iter().map(|r| r.to_string()).collect())
            .unwrap_or_default()
    }

    /// Whether socket `id` is in `room` (without copying its room list).
    pub(super) fn is_in(&self, id: SocketId, room: &str) -> bool {
        self.socket_rooms
            .get(&id)
            .is_some_and(|v| v.iter().any(|r| &**r == room))
    }

    /// Every tracked connection of `member`.
    pub(super) fn member_sockets(&self, member: &str) -> Vec<Socket> {
        self.members
            .get(member)
            .map(|c| c.values().cloned().collect())
            .unwrap_or_default()
    }

    /// The subscribers of `room` (its connections minus the exceptions, and its
    /// streams); streams that ended are dropped on the way.
    pub(super) fn room_sinks(
        &mut self,
        room: &str,
        except_socket: Option<SocketId>,
        except_member: Option<&str>,
    ) -> Vec<Sink> {
        let Some(r) = self.rooms.get_mut(room) else {
            return Vec::new();
        };
        r.streams.retain(|s| !s.stream.is_done());
        let mut out: Vec<Sink> = r
            .conns
            .iter()
            .filter(|(id, sub)| Some(**id) != except_socket && except_member != Some(&*sub.member))
            .map(|(_, sub)| Sink::Socket(sub.socket.clone()))
            .collect();
        out.extend(r.streams.iter().map(|s| Sink::Stream(s.stream.clone())));
        out
    }

    /// Subscribe an SSE stream to `room` (made if need be, within `max_rooms`); its id.
    pub(super) fn add_stream(
        &mut self,
        room: &str,
        stream: Arc<Shared>,
        pending: bool,
        max_rooms: usize,
    ) -> Result<u64, RoomError> {
        if !self.rooms.contains_key(room) && self.rooms.len() >= max_rooms {
            return Err(RoomError::TooManyRooms { limit: max_rooms });
        }
        let cursor = if pending {
            self.pending()
        } else {
            Cursor::default()
        };
        self.tokens += 1;
        let id = self.tokens;
        let r = self.rooms.entry(Arc::from(room)).or_default();
        r.streams.retain(|s| !s.stream.is_done());
        r.streams.push(StreamSub {
            id,
            stream,
            cursor,
            _counted: self.streams.clone(),
        });
        Ok(id)
    }

    /// Unsubscribe stream `id` from `room`.
    pub(super) fn remove_stream(&mut self, room: &str, id: u64) {
        if let Some(r) = self.rooms.get_mut(room) {
            r.streams.retain(|s| s.id != id);
            if r.conns.is_empty() && r.members.is_empty() && r.streams.is_empty() {
                self.rooms.remove(room);
            }
        }
    }

    fn cursor_mut(&mut self, room: &str, key: SubKey) -> Option<(&mut Cursor, Sink)> {
        let r = self.rooms.get_mut(room)?;
        match key {
            SubKey::Socket(id) => r
                .conns
                .get_mut(&id)
                .map(|sub| (&mut sub.cursor, Sink::Socket(sub.socket.clone()))),
            SubKey::Stream(id) => r
                .streams
                .iter_mut()
                .find(|s| s.id == id)
                .map(|s| (&mut s.cursor, Sink::Stream(s.stream.clone()))),
        }
    }

    fn pending(&mut self) -> Cursor {
        self.tokens += 1;
        Cursor::Pending {
            token: self.tokens,
            held: Vec::new(),
            bytes: 0,
        }
    }

    /// Make connection `id`'s place in `room` pending again (a re-join that recovers);
    /// false when it is not in the room.
    pub(super) fn repend(&mut self, id: SocketId, room: &str) -> bool {
        let present = self
            .rooms
            .get(room)
            .is_some_and(|r| r.conns.contains_key(&id));
        if present {
            let cursor = self.pending();
            self.set_cursor(room, SubKey::Socket(id), cursor);
        }
        present
    }

    /// The token of subscriber `key`'s pending join in `room`.
    pub(super) fn token(&mut self, room: &str, key: SubKey) -> Option<u64> {
        self.cursor_mut(room, key).and_then(|(c, _)| c.token())
    }

    /// Take what a pending join held, when it is still join `token` of subscriber
    /// `key` in `room`; its cursor must then be set with [`Registry::set_cursor`].
    pub(super) fn take_held(
        &mut self,
        room: &str,
        key: SubKey,
        token: u64,
    ) -> Option<(Sink, Vec<(Position, Bytes)>)> {
        let (cursor, sink) = self.cursor_mut(room, key)?;
        if cursor.token() != Some(token) {
            return None;
        }
        match std::mem::take(cursor) {
            Cursor::Pending { held, .. } => Some((sink, held)),
            live @ Cursor::Live { .. } => {
                *cursor = live;
                None
            }
        }
    }

    /// Set subscriber `key`'s cursor in `room`.
    pub(super) fn set_cursor(&mut self, room: &str, key: SubKey, cursor: Cursor) {
        if let Some((c, _)) = self.cursor_mut(room, key) {
            *c = cursor;
        }
    }

    /// Decide, for every subscriber of `room`, what the positioned publication `pos`
    /// (`bytes`) does: sent, skipped as a duplicate, or held for a pending join (up to
    /// `max_held` bytes for a socket, half its queue for a stream).
    pub(super) fn positioned(
        &mut self,
        room: &str,
        pos: &Position,
        bytes: &Bytes,
        max_held: usize,
    ) -> Positioned {
        let mut out = Positioned {
            send: Vec::new(),
            overflow: Vec::new(),
        };
        let Some(r) = self.rooms.get_mut(room) else {
            return out;
        };
        r.streams.retain(|s| !s.stream.is_done());
        out.send.reserve(r.conns.len() + r.streams.len());
        // each holds up to half its own queue: a socket's or a stream's
        let subs = r
            .conns
            .values_mut()
            .map(|s| (&mut s.cursor, Sink::Socket(s.socket.clone()), max_held))
            .chain(r.streams.iter_mut().map(|s| {
                let held = s.stream.max_queue_bytes() / 2;
                (&mut s.cursor, Sink::Stream(s.stream.clone()), held)
            }));
        for (cursor, sink, max_held) in subs {
            match cursor.admit(pos, bytes, max_held) {
                a @ (Admit::Send | Admit::Reset) => out.send.push((sink, a)),
                Admit::Overflow => {
                    *cursor = Cursor::default();
                    out.overflow.push(sink);
                }
                Admit::Skip | Admit::Held => {}
            }
        }
        out
    }

    /// Every (room, member, connections), for the broker to re-send after it lost them.
    pub(super) fn snapshot(&self) -> Vec<(String, String, usize)> {
        self.rooms
            .iter()
            .flat_map(|(room, r)| {
                r.members
                    .iter()
                    .map(move |(m, mem)| (room.to_string(), m.to_string(), mem.conns.len()))
            })
            .collect()
    }
}
