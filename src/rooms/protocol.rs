//! The opt-in client protocol for rooms: envelope events a browser sends to join, leave,
//! publish and type (see the [rooms module docs](super)).

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::{PublishOptions, RoomError, Rooms};
use crate::ws::Socket;

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
    socket
        .on("room:publish", move |req: PublishReq| {
            let event = req.event.as_deref().unwrap_or("message");
            if reserved(event) {
                refuse(&s, &req.channel, "publish", "reserved event name");
                return;
            }
            if !r.rooms_of(&s).contains(&req.channel) {
                refuse(&s, &req.channel, "publish", "not in room");
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
