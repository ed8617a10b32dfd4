//! What `bench_server` and `cluster` share: the flags of `shared/bench/contract.md`, the
//! runtime, and the endpoints' options.

use std::process::ExitCode;
use std::time::Duration;

use serde_json::value::RawValue;
use street::ws::{
    Compression, CompressionMode, ConnectRequest, Frames, RawMessage, Socket, SocketError,
    WebSocketServer, WsOptions,
};

/// The contract's flags (plus the extras of street's examples).
pub(crate) struct Flags {
    pub(crate) addr: String,
    pub(crate) max_connections: usize,
    pub(crate) heartbeat_ms: u64,
    pub(crate) max_payload: usize,
    pub(crate) origins: Vec<String>,
    pub(crate) threads: usize,
    /// `bench_server`: SSE streams cap.
    pub(crate) max_sse_streams: usize,
    /// `cluster`: the Redis liveness heartbeat.
    pub(crate) cluster_heartbeat_ms: u64,
    /// `cluster`: history per room (0: none) and its age.
    pub(crate) history_size: usize,
    pub(crate) history_ttl_ms: u64,
    /// A reconnect hint in the 1001/1013 close reasons (`WsOptions::reconnect_hint`).
    pub(crate) reconnect_hint_ms: Option<u64>,
    /// Per-IP caps (0: off, the default here: the contract's load comes from one address).
    pub(crate) max_connections_per_ip: u32,
    pub(crate) max_handshakes_per_ip_per_sec: u32,
    /// Proxies whose `Forwarded`/`X-Forwarded-For` name the client.
    pub(crate) trusted_proxies: Vec<String>,
    /// Every connection starts with a PROXY protocol header.
    pub(crate) proxy_protocol: bool,
    /// TLS: PEM certificate chain and key (both or neither).
    pub(crate) tls_cert: Option<String>,
    pub(crate) tls_key: Option<String>,
    /// permessage-deflate: off, shared (`--deflate`) or per connection
    /// (`--deflate-takeover`).
    pub(crate) deflate: Option<CompressionMode>,
}

pub(crate) const USAGE: &str =
    "flags: [--addr HOST:PORT] [--max-connections N] [--heartbeat-ms MS] \
[--max-payload-bytes N] [--allowed-origin ORIGIN]... [--threads N] [--max-sse-streams N] \
[--cluster-heartbeat-ms MS] [--history-size N] [--history-ttl-ms MS] [--reconnect-hint-ms MS] [--max-connections-per-ip N] \
[--max-handshakes-per-ip-per-sec N] [--trusted-proxy CIDR]... [--proxy-protocol] \
[--tls-cert PATH --tls-key PATH] [--deflate | --deflate-takeover]";

pub(crate) fn parse() -> Result<Flags, String> {
    let port = std::env::var("PORT").unwrap_or_else(|_| "9001".into());
    let mut f = Flags {
        addr: format!("127.0.0.1:{port}"),
        max_connections: 100_000,
        heartbeat_ms: 30_000,
        max_payload: 524_288,
        origins: Vec::new(),
        threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        max_sse_streams: 100_000,
        cluster_heartbeat_ms: 1000,
        history_size: 0,
        history_ttl_ms: 300_000,
        reconnect_hint_ms: None,
        max_connections_per_ip: 0,
        max_handshakes_per_ip_per_sec: 0,
        trusted_proxies: Vec::new(),
        proxy_protocol: false,
        tls_cert: None,
        tls_key: None,
        deflate: None,
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
        let small = |v: String| {
            v.parse::<u32>()
                .map_err(|_| format!("{key}: not a number up to {}: {v}", u32::MAX))
        };
        match key.as_str() {
            "--addr" => f.addr = val()?,
            "--max-connections" => f.max_connections = num(val()?)? as usize,
            "--heartbeat-ms" => f.heartbeat_ms = num(val()?)?,
            "--max-payload-bytes" => f.max_payload = num(val()?)? as usize,
            "--allowed-origin" => f.origins.push(val()?),
            "--threads" => f.threads = (num(val()?)? as usize).max(1),
            "--max-sse-streams" => f.max_sse_streams = num(val()?)? as usize,
            "--cluster-heartbeat-ms" => f.cluster_heartbeat_ms = num(val()?)?.max(1),
            "--history-size" => f.history_size = num(val()?)? as usize,
            "--history-ttl-ms" => f.history_ttl_ms = num(val()?)?.max(1),
            "--reconnect-hint-ms" => f.reconnect_hint_ms = Some(num(val()?)?),
            "--max-connections-per-ip" => f.max_connections_per_ip = small(val()?)?,
            "--max-handshakes-per-ip-per-sec" => f.max_handshakes_per_ip_per_sec = small(val()?)?,
            "--trusted-proxy" => f.trusted_proxies.push(val()?),
            "--proxy-protocol" => f.proxy_protocol = true,
            "--tls-cert" => f.tls_cert = Some(val()?),
            "--tls-key" => f.tls_key = Some(val()?),
            "--deflate" => f.deflate = Some(CompressionMode::Shared),
            "--deflate-takeover" => f.deflate = Some(CompressionMode::ContextTakeover),
            "-h" | "--help" => return Err(USAGE.into()),
            other => return Err(format!("unknown flag {other}\n{USAGE}")),
        }
    }
    Ok(f)
}

