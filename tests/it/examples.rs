//! Each example in `examples/` run as its own process and driven by a real client.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use crate::common::*;
use serde_json::json;
use tokio::io::AsyncWriteExt;

/// A running example process, killed on drop.
pub struct Example {
    pub child: Child,
    pub addr: SocketAddr,
}

impl Example {
    /// Send a signal (`"-TERM"`, `"-INT"`, …) to the process.
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill {sig}");
    }

    /// Wait (bounded) for the process to exit.
    pub async fn exited(&mut self) -> std::process::ExitStatus {
        within("exit", async {
            loop {
                if let Some(s) = self.child.try_wait().expect("wait") {
                    return s;
                }
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        })
        .await
    }
}

/// Wait (bounded) until something accepts connections on `addr`.
pub async fn wait_listening(addr: SocketAddr) {
    within("listen", async {
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
}

impl Drop for Example {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn example_path(name: &str) -> PathBuf {
    // target/<profile>/deps/it-HASH -> target/<profile>/examples/<name>
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let p = dir.join("examples").join(name);
    assert!(
        p.exists(),
        "{} is not built; `cargo test` builds examples (run scripts/test)",
        p.display()
    );
    p
}

/// `target/release/examples/<name>` (what a test under load runs: a debug build on two
/// cores measures the debug build); scripts/test builds it.
pub fn release_example_path(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let target = exe
        .parent()
        .and_then(|d| d.parent())
        .and_then(|d| d.parent())
        .expect("target dir");
    let p = target.join("release").join("examples").join(name);
    assert!(
        p.exists(),
        "{} is not built; run scripts/test (or `cargo build --release --example {name}`)",
        p.display()
    );
    p
}

/// [`start_with`] running the release build of the example.
pub async fn start_release(name: &str, port: u16, args: &[&str], env: &[(&str, &str)]) -> Example {
    spawn_at(release_example_path(name), port, args, env).await
}

pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

pub async fn start(name: &str, env: &[(&str, &str)]) -> Example {
    start_on(name, free_port(), env).await
}

/// Start an example on a given port (e.g. to restart it where its clients reconnect).
pub async fn start_on(name: &str, port: u16, env: &[(&str, &str)]) -> Example {
    start_with(name, port, &[], env).await
}

/// Start an example with command-line arguments.
pub async fn start_with(name: &str, port: u16, args: &[&str], env: &[(&str, &str)]) -> Example {
    spawn_at(example_path(name), port, args, env).await
}

async fn spawn_at(path: PathBuf, port: u16, args: &[&str], env: &[(&str, &str)]) -> Example {
    let mut cmd = Command::new(path);
    cmd.args(args);
    cmd.env("PORT", port.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd.spawn().expect("spawn example");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    // ready when it accepts a connection
    wait_listening(addr).await;
    Example { child, addr }
}

async fn http_get(addr: SocketAddr, path: &str) -> String {
    reqwest::get(format!("http://{addr}{path}"))
        .await
        .expect("get")
        .text()
        .await
        .expect("body")
}

#[tokio::test]
async fn setup_example_echoes_messages() {
    let ex = start("setup", &[]).await;
    let mut c = connect(ex.addr).await;
    send_env(&mut c, "message", json!({"hello": "world"})).await;
    let r = recv_json(&mut c).await;
    assert_eq!(r["type"], "echo");
    assert_eq!(r["payload"], json!({"hello": "world"}));
}

#[tokio::test]
async fn listen_shuts_down_on_sigterm_and_sigint() {
    for sig in ["-TERM", "-INT"] {
        let mut ex = start("setup", &[]).await;
        let mut c = connect(ex.addr).await;
        send_env(&mut c, "message", json!(1)).await;
        assert_eq!(recv_json(&mut c).await["type"], "echo");
        let pid = ex.child.id().to_string();
        assert!(Command::new("kill")
            .args([sig, &pid])
            .status()
            .expect("kill")
            .success());
        assert_eq!(
            recv_close(&mut c).await,
            (1001, "Going Away".into()),
            "{sig}"
        );
        let status = ex.exited().await;
        assert!(status.success(), "{sig}: {status:?}");
    }
}

#[tokio::test]
async fn chat_example_broadcasts_join_message_leave() {
    let ex = start("chat", &[]).await;
    let mut a = connect(ex.addr).await;
    let mut b = connect(ex.addr).await;
    send_env(&mut a, "message", json!({"type": "join", "user": "alice"})).await;
    assert_eq!(recv_json(&mut a).await["payload"]["text"], "alice joined");
    send_env(&mut b, "message", json!({"type": "join", "user": "bob"})).await;
    assert_eq!(recv_json(&mut a).await["payload"]["text"], "bob joined");
    assert_eq!(recv_json(&mut b).await["payload"]["text"], "bob joined");
    send_env(
        &mut a,
        "message",
        json!({"type": "message", "text": "hi bob"}),
    )
    .await;
    for c in [&mut a, &mut b] {
        let m = recv_json(c).await;
        assert_eq!(m["type"], "chat");
        assert_eq!(m["payload"]["user"], "alice");
        assert_eq!(m["payload"]["text"], "hi bob");
    }
    close(&mut a).await;
    let m = recv_json(&mut b).await;
    assert_eq!(
        (m["payload"]["type"].as_str(), m["payload"]["text"].as_str()),
        (Some("leave"), Some("alice left"))
    );
}

#[tokio::test]
async fn auth_example_closes_4001_without_or_with_a_bad_token() {
    let ex = start("auth", &[("STREET_JWT_SECRET", "test-secret-0123456789")]).await;
    let mut none = connect(ex.addr).await;
    assert_eq!(recv_close(&mut none).await, (4001, "Unauthorized".into()));
    let mut bad = connect_path(ex.addr, "/ws?token=not.a.jwt").await;
    assert_eq!(recv_close(&mut bad).await, (4001, "Invalid token".into()));
    let token = http_get(ex.addr, "/token?user=u42").await;
    let mut good = connect_path(ex.addr, &format!("/ws?token={token}")).await;
    let m = recv_json(&mut good).await;
    assert_eq!(m["type"], "connected");
    assert_eq!(m["payload"], json!({"userId": "u42"}));
}

#[tokio::test]
async fn stats_example_reports_connections() {
    let ex = start("stats", &[]).await;
    let _a = connect(ex.addr).await;
    let _b = connect(ex.addr).await;
    let mut body = serde_json::Value::Null;
    within("two connections counted", async {
        loop {
            body = serde_json::from_str(&http_get(ex.addr, "/stats").await).expect("json");
            if body["connectionCount"] == 2 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    let clients = body["clients"].as_array().expect("clients");
    assert_eq!(clients.len(), 2);
    assert!(clients.iter().all(|c| c["state"] == "alive"));
}

#[tokio::test]
async fn shutdown_example_sends_1001_on_sigterm_and_exits_0() {
    let mut ex = start("shutdown", &[]).await;
    let mut c = connect(ex.addr).await;
    assert_eq!(recv_json(&mut c).await["type"], "tick");
    let pid = ex.child.id().to_string();
    let st = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(st.success());
    assert_eq!(recv_close(&mut c).await, (1001, "Going Away".into()));
    let status = ex.exited().await;
    assert!(status.success(), "exit status {status:?}");
}

#[tokio::test]
async fn bench_server_implements_the_contract() {
    contract_holds("bench_server").await;
}

/// The same contract, served by street mounted in a plain axum app on `axum::serve`.
#[tokio::test]
async fn embed_implements_the_contract() {
    contract_holds("embed").await;
}

async fn contract_holds(example: &str) {
    let mut ex = start(example, &[]).await;
    let mut a = connect(ex.addr).await;
    let mut b = connect(ex.addr).await;
    send_env(&mut a, "echo", json!({"n": [1, 2, 3]})).await;
    let m = recv_json(&mut a).await;
    assert_eq!(
        (m["type"].as_str(), &m["payload"]),
        (Some("echo"), &json!({"n": [1, 2, 3]}))
    );
    assert!(m["ts"].is_i64());
    send_env(&mut b, "broadcast", json!("hello all")).await;
    for c in [&mut a, &mut b] {
        let m = recv_json(c).await;
        assert_eq!(
            (m["type"].as_str(), m["payload"].as_str()),
            (Some("broadcast"), Some("hello all"))
        );
    }
    // raw echo endpoint, text and binary verbatim
    let mut e = connect_path(ex.addr, "/echo").await;
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    e.send(Message::text("plain text, no envelope"))
        .await
        .expect("send");
    assert_eq!(
        within("echo", e.next()).await.and_then(Result::ok),
        Some(Message::text("plain text, no envelope"))
    );
    e.send(Message::binary(vec![1u8, 2, 3]))
        .await
        .expect("send");
    assert_eq!(
        within("echo", e.next()).await.and_then(Result::ok),
        Some(Message::binary(vec![1u8, 2, 3]))
    );
    // SIGTERM: 1001 to every client, exit 0
    let pid = ex.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill")
        .success());
    assert_eq!(recv_close(&mut a).await.0, 1001);
    assert_eq!(recv_close(&mut e).await.0, 1001);
    let status = ex.exited().await;
    assert!(status.success());
}

#[tokio::test]
async fn bench_server_flags() {
    contract_flags_hold("bench_server").await;
}

#[tokio::test]
async fn embed_flags() {
    contract_flags_hold("embed").await;
}

async fn contract_flags_hold(example: &str) {
    let ex = start(example, &[]).await;
    drop(ex);
    let bad = Command::new(example_path(example))
        .arg("--nope")
        .output()
        .expect("run");
    assert_eq!(bad.status.code(), Some(2));
    let port = free_port();
    let ex = {
        let child = Command::new(example_path(example))
            .args([
                "--addr",
                &format!("127.0.0.1:{port}"),
                "--max-connections",
                "1",
                "--allowed-origin",
                "https://ok.example",
            ])
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        wait_listening(addr).await;
        Example { child, addr }
    };
    assert_eq!(
        try_connect_with(ex.addr, "/ws", &[("Origin", "https://evil.example")])
            .await
            .err(),
        Some(403)
    );
    let _a = try_connect_with(ex.addr, "/ws", &[("Origin", "https://ok.example")])
        .await
        .expect("allowed");
    let mut over = connect(ex.addr).await;
    assert_eq!(recv_close(&mut over).await.0, 1013);
}

/// The bench contract's proxy and per-IP flags: `--max-connections-per-ip`,
/// `--trusted-proxy` and `--proxy-protocol`.
#[tokio::test]
async fn bench_server_takes_the_per_ip_and_proxy_flags() {
    let ex = per_ip_and_trusted_proxy_flags_hold("bench_server").await;
    drop(ex);
    let ex = start_with("bench_server", free_port(), &["--proxy-protocol"], &[]).await;
    let mut s = tokio::net::TcpStream::connect(ex.addr).await.expect("tcp");
    let header = street::net::proxy_v1_header("198.51.100.1:5000".parse().unwrap(), ex.addr);
    s.write_all(header.as_bytes()).await.expect("write");
    assert_eq!(
        http_on(&mut s, upgrade("").as_bytes()).await.map(|r| r.0),
        Some(101)
    );
    // without a header: no answer
    let mut bare = tokio::net::TcpStream::connect(ex.addr).await.expect("tcp");
    assert_eq!(http_on(&mut bare, upgrade("").as_bytes()).await, None);
}

/// Embedded, the per-IP caps hold (axum's `ConnectInfo`) and a trusted proxy names the
/// client (`TrustedProxies::layer`); the PROXY protocol is refused with exit code 2.
#[tokio::test]
async fn embed_takes_the_per_ip_and_proxy_flags() {
    let ex = per_ip_and_trusted_proxy_flags_hold("embed").await;
    drop(ex);
    let refused = Command::new(example_path("embed"))
        .args(["--proxy-protocol", "--addr", "127.0.0.1:0"])
        .output()
        .expect("run");
    assert_eq!(refused.status.code(), Some(2));
}

fn upgrade(extra: &str) -> String {
    format!(
        "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
}

async fn per_ip_and_trusted_proxy_flags_hold(example: &str) -> Example {
    let args = [
        "--max-connections-per-ip",
        "2",
        "--max-handshakes-per-ip-per-sec",
        "50",
        "--trusted-proxy",
        "127.0.0.1/32",
    ];
    let ex = start_with(example, free_port(), &args, &[]).await;
    // a direct client at 127.0.0.2: two WebSockets, the third gets 429
    let mut held = Vec::new();
    for _ in 0..2 {
        held.push(connect_ws_from("127.0.0.2", ex.addr, "/ws").await);
    }
    let mut third = connect_from("127.0.0.2", ex.addr).await.expect("tcp");
    let status = http_on(&mut third, upgrade("").as_bytes())
        .await
        .map(|r| r.0);
    assert_eq!(status, Some(429));
    // through the trusted proxy, each named client has its own share
    let mut via = Vec::new();
    for i in 0..3 {
        let mut s = connect_from("127.0.0.1", ex.addr).await.expect("tcp");
        let xff = format!("X-Forwarded-For: 192.0.2.{i}\r\n");
        assert_eq!(
            http_on(&mut s, upgrade(&xff).as_bytes()).await.map(|r| r.0),
            Some(101)
        );
        via.push(s);
    }
    drop((held, via));
    ex
}

/// The host app's own routes and layers work around street's: `/` and `/health` are
/// axum handlers with CORS headers from tower-http; `/ws/{room}` sees its path parameter
/// and the request id the host's middleware set.
#[tokio::test]
async fn embed_mounts_street_among_the_hosts_routes_and_layers() {
    let ex = start("embed", &[]).await;
    let r = reqwest::Client::new()
        .get(format!("http://{}/health", ex.addr))
        .header("Origin", "https://elsewhere.example")
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()
            .get("access-control-allow-origin")
            .map(|v| v.to_str().unwrap_or_default().to_owned()),
        Some("*".into())
    );
    assert_eq!(r.text().await.expect("body"), "ok");
    let mut a = connect_path(ex.addr, "/ws/kitchen").await;
    let m = recv_json(&mut a).await;
    assert_eq!(m["type"], "welcome");
    assert_eq!(m["payload"]["room"], "kitchen");
    let first = m["payload"]["request_id"].as_u64().expect("a request id");
    let mut b = connect_path(ex.addr, "/ws/caf%C3%A9").await;
    let m = recv_json(&mut b).await;
    assert_eq!(m["payload"]["room"], "café", "percent-decoded");
    assert!(m["payload"]["request_id"].as_u64().expect("id") > first);
}
