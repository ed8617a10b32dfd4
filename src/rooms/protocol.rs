//! The opt-in client protocol for rooms: envelope events a browser sends to join, leave,
//! publish and type (see the [rooms module docs](super)).

use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::{PublishOptions, RoomError, Rooms};
use crate::ws::limits::Bucket;
use crate::ws::Socket;

/// What clients may do through the client protocol, and how much (see
/// [`RoomsOptions::client`](super::RoomsOptions)). Every field has a default.
///
/// A room multiplies what one member sends by its size, so a client's publications have a
/// budget of their own, well inside what a reader at a normal pace takes in: one
/// publisher's burst (at most `2 × publish_messages_per_sec` messages and the larger of
/// `4 × publish_bytes_per_sec` and `max_publish_bytes` bytes) stays far below a
/// connection's `max_queue_bytes` (1 MiB by default), so a fair reader is never closed as
/// a slow consumer because someone else sent a lot at once. Over budget, the publication
/// is refused with `room:error` (`"reason": "rate limit"` or `"payload too large"`),
/// counted in [`RoomsStats::publishes_refused`](super::RoomsStats), and the connection
/// stays open. (Centrifugo leaves client publications off by default; Phoenix and
/// Socket.IO leave budgets to the app.)
///
/// ```
/// use street::rooms::{ClientPolicy, RoomsOptions};
/// let opts = RoomsOptions {
///     client_protocol: true,
///     client: ClientPolicy {
///         publishable_events: vec!["message".into(), "reaction".into()],
///         ..ClientPolicy::default()
///     },
///     ..RoomsOptions::default()
/// };
/// assert_eq!(opts.client.max_publish_bytes, 64 * 1024);
/// ```
#[derive(Debug, Clone)]
pub struct ClientPolicy {
    /// Event names a client may publish under with `room:publish` (an allow-list: the
    /// server's own events — presence, typing, the app's — can never be impersonated).
    /// `room:*`, `presence:*` and `typing` are refused even when listed. Default
    /// `["message"]`, the event used when a publication names none.
    pub publishable_events: Vec<String>,
    /// Largest `payload` of one publication, in bytes of JSON. Default 64 KiB.
    pub max_publish_bytes: usize,
    /// Publications per second per connection (burst: twice as many). 0 disables.
    /// Default 10.
    pub publish_messages_per_sec: u32,
    /// Payload bytes per second per connection (burst: the larger of four seconds' worth
    /// and `max_publish_bytes`). 0 disables. Default 64 KiB.
    pub publish_bytes_per_sec: u32,
}

impl Default for ClientPolicy {
    fn default() -> Self {
        Self {
            publishable_events: vec!["message".into()],
            max_publish_bytes: 64 * 1024,
            publish_messages_per_sec: 10,
            publish_bytes_per_sec: 64 * 1024,
        }
    }
}

impl ClientPolicy {
    fn may_publish(&self, event: &str) -> bool {
        !reserved(event) && self.publishable_events.iter().any(|e| e == event)
    }

    fn msg_burst(&self) -> f32 {
        2.0 * self.publish_messages_per_sec as f32
    }

    fn byte_burst(&self) -> f32 {
        (4.0 * self.publish_bytes_per_sec as f32).max(self.max_publish_bytes as f32)
    }
}

/// One connection's publication budget.
struct Budget {
    msgs: Bucket,
    bytes: Bucket,
}

impl Budget {
    fn new(p: &ClientPolicy, now: Instant) -> Self {
        Self {
            msgs: Bucket::full(p.msg_burst(), now),
            bytes: Bucket::full(p.byte_burst(), now),
        }
    }

    /// Take one publication of `len` bytes, if the budget allows it.
    fn take(&mut self, p: &ClientPolicy, len: usize, now: Instant) -> bool {
        let (mr, br) = (p.publish_messages_per_sec, p.publish_bytes_per_sec);
        // both buckets are checked before either is charged
        let mut msgs = self.msgs;
        let mut bytes = self.bytes;
        let ok = (mr == 0 || msgs.take(1.0, mr as f32, p.msg_burst(), now))
            && (br == 0 || bytes.take(len as f32, br as f32, p.byte_burst(), now));
        if ok {
            (self.msgs, self.bytes) = (msgs, bytes);
        }
        ok
    }
}

#[derive(Deserialize)]
struct ChannelReq {
    channel: String,
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

/// Event names a client may not publish under: they would impersonate the server.
fn reserved(event: &str) -> bool {
    event.starts_with("presence:") || event.starts_with("room:") || event == "typing"
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

    let (r, s, m) = (rooms.clone(), socket.clone(), member.to_owned());
    socket
        .on("room:join", move |req: ChannelReq| {
            let (r, s, m) = (r.clone(), s.clone(), m.clone());
            async move {
                if !r.allowed(&s, &req.channel, &m) {
                    refuse(&s, &req.channel, "join", "forbidden");
                    return;
                }
                if let Err(e) = r.join(&s, &req.channel, &m) {
                    refuse(&s, &req.channel, "join", &e.to_string());
                    return;
                }
                // the cluster's view, plus this node's (its own writes may still be queued)
                let mut members = r.presence(&req.channel).await.unwrap_or_default();
                members.extend(r.local_presence(&req.channel));
                members.sort();
                members.dedup();
                let _ = s.emit(
                    "room:joined",
                    &serde_json::json!({ "channel": req.channel, "members": members }),
                );
            }
        })
        .map_err(listener_error)?;

    let (r, s) = (rooms.clone(), socket.clone());
    socket
        .on("room:leave", move |req: ChannelReq| {
            if r.leave(&s, &req.channel).left {
                let _ = s.emit("room:left", &serde_json::json!({ "channel": req.channel }));
            } else {
                refuse(&s, &req.channel, "leave", "not in room");
            }
        })
        .map_err(listener_error)?;

    let (r, s, m) = (rooms.clone(), socket.clone(), member.to_owned());
    let budget = Arc::new(Mutex::new(Budget::new(
        &rooms.inner.opts.client,
        Instant::now(),
    )));
    socket
        .on("room:publish", move |req: PublishReq| {
            let policy = &r.inner.opts.client;
            let event = req.event.as_deref().unwrap_or("message");
            let len = req.payload.as_ref().map_or(0, |p| p.get().len());
            let refusal = if !policy.may_publish(event) {
                Some("event not allowed")
            } else if !r.rooms_of(&s).contains(&req.channel) {
                Some("not in room")
            } else if len > policy.max_publish_bytes {
                Some("payload too large")
            } else if !budget.lock().unwrap_or_else(|p| p.into_inner()).take(
                policy,
                len,
                Instant::now(),
            ) {
                Some("rate limit")
            } else {
                None
            };
            if let Some(reason) = refusal {
                if reason != "not in room" {
                    r.count_refused_publish();
                }
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
            if !r.rooms_of(&s).contains(&req.channel) {
                refuse(&s, &req.channel, "typing", "not in room");
                return;
            }
            let _ = r.set_typing(&req.channel, &m, req.typing, Some(&s));
        })
        .map_err(listener_error)?;
    Ok(())
}
