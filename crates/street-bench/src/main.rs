//! `street-bench`: a WebSocket load generator for servers that implement
//! `shared/bench/contract.md` (street's `bench_server`, `@streetjs/websocket`, …).
//!
//! Scenarios:
//! - `echo`: C connections, each sends an echo and waits for the reply → round trips/s, RTT;
//! - `fanout`: N subscribers, one of them publishes with at most K broadcasts outstanding; a
//!   broadcast completes when all N received it → broadcasts/s, deliveries/s, completion latency;
//! - `idle`: N connections opened with C concurrent handshakes → handshakes/s, server RSS per
//!   connection (needs `--server-pid`);
//! - `connect-storm`: N connections all at once → admitted, refused (1013/503), errors;
//! - `restart`: N connections wait for the server to go away (close 1001), then reconnect
//!   with exponential backoff and full jitter (`--reconnect-window-ms` is the first delay's
//!   range); prints `READY` once connected, then reports how the reconnects spread;
//! - `sse-fanout` (street's bench_server only): N Server-Sent Events readers of `GET /sse`,
//!   one WebSocket publisher (`/sse/publish`) sending `{"type":"sse","payload":ID}`,
//!   measured as `fanout`.
//!
//! It reports its own CPU time (a load generator that saturates a core understates the
//! faster server) and, given `--server-pid`, the server's CPU per unit of work and its RSS.
//! One worker thread per core at most; receive paths parse only what they need.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio_websockets::{ClientBuilder, MaybeTlsStream, Message, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

#[derive(Debug, Clone)]
struct Args {
    scenario: String,
    url: String,
    /// `--url` given more than once: `fanout` spreads its subscribers over all of them.
    more_urls: Vec<String>,
    connections: usize,
    duration: Duration,
    warmup: Duration,
    concurrency: usize,
    outstanding: usize,
    payload_bytes: usize,
    server_pid: Option<u32>,
    threads: usize,
    json: bool,
    label: String,
    reconnect_window: Duration,
    timeout: Duration,
}

const USAGE: &str = "usage: street-bench <echo|fanout|idle|connect-storm|restart|sse-fanout> --url ws://HOST:PORT/ws
  [--connections N] [--duration SECS] [--warmup SECS] [--concurrency N] [--outstanding N]
  [--payload-bytes N] [--server-pid PID] [--threads N] [--label NAME] [--json]
  [--reconnect-window-ms MS] [--timeout SECS]";

fn parse_args() -> Result<Args, String> {
    let mut it = std::env::args().skip(1);
    let scenario = it.next().ok_or(USAGE)?;
    if scenario == "-h" || scenario == "--help" {
        return Err(USAGE.into());
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut a = Args {
        connections: match scenario.as_str() {
            "echo" => 64,
            "fanout" | "sse-fanout" => 1000,
            "idle" => 10_000,
            _ => 1000,
        },
        scenario,
        url: "ws://127.0.0.1:9001/ws".into(),
        more_urls: Vec::new(),
        duration: Duration::from_secs(5),
        warmup: Duration::from_secs(1),
        concurrency: 256,
        outstanding: 4,
        payload_bytes: 32,
        server_pid: None,
        threads: cores,
        json: false,
        label: String::new(),
        reconnect_window: Duration::from_secs(2),
        timeout: Duration::from_secs(60),
    };
    let mut url_given = false;
    while let Some(flag) = it.next() {
        let mut val = || it.next().ok_or(format!("{flag} needs a value"));
        let num = |v: String| v.parse::<f64>().map_err(|_| format!("not a number: {v}"));
        match flag.as_str() {
            "--url" if url_given => a.more_urls.push(val()?),
            "--url" => {
                a.url = val()?;
                url_given = true;
            }
            "--connections" | "-n" => a.connections = num(val()?)? as usize,
            "--duration" => a.duration = Duration::from_secs_f64(num(val()?)?),
            "--warmup" => a.warmup = Duration::from_secs_f64(num(val()?)?),
            "--concurrency" => a.concurrency = num(val()?)? as usize,
            "--outstanding" => a.outstanding = num(val()?)? as usize,
            "--payload-bytes" => a.payload_bytes = num(val()?)? as usize,
            "--server-pid" => a.server_pid = Some(num(val()?)? as u32),
            "--threads" => a.threads = (num(val()?)? as usize).clamp(1, cores),
            "--label" => a.label = val()?,
            "--json" => a.json = true,
            "--reconnect-window-ms" => {
                a.reconnect_window = Duration::from_millis(num(val()?)? as u64);
            }
            "--timeout" => a.timeout = Duration::from_secs_f64(num(val()?)?),
            other => return Err(format!("unknown flag {other}\n{USAGE}")),
        }
    }
    Ok(a)
}

// ---- /proc readings ----

/// CPU seconds (user + system) of a process, from /proc/PID/stat.
fn cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0) // USER_HZ is 100 on Linux
}

fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Raise the soft open-files limit to the hard limit (10k connections need it).
fn raise_nofile() {
    // Without libc: ask the shell's ulimit is not possible from here; use prlimit if present.
    let pid = std::process::id().to_string();
    let _ = std::process::Command::new("prlimit")
        .args(["--pid", &pid, "--nofile=unlimited:unlimited"])
        .stderr(std::process::Stdio::null())
        .status();
    if let Ok(limits) = std::fs::read_to_string("/proc/self/limits") {
        if let Some(line) = limits.lines().find(|l| l.starts_with("Max open files")) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if let (Some(soft), Some(hard)) = (f.get(3), f.get(4)) {
                if soft != hard {
                    let _ = std::process::Command::new("prlimit")
                        .args(["--pid", &pid, &format!("--nofile={hard}:{hard}")])
                        .status();
                }
            }
        }
    }
}

/// CPU samples over the measured window (after connecting and warming up), so setup work
/// is not charged to the operations counted.
#[derive(Default)]
struct Meter {
    pid: Option<u32>,
    window: std::sync::Mutex<Option<(f64, Option<f64>, f64, Option<f64>, f64)>>,
}

impl Meter {
    fn sample(&self) -> (f64, Option<f64>) {
        (
            cpu_seconds("self").unwrap_or(0.0),
            self.pid.and_then(|p| cpu_seconds(&p.to_string())),
        )
    }

    /// Sample at `start` and `end` in the background.
    fn window(self: &Arc<Self>, start: Instant, end: Instant) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(start.into()).await;
            let (s0, p0) = me.sample();
            tokio::time::sleep_until(end.into()).await;
            let (s1, p1) = me.sample();
            if let Ok(mut w) = me.window.lock() {
                *w = Some((s0, p0, s1, p1, (end - start).as_secs_f64()));
            }
        })
    }
}

// ---- connections ----

async fn connect(url: &str) -> Result<Ws, String> {
    let uri: http::Uri = url.parse().map_err(|e| format!("bad url: {e}"))?;
    // Resolve each address once per process, not per connection: the client's resolver
    // goes through the blocking pool for every connect, which made the load generator,
    // not the server, the limit in handshake runs.
    static ADDRS: std::sync::OnceLock<
        std::sync::Mutex<std::collections::HashMap<String, std::net::SocketAddr>>,
    > = std::sync::OnceLock::new();
    let cache = ADDRS.get_or_init(Default::default);
    let known = cache.lock().ok().and_then(|m| m.get(url).copied());
    let addr = match known {
        Some(a) => a,
        None => {
            let host = uri
                .host()
                .ok_or("url has no host")?
                .trim_matches(['[', ']'])
                .to_owned();
            let port = uri.port_u16().unwrap_or(80);
            let a = tokio::net::lookup_host((host.as_str(), port))
                .await
                .map_err(|e| e.to_string())?
                .next()
                .ok_or("no address")?;
            if let Ok(mut m) = cache.lock() {
                m.insert(url.to_owned(), a);
            }
            a
        }
    };
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let _ = tcp.set_nodelay(true);
    let (ws, _) = ClientBuilder::from_uri(uri)
        .connect_on(MaybeTlsStream::Plain(tcp))
        .await
        .map_err(|e| e.to_string())?;
    Ok(ws)
}