/// Parse the flags (and the app options they give), build the runtime (`--threads`
/// workers) and run `body` on it. A bad flag is exit code 2.
pub(crate) fn main<F, Fut>(body: F) -> ExitCode
where
    F: FnOnce(Flags, street::AppOptions) -> Fut,
    Fut: std::future::Future<Output = ExitCode>,
{
    let (flags, app) = match parse().and_then(|f| app_options(&f).map(|o| (f, o))) {
        Ok(x) => x,
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
    rt.block_on(async move {
        // SIGHUP reloads the certificate (new connections get it; open ones keep theirs).
        if let Some(tls) = app.tls.clone() {
            tokio::spawn(reload_on_sighup(tls));
        }
        // Quiet by default (nothing per message); RUST_LOG=debug for connection-level logs.
        tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "warn".into()),
            )
            .with_writer(std::io::stderr)
            .init();
        body(flags, app).await
    })
}

async fn reload_on_sighup(tls: street::tls::TlsConfig) {
    let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
        return;
    };
    while hup.recv().await.is_some() {
        match tls.reload() {
            Ok(()) => eprintln!("TLS certificate reloaded"),
            Err(e) => eprintln!("TLS reload failed, keeping the current certificate: {e}"),
        }
    }
}

/// `--tls-cert` and `--tls-key`, read.
pub(crate) fn tls(flags: &Flags) -> Result<Option<street::tls::TlsConfig>, String> {
    match (&flags.tls_cert, &flags.tls_key) {
        (Some(cert), Some(key)) => street::tls::TlsConfig::from_pem_files(cert, key)
            .map(Some)
            .map_err(|e| format!("--tls-cert/--tls-key: {e}")),
        (None, None) => Ok(None),
        _ => Err("--tls-cert and --tls-key go together".into()),
    }
}

/// The app's options: `--addr`; for HTTP connections, `--max-connections` (with room for
/// `--max-sse-streams`, which must stay below the HTTP cap) and `--max-connections-per-ip`;
/// the proxy flags.
pub(crate) fn app_options(flags: &Flags) -> Result<street::AppOptions, String> {
    let trusted_proxies = street::net::TrustedProxies::parse(&flags.trusted_proxies)
        .map_err(|e| format!("--trusted-proxy: {e}"))?;
    let (host, port) = flags
        .addr
        .rsplit_once(':')
        .and_then(|(h, p)| Some((h.trim_matches(['[', ']']).to_owned(), p.parse().ok()?)))
        .ok_or_else(|| "--addr must be HOST:PORT".to_owned())?;
    Ok(street::AppOptions::default()
        .with_host(host)
        .with_port(port)
        .with_max_connections(
            flags
                .max_connections
                .max(flags.max_sse_streams.saturating_add(1024)),
        )
        .with_max_sse_streams(flags.max_sse_streams)
        .with_max_connections_per_ip(flags.max_connections_per_ip)
        .with_max_sse_streams_per_ip(flags.max_connections_per_ip)
        .with_trusted_proxies(trusted_proxies)
        .with_proxy_protocol(flags.proxy_protocol)
        .with_tls(tls(flags)?))
}

/// The contract's endpoints: `/ws` (envelopes; the caller adds its handlers) and `/echo`
/// (every message echoed verbatim, wired here).
pub(crate) fn endpoints(flags: &Flags) -> (WebSocketServer, WebSocketServer) {
    let opts = ws_options(flags);
    let ws = WebSocketServer::new(opts.clone().with_path("/ws"));
    let echo = WebSocketServer::new(opts.with_path("/echo").with_frames(Frames::Raw));
    echo.on_connection(|socket: Socket, _: ConnectRequest| {
        let s = socket.clone();
        socket.on_raw(move |m: RawMessage| s.send_raw(m))
    });
    (ws, echo)
}

/// The contract's `/ws` listeners on one node: `echo` back to the sender, `broadcast` to
/// every client of `ws` (`cluster` broadcasts through its rooms instead).
#[allow(dead_code)] // `cluster` wires its own
pub(crate) fn echo_and_broadcast(ws: &WebSocketServer) {
    let hub = ws.clone();
    ws.on_connection(move |socket: Socket, _: ConnectRequest| {
        let s = socket.clone();
        // RawValue: the payload is passed through without being parsed into a tree.
        socket.on("echo", move |p: Box<RawValue>| s.emit("echo", &p))?;
        let h = hub.clone();
        socket.on("broadcast", move |p: Box<RawValue>| {
            h.broadcast("broadcast", &p)
        })?;
        Ok::<_, SocketError>(())
    });
}

/// Bind, print `banner(addr)` (harnesses wait for a line), serve until SIGTERM/SIGINT.
#[allow(dead_code)] // `embed` serves with axum's own server
pub(crate) async fn serve(
    app: street::App,
    banner: impl FnOnce(std::net::SocketAddr) -> String,
) -> ExitCode {
    match app.bind().await {
        Ok(server) => {
            println!("{}", banner(server.local_addr()));
            server.serve(street::app::shutdown_signal()).await;
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(1)
        }
    }
}

/// Options of the contract's endpoints.
pub(crate) fn ws_options(flags: &Flags) -> WsOptions {
    WsOptions::default()
        .with_max_connections(flags.max_connections)
        .with_heartbeat_interval(Duration::from_millis(flags.heartbeat_ms))
        .with_max_payload(flags.max_payload)
        .with_allowed_origins(flags.origins.clone())
        .with_shutdown_timeout(Duration::from_secs(5))
        // The contract's load comes from one address at rates far above a real client's:
        // per-IP and per-connection rate limits are off here unless flags turn the per-IP
        // ones on (they are all on by default in the library).
        .with_max_connections_per_ip(flags.max_connections_per_ip)
        .with_max_handshakes_per_ip_per_sec(flags.max_handshakes_per_ip_per_sec)
        .with_max_messages_per_sec(0)
        .with_max_bytes_per_sec(0)
        .with_reconnect_hint(flags.reconnect_hint_ms.map(Duration::from_millis))
        .with_compression(
            flags
                .deflate
                .map(|mode| Compression::default().with_mode(mode)),
        )
}
