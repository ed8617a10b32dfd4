//! The demo server: `cargo run --release`, then open http://localhost:3000 — a chat with
//! rooms, presence and typing over WebSockets with JWT login, and a live dashboard over
//! SSE at /dashboard. Port from `PORT` (default 3000); `REDIS_URL` (or `NATS_URL`) makes it a cluster node;
//! `STREET_JWT_SECRET` sets the token secret (a random one per process otherwise);
//! `STREET_METRICS_TOKEN` serves `/metrics` to `Authorization: Bearer <token>`.

mod demo;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,street=info".into()),
        )
        .init();
    match demo::run(demo::Config::from_env()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("street: {e}");
            std::process::ExitCode::from(2)
        }
    }
}
