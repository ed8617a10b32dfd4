//! The chat: login, the authenticated WebSocket (the seed's pattern: verify the token in
//! the connection handler, close 4001 when it is bad), rooms with history: a page loads
//! a room's recent past with the rooms' `room:history` request (the broker's history,
//! the same on every node) and recovers what it missed across reconnects.

use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;
use street::rooms::PublishOptions;
use street::ws::{CloseCode, ConnectRequest, Socket};

use super::Demo;

/// Rooms anyone may join; `staff` is listed by the page but closed (joins are refused).
pub(crate) const OPEN_ROOMS: [&str; 3] = ["general", "random", "help"];
const CLOSED_ROOMS: [&str; 1] = ["staff"];
/// Longest display name, in characters.
const MAX_NAME: usize = 32;
/// Longest message, in characters.
const MAX_TEXT: usize = 1000;
/// Connections closed with 4001 (shown by the dashboard).
pub(crate) static AUTH_REJECTED: AtomicU64 = AtomicU64::new(0);
/// Chat messages sent from this process (their ids are `{node}-{n}`).
static NEXT_ID: AtomicU64 = AtomicU64::new(0);

#[derive(Deserialize)]
struct Login {
    name: String,
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
    /// Expiry, in Unix seconds (required by `JwtService::verify`).
    exp: u64,
}