/// Open `n` connections with at most `concurrency` handshakes in flight.
async fn open_many(url: &str, n: usize, concurrency: usize) -> (Vec<Ws>, usize, Duration) {
    open_spread(&[url.to_owned()], n, concurrency).await
}

/// Open `n` connections spread round-robin over `urls` (connection `i` to `urls[i % k]`).
async fn open_spread(urls: &[String], n: usize, concurrency: usize) -> (Vec<Ws>, usize, Duration) {
    let sem = Arc::new(Semaphore::new(concurrency.max(1)));
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let permit = sem.clone().acquire_owned().await;
        let url = urls[i % urls.len().max(1)].clone();
        tasks.push(tokio::spawn(async move {
            let r = connect(&url).await;
            drop(permit);
            r
        }));
    }
    let mut ok = Vec::with_capacity(n);
    let mut failed = 0;
    for t in tasks {
        match t.await {
            Ok(Ok(ws)) => ok.push(ws),
            _ => failed += 1,
        }
    }
    (ok, failed, start.elapsed())
}

fn hist() -> Histogram<u64> {
    // 1 µs .. 60 s, 3 significant digits
    Histogram::new_with_bounds(1, 60_000_000, 3)
        .unwrap_or_else(|_| Histogram::new(3).unwrap_or_else(|_| unreachable!()))
}

/// The integer payload of `{"type":"broadcast","payload":N,"ts":…}` without a JSON parse.
fn payload_id(text: &[u8]) -> Option<u64> {
    const KEY: &[u8] = b"\"payload\":";
    let at = text.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
    let mut n: u64 = 0;
    let mut any = false;
    for &b in &text[at..] {
        if b.is_ascii_digit() {
            n = n * 10 + u64::from(b - b'0');
            any = true;
        } else {
            break;
        }
    }
    any.then_some(n)
}

// ---- reports ----

#[derive(Default)]
struct Report {
    fields: Vec<(String, serde_json::Value)>,
}

impl Report {
    fn put(&mut self, k: &str, v: impl Into<serde_json::Value>) {
        self.fields.push((k.to_owned(), v.into()));
    }
    fn print(&self, json: bool) {
        if json {
            let map: serde_json::Map<String, serde_json::Value> =
                self.fields.iter().cloned().collect();
            println!("{}", serde_json::Value::Object(map));
        } else {
            for (k, v) in &self.fields {
                println!("{k:<28} {v}");
            }
        }
    }
}

fn round(x: f64, digits: i32) -> f64 {
    let m = 10f64.powi(digits);
    (x * m).round() / m
}

// ---- scenarios ----

