use std::time::{Duration, Instant};

use crate::common::*;
use street::ws::WebSocketServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test]
async fn slow_headers_are_dropped_after_the_header_timeout() {
    let app = street::app(app_opts().with_header_read_timeout(Duration::from_millis(300)))
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
    let app = street::app(app_opts().with_max_connections(1))
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

fn sse_route() -> axum::routing::MethodRouter {
    axum::routing::get(|req: street::sse::SseRequest| async move {
        let (_sse, resp) = req.create(Duration::from_secs(15));
        resp
    })
}

const GET_SSE: &[u8] = b"GET /sse HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n";
const GET_HEALTH: &[u8] = b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";

/// The attack of issue 11: one address opens SSE streams and idle connections until
/// every slot is taken. Its share is capped; another address is still served.
#[tokio::test]
async fn one_address_cannot_take_every_http_slot() {
    let app = street::app(
        app_opts()
            .with_max_connections(40)
            .with_max_sse_streams(30)
            .with_max_connections_per_ip(10)
            .with_max_sse_streams_per_ip(5),
    )
    .route("/sse", sse_route())
    .route("/health", axum::routing::get(|| async { "ok" }));
    let http = app.http_stats();
    let sse = app.sse_registry().clone();
    let srv = serve_app(app).await;
    let addr = srv.local_addr();

    let mut held = Vec::new();
    // the attacker's streams: five served, the sixth refused with 429
    for i in 0..6 {
        let mut s = connect_from("127.0.0.2", addr).await.expect("connect");
        let (status, head) = http_on(&mut s, GET_SSE).await.expect("response");
        if i < 5 {
            assert_eq!(status, 200, "{head}");
        } else {
            assert_eq!(status, 429, "{head}");
            assert!(
                head.to_ascii_lowercase().contains("retry-after: 5"),
                "{head}"
            );
        }
        held.push(s);
    }
    assert_eq!(sse.stats().rejected_per_ip, 1);
    // the refused stream's connection is closed (an event-stream request is answered
    // outside hyper, `Connection: close`): 5 held; 5 more idle ones
    held.pop();
    for _ in 0..5 {
        held.push(connect_from("127.0.0.2", addr).await.expect("connect"));
    }
    // the eleventh connection from that address is answered 429 and closed
    let mut extra = connect_from("127.0.0.2", addr).await.expect("connect");
    let (status, head) = http_on(&mut extra, GET_HEALTH).await.expect("429");
    assert_eq!(status, 429, "{head}");
    eventually("the per-IP refusal counted", || {
        http.get().rejected_per_ip == 1
    })
    .await;

    // another address is served: pages and streams
    let mut other = connect_from("127.0.0.1", addr).await.expect("connect");
    assert_eq!(
        http_on(&mut other, GET_HEALTH).await.map(|r| r.0),
        Some(200)
    );
    let mut stream = connect_from("127.0.0.1", addr).await.expect("connect");
    assert_eq!(http_on(&mut stream, GET_SSE).await.map(|r| r.0), Some(200));

    // the attacker's places come back when its connections end
    held.clear();
    eventually("the attacker's streams ended", || sse.open_streams() == 1).await;
    let mut again = connect_from("127.0.0.2", addr).await.expect("connect");
    assert_eq!(http_on(&mut again, GET_SSE).await.map(|r| r.0), Some(200));
    srv.shutdown().await;
}

/// Streams never take more than four fifths of the HTTP slots, whatever the options say.
#[tokio::test]
async fn sse_streams_leave_room_for_other_requests() {
    let app = street::app(
        app_opts()
            .with_max_connections(10)
            .with_max_sse_streams(100),
    )
    .route("/sse", sse_route())
    .route("/health", axum::routing::get(|| async { "ok" }));
    let srv = serve_app(app).await;
    let addr = srv.local_addr();
    let mut held = Vec::new();
    for i in 0..9 {
        let mut s = TcpStream::connect(addr).await.expect("tcp");
        let status = http_on(&mut s, GET_SSE).await.map(|r| r.0);
        assert_eq!(status, Some(if i < 8 { 200 } else { 503 }), "stream {i}");
        if i < 8 {
            held.push(s);
        }
    }
    let mut s = TcpStream::connect(addr).await.expect("tcp");
    assert_eq!(http_on(&mut s, GET_HEALTH).await.map(|r| r.0), Some(200));
    srv.shutdown().await;
}

#[tokio::test]
async fn request_bodies_have_a_size_limit_and_a_read_deadline() {
    let app = street::app(
        app_opts()
            .with_max_body_bytes(1024)
            .with_body_read_timeout(Duration::from_millis(300)),
    )
    .route(
        "/len",
        axum::routing::post(|body: axum::body::Bytes| async move { body.len().to_string() }),
    );
    let http = app.http_stats();
    let srv = serve_app(app).await;
    let addr = srv.local_addr();

    let ok = format!(
        "POST /len HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{}",
        "a".repeat(1000)
    );
    let mut s = TcpStream::connect(addr).await.expect("tcp");
    assert_eq!(http_on(&mut s, ok.as_bytes()).await.map(|r| r.0), Some(200));

    let big = format!(
        "POST /len HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n{}",
        "a".repeat(5000)
    );
    let mut s = TcpStream::connect(addr).await.expect("tcp");
    assert_eq!(
        http_on(&mut s, big.as_bytes()).await.map(|r| r.0),
        Some(413)
    );
    assert_eq!(http.get().body_too_large, 1);

    // a body that trickles: 10 of 100 bytes, then nothing
    let mut s = TcpStream::connect(addr).await.expect("tcp");
    let start = Instant::now();
    let (status, _) = http_on(
        &mut s,
        b"POST /len HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789",
    )
    .await
    .expect("an answer");
    assert_eq!(status, 400);
    assert!(start.elapsed() >= Duration::from_millis(300));
    // and the connection is closed
    let mut rest = Vec::new();
    within("close", s.read_to_end(&mut rest))
        .await
        .expect("eof");
    assert_eq!(http.get().body_timeout, 1);
    srv.shutdown().await;
}

#[tokio::test]
async fn idle_keep_alive_connections_are_closed_after_the_header_timeout() {
    let app = street::app(app_opts().with_header_read_timeout(Duration::from_millis(300)))
        .route("/health", axum::routing::get(|| async { "ok" }));
    let srv = serve_app(app).await;
    let mut s = TcpStream::connect(srv.local_addr()).await.expect("tcp");
    let (status, _) = http_on(&mut s, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("response");
    assert_eq!(status, 200);
    // then nothing: the server ends the idle connection by itself
    let mut rest = Vec::new();
    let start = Instant::now();
    within("the idle connection to close", s.read_to_end(&mut rest))
        .await
        .expect("eof");
    assert!(start.elapsed() < Duration::from_secs(5));
    srv.shutdown().await;
}
