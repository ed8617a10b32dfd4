//! The seed's "Connection stats": the current connection count and every live socket,
//! served as JSON at `GET /stats`.

use street::ws::{WebSocketServer, WsOptions};

#[tokio::main]
async fn main() -> Result<(), street::app::AppError> {
    let wss = WebSocketServer::new(WsOptions::default());
    let w = wss.clone();
    let stats = move || {
        let w = w.clone();
        async move {
            // Current connection count
            let count = w.connection_count();
            // All active sockets
            let clients: Vec<_> = w
                .clients()
                .iter()
                .map(|s| serde_json::json!({ "id": s.id().to_string(), "state": if s.closed() { "dead" } else { "alive" } }))
                .collect();
            axum::Json(
                serde_json::json!({ "connectionCount": count, "clients": clients, "counters": w.stats() }),
            )
        }
    };
    street::app(street::AppOptions::from_env())
        .route("/stats", axum::routing::get(stats))
        .websocket(&wss)
        .listen()
        .await
}