/// The validated display name, or why not. Anyone may log in under any name (there are no
/// accounts), so the rule only keeps one person from passing for another by characters
/// that do not show:
///
/// - whitespace around the name is trimmed and runs of spaces inside become one space
///   (browsers show them as one); other whitespace inside (tabs, no-break spaces, line
///   separators…) is refused;
/// - refused: an empty name, more than [`MAX_NAME`] characters, control characters (`Cc`),
///   format characters (`Cf`: zero-width spaces and joiners, bidi embeddings, overrides and
///   isolates, the BOM, soft hyphen…) and other characters that draw nothing ([`invisible`]:
///   variation selectors, Hangul fillers, the combining grapheme joiner…).
///
/// Left alone: confusables (Cyrillic `а` for Latin `a`), and canonically equivalent
/// spellings (`é` precomposed or `e` + U+0301) are two names.
fn valid_name(raw: &str) -> Result<String, String> {
    let mut name = String::with_capacity(raw.len());
    for word in raw.trim().split(' ').filter(|w| !w.is_empty()) {
        if !name.is_empty() {
            name.push(' ');
        }
        name.push_str(word);
    }
    if name.is_empty() {
        return Err("name is empty".into());
    }
    if name.chars().count() > MAX_NAME {
        return Err(format!("name is longer than {MAX_NAME} characters"));
    }
    if let Some(c) = name.chars().find(|&c| c.is_control()) {
        return Err(format!(
            "name contains a control character (U+{:04X})",
            u32::from(c)
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|&c| invisible(c) || (c.is_whitespace() && c != ' '))
    {
        return Err(format!(
            "name contains an invisible or direction-changing character (U+{:04X})",
            u32::from(c)
        ));
    }
    Ok(name)
}

/// Characters that draw nothing or change the direction of the text around them: the
/// Unicode `Cf` (format) category, plus variation selectors, fillers and joiners of other
/// categories that render as nothing.
fn invisible(c: char) -> bool {
    matches!(u32::from(c),
        // Cf (Unicode 15.1)
        0x00AD | 0x0600..=0x0605 | 0x061C | 0x06DD | 0x070F | 0x0890..=0x0891 | 0x08E2
        | 0x180E | 0x200B..=0x200F | 0x202A..=0x202E | 0x2060..=0x2064 | 0x2066..=0x206F
        | 0xFEFF | 0xFFF9..=0xFFFB | 0x110BD | 0x110CD | 0x13430..=0x1343F
        | 0x1BCA0..=0x1BCA3 | 0x1D173..=0x1D17A | 0xE0001 | 0xE0020..=0xE007F
        // not Cf, but nothing to see: combining grapheme joiner, Hangul fillers, Khmer
        // inherent vowels, Mongolian variation selectors, variation selectors, braille blank
        | 0x034F | 0x115F | 0x1160 | 0x17B4 | 0x17B5 | 0x180B..=0x180F | 0x3164 | 0xFFA0
        | 0xFE00..=0xFE0F | 0xE0100..=0xE01EF | 0x2800
    )
}

async fn login(
    State(demo): State<Demo>,
    Json(body): Json<Login>,
) -> (StatusCode, Json<serde_json::Value>) {
    let name = match valid_name(&body.name) {
        Ok(n) => n,
        Err(e) => return (StatusCode::BAD_REQUEST, Json(json!({ "error": e }))),
    };
    match demo.jwt.sign(&json!({ "sub": name })) {
        Ok(token) => {
            demo.metrics.track("logins", 1);
            (
                StatusCode::OK,
                Json(json!({ "token": token, "name": name })),
            )
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot sign a token");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                Json(json!({ "error": "cannot sign a token" })),
            )
        }
    }
}

pub(crate) fn routes(demo: Demo) -> Router {
    Router::new()
        .route("/api/login", post(login))
        .with_state(demo)
}

/// One chat message as clients see it.
#[derive(Clone, Serialize)]
struct ChatOut {
    /// Unique across nodes and restarts: the node id (random per process) and a counter.
    id: String,
    channel: String,
    #[serde(rename = "memberId")]
    member_id: String,
    text: String,
    ts: i64,
}

#[derive(Deserialize)]
struct ChatIn {
    channel: String,
    text: String,
}

/// An in-band token refresh (`street:auth`).
#[derive(Deserialize)]
struct AuthIn {
    token: String,
}

/// Unix seconds as a time (one the clock cannot hold is no expiry at all).
fn unix(secs: u64) -> Option<std::time::SystemTime> {
    std::time::UNIX_EPOCH.checked_add(std::time::Duration::from_secs(secs))
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

pub(crate) fn wire(demo: &Demo) {
    let d = demo.clone();
    demo.wss.on_connection(move |socket: Socket, req: ConnectRequest| {
        let d = d.clone();
        // The seed's authenticated connection: verify the token before anything else.
        let token = req.query_param("token").unwrap_or_default();
        let (name, exp) = match d.jwt.verify::<Claims>(&token) {
            Ok(c) => match valid_name(&c.sub) {
                Ok(n) => (n, c.exp),
                Err(_) => return reject(&socket, "Unauthorized: bad name in token"),
            },
            Err(e) => {
                let why = match e.kind {
                    street::jwt::JwtErrorKind::Expired => "Unauthorized: token expired",
                    _ => "Unauthorized: invalid token",
                };
                return reject(&socket, why);
            }
        };
        // identity comes from the token only; nothing the client sends can change it
        d.rooms.attach(&socket, &name)?;
        // the connection lasts as long as its token, unless the page hands in a new one
        // for the same name (street.js does, with getToken, when told it expired)
        socket.set_expiry(unix(exp));
        let (s, dd, who) = (socket.clone(), d.clone(), name.clone());
        socket.on_request("street:auth", move |p: AuthIn| match dd.jwt.verify::<Claims>(&p.token) {
            Ok(c) if c.sub == who => {
                s.set_expiry(unix(c.exp));
                Ok(json!({ "expiresAt": c.exp }))
            }
            Ok(_) => Err("a token for another name"),
            Err(_) => Err("invalid token"),
        })?;
        socket.emit(
            "welcome",
            &json!({ "memberId": name, "rooms": OPEN_ROOMS, "closedRooms": CLOSED_ROOMS, "node": d.rooms.node_id() }),
        )?;

        let (s, dd, who) = (socket.clone(), d.clone(), name);
        socket.on("chat", move |m: ChatIn| {
            let text = m.text.trim();
            let refuse = |reason: &str| {
                let _ = s.emit("chat:error", &json!({ "channel": m.channel, "reason": reason }));
            };
            if text.is_empty() {
                return;
            }
            if text.chars().count() > MAX_TEXT {
                return refuse(&format!("message is longer than {MAX_TEXT} characters"));
            }
            if !dd.rooms.rooms_of(&s).contains(&m.channel) {
                return refuse("join the room first");
            }
            let out = ChatOut {
                id: format!(
                    "{}-{}",
                    dd.rooms.node_id(),
                    NEXT_ID.fetch_add(1, Ordering::Relaxed) + 1
                ),
                channel: m.channel.clone(),
                member_id: who.clone(),
                text: text.to_owned(),
                ts: street::ws::envelope::now_ms(),
            };
            dd.metrics.track("chat_messages", 1);
            let _ = dd.rooms.publish(&m.channel, "chat", &out, PublishOptions::default());
        })?;
        Ok::<_, BoxError>(())
    });
}

fn reject(socket: &Socket, reason: &str) -> Result<(), BoxError> {
    tracing::info!(reason, "closing an unauthenticated connection with 4001");
    AUTH_REJECTED.fetch_add(1, Ordering::Relaxed);
    socket.close(CloseCode(4001), reason)?;
    Ok(())
}
