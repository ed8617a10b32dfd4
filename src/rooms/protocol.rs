//! The opt-in client protocol for rooms: envelope events a browser sends to join, leave,
//! publish and type (see the [rooms module docs](super)).

use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::history::Since;
use super::policy::Budget;
use super::{PublishOptions, RoomError, Rooms};
use crate::ws::Socket;

/// A connection's budget, shared by its handlers.
type Shared = Arc<Mutex<Budget>>;

fn take(budget: &Shared, len: usize) -> bool {
    budget
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take(len, Instant::now())
}

#[derive(Deserialize)]
struct ChannelReq {
    channel: String,
}

#[derive(Deserialize)]
struct JoinReq {
    channel: String,
    /// The client's position in the room's stream, to recover from.
    #[serde(default)]
    since: Option<Since>,
}

#[derive(Deserialize)]
struct HistoryReq {
    channel: String,
    /// At most this many (and at most the history's size, the default).
    #[serde(default)]
    limit: Option<usize>,
}

/// The answer to `room:history`: where the stream stands, and its newest publications.
#[derive(Serialize)]
struct Recent {
    channel: String,
    epoch: String,
    offset: u64,
    /// Oldest first, as delivered (envelopes with `"offset"`), written as they are.
    #[serde(serialize_with = "as_raw_json")]
    publications: Vec<bytes::Bytes>,
    /// Older ones were left out: they would not have fitted the connection's queue.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    truncated: bool,
}

impl Recent {
    /// The answer, with the newest publications that fit in `budget` bytes.
    fn of(channel: String, h: crate::cluster::History, budget: usize) -> Self {
        let mut all = h.since.unwrap_or_default();
        let mut used = 0usize;
        let keep = all
            .iter()
            .rev()
            .take_while(|(_, b)| {
                used = used.saturating_add(b.len() + 1);
                used <= budget
            })
            .count();
        let truncated = keep < all.len();
        let publications = all.drain(all.len() - keep..).map(|(_, b)| b).collect();
        Self {
            channel,
            epoch: h.epoch.to_string(),
            offset: h.offset,
            publications,
            truncated,
        }
    }
}

/// Envelopes (JSON the broker kept, as delivered) into a JSON array, without copying
/// them first; one that is not JSON (never written by street) is left out.
fn as_raw_json<S: serde::Serializer>(
    publications: &[bytes::Bytes],
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_seq(
        publications
            .iter()
            .filter_map(|b| std::str::from_utf8(b).ok())
            .filter_map(|s| serde_json::from_str::<&RawValue>(s).ok()),
    )
}

#[derive(Deserialize)]
struct PublishReq {
    channel: String,
    #[serde(default)]
    event: Option<String>,
    #[serde(default)]
    payload: Option<Box<RawValue>>,
}

#[derive(Deserialize)]
struct TypingReq {
    channel: String,
    typing: bool,
}

#[derive(Serialize)]
struct Refused<'a> {
    channel: &'a str,
    action: &'a str,
    reason: &'a str,
}

#[derive(Serialize)]
struct Message<'a> {
    channel: &'a str,
    #[serde(rename = "memberId")]
    member_id: &'a str,
    payload: Option<&'a RawValue>,
}

fn refuse(socket: &Socket, channel: &str, action: &str, reason: &str) {
    let _ = socket.emit(
        "room:error",
        &Refused {
            channel,
            action,
            reason,
        },
    );
}

