//! The bench server of `shared/bench/contract.md`:
//! - `/ws`: `{"type":"echo","payload":P}` → the same envelope back to the sender;
//!   `{"type":"broadcast","payload":P}` → broadcast to every client, sender included;
//! - `/echo`: every message echoed verbatim (what RFC 6455 conformance suites drive);
//! - flags `--addr`, `--max-connections`, `--heartbeat-ms`, `--max-payload-bytes`,
//!   `--allowed-origin` (repeatable); `PORT` when `--addr` is absent;
//! - logs nothing per message; SIGTERM closes every client with 1001 and exits 0.
//!
//! Beyond the contract (for street's SSE measurements): `GET /sse` subscribes to the
//! room `bench` ([`Rooms::sse`](street::rooms::Rooms::sse), no history), and a client of
//! `/sse/publish` sending `{"type":"sse","payload":P}` publishes P there (a separate
//! endpoint, so `/ws` connections carry only the contract's two listeners); `--max-sse-streams` caps the streams
//! (default 100 000; more get 503).

use std::process::ExitCode;

use axum::response::IntoResponse;
use serde_json::value::RawValue;
use street::rooms::{PublishOptions, Rooms, RoomsOptions};
use street::sse::{SseOptions, SseRequest};
use street::ws::{ConnectRequest, Socket, WebSocketServer};

mod support {
    pub(crate) mod contract;
}
use support::contract::{self, Flags};

fn main() -> ExitCode {
    contract::main(run)
}

async fn run(flags: Flags, app: street::AppOptions) -> ExitCode {
    let app = street::app(app);
    let (ws, echo) = contract::endpoints(&flags);

    let publisher = WebSocketServer::new(contract::ws_options(&flags).with_path("/sse/publish"));
    let rooms = match Rooms::new(&publisher, RoomsOptions::default()).await {
        Ok(rooms) => rooms,
        Err(e) => {
            eprintln!("rooms: {e}");
            return ExitCode::FAILURE;
        }
    };
    let on_publish = rooms.clone();
    publisher.on_connection(move |socket: Socket, _: ConnectRequest| {
        let rooms = on_publish.clone();
        socket.on("sse", move |p: Box<RawValue>| {
            let _ = rooms.publish("bench", "bench", &p, PublishOptions::default());
        })
    });
    contract::echo_and_broadcast(&ws);

    let app = app
        .route(
            "/sse",
            axum::routing::get(move |req: SseRequest| {
                let rooms = rooms.clone();
                async move {
                    match rooms.sse(req, "bench", SseOptions::default()).await {
                        Ok((_, response)) => response,
                        Err(e) => e.into_response(),
                    }
                }
            }),
        )
        .websocket(&ws)
        .websocket(&publisher)
        .websocket(&echo);
    contract::serve(app, |addr| format!("listening on {addr}")).await
}
