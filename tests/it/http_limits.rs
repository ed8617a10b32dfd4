use std::time::{Duration, Instant};

use crate::common::*;
use street::ws::WebSocketServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn slow_headers_are_dropped_after_the_header_timeout() {
    let app = street::app(street::AppOptions {
        header_read_timeout: Duration::from_millis(300),
        ..app_opts()
    })
    .route("/", axum::routing::get(|| async { "ok" }));
    let srv = serve_app(app).await;
    let mut s = tokio::net::TcpStream::connect(srv.local_addr())
        .await
        .expect("tcp");
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("write");
    let start = Instant::now();
    let mut buf = [0u8; 256];
    // the server must end the connection by itself (408 or plain close)
    let n = within("server to drop slow client", s.read(&mut buf))
        .await
        .unwrap_or(0);
    if n > 0 {
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 408"));
    }
    assert!(start.elapsed() < Duration::from_secs(3));
    srv.shutdown().await;
}

#[tokio::test]
async fn oversized_headers_get_431_and_routes_work() {
    let app = street::app(app_opts()).route("/hi", axum::routing::get(|| async { "hi" }));
    let srv = serve_app(app).await;
    let addr = srv.local_addr();
    assert_eq!(
        http_status(addr, "GET /hi HTTP/1.1\r\nHost: x\r\n\r\n").await,
        Some(200)
    );
    assert_eq!(
        http_status(addr, "GET /nope HTTP/1.1\r\nHost: x\r\n\r\n").await,
        Some(404)
    );
    let big = format!(
        "GET /hi HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(64 * 1024)
    );
    assert_eq!(http_status(addr, &big).await, Some(431));
    let many: String = (0..150).map(|i| format!("X-H{i}: v\r\n")).collect();
    assert_eq!(
        http_status(addr, &format!("GET /hi HTTP/1.1\r\nHost: x\r\n{many}\r\n")).await,
        Some(431)
    );
    srv.shutdown().await;
}

#[tokio::test]
async fn ws_path_ignores_the_query_and_plain_get_gets_426() {
    let wss = WebSocketServer::new(opts());
    let srv = serve(&wss).await;
    let addr = srv.local_addr();
    let _c = connect_path(addr, "/ws?token=abc&x=1").await;
    assert_eq!(
        http_status(addr, "GET /ws HTTP/1.1\r\nHost: x\r\n\r\n").await,
        Some(426)
    );
    let bad_key = "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: short\r\nSec-WebSocket-Version: 13\r\n\r\n";
    assert_eq!(http_status(addr, bad_key).await, Some(400));
    let bad_ver = "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n\r\n";
    assert_eq!(http_status(addr, bad_ver).await, Some(426));
    assert_eq!(wss.stats().rejected_handshake, 3);
    srv.shutdown().await;
}

#[tokio::test]
async fn http_connection_cap_holds_extra_connections_in_the_backlog() {
    let app = street::app(street::AppOptions {
        max_connections: 1,
        ..app_opts()
    })
    .route("/hi", axum::routing::get(|| async { "hi" }));
    let srv = serve_app(app).await;
    let addr = srv.local_addr();
    // first connection: keep-alive, holds the only permit
    let mut first = tokio::net::TcpStream::connect(addr).await.expect("tcp");
    first
        .write_all(b"GET /hi HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("w");
    let mut buf = [0u8; 512];
    let n = within("first response", first.read(&mut buf))
        .await
        .expect("read");
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    // second: accepted by the kernel, but not served while the first is open
    let second = tokio::spawn(async move {
        http_status(
            addr,
            "GET /hi HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !second.is_finished(),
        "second connection must wait for a permit"
    );
    drop(first);
    assert_eq!(
        within("second response", second).await.expect("join"),
        Some(200)
    );
    srv.shutdown().await;
}