async fn echo(a: &Args, r: &mut Report, meter: &Arc<Meter>) -> Result<u64, String> {
    let (conns, failed, _) = open_many(&a.url, a.connections, a.concurrency).await;
    if failed > 0 {
        return Err(format!("{failed} connections failed"));
    }
    let payload = "x".repeat(a.payload_bytes);
    let msg = format!(r#"{{"type":"echo","payload":"{payload}"}}"#);
    let start = Instant::now() + a.warmup;
    let end = start + a.duration;
    let sampler = meter.window(start, end);
    let mut tasks = Vec::new();
    for mut ws in conns {
        let msg = msg.clone();
        tasks.push(tokio::spawn(async move {
            let mut h = hist();
            let mut n = 0u64;
            loop {
                let t0 = Instant::now();
                if t0 >= end {
                    break;
                }
                if ws.send(Message::text(msg.clone())).await.is_err() {
                    return Err("send failed".to_string());
                }
                loop {
                    match ws.next().await {
                        Some(Ok(m)) if m.is_text() => break,
                        Some(Ok(_)) => continue,
                        _ => return Err("connection ended".to_string()),
                    }
                }
                if t0 >= start {
                    let _ = h.record(t0.elapsed().as_micros() as u64);
                    n += 1;
                }
            }
            let _ = ws.close().await;
            Ok((h, n))
        }));
    }
    let mut h = hist();
    let mut total = 0;
    for t in tasks {
        let (hh, n) = t.await.map_err(|e| e.to_string())??;
        h.add(hh).map_err(|e| e.to_string())?;
        total += n;
    }
    let _ = sampler.await;
    let secs = a.duration.as_secs_f64();
    r.put("round_trips", total);
    r.put("round_trips_per_s", round(total as f64 / secs, 0));
    r.put("rtt_p50_us", h.value_at_quantile(0.5));
    r.put("rtt_p99_us", h.value_at_quantile(0.99));
    Ok(total)
}

/// Open an SSE stream at `GET /sse` on the host of the WebSocket `url`; after the
/// response head, the socket carries the (chunked) event stream.
async fn open_sse(url: &str) -> Result<TcpStream, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let uri: http::Uri = url.parse().map_err(|e| format!("bad url: {e}"))?;
    let host = uri
        .authority()
        .ok_or("url has no host")?
        .as_str()
        .to_owned();
    let mut tcp = TcpStream::connect(&host).await.map_err(|e| e.to_string())?;
    let _ = tcp.set_nodelay(true);
    tcp.write_all(
        format!("GET /sse HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n\r\n")
            .as_bytes(),
    )
    .await
    .map_err(|e| e.to_string())?;
    // read the head byte by byte: nothing of the body is consumed
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        if tcp.read(&mut b).await.map_err(|e| e.to_string())? == 0 {
            return Err("eof in response head".into());
        }
        head.push(b[0]);
        if head.len() > 8192 {
            return Err("response head too long".into());
        }
    }
    if !head.starts_with(b"HTTP/1.1 200") {
        return Err(String::from_utf8_lossy(&head[..head.len().min(40)]).into_owned());
    }
    Ok(tcp)
}

/// Read an SSE stream and call `on_id` with each `data: N` line's number.
async fn read_sse_ids(mut tcp: TcpStream, on_id: impl Fn(u64)) {
    use tokio::io::AsyncReadExt;
    let mut buf = vec![0u8; 64 * 1024];
    let mut carry: Vec<u8> = Vec::new();
    loop {
        let n = match tcp.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        carry.extend_from_slice(&buf[..n]);
        let Some(end) = carry.iter().rposition(|&b| b == b'\n') else {
            continue;
        };
        for line in carry[..end].split(|&b| b == b'\n') {
            if let Some(rest) = line.strip_prefix(b"data: ") {
                let digits = rest.iter().take_while(|b| b.is_ascii_digit());
                let mut id = 0u64;
                let mut any = false;
                for &d in digits {
                    id = id * 10 + u64::from(d - b'0');
                    any = true;
                }
                if any {
                    on_id(id);
                }
            }
        }
        carry.drain(..=end);
    }
}

/// Open `n` SSE readers with at most `concurrency` in flight.
async fn open_many_sse(url: &str, n: usize, concurrency: usize) -> Result<Vec<TcpStream>, String> {
    let sem = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut tasks = Vec::with_capacity(n);
    for _ in 0..n {
        let permit = sem.clone().acquire_owned().await;
        let url = url.to_owned();
        tasks.push(tokio::spawn(async move {
            let r = open_sse(&url).await;
            drop(permit);
            r
        }));
    }
    let mut ok = Vec::with_capacity(n);
    for t in tasks {
        ok.push(t.await.map_err(|e| e.to_string())??);
    }
    Ok(ok)
}

