//! The seed's "Chat gateway example": `message` events of kind `join` / `message` are
//! broadcast to every joined connection as `chat` events; leaving is announced.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use street::ws::{
    envelope::now_ms, CloseInfo, ConnectRequest, Socket, SocketError, SocketId, WebSocketServer,
    WsOptions,
};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct ChatMessage {
    #[serde(rename = "type")]
    kind: String, // 'join' | 'message' | 'leave'
    #[serde(default)]
    user: String,
    #[serde(default)]
    text: String,
    #[serde(default)]
    timestamp: i64,
}

type Connections = Arc<Mutex<HashMap<SocketId, (Socket, String)>>>;

fn chat_connection_handler(
    connections: Connections,
) -> impl Fn(Socket, ConnectRequest) -> Result<(), SocketError> + Send + Sync + 'static {
    move |socket: Socket, _req: ConnectRequest| {
        let client_id = socket.id();
        let user_name = Arc::new(Mutex::new(format!(
            "Anonymous-{}",
            &client_id.to_string()[..6]
        )));

        let (conns, name, s) = (connections.clone(), user_name.clone(), socket.clone());
        socket.on("message", move |msg: ChatMessage| {
            let mut user = name.lock().unwrap_or_else(|p| p.into_inner());
            match msg.kind.as_str() {
                "join" => {
                    if !msg.user.is_empty() {
                        *user = msg.user.chars().take(64).collect();
                    }
                    conns
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(client_id, (s.clone(), user.clone()));
                    broadcast(
                        &conns,
                        ChatMessage {
                            kind: "join".into(),
                            user: user.clone(),
                            text: format!("{user} joined"),
                            timestamp: now_ms(),
                        },
                    );
                }
                "message" => {
                    broadcast(
                        &conns,
                        ChatMessage {
                            kind: "message".into(),
                            user: user.clone(),
                            text: msg.text,
                            timestamp: now_ms(),
                        },
                    );
                }
                _ => {}
            }
        })?;

        let (conns, name) = (connections.clone(), user_name);
        socket.on_close(move |_: CloseInfo| {
            conns
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&client_id);
            let user = name.lock().unwrap_or_else(|p| p.into_inner()).clone();
            broadcast(
                &conns,
                ChatMessage {
                    kind: "leave".into(),
                    text: format!("{user} left"),
                    user,
                    timestamp: now_ms(),
                },
            );
        })?;
        Ok(())
    }
}

fn broadcast(connections: &Connections, msg: ChatMessage) {
    let mut conns = connections.lock().unwrap_or_else(|p| p.into_inner());
    conns.retain(|_, (socket, _)| socket.emit("chat", &msg).is_ok());
}

#[tokio::main]
async fn main() -> Result<(), street::app::AppError> {
    let wss = WebSocketServer::new(WsOptions::default());
    let connections: Connections = Arc::default();
    wss.on_connection(chat_connection_handler(connections));
    street::app(street::AppOptions::from_env())
        .websocket(&wss)
        .listen()
        .await
}
