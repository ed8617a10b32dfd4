//! Typing indicators: a member's typing state in a room, the `typing` event, and the TTL
//! timer that clears a `typing: true` unless refreshed.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use serde::Serialize;

use super::{lock, Inner, PublishOptions, RoomError, Rooms};
use crate::ws::Socket;

/// A member's typing state in one room. One timer per (room, member) at most: a refresh
/// only moves `until`, and the running timer sleeps again until the deadline it finds.
#[derive(Default, Clone, Copy)]
pub(super) struct Typing {
    on: bool,
    /// With a `typing_ttl`: when the indicator clears itself.
    until: Option<tokio::time::Instant>,
    /// The id of the TTL timer task running for this (room, member), if any. A timer
    /// acts only while its id is here, so one left over from before a leave and a rejoin
    /// ends instead of serving the new member alongside a new timer.
    timer: Option<u64>,
}

/// What a TTL timer does after looking at its [`Typing`].
enum Wake {
    /// Sleep until this deadline (a refresh moved it), then look again.
    Sleep(tokio::time::Instant),
    /// The indicator expired and was cleared: announce `typing: false`.
    Clear,
    /// Nothing left to do.
    End,
}

impl Typing {
    pub(super) fn is_typing(self) -> bool {
        self.on
    }

    /// Set the state; returns whether it changed, and the id of a TTL timer to start
    /// (`can_spawn`: there is a runtime to start it on).
    fn set(
        &mut self,
        typing: bool,
        ttl: Option<Duration>,
        can_spawn: bool,
        timers: &TimerIds,
    ) -> (bool, Option<u64>) {
        let t = self;
        let changed = t.on != typing;
        t.on = typing;
        // a timer is started only when none runs: a refresh just moves the deadline
        let start_timer =
            (typing && ttl.is_some() && t.timer.is_none() && can_spawn).then(|| timers.next());
        if typing {
            t.until = ttl.map(|d| tokio::time::Instant::now() + d);
            t.timer = t.timer.or(start_timer);
        }
        (changed, start_timer)
    }

    /// What timer `id` does at `now`.
    fn wake(&mut self, id: u64, now: tokio::time::Instant) -> Wake {
        let t = self;
        if t.timer != Some(id) {
            // not ours any more (the member left and came back): another timer serves it
            return Wake::End;
        }
        match t.until {
            Some(until) if t.on && until > now => Wake::Sleep(until),
            _ => {
                // expired (or cleared meanwhile): this timer ends, under the lock, so
                // a `true` arriving next starts a new one
                let expired = t.on;
                *t = Typing::default();
                if !expired {
                    return Wake::End;
                }
                Wake::Clear
            }
        }
    }
}

/// Ids of typing timers (a timer acts only on the state that names it).
pub(super) struct TimerIds(AtomicU64);

impl Default for TimerIds {
    fn default() -> Self {
        Self(AtomicU64::new(1))
    }
}

impl TimerIds {
    fn next(&self) -> u64 {
        self.0.fetch_add(1, Ordering::Relaxed)
    }
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
            let Some(t) = st.typing_mut(&room, &member) else {
                return;
            };
            t.wake(id, now)
        };
        match wake {
            Wake::Sleep(until) => {
                drop(rooms);
                tokio::time::sleep_until(until).await;
            }
            Wake::Clear => {
                rooms.announce_typing(&room, &member, false, None);
                return;
            }
            Wake::End => return,
        }
    }
}

impl Rooms {
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
            let t = st
                .typing_mut(room, member)
                .ok_or_else(|| RoomError::NotInRoom {
                    room: room.to_owned(),
                })?;
            t.set(typing, ttl, rt.is_some(), &self.inner.timers)
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
        let _ = self.publish_ephemeral(
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
        lock(&self.inner.state).members_where(room, |t| t.is_typing())
    }

    /// Whether `member` is flagged as typing in `room` on this node.
    pub(super) fn is_typing(&self, room: &str, member: &str) -> bool {
        lock(&self.inner.state)
            .typing(room, member)
            .is_some_and(Typing::is_typing)
    }
}
