//! The seed's "Setup" section: an app, a bounded WebSocket server registered in the
//! container, and a connection handler that echoes `message` events.
//!
//! Run: `PORT=3000 cargo run --example setup`, then send
//! `{"type":"message","payload":"hi"}` to ws://localhost:3000/ws.

use std::time::Duration;

use street::ws::{CloseInfo, ConnectRequest, Socket, SocketError, WebSocketServer, WsOptions};

#[tokio::main]
async fn main() -> Result<(), street::app::AppError> {
    let app = street::app(street::AppOptions::from_env());

    let wss = WebSocketServer::new(
        WsOptions::default()
            .with_heartbeat_interval(Duration::from_secs(30)) // ping every 30s
            .with_max_connections(10_000), // reject with 1013 when exceeded
    );
    street::container().register(wss.clone());

    // Handle new connections
    wss.on_connection(|socket: Socket, _req: ConnectRequest| {
        println!("Client connected");

        let s = socket.clone();
        socket.on("message", move |data: serde_json::Value| {
            println!("Received: {data}");
            s.emit("echo", &data)
        })?;

        socket.on_close(|_: CloseInfo| {
            println!("Client disconnected");
        })?;
        Ok::<_, SocketError>(())
    });

    app.websocket(&wss).listen().await
}