async fn fanout(a: &Args, r: &mut Report, meter: &Arc<Meter>) -> Result<u64, String> {
    const WINDOW: usize = 1024;
    let sse = a.scenario == "sse-fanout";
    let n = a.connections;
    // subscribers spread over every --url; the publisher is the first connection (on the
    // first url), popped from the front below
    let mut urls = vec![a.url.clone()];
    urls.extend(a.more_urls.iter().cloned());
    // with SSE the publisher is a client of bench_server's /sse/publish endpoint
    let pub_urls = if sse {
        let uri: http::Uri = a.url.parse().map_err(|e| format!("bad url: {e}"))?;
        let auth = uri.authority().ok_or("url has no host")?;
        vec![format!("ws://{auth}/sse/publish")]
    } else {
        urls.clone()
    };
    let (mut conns, failed, _) =
        open_spread(&pub_urls, if sse { 1 } else { n }, a.concurrency).await;
    if failed > 0 {
        return Err(format!("{failed} connections failed"));
    }
    let sse_readers = if sse {
        open_many_sse(&a.url, n, a.concurrency).await?
    } else {
        Vec::new()
    };
    if conns.is_empty() {
        return Err("no connections".into());
    }
    let publisher = conns.swap_remove(0);
    let t_base = Instant::now();
    let sent_at: Arc<Vec<AtomicU64>> = Arc::new((0..WINDOW).map(|_| AtomicU64::new(0)).collect());
    let counts: Arc<Vec<AtomicUsize>> =
        Arc::new((0..WINDOW).map(|_| AtomicUsize::new(0)).collect());
    let window = Arc::new(Semaphore::new(a.outstanding.max(1)));
    let hist_all = Arc::new(std::sync::Mutex::new(hist()));
    let delivered = Arc::new(AtomicU64::new(0));
    let completed = Arc::new(AtomicU64::new(0));
    let measure_from = Arc::new(AtomicU64::new(u64::MAX)); // first id counted
    let start = Instant::now() + a.warmup;
    let end = start + a.duration;
    let sampler = meter.window(start, end);

    let (mut pub_sink, pub_stream) = publisher.split();
    let mut readers = Vec::new();
    let on_id = {
        let (sent_at, counts, window, hist_all, delivered, completed, measure_from) = (
            sent_at.clone(),
            counts.clone(),
            window.clone(),
            hist_all.clone(),
            delivered.clone(),
            completed.clone(),
            measure_from.clone(),
        );
        Arc::new(move |id: u64| {
            let slot = (id as usize) % WINDOW;
            let from = measure_from.load(Ordering::Relaxed);
            if id >= from {
                delivered.fetch_add(1, Ordering::Relaxed);
            }
            if counts[slot].fetch_add(1, Ordering::AcqRel) + 1 == n {
                let lat = (t_base.elapsed().as_nanos() as u64)
                    .saturating_sub(sent_at[slot].load(Ordering::Acquire));
                if id >= from {
                    completed.fetch_add(1, Ordering::Relaxed);
                    if let Ok(mut h) = hist_all.lock() {
                        let _ = h.record((lat / 1000).max(1));
                    }
                }
                window.add_permits(1);
            }
        })
    };
    let spawn_reader = |mut stream: futures_util::stream::SplitStream<Ws>| {
        let on_id = on_id.clone();
        tokio::spawn(async move {
            while let Some(Ok(m)) = stream.next().await {
                if let Some(id) = payload_id(m.as_payload()) {
                    on_id(id);
                }
            }
        })
    };
    for ws in conns {
        let (_sink, stream) = ws.split();
        // keep the sink alive with the stream: dropping it does not close the socket
        std::mem::forget(_sink);
        readers.push(spawn_reader(stream));
    }
    for tcp in sse_readers {
        let on_id = on_id.clone();
        readers.push(tokio::spawn(read_sse_ids(tcp, move |id| on_id(id))));
    }
    // (with SSE the publisher receives nothing: it is not a subscriber)
    readers.push(spawn_reader(pub_stream));
    let kind = if sse { "sse" } else { "broadcast" };

    let mut id: u64 = 0;
    let mut sent = 0u64;
    loop {
        let now = Instant::now();
        if now >= end {
            break;
        }
        let permit = tokio::time::timeout(end - now, window.acquire()).await;
        let Ok(Ok(permit)) = permit else { break };
        permit.forget();
        id += 1;
        if Instant::now() >= start && measure_from.load(Ordering::Relaxed) == u64::MAX {
            measure_from.store(id, Ordering::Relaxed);
        }
        let slot = (id as usize) % WINDOW;
        counts[slot].store(0, Ordering::Release);
        sent_at[slot].store(t_base.elapsed().as_nanos() as u64, Ordering::Release);
        pub_sink
            .send(Message::text(format!(
                r#"{{"type":"{kind}","payload":{id}}}"#
            )))
            .await
            .map_err(|e| e.to_string())?;
        sent += 1;
    }
    let _ = sampler.await;
    let elapsed = a.duration.as_secs_f64();
    let d = delivered.load(Ordering::Relaxed);
    let c = completed.load(Ordering::Relaxed);
    let h = hist_all.lock().map_err(|_| "poisoned")?.clone();
    for t in &readers {
        t.abort();
    }
    r.put("subscribers", n);
    r.put("nodes", urls.len());
    r.put("broadcasts_sent", sent);
    r.put("broadcasts_per_s", round(c as f64 / elapsed, 1));
    r.put("deliveries_per_s", round(d as f64 / elapsed, 0));
    r.put("completion_p50_us", h.value_at_quantile(0.5));
    r.put("completion_p99_us", h.value_at_quantile(0.99));
    Ok(d)
}

