//! Shared helpers: start a server on 127.0.0.1:0, clients (tokio-tungstenite and raw
//! TCP), bounded waits.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use street::app::ServerHandle;
use street::ws::{WebSocketServer, WsOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as TCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub type Client = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Every wait in the tests is bounded by this.
pub const T: Duration = Duration::from_secs(10);

/// tests/js, where scripts/test installs Node's `ws`.
pub fn js_dir() -> std::path::PathBuf {
    let js = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/js");
    assert!(
        js.join("node_modules/ws").exists(),
        "Node's ws is not installed in tests/js; run scripts/test (it installs it)"
    );
    js
}

pub async fn within<F: std::future::Future>(what: &str, f: F) -> F::Output {
    match tokio::time::timeout(T, f).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {T:?} waiting for {what}"),
    }
}

pub fn opts() -> WsOptions {
    WsOptions::default()
        .with_heartbeat_interval(Duration::from_secs(30))
        .with_close_timeout(Duration::from_secs(2))
        .with_shutdown_timeout(Duration::from_secs(3))
        // the suite connects hundreds of times from 127.0.0.1; tests/it/limits.rs covers these
        .with_max_connections_per_ip(0)
        .with_max_handshakes_per_ip_per_sec(0)
}

pub fn app_opts() -> street::AppOptions {
    street::AppOptions::default()
        .with_port(0)
        .with_host("127.0.0.1")
        // as for WebSockets: the suite connects from one address; http_limits.rs covers these
        .with_max_connections_per_ip(0)
        .with_max_sse_streams_per_ip(0)
}

/// A TCP connection to `addr` from the loopback address `from` (127.0.0.2 is a second
/// party on this machine).
pub async fn connect_from(from: &str, addr: SocketAddr) -> std::io::Result<TcpStream> {
    let sock = tokio::net::TcpSocket::new_v4()?;
    sock.bind(SocketAddr::new(from.parse().expect("an IPv4 address"), 0))?;
    sock.connect(addr).await
}

/// A WebSocket client connected from the loopback address `from` (a second party).
pub async fn connect_ws_from(from: &str, addr: SocketAddr, path: &str) -> Client {
    let tcp = connect_from(from, addr).await.expect("tcp");
    let (c, _) = within(
        "ws handshake",
        tokio_tungstenite::client_async(url(addr, path), MaybeTlsStream::Plain(tcp)),
    )
    .await
    .expect("handshake");
    c
}

/// Send `request` on `s` and read the response head; returns the status and the head.
pub async fn http_on(s: &mut TcpStream, request: &[u8]) -> Option<(u16, String)> {
    s.write_all(request).await.ok()?;
    let mut buf = Vec::new();
    within("http response", async {
        let mut chunk = [0u8; 1024];
        loop {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    if buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
            }
        }
    })
    .await;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, text))
}

pub async fn serve(wss: &WebSocketServer) -> ServerHandle {
    serve_app(street::app(app_opts()).websocket(wss)).await
}

pub async fn serve_app(app: street::App) -> ServerHandle {
    app.bind().await.expect("bind").spawn()
}

pub fn url(addr: SocketAddr, path: &str) -> String {
    format!("ws://{addr}{path}")
}

pub async fn connect(addr: SocketAddr) -> Client {
    connect_path(addr, "/ws").await
}

pub async fn connect_path(addr: SocketAddr, path: &str) -> Client {
    let (c, _) = within("connect", tokio_tungstenite::connect_async(url(addr, path)))
        .await
        .expect("connect");
    c
}

