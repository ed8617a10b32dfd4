//! The bench server of `shared/bench/contract.md`:
//! - `/ws`: `{"type":"echo","payload":P}` → the same envelope back to the sender;
//!   `{"type":"broadcast","payload":P}` → broadcast to every client, sender included;
//! - `/echo`: every message echoed verbatim (what RFC 6455 conformance suites drive);
//! - flags `--addr`, `--max-connections`, `--heartbeat-ms`, `--max-payload-bytes`,
//!   `--allowed-origin` (repeatable); `PORT` when `--addr` is absent;
//! - logs nothing per message; SIGTERM closes every client with 1001 and exits 0.
//!
//! Beyond the contract (for street's SSE measurements): `GET /sse` subscribes to the
//! topic `bench` of an [`SseHub`](street::sse::SseHub) (no replay), and a client of
//! `/sse/publish` sending `{"type":"sse","payload":P}` publishes P there (a separate
//! endpoint, so `/ws` connections carry only the contract's two listeners); `--max-sse-streams` caps the streams
//! (default 100 000; more get 503).

use std::process::ExitCode;

use serde_json::value::RawValue;
use street::sse::{HubOptions, SseHub, SseRequest};
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

    let sse = SseHub::new(HubOptions::default().with_replay_events(0));
    let publisher = WebSocketServer::new(contract::ws_options(&flags).with_path("/sse/publish"));
    let sse_pub = sse.clone();
    publisher.on_connection(move |socket: Socket, _: ConnectRequest| {
        let sp = sse_pub.clone();
        socket.on("sse", move |p: Box<RawValue>| {
            let _ = sp.publish("bench", &p, Some("bench"));
        })
    });
    contract::echo_and_broadcast(&ws);

    let app = app
        .route(
            "/sse",
            axum::routing::get(move |req: SseRequest| {
                let sse = sse.clone();
                async move { sse.subscribe(req, "bench").map(|(_, resp)| resp) }
            }),
        )
        .websocket(&ws)
        .websocket(&publisher)
        .websocket(&echo);
    contract::serve(app, |addr| format!("listening on {addr}")).await
}