/// The kernel's count of connections dropped because a listen queue was full.
fn listen_overflows() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/net/netstat").ok()?;
    let mut lines = s.lines().filter(|l| l.starts_with("TcpExt:"));
    let names = lines.next()?;
    let values = lines.next()?;
    let i = names
        .split_whitespace()
        .position(|n| n == "ListenOverflows")?;
    values.split_whitespace().nth(i)?.parse().ok()
}

async fn idle(a: &Args, r: &mut Report, meter: &Arc<Meter>) -> Result<u64, String> {
    let overflows0 = listen_overflows();
    let base = a.server_pid.and_then(rss_kib);
    // CPU is charged over the connect phase only (not the settle time or the teardown)
    let (s0, p0) = meter.sample();
    let (conns, failed, took) = open_many(&a.url, a.connections, a.concurrency).await;
    let (s1, p1) = meter.sample();
    if let Ok(mut w) = meter.window.lock() {
        *w = Some((s0, p0, s1, p1, took.as_secs_f64()));
    }
    let ok = conns.len();
    r.put("connections", ok);
    r.put("failed", failed);
    r.put("handshakes_per_s", round(ok as f64 / took.as_secs_f64(), 0));
    if let (Some(o0), Some(o1)) = (overflows0, listen_overflows()) {
        r.put("listen_overflows", o1.saturating_sub(o0));
    }
    // let the server settle, then read its RSS with every connection open
    tokio::time::sleep(Duration::from_secs(1)).await;
    if let (Some(pid), Some(base)) = (a.server_pid, base) {
        if let Some(now) = rss_kib(pid) {
            r.put("server_rss_base_kib", base);
            r.put("server_rss_kib", now);
            r.put(
                "server_rss_per_conn_bytes",
                round(
                    (now.saturating_sub(base) as f64 * 1024.0) / ok.max(1) as f64,
                    0,
                ),
            );
        }
    }
    drop(conns);
    Ok(ok as u64)
}

async fn connect_storm(a: &Args, r: &mut Report) -> Result<u64, String> {
    let n = a.connections;
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(n);
    for _ in 0..n {
        let url = a.url.clone();
        tasks.push(tokio::spawn(async move {
            match connect(&url).await {
                Err(e) if e.contains("503") => (0, 1, 0, None),
                Err(_) => (0, 0, 1, None),
                Ok(mut ws) => {
                    // admitted unless the first frame is a 1013 close
                    match tokio::time::timeout(Duration::from_millis(500), ws.next()).await {
                        Ok(Some(Ok(m)))
                            if m.as_close().is_some_and(|(c, _)| u16::from(c) == 1013) =>
                        {
                            (0, 1, 0, None)
                        }
                        Ok(None | Some(Err(_))) => (0, 0, 1, None),
                        _ => (1, 0, 0, Some(ws)),
                    }
                }
            }
        }));
    }
    let (mut admitted, mut refused, mut errors) = (0u64, 0u64, 0u64);
    let mut keep = Vec::new();
    for t in tasks {
        let (a1, r1, e1, ws) = t.await.map_err(|e| e.to_string())?;
        admitted += a1;
        refused += r1;
        errors += e1;
        keep.extend(ws);
    }
    let took = start.elapsed();
    r.put("attempted", n);
    r.put("admitted", admitted);
    r.put("refused_1013_or_503", refused);
    r.put("errors", errors);
    r.put("seconds", round(took.as_secs_f64(), 3));
    drop(keep);
    Ok(admitted + refused)
}