/// Connect with extra request headers; returns the HTTP status on refusal.
pub async fn try_connect_with(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Client, u16> {
    let mut req = url(addr, path).into_client_request().expect("request");
    for (k, v) in headers {
        req.headers_mut().insert(
            http::HeaderName::from_bytes(k.as_bytes()).expect("name"),
            v.parse().expect("value"),
        );
    }
    match within("connect", tokio_tungstenite::connect_async(req)).await {
        Ok((c, _)) => Ok(c),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Err(resp.status().as_u16()),
        Err(e) => panic!("unexpected connect error: {e}"),
    }
}

pub async fn send_env(c: &mut Client, event: &str, payload: Value) {
    let text = serde_json::json!({"type": event, "payload": payload, "ts": 1}).to_string();
    c.send(Message::text(text)).await.expect("send");
}

pub async fn send_text(c: &mut Client, text: &str) {
    c.send(Message::text(text.to_owned())).await.expect("send");
}

/// Next text frame as JSON (skipping pings/pongs); panics on close or timeout.
pub async fn recv_json(c: &mut Client) -> Value {
    loop {
        let m = within("a message", c.next()).await;
        match m {
            Some(Ok(Message::Text(t))) => return serde_json::from_str(&t).expect("json"),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            other => panic!("expected a text frame, got {other:?}"),
        }
    }
}

/// Wait for the close frame; returns (code, reason). Keeps driving the client until the
/// stream ends, so it answers the close as a real client does.
pub async fn recv_close(c: &mut Client) -> (u16, String) {
    let got = recv_close_frame(c).await;
    let _ = tokio::time::timeout(T, async { while let Some(Ok(_)) = c.next().await {} }).await;
    got
}

async fn recv_close_frame(c: &mut Client) -> (u16, String) {
    loop {
        match within("a close frame", c.next()).await {
            Some(Ok(Message::Close(Some(f)))) => return (u16::from(f.code), f.reason.to_string()),
            Some(Ok(Message::Close(None))) => return (1005, String::new()),
            Some(Ok(_)) => continue,
            Some(Err(e)) => panic!("error before close: {e}"),
            None => panic!("stream ended without a close frame"),
        }
    }
}

pub async fn close(c: &mut Client) {
    let _ = c
        .close(Some(tokio_tungstenite::tungstenite::protocol::CloseFrame {
            code: TCode::Normal,
            reason: "".into(),
        }))
        .await;
    // drain until the server's close arrives
    let _ = tokio::time::timeout(T, async { while let Some(Ok(_)) = c.next().await {} }).await;
}

/// Wait until `cond` holds, re-checking when `notify` fires or every 10 ms (for state that
/// has no event of its own, like a counter). Bounded by `T`.
pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    within(what, async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

// ---- raw TCP client for hand-made frames ----

pub struct Raw {
    pub s: TcpStream,
    pub buf: Vec<u8>,
}

/// Open a TCP connection and complete the WebSocket handshake by hand.
pub async fn raw_connect(addr: SocketAddr, path: &str, extra: &str) -> (Raw, String) {
    let mut s = within("tcp connect", TcpStream::connect(addr))
        .await
        .expect("tcp");
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    );
    s.write_all(req.as_bytes()).await.expect("write");
    let mut buf = Vec::new();
    let head = within("response head", async {
        loop {
            let mut chunk = [0u8; 1024];
            let n = s.read(&mut chunk).await.expect("read");
            assert!(n > 0, "eof before response head");
            buf.extend_from_slice(&chunk[..n]);
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..i + 4]).to_string();
                buf.drain(..i + 4);
                return head;
            }
        }
    })
    .await;
    (Raw { s, buf }, head)
}

