//! The demo's chat gateway (the seed's "Chat gateway example" in Rust).

use serde::{Deserialize, Serialize};
use street::ws::{CloseInfo, ConnectRequest, Socket, SocketError, WebSocketServer};

/// A chat message, as the seed's `ChatMessage`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ChatMessage {
    #[serde(rename = "type")]
    pub(crate) kind: String,
    #[serde(default)]
    pub(crate) user: String,
    #[serde(default)]
    pub(crate) text: String,
    #[serde(default)]
    pub(crate) timestamp: i64,
}

#[derive(Clone)]
struct UserName(String);

const MAX_NAME: usize = 64;
const MAX_TEXT: usize = 2000;

fn clip(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

/// Wire the chat gateway onto `wss`: `message` events of kind `join`/`message` are
/// broadcast as `chat` events; leaving is announced.
pub(crate) fn chat_gateway(wss: &WebSocketServer) {
    let server = wss.clone();
    wss.on_connection(move |socket: Socket, _req: ConnectRequest| {
        let short = socket.id().to_string();
        socket.set(UserName(format!("Anonymous-{}", &short[..6])));
        let (s, srv) = (socket.clone(), server.clone());
        socket.on("message", move |msg: ChatMessage| {
            let mut name = s.get::<UserName>().map(|u| u.0).unwrap_or_default();
            let out = match msg.kind.as_str() {
                "join" => {
                    if !msg.user.trim().is_empty() {
                        name = clip(msg.user.trim(), MAX_NAME);
                        s.set(UserName(name.clone()));
                    }
                    ChatMessage {
                        kind: "join".into(),
                        user: name.clone(),
                        text: format!("{name} joined"),
                        timestamp: street::ws::envelope::now_ms(),
                    }
                }
                "message" => ChatMessage {
                    kind: "message".into(),
                    user: name,
                    text: clip(&msg.text, MAX_TEXT),
                    timestamp: street::ws::envelope::now_ms(),
                },
                _ => return Ok(()),
            };
            srv.broadcast("chat", &out).map(|_| ())
        })?;
        let (s, srv) = (socket.clone(), server.clone());
        socket.on_close(move |_: CloseInfo| {
            let name = s.get::<UserName>().map(|u| u.0).unwrap_or_default();
            let _ = srv.broadcast(
                "chat",
                &ChatMessage {
                    kind: "leave".into(),
                    text: format!("{name} left"),
                    user: name,
                    timestamp: street::ws::envelope::now_ms(),
                },
            );
        })?;
        Ok::<_, SocketError>(())
    });
}

/// A minimal page to try the gateway from a browser.
pub(crate) const INDEX: &str = r#"<!doctype html><meta charset="utf-8"><title>street demo</title>
<h1>street chat</h1><input id="n" placeholder="name"><button id="j">join</button>
<input id="t" placeholder="message"><button id="s">send</button><ul id="log"></ul>
<script>
const ws = new WebSocket(`ws://${location.host}/ws`);
const log = (m) => { const li = document.createElement('li'); li.textContent = m; document.getElementById('log').append(li); };
ws.onmessage = (e) => { const env = JSON.parse(e.data); if (env.type === 'chat') log(`${env.payload.user}: ${env.payload.text}`); };
ws.onclose = (e) => log(`closed ${e.code} ${e.reason}`);
const send = (p) => ws.send(JSON.stringify({ type: 'message', payload: p, ts: Date.now() }));
document.getElementById('j').onclick = () => send({ type: 'join', user: document.getElementById('n').value });
document.getElementById('s').onclick = () => send({ type: 'message', text: document.getElementById('t').value });
</script>"#;