/// Full-jitter exponential backoff (AWS's "full jitter"): attempt `k` waits a uniformly
/// random time in `[0, min(cap, window * 2^k))`. Spreads a crowd that lost its server at
/// the same instant over the window instead of returning as one burst.
fn backoff(window: Duration, attempt: u32) -> Duration {
    let cap = Duration::from_secs(30);
    let range = window.saturating_mul(1u32 << attempt.min(10)).min(cap);
    range.mul_f64(fastrand::f64())
}

/// What one client saw: its close code, when the close arrived, when it was back.
struct Reconnect {
    code: Option<u16>,
    closed_at: Duration,
    back_at: Option<Duration>,
    attempts: u32,
}

async fn restart(a: &Args, r: &mut Report) -> Result<u64, String> {
    let n = a.connections;
    let (conns, failed, _) = open_many(&a.url, n, a.concurrency).await;
    if failed > 0 {
        return Err(format!("{failed} connections failed"));
    }
    // the driver (a test, a person) restarts the server after this line
    println!("READY {n}");
    let t0 = Instant::now();
    let deadline = t0 + a.timeout;
    let mut tasks = Vec::with_capacity(n);
    for mut ws in conns {
        let (url, window) = (a.url.clone(), a.reconnect_window);
        tasks.push(tokio::spawn(async move {
            let mut code = None;
            while let Some(m) = ws.next().await {
                match m {
                    Ok(m) => {
                        if let Some((c, _)) = m.as_close() {
                            code = Some(u16::from(c));
                        }
                    }
                    Err(_) => break,
                }
            }
            let closed_at = t0.elapsed();
            let mut attempts = 0;
            let back_at = loop {
                tokio::time::sleep(backoff(window, attempts)).await;
                attempts += 1;
                if Instant::now() >= deadline {
                    break None;
                }
                if let Ok(ws) = connect(&url).await {
                    let at = t0.elapsed();
                    // stay connected until the report is made
                    std::mem::forget(ws);
                    break Some(at);
                }
            };
            Reconnect {
                code,
                closed_at,
                back_at,
                attempts,
            }
        }));
    }
    let mut seen = Vec::with_capacity(n);
    for t in tasks {
        seen.push(t.await.map_err(|e| e.to_string())?);
    }
    let got_1001 = seen.iter().filter(|s| s.code == Some(1001)).count();
    let first_close = seen.iter().map(|s| s.closed_at).min().unwrap_or_default();
    let last_close = seen.iter().map(|s| s.closed_at).max().unwrap_or_default();
    let mut back: Vec<f64> = seen
        .iter()
        .filter_map(|s| s.back_at)
        .map(|b| (b - first_close).as_secs_f64() * 1000.0)
        .collect();
    back.sort_by(f64::total_cmp);
    let pct = |q: f64| -> f64 {
        if back.is_empty() {
            return 0.0;
        }
        back[((back.len() - 1) as f64 * q).round() as usize]
    };
    // the busiest 100 ms of reconnects
    let mut buckets = std::collections::HashMap::<u64, usize>::new();
    for b in &back {
        *buckets.entry((*b / 100.0) as u64).or_default() += 1;
    }
    let peak = buckets.values().copied().max().unwrap_or(0);
    let attempts: u32 = seen.iter().map(|s| s.attempts).sum();
    r.put("connections", n);
    r.put("closed_1001", got_1001);
    r.put(
        "close_spread_ms",
        round((last_close - first_close).as_secs_f64() * 1000.0, 1),
    );
    r.put("reconnected", back.len());
    r.put("reconnect_attempts", attempts);
    r.put("reconnect_window_ms", a.reconnect_window.as_millis() as u64);
    r.put("back_min_ms", round(pct(0.0), 1));
    r.put("back_p10_ms", round(pct(0.1), 1));
    r.put("back_p50_ms", round(pct(0.5), 1));
    r.put("back_p90_ms", round(pct(0.9), 1));
    r.put("back_max_ms", round(pct(1.0), 1));
    r.put("peak_reconnects_per_100ms", peak);
    Ok(back.len() as u64)
}