/// Build a client frame (masked unless `mask` is false).
pub fn frame(fin: bool, opcode: u8, payload: &[u8], mask: bool) -> Vec<u8> {
    let mut out = vec![(u8::from(fin) << 7) | opcode];
    let m = if mask { 0x80 } else { 0 };
    let len = payload.len();
    if len < 126 {
        out.push(m | len as u8);
    } else if len < 65536 {
        out.push(m | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(m | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    if mask {
        let key = [0x12, 0x34, 0x56, 0x78];
        out.extend_from_slice(&key);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    } else {
        out.extend_from_slice(payload);
    }
    out
}

pub enum ServerFrame {
    Text(String),
    Binary(Vec<u8>),
    Ping,
    Pong,
    Close(u16, String),
}

impl Raw {
    pub async fn send(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).await.expect("write");
    }

    async fn fill(&mut self, n: usize) -> bool {
        while self.buf.len() < n {
            let mut chunk = [0u8; 4096];
            match self.s.read(&mut chunk).await {
                Ok(0) | Err(_) => return false,
                Ok(k) => self.buf.extend_from_slice(&chunk[..k]),
            }
        }
        true
    }

    /// Next server frame, or None at EOF. Bounded by `T`.
    pub async fn next(&mut self) -> Option<ServerFrame> {
        within("a server frame", async {
            if !self.fill(2).await {
                return None;
            }
            let op = self.buf[0] & 0x0f;
            let mut len = (self.buf[1] & 0x7f) as usize;
            let mut hdr = 2;
            if len == 126 {
                if !self.fill(4).await {
                    return None;
                }
                len = u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize;
                hdr = 4;
            } else if len == 127 {
                if !self.fill(10).await {
                    return None;
                }
                let mut b = [0u8; 8];
                b.copy_from_slice(&self.buf[2..10]);
                len = u64::from_be_bytes(b) as usize;
                hdr = 10;
            }
            if !self.fill(hdr + len).await {
                return None;
            }
            let payload: Vec<u8> = self.buf[hdr..hdr + len].to_vec();
            self.buf.drain(..hdr + len);
            Some(match op {
                1 => ServerFrame::Text(String::from_utf8(payload).expect("utf8")),
                2 => ServerFrame::Binary(payload),
                8 => {
                    let code = if payload.len() >= 2 {
                        u16::from_be_bytes([payload[0], payload[1]])
                    } else {
                        1005
                    };
                    ServerFrame::Close(
                        code,
                        String::from_utf8_lossy(payload.get(2..).unwrap_or(&[])).to_string(),
                    )
                }
                9 => ServerFrame::Ping,
                10 => ServerFrame::Pong,
                other => panic!("unexpected opcode {other}"),
            })
        })
        .await
    }

    /// Skip frames until a close frame; returns its code (None if the stream ended first).
    pub async fn close_code(&mut self) -> Option<u16> {
        loop {
            match self.next().await? {
                ServerFrame::Close(c, _) => return Some(c),
                _ => continue,
            }
        }
    }

    /// Wait for EOF (the server dropped the TCP connection). Bounded by `T`.
    pub async fn eof(&mut self) {
        within("eof", async {
            let mut chunk = [0u8; 4096];
            loop {
                match self.s.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => continue,
                }
            }
        })
        .await;
    }
}

/// A raw HTTP request; returns the status code (or None if the connection was dropped).
pub async fn http_status(addr: SocketAddr, request: &str) -> Option<u16> {
    let mut s = TcpStream::connect(addr).await.ok()?;
    http_on(&mut s, request.as_bytes()).await.map(|r| r.0)
}

/// Spawn a child with piped stdout (and stdin, for protocols that answer it) and forward
/// its stdout lines to a channel, read on a thread so no test blocks on a pipe.
pub fn spawn_lines(
    cmd: &mut std::process::Command,
) -> (
    std::process::Child,
    tokio::sync::mpsc::UnboundedReceiver<String>,
) {
    use std::io::BufRead;
    let mut child = cmd
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn a child process");
    let out = child.stdout.take().expect("stdout");
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (child, rx)
}

/// A server whose clients' `echo` comes back to the sender and `broadcast` goes to every
/// client.
pub fn echo_server(opts: WsOptions) -> WebSocketServer {
    let wss = WebSocketServer::new(opts);
    let hub = wss.clone();
    wss.on_connection(
        move |socket: street::ws::Socket, _: street::ws::ConnectRequest| {
            let s = socket.clone();
            socket.on("echo", move |p: serde_json::Value| s.emit("echo", &p))?;
            let h = hub.clone();
            socket.on("broadcast", move |p: serde_json::Value| {
                h.broadcast("broadcast", &p)
            })?;
            Ok::<_, street::ws::SocketError>(())
        },
    );
    wss
}