/// Install the handlers on one socket, acting as `member`.
pub(super) fn install(rooms: &Rooms, socket: &Socket, member: &str) -> Result<(), RoomError> {
    let listener_error = |e: crate::ws::SocketError| RoomError::Serialize(e.to_string());

    let policy = &rooms.inner.opts.client;
    let actions: Shared = Arc::new(Mutex::new(Budget::new(
        policy.action_rates(),
        Instant::now(),
    )));
    let publications: Shared = Arc::new(Mutex::new(Budget::new(
        policy.connection_rates(),
        Instant::now(),
    )));

    let (r, s, m, a0) = (
        rooms.clone(),
        socket.clone(),
        member.to_owned(),
        actions.clone(),
    );
    socket
        .on("room:join", move |req: JoinReq| {
            let (r, s, m, a) = (r.clone(), s.clone(), m.clone(), a0.clone());
            async move {
                if !take(&a, 0) {
                    r.count_refused_action();
                    refuse(&s, &req.channel, "join", "rate limit");
                    return;
                }
                if !r.allowed(&s, &req.channel, &m) {
                    refuse(&s, &req.channel, "join", "forbidden");
                    return;
                }
                if let Some(history) = r.inner.opts.history_of(&req.channel) {
                    let joined = r
                        .join_with_history(&s, &req.channel, &m, req.since, history)
                        .await;
                    if let Err(e) = joined {
                        r.count_refused_action();
                        refuse(&s, &req.channel, "join", &e.to_string());
                    }
                    return;
                }
                if let Err(e) = r.join(&s, &req.channel, &m) {
                    r.count_refused_action();
                    refuse(&s, &req.channel, "join", &e.to_string());
                    return;
                }
                let members = r.members_now(&req.channel).await;
                let mut joined = serde_json::json!({ "channel": req.channel, "members": members });
                // a room without history cannot recover: say so to a client that asked
                if req.since.is_some() {
                    r.inner.counters.not_recovered.inc();
                    joined["recovered"] = serde_json::Value::Bool(false);
                }
                let _ = s.emit("room:joined", &joined);
            }
        })
        .map_err(listener_error)?;

    // the newest publications of a room with history, for a member or for whoever may
    // join it (a page loads them, then joins `since` their position: gap-free)
    let (r, s, m, a) = (
        rooms.clone(),
        socket.clone(),
        member.to_owned(),
        actions.clone(),
    );
    socket
        .on_request("room:history", move |req: HistoryReq| {
            let (r, s, m, a) = (r.clone(), s.clone(), m.clone(), a.clone());
            async move {
                // a member's read costs an action; anyone else's two, as a join and a
                // leave would (a read makes the room's stream when it has none, as a
                // join does)
                let member = r.is_in(&s, &req.channel);
                if !take(&a, 0) || (!member && !take(&a, 0)) {
                    r.count_refused_action();
                    return Err("rate limit".to_owned());
                }
                if !member && !r.allowed(&s, &req.channel, &m) {
                    return Err("forbidden".to_owned());
                }
                let limit = req.limit.unwrap_or(usize::MAX);
                let found = r
                    .latest(&req.channel, limit)
                    .await
                    .map_err(|e| e.to_string())?;
                // what fits with the rest of the connection's traffic (as a replay does)
                Ok(Recent::of(req.channel, found, r.hold_budget()))
            }
        })
        .map_err(listener_error)?;

    let (r, s, a) = (rooms.clone(), socket.clone(), actions.clone());
    socket
        .on("room:leave", move |req: ChannelReq| {
            if !take(&a, 0) {
                r.count_refused_action();
                refuse(&s, &req.channel, "leave", "rate limit");
                return;
            }
            if r.leave(&s, &req.channel).left {
                let _ = s.emit("room:left", &serde_json::json!({ "channel": req.channel }));
            } else {
                refuse(&s, &req.channel, "leave", "not in room");
            }
        })
        .map_err(listener_error)?;

    let (r, s, m) = (rooms.clone(), socket.clone(), member.to_owned());
    socket
        .on("room:publish", move |req: PublishReq| {
            let policy = &r.inner.opts.client;
            let event = req.event.as_deref().unwrap_or("message");
            let len = req.payload.as_ref().map_or(0, |p| p.get().len());
            // a publication outside any room the client is in is a client bug, not abuse:
            // refused but not counted
            if !r.is_in(&s, &req.channel) {
                refuse(&s, &req.channel, "publish", "not in room");
                return;
            }
            let refusal = if !policy.may_publish(event) {
                Some("event not allowed")
            } else if len > policy.max_publish_bytes {
                Some("payload too large")
            } else if !take(&publications, len) {
                Some("rate limit")
            } else if !r.take_room_budget(&req.channel, len) {
                Some("room rate limit")
            } else {
                None
            };
            if let Some(reason) = refusal {
                r.count_refused_publish();
                refuse(&s, &req.channel, "publish", reason);
                return;
            }
            let msg = Message {
                channel: &req.channel,
                member_id: &m,
                payload: req.payload.as_deref(),
            };
            let _ = r.publish(
                &req.channel,
                event,
                &msg,
                PublishOptions::except_socket(s.id()),
            );
        })
        .map_err(listener_error)?;

    let (r, s, m) = (rooms.clone(), socket.clone(), member.to_owned());
    socket
        .on("typing", move |req: TypingReq| {
            if !r.is_in(&s, &req.channel) {
                refuse(&s, &req.channel, "typing", "not in room");
                return;
            }
            // a change is an event to the whole room; a refresh only moves a deadline
            let changes = r.is_typing(&req.channel, &m) != req.typing;
            if changes && !take(&actions, 0) {
                r.count_refused_action();
                refuse(&s, &req.channel, "typing", "rate limit");
                return;
            }
            let _ = r.set_typing(&req.channel, &m, req.typing, Some(&s));
        })
        .map_err(listener_error)?;
    Ok(())
}
