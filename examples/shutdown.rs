//! The seed's "Graceful shutdown": on SIGTERM, close the WebSocket server (every client
//! gets 1001, new upgrades 503), close other resources, then exit 0.
//! While running it broadcasts a `tick` every 100 ms.

use std::time::Duration;

use street::ws::{WebSocketServer, WsOptions};

#[tokio::main]
async fn main() -> Result<(), street::app::AppError> {
    let wss = WebSocketServer::new(WsOptions::default());
    let server = street::app(street::AppOptions::from_env())
        .websocket(&wss)
        .bind()
        .await?;

    let ticker = wss.clone();
    tokio::spawn(async move {
        let mut n = 0u64;
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            n += 1;
            let _ = ticker.broadcast("tick", &n);
        }
    });

    let w = wss.clone();
    server
        .serve(async move {
            street::app::shutdown_signal().await; // SIGTERM or Ctrl-C
            w.close().await; // closes all connections, stops accepting new ones
                             // pool.close().await;  -- other resources go here
        })
        .await;
    Ok(())
}
