//! The bench server of `shared/bench/contract.md`:
//! - `/ws`: `{"type":"echo","payload":P}` → the same envelope back to the sender;
//!   `{"type":"broadcast","payload":P}` → broadcast to every client, sender included;
//! - `/echo`: every message echoed verbatim (what RFC 6455 conformance suites drive);
//! - flags `--addr`, `--max-connections`, `--heartbeat-ms`, `--max-payload-bytes`,
//!   `--allowed-origin` (repeatable); `PORT` when `--addr` is absent;
//! - logs nothing per message; SIGTERM closes every client with 1001 and exits 0.
//!
//! Beyond the contract (for street's SSE measurements): `GET /sse` subscribes to the
//! topic `bench` of an [`SseHub`](street::sse::SseHub) (no replay), and a `/ws` client's
//! `{"type":"sse","payload":P}` publishes P there; `--max-sse-streams` caps the streams
//! (default 100 000; more get 503).

use std::process::ExitCode;
use std::time::Duration;

use serde_json::value::RawValue;
use street::sse::{HubOptions, SseHub, SseRequest};
use street::ws::{
    ConnectRequest, Frames, RawMessage, Socket, SocketError, WebSocketServer, WsOptions,
};

struct Flags {
    addr: String,
    max_connections: usize,
    heartbeat_ms: u64,
    max_payload: usize,
    origins: Vec<String>,
    threads: usize,
    max_sse_streams: usize,
}

fn parse() -> Result<Flags, String> {
    let port = std::env::var("PORT").unwrap_or_else(|_| "9001".into());
    let mut f = Flags {
        addr: format!("127.0.0.1:{port}"),
        max_connections: 100_000,
        heartbeat_ms: 30_000,
        max_payload: 524_288,
        origins: Vec::new(),
        threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        max_sse_streams: 100_000,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let (key, inline) = match a.split_once('=') {
            Some((k, v)) => (k.to_owned(), Some(v.to_owned())),
            None => (a.clone(), None),
        };
        let mut val = || {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or(format!("{key} needs a value"))
        };
        let num = |v: String| {
            v.parse::<u64>()
                .map_err(|_| format!("{key}: not a number: {v}"))
        };
        match key.as_str() {
            "--addr" => f.addr = val()?,
            "--max-connections" => f.max_connections = num(val()?)? as usize,
            "--heartbeat-ms" => f.heartbeat_ms = num(val()?)?,
            "--max-payload-bytes" => f.max_payload = num(val()?)? as usize,
            "--allowed-origin" => f.origins.push(val()?),
            "--threads" => f.threads = (num(val()?)? as usize).max(1),
            "--max-sse-streams" => f.max_sse_streams = num(val()?)? as usize,
            "-h" | "--help" => return Err("usage: bench_server [--addr HOST:PORT] [--max-connections N] [--heartbeat-ms MS] [--max-payload-bytes N] [--allowed-origin ORIGIN]... [--threads N] [--max-sse-streams N]".into()),
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(f)
}

fn main() -> ExitCode {
    let flags = match parse() {
        Ok(f) => f,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    // Worker threads: all cores by default; `--threads 1` when the load generator
    // shares a small machine (a second worker then only adds context switches).
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(flags.threads)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("runtime: {e}");
            return ExitCode::from(1);
        }
    };
    rt.block_on(run(flags))
}

async fn run(flags: Flags) -> ExitCode {
    // Quiet by default (nothing per message); RUST_LOG=debug for connection-level logs.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let (host, port) = match flags.addr.rsplit_once(':').and_then(|(h, p)| {
        Some((
            h.trim_matches(['[', ']']).to_owned(),
            p.parse::<u16>().ok()?,
        ))
    }) {
        Some(x) => x,
        None => {
            eprintln!("--addr must be HOST:PORT");
            return ExitCode::from(2);
        }
    };
    let opts = WsOptions {
        max_connections: flags.max_connections,
        heartbeat_interval: Duration::from_millis(flags.heartbeat_ms),
        max_payload: flags.max_payload,
        allowed_origins: flags.origins.clone(),
        shutdown_timeout: Duration::from_secs(5),
        // The contract's load comes from one address at rates far above a real client's:
        // per-IP and per-connection rate limits are off here (they are on by default).
        max_connections_per_ip: 0,
        max_handshakes_per_ip_per_sec: 0,
        max_messages_per_sec: 0,
        max_bytes_per_sec: 0,
        ..Default::default()
    };
    let ws = WebSocketServer::new(WsOptions {
        path: "/ws".into(),
        ..opts.clone()
    });
    let echo = WebSocketServer::new(WsOptions {
        path: "/echo".into(),
        frames: Frames::Raw,
        ..opts
    });

    let sse = SseHub::new(HubOptions {
        replay_events: 0,
        ..HubOptions::default()
    });
    let hub = ws.clone();
    let sse_pub = sse.clone();
    ws.on_connection(move |socket: Socket, _: ConnectRequest| {
        let s = socket.clone();
        // RawValue: the payload is passed through without being parsed into a tree.
        socket.on("echo", move |p: Box<RawValue>| s.emit("echo", &p))?;
        let h = hub.clone();
        socket.on("broadcast", move |p: Box<RawValue>| {
            h.broadcast("broadcast", &p)
        })?;
        let sp = sse_pub.clone();
        socket.on("sse", move |p: Box<RawValue>| {
            let _ = sp.publish("bench", &p, Some("bench"));
        })?;
        Ok::<_, SocketError>(())
    });
    echo.on_connection(|socket: Socket, _: ConnectRequest| {
        let s = socket.clone();
        socket.on_raw(move |m: RawMessage| s.send_raw(m))
    });

    let app = street::app(street::AppOptions {
        host,
        port,
        // HTTP connections (SSE streams are HTTP): as many as WebSockets
        max_connections: flags.max_connections,
        max_sse_streams: flags.max_sse_streams,
        ..Default::default()
    })
    .route(
        "/sse",
        axum::routing::get(move |req: SseRequest| {
            let sse = sse.clone();
            async move { sse.subscribe(req, "bench").map(|(_, resp)| resp) }
        }),
    )
    .websocket(&ws)
    .websocket(&echo);
    let server = match app.bind().await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(1);
        }
    };
    println!("listening on {}", server.local_addr());
    server.serve(street::app::shutdown_signal()).await;
    ExitCode::SUCCESS
}
