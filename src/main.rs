//! The demo server: `cargo run --release` serves HTTP and the chat gateway on `/ws`
//! (port 3000, or `PORT`).

use street::ws::{WebSocketServer, WsOptions};

mod demo;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,street=info".into()),
        )
        .init();
    let wss = WebSocketServer::new(WsOptions::default());
    demo::chat_gateway(&wss);
    let app = street::app(street::AppOptions::from_env())
        .route(
            "/",
            axum::routing::get(|| async { axum::response::Html(demo::INDEX) }),
        )
        .route("/health", axum::routing::get(|| async { "ok" }))
        .websocket(&wss);
    match app.listen().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("street: {e}");
            std::process::ExitCode::from(2)
        }
    }
}
