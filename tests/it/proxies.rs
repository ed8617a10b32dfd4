//! Behind a reverse proxy: trusted `Forwarded`/`X-Forwarded-For`, and the PROXY protocol.
//! The resolved client address is what handlers, the auth hook and per-IP limits see.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use crate::common::*;
use street::net::{proxy_v1_header, proxy_v2_header, TrustedProxies};
use street::ws::{ConnectRequest, WebSocketServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn whoami() -> axum::routing::MethodRouter {
    axum::routing::get(
        |axum::extract::ConnectInfo(a): axum::extract::ConnectInfo<SocketAddr>| async move {
            a.ip().to_string()
        },
    )
}

/// The body of a `Connection: close` response.
async fn body_of(from: &str, addr: SocketAddr, prefix: &[u8], request: &str) -> String {
    let mut s = connect_from(from, addr).await.expect("connect");
    s.write_all(prefix).await.expect("write");
    s.write_all(request.as_bytes()).await.expect("write");
    let mut buf = Vec::new();
    // a refused connection may be reset (closed with our request unread): no answer
    let _ = within("response", s.read_to_end(&mut buf)).await;
    let text = String::from_utf8_lossy(&buf).into_owned();
    text.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned()
}

fn get(path: &str, extra: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{extra}\r\n")
}

fn upgrade(extra: &str) -> String {
    format!(
        "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
}

#[tokio::test]
async fn a_trusted_proxy_names_the_client_for_handlers_auth_and_per_ip_limits() {
    let wss = WebSocketServer::new(opts().with_max_connections_per_ip(2));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s2 = seen.clone();
    wss.auth(move |req: ConnectRequest| {
        let s2 = s2.clone();
        async move {
            if let Some(a) = req.remote_addr() {
                s2.lock().unwrap().push(a.ip().to_string());
            }
            Ok::<_, street::ws::AuthRejection>(())
        }
    });
    let app = street::app(
        app_opts()
            .with_trusted_proxies(TrustedProxies::parse(["127.0.0.1"]).expect("cidr"))
            // the proxy's own connections are not capped per address: its clients are
            .with_max_connections_per_ip(2),
    )
    .route("/whoami", whoami())
    .websocket(&wss);
    let srv = serve_app(app).await;
    let addr = srv.local_addr();

    let xff = "X-Forwarded-For: 203.0.113.1, 198.51.100.7\r\n";
    assert_eq!(
        body_of("127.0.0.1", addr, b"", &get("/whoami", xff)).await,
        "198.51.100.7"
    );
    // one header is read (X-Forwarded-For by default): a Forwarded header the client wrote
    // and the proxy passed through names nobody
    let fwd = "Forwarded: for=\"[2001:db8::7]:4711\";proto=https\r\n";
    assert_eq!(
        body_of("127.0.0.1", addr, b"", &get("/whoami", fwd)).await,
        "127.0.0.1"
    );
    // a client's own X-Forwarded-For entry, left of what the proxy appended, is ignored
    let spoof = "X-Forwarded-For: x, 6.6.6.6, 198.51.100.9\r\n";
    assert_eq!(
        body_of("127.0.0.1", addr, b"", &get("/whoami", spoof)).await,
        "198.51.100.9"
    );
    // an untrusted peer cannot name anyone
    assert_eq!(
        body_of("127.0.0.2", addr, b"", &get("/whoami", xff)).await,
        "127.0.0.2"
    );

    // WebSockets through the proxy: the per-IP cap counts each named client
    let mut held = Vec::new();
    for i in 0..3 {
        let mut s = connect_from("127.0.0.1", addr).await.expect("connect");
        let (status, head) = http_on(
            &mut s,
            upgrade("X-Forwarded-For: 192.0.2.10\r\n").as_bytes(),
        )
        .await
        .expect("answer");
        assert_eq!(status, if i < 2 { 101 } else { 429 }, "{head}");
        held.push(s);
    }
    let mut s = connect_from("127.0.0.1", addr).await.expect("connect");
    let (status, _) = http_on(
        &mut s,
        upgrade("X-Forwarded-For: 192.0.2.11\r\n").as_bytes(),
    )
    .await
    .expect("answer");
    assert_eq!(
        status, 101,
        "another client behind the same proxy is admitted"
    );
    held.push(s);
    assert_eq!(wss.stats().rejected_ip, 1);
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen, ["192.0.2.10", "192.0.2.10", "192.0.2.11"]);
    drop(held);
    srv.shutdown().await;
}

#[tokio::test]
async fn the_proxy_protocol_names_the_client_and_is_required() {
    let app = street::app(
        app_opts()
            .with_proxy_protocol(true)
            .with_max_connections_per_ip(1),
    )
    .route("/whoami", whoami());
    let http = app.http_stats();
    let srv = serve_app(app).await;
    let addr = srv.local_addr();
    let client: SocketAddr = "192.0.2.7:56324".parse().unwrap();
    let v6: SocketAddr = "[2001:db8::9]:443".parse().unwrap();

    let v1 = proxy_v1_header(client, addr);
    assert_eq!(
        body_of("127.0.0.1", addr, v1.as_bytes(), &get("/whoami", "")).await,
        "192.0.2.7"
    );
    let v2 = proxy_v2_header(v6, "[::1]:80".parse().unwrap());
    assert_eq!(
        body_of("127.0.0.1", addr, &v2, &get("/whoami", "")).await,
        "2001:db8::9"
    );

    // no header: closed without an answer, counted
    assert_eq!(
        body_of("127.0.0.1", addr, b"", &get("/whoami", "")).await,
        ""
    );
    eventually("the missing header counted", || {
        http.get().proxy_header_invalid == 1
    })
    .await;

    // per-IP limits count the address the header names: one connection each
    let mut first = connect_from("127.0.0.1", addr).await.expect("connect");
    first.write_all(v1.as_bytes()).await.expect("write");
    let keep = get("/whoami", "").replace("Connection: close\r\n", "");
    assert_eq!(
        http_on(&mut first, keep.as_bytes()).await.map(|r| r.0),
        Some(200)
    );
    let mut second = connect_from("127.0.0.1", addr).await.expect("connect");
    second.write_all(v1.as_bytes()).await.expect("write");
    assert_eq!(
        http_on(&mut second, keep.as_bytes()).await.map(|r| r.0),
        Some(429)
    );
    let other = proxy_v1_header("192.0.2.8:1".parse().unwrap(), addr);
    assert_eq!(
        body_of("127.0.0.1", addr, other.as_bytes(), &get("/whoami", "")).await,
        "192.0.2.8"
    );
    drop(first);
    srv.shutdown().await;
}
