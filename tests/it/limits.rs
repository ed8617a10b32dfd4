//! Inbound limits: per-connection message and byte rates, per-IP connection cap and
//! handshake rate, the first-message timeout.

use std::time::Duration;

use crate::common::*;
use serde_json::json;
use street::ws::{ConnectRequest, Socket, WebSocketServer};

fn echo(wss: &WebSocketServer) {
    wss.on_connection(|socket: Socket, _: ConnectRequest| {
        let s = socket.clone();
        socket.on("echo", move |v: serde_json::Value| s.emit("echo", &v))
    });
}

#[tokio::test]
async fn a_connection_sending_too_many_messages_is_closed_with_1008() {
    let wss = WebSocketServer::new(opts().with_max_messages_per_sec(10));
    let srv = serve(&wss).await;
    let mut c = connect(srv.local_addr()).await;
    for i in 0..30 {
        send_env(&mut c, "x", json!(i)).await;
    }
    assert_eq!(
        recv_close(&mut c).await,
        (1008, "rate limit exceeded".into())
    );
    assert_eq!(wss.stats().rate_limited, 1);
    srv.shutdown().await;
}

#[tokio::test]
async fn a_connection_sending_too_many_bytes_is_closed_with_1008() {
    let wss = WebSocketServer::new(
        opts()
            .with_max_bytes_per_sec(1_000)
            .with_max_payload(1_000)
            .with_max_messages_per_sec(0),
    );
    echo(&wss);
    let srv = serve(&wss).await;
    let mut c = connect(srv.local_addr()).await;
    let big = "x".repeat(850);
    send_env(&mut c, "echo", json!(big)).await; // ~880 bytes: within the 1 000-byte burst
    assert_eq!(recv_json(&mut c).await["type"], "echo");
    send_env(&mut c, "echo", json!(big)).await;
    send_env(&mut c, "echo", json!(big)).await; // needs ~1.7 s of refill it does not get
    assert_eq!(recv_close(&mut c).await.0, 1008);
    assert_eq!(wss.stats().rate_limited, 1);
    srv.shutdown().await;
}

#[tokio::test]
async fn a_well_behaved_client_is_never_limited() {
    // defaults: 1 000 messages/s, 8 MiB/s
    let wss = WebSocketServer::new(opts().with_max_connections_per_ip(1000));
    echo(&wss);
    let srv = serve(&wss).await;
    let mut c = connect(srv.local_addr()).await;
    for i in 0..200 {
        send_env(&mut c, "echo", json!(i)).await;
        assert_eq!(recv_json(&mut c).await["payload"], json!(i));
    }
    assert_eq!(wss.stats().rate_limited, 0);
    srv.shutdown().await;
}

#[tokio::test]
async fn per_ip_connection_cap_gives_429_before_the_upgrade() {
    let wss = WebSocketServer::new(opts().with_max_connections_per_ip(2));
    let srv = serve(&wss).await;
    let addr = srv.local_addr();
    let mut a = connect(addr).await;
    let _b = connect(addr).await;
    assert_eq!(try_connect_with(addr, "/ws", &[]).await.err(), Some(429));
    let (_, head) = raw_connect(addr, "/ws", "").await;
    assert!(head.starts_with("HTTP/1.1 429"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("retry-after: 5"),
        "{head}"
    );
    close(&mut a).await;
    eventually("slot released", || wss.connection_count() == 1).await;
    let _c = connect(addr).await;
    assert_eq!(wss.stats().rejected_ip, 2);
    srv.shutdown().await;
}

#[tokio::test]
async fn per_ip_handshake_rate_gives_429() {
    let wss = WebSocketServer::new(opts().with_max_handshakes_per_ip_per_sec(3));
    let srv = serve(&wss).await;
    let addr = srv.local_addr();
    // six at once: the burst of 3 gets in; refill during the burst is negligible
    let attempts = (0..6).map(|_| try_connect_with(addr, "/ws", &[]));
    let results = futures_util::future::join_all(attempts).await;
    let ok = results.iter().filter(|r| r.is_ok()).count();
    let refused = results.iter().filter(|r| matches!(r, Err(429))).count();
    assert!((3..=4).contains(&ok), "admitted {ok}");
    assert_eq!(ok + refused, 6);
    srv.shutdown().await;
}

#[tokio::test]
async fn first_message_timeout_closes_silent_clients_only() {
    let wss =
        WebSocketServer::new(opts().with_first_message_timeout(Some(Duration::from_millis(300))));
    echo(&wss);
    let srv = serve(&wss).await;
    let mut silent = connect(srv.local_addr()).await;
    let mut talker = connect(srv.local_addr()).await;
    send_env(&mut talker, "echo", json!("hi")).await;
    assert_eq!(recv_json(&mut talker).await["payload"], "hi");
    assert_eq!(
        recv_close(&mut silent).await,
        (1008, "no message received".into())
    );
    // the talker is past its deadline and still served
    tokio::time::sleep(Duration::from_millis(400)).await;
    send_env(&mut talker, "echo", json!("still")).await;
    assert_eq!(recv_json(&mut talker).await["payload"], "still");
    assert_eq!(wss.stats().first_message_timeouts, 1);
    srv.shutdown().await;
}

/// Pings, pongs and empty continuation frames pass the message rate too (issue 11: they
/// skipped it, so a client could make the server work without limit).
#[tokio::test]
async fn control_frames_and_fragments_count_against_the_message_rate() {
    let wss = WebSocketServer::new(opts().with_max_messages_per_sec(20));
    let srv = serve(&wss).await;
    let addr = srv.local_addr();
    for flood in [
        frame(true, 0x9, b"ping", true),
        frame(true, 0xA, b"pong", true),
        frame(false, 0x0, b"", true),
    ] {
        let (mut raw, head) = raw_connect(addr, "/ws", "").await;
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        let mut bytes = Vec::new();
        if flood[0] & 0x0f == 0 {
            // continuations need a message in progress
            bytes.extend(frame(false, 0x1, b"{", true));
        }
        for _ in 0..60 {
            bytes.extend_from_slice(&flood);
        }
        raw.send(&bytes).await;
        assert_eq!(raw.close_code().await, Some(1008));
    }
    assert_eq!(wss.stats().rate_limited, 3);
    srv.shutdown().await;
}