fn main() -> std::process::ExitCode {
    let a = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return std::process::ExitCode::from(2);
        }
    };
    raise_nofile();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(a.threads)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("runtime: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    let mut r = Report::default();
    r.put("scenario", a.scenario.clone());
    if !a.label.is_empty() {
        r.put("label", a.label.clone());
    }
    r.put("url", a.url.clone());
    let meter = Arc::new(Meter {
        pid: a.server_pid,
        ..Default::default()
    });
    let self_cpu0 = cpu_seconds("self");
    let srv_cpu0 = a.server_pid.and_then(|p| cpu_seconds(&p.to_string()));
    let wall0 = Instant::now();
    let result = rt.block_on(async {
        match a.scenario.as_str() {
            "echo" => echo(&a, &mut r, &meter).await,
            "fanout" | "sse-fanout" => fanout(&a, &mut r, &meter).await,
            "idle" => idle(&a, &mut r, &meter).await,
            "connect-storm" => connect_storm(&a, &mut r).await,
            "restart" => restart(&a, &mut r).await,
            other => Err(format!("unknown scenario {other}\n{USAGE}")),
        }
    });
    let ops = match result {
        Ok(ops) => ops,
        Err(e) => {
            eprintln!("street-bench: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    let wall = wall0.elapsed().as_secs_f64();
    // CPU over the measured window when the scenario has one, else over the whole run.
    let window = meter.window.lock().ok().and_then(|w| *w);
    let (self_cpu, srv_cpu, secs) = match window {
        Some((s0, p0, s1, p1, secs)) => (Some(s1 - s0), p0.zip(p1).map(|(a0, a1)| a1 - a0), secs),
        None => (
            self_cpu0.zip(cpu_seconds("self")).map(|(c0, c1)| c1 - c0),
            a.server_pid
                .and_then(|p| srv_cpu0.zip(cpu_seconds(&p.to_string())))
                .map(|(c0, c1)| c1 - c0),
            wall,
        ),
    };
    if let Some(c) = self_cpu {
        r.put("loadgen_cpu_s", round(c, 2));
        r.put("loadgen_cpu_pct_of_one_core", round(100.0 * c / secs, 0));
    }
    if let Some(pid) = a.server_pid {
        if let Some(c) = srv_cpu {
            r.put("server_cpu_s", round(c, 2));
            r.put("server_cpu_pct_of_one_core", round(100.0 * c / secs, 0));
            if ops > 0 {
                r.put("server_cpu_us_per_op", round(c * 1e6 / ops as f64, 2));
            }
        }
        if let Some(rss) = rss_kib(pid) {
            r.put("server_rss_end_kib", rss);
        }
    }
    r.put("wall_s", round(wall, 2));
    r.print(a.json);
    drop(rt);
    std::process::ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_id_parses_the_integer() {
        assert_eq!(
            payload_id(br#"{"type":"broadcast","payload":1234,"ts":5}"#),
            Some(1234)
        );
        assert_eq!(payload_id(br#"{"type":"broadcast","payload":"x"}"#), None);
        assert_eq!(payload_id(b"nothing"), None);
    }

    #[test]
    fn proc_readings_work_for_self() {
        assert!(cpu_seconds("self").is_some());
        assert!(rss_kib(std::process::id()).is_some_and(|k| k > 0));
    }
}
