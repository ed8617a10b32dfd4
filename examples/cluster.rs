//! A cluster node: the bench contract of `shared/bench/contract.md` (same endpoints, same
//! flags) joined to the other nodes through Redis when `REDIS_URL` is set, or through NATS
//! when `NATS_URL` is (with JetStream, `nats-server -js`, for history), plus rooms.
//!
//! - `/ws`: `echo` → the sender; `broadcast` → every client **of every node**; and the
//!   rooms client protocol (`room:join`, `room:leave`, `room:publish`, `typing`) as the
//!   member named by `?member=NAME` (default `guest-…`);
//!   `publish` `{"channel","payload"}` → `broadcast` events to the room's members on every
//!   node (the room fan-out path for `street-bench fanout --room`, with or without
//!   history);
//! - `/echo`: raw echo, as in `bench_server`;
//! - `--cluster-heartbeat-ms` (default 1000): how often the node proves it is alive; its
//!   members leave everyone's presence within 3 of them after a crash, at once after
//!   SIGTERM.
//! - `--history-size N` (default 0: off) and `--history-ttl-ms MS` (default 300 000):
//!   every room keeps its last N publications for MS, and a client that comes back
//!   with `room:join {"channel","since":{"epoch","offset"}}` (on any node) recovers
//!   what it missed.
//!
//! ```text
//! redis-server --port 6379 &
//! REDIS_URL=redis://127.0.0.1:6379 cargo run --release --example cluster -- --addr 127.0.0.1:9001 &
//! REDIS_URL=redis://127.0.0.1:6379 cargo run --release --example cluster -- --addr 127.0.0.1:9002 &
//! ```
//!
//! ```text
//! nats-server -js -p 4222 &
//! NATS_URL=nats://127.0.0.1:4222 cargo run --release --example cluster -- --addr 127.0.0.1:9001 &
//! NATS_URL=nats://127.0.0.1:4222 cargo run --release --example cluster -- --addr 127.0.0.1:9002 &
//! ```
//!
//! With neither it is a single node (in-memory broker); with both, Redis is used.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use serde_json::value::RawValue;
use street::cluster::nats::{NatsBroker, NatsOptions};
use street::cluster::redis::{RedisBroker, RedisOptions};
use street::cluster::{Broker, HistoryOptions};
use street::rooms::{PublishOptions, Rooms, RoomsOptions};
use street::ws::{ConnectRequest, Socket};

mod support {
    pub(crate) mod contract;
}
use support::contract::{self, Flags};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// `publish` `{"channel", "payload"}`.
#[derive(serde::Deserialize)]
struct RoomPublish {
    channel: String,
    payload: Box<RawValue>,
}

fn main() -> ExitCode {
    contract::main(run)
}

async fn run(flags: Flags, app: street::AppOptions) -> ExitCode {
    let app = street::app(app);
    let (ws, echo) = contract::endpoints(&flags);

    let heartbeat = Duration::from_millis(flags.cluster_heartbeat_ms);
    let (broker, mode): (Option<Arc<dyn Broker>>, &str) =
        match (std::env::var("REDIS_URL"), std::env::var("NATS_URL")) {
            (Ok(url), _) => (
                Some(Arc::new(RedisBroker::new(
                    RedisOptions::url(url).with_heartbeat(heartbeat),
                ))),
                "cluster via Redis",
            ),
            (_, Ok(url)) => (
                Some(Arc::new(NatsBroker::new(
                    NatsOptions::url(url).with_heartbeat(heartbeat),
                ))),
                "cluster via NATS",
            ),
            _ => (None, "single node"),
        };
    let mut opts = RoomsOptions::default()
        .with_broker(broker)
        .with_client_protocol(true);
    if flags.history_size > 0 {
        opts = opts.with_history(
            "*",
            HistoryOptions::new(
                flags.history_size,
                Duration::from_millis(flags.history_ttl_ms),
            ),
        );
    }
    let rooms = match Rooms::new(&ws, opts).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!(
                "cannot join the cluster: {e} (is the server at REDIS_URL or NATS_URL running?)"
            );
            return ExitCode::from(1);
        }
    };

    // every room open (the library's default is closed: the app decides who joins what)
    rooms.authorize(|_socket, _room, _member| true);
    let r = rooms.clone();
    ws.on_connection(move |socket: Socket, req: ConnectRequest| {
        let member = req
            .query_param("member")
            .unwrap_or_else(|| format!("guest-{}", &socket.id().to_string()[..8]));
        r.attach(&socket, &member)?;
        let s = socket.clone();
        // RawValue: the payload is passed through without being parsed into a tree.
        socket.on("echo", move |p: Box<RawValue>| s.emit("echo", &p))?;
        let r2 = r.clone();
        socket.on("broadcast", move |p: Box<RawValue>| {
            r2.broadcast("broadcast", &p)
        })?;
        // the room fan-out path for `street-bench fanout --room`: like `broadcast`, a
        // server-side publication without the client policy's budgets (a bench server)
        let r3 = r.clone();
        socket.on("publish", move |p: RoomPublish| {
            r3.publish(
                &p.channel,
                "broadcast",
                &p.payload,
                PublishOptions::default(),
            )
        })?;
        Ok::<_, BoxError>(())
    });

    let app = app.websocket(&ws).websocket(&echo);
    let node = rooms.node_id().to_owned();
    let code = contract::serve(app, |addr| {
        format!("node {node} listening on {addr} ({mode})")
    })
    .await;
    // clients got 1001 and left their rooms; now leave the cluster's presence at once
    rooms.shutdown().await;
    code
}
