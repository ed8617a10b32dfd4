use std::time::{Duration, Instant};

use crate::common::*;
use street::ws::{CloseInfo, ConnectRequest, Socket, WebSocketServer};
use tokio::sync::mpsc;

fn server(interval: Duration) -> (WebSocketServer, mpsc::UnboundedReceiver<CloseInfo>) {
    let wss = WebSocketServer::new(opts().with_heartbeat_interval(interval));
    let (tx, rx) = mpsc::unbounded_channel();
    wss.on_connection(move |socket: Socket, _: ConnectRequest| {
        let tx = tx.clone();
        socket.on_close(move |info: CloseInfo| {
            let _ = tx.send(info);
        })
    });
    (wss, rx)
}

#[tokio::test]
async fn silent_peer_is_reaped_within_two_intervals_and_close_handlers_run() {
    let interval = Duration::from_millis(300);
    let (wss, mut closed) = server(interval);
    let srv = serve(&wss).await;
    // Completes the handshake, then never reads or answers.
    let (raw, head) = raw_connect(srv.local_addr(), "/ws", "").await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    eventually("registered", || wss.connection_count() == 1).await;
    let start = Instant::now();
    let info = within("close handler", closed.recv())
        .await
        .expect("closed");
    let took = start.elapsed();
    assert_eq!(info.code, 1006);
    assert_eq!(info.reason, "heartbeat timeout");
    assert!(
        took <= interval * 2 + Duration::from_millis(250),
        "reaped after {took:?}"
    );
    assert_eq!(wss.connection_count(), 0);
    assert_eq!(wss.stats().reaped, 1);
    drop(raw);
    srv.shutdown().await;
}

#[tokio::test]
async fn live_peer_answering_pings_is_never_reaped() {
    let interval = Duration::from_millis(100);
    let (wss, mut closed) = server(interval);
    let srv = serve(&wss).await;
    let mut c = connect(srv.local_addr()).await;
    // tungstenite answers pings while we read; read for 10 intervals.
    let mut pings = 0;
    let _ = tokio::time::timeout(interval * 10, async {
        while let Some(Ok(m)) = futures_util::StreamExt::next(&mut c).await {
            if m.is_ping() {
                pings += 1;
            }
        }
    })
    .await;
    assert!(pings >= 5, "expected regular pings, got {pings}");
    assert!(closed.try_recv().is_err(), "live peer must not be reaped");
    assert_eq!(wss.connection_count(), 1);
    assert_eq!(wss.stats().reaped, 0);
    srv.shutdown().await;
}

#[tokio::test]
async fn a_peer_that_only_sends_messages_counts_as_alive() {
    let interval = Duration::from_millis(100);
    let (wss, mut closed) = server(interval);
    let srv = serve(&wss).await;
    let (mut raw, _) = raw_connect(srv.local_addr(), "/ws", "").await;
    // never answers pings, but sends a message every half interval
    for _ in 0..12 {
        raw.send(&frame(true, 1, br#"{"type":"x"}"#, true)).await;
        tokio::time::sleep(interval / 2).await;
    }
    assert!(closed.try_recv().is_err());
    assert_eq!(wss.connection_count(), 1);
    srv.shutdown().await;
}

/// `WsOptions::ping_envelopes`: every live client also gets `street:ping` with the
/// interval at each sweep (what lets street.js see a dead connection).
#[tokio::test]
async fn ping_envelopes_tell_each_client_the_interval_at_every_sweep() {
    let wss = WebSocketServer::new(
        opts()
            .with_heartbeat_interval(Duration::from_millis(100))
            .with_ping_envelopes(true),
    );
    let srv = serve(&wss).await;
    let mut c = connect(srv.local_addr()).await;
    for _ in 0..3 {
        let v = recv_json(&mut c).await;
        assert_eq!(
            v,
            serde_json::json!({"type": "street:ping", "payload": {"intervalMs": 100}, "ts": v["ts"]})
        );
    }
    // off by default: nothing but WebSocket pings
    let quiet = WebSocketServer::new(opts().with_heartbeat_interval(Duration::from_millis(100)));
    let srv = serve(&quiet).await;
    let mut c = connect(srv.local_addr()).await;
    let got = tokio::time::timeout(Duration::from_millis(350), recv_json(&mut c)).await;
    assert!(got.is_err(), "no envelope: {got:?}");
}

/// A handler that never ends does not hold its peer forever: the sweep spares a socket
/// whose handler runs for `2 + request_timeout / interval` silent sweeps (here 3), then
/// reaps it (1006) and the handler is dropped; the client sees the connection end.
#[tokio::test]
async fn a_handler_that_never_ends_no_longer_holds_its_peer() {
    let interval = Duration::from_millis(100);
    let wss = WebSocketServer::new(
        opts()
            .with_heartbeat_interval(interval)
            .with_request_timeout(interval),
    );
    let (tx, mut closed) = mpsc::unbounded_channel();
    wss.on_connection(move |socket: Socket, _: ConnectRequest| {
        let tx = tx.clone();
        socket.on("stuck", |_: serde_json::Value| std::future::pending::<()>())?;
        socket.on_close(move |info: CloseInfo| {
            let _ = tx.send(info);
        })?;
        Ok::<_, street::ws::SocketError>(())
    });
    let srv = serve(&wss).await;
    let mut c = connect(srv.local_addr()).await;
    send_env(&mut c, "stuck", serde_json::json!(null)).await;
    let info = within("the reap", closed.recv()).await.expect("closed");
    assert_eq!(
        (info.code.0, info.reason.as_str()),
        (1006, "heartbeat timeout")
    );
    assert_eq!(wss.stats().reaped, 1);
    // the client's side of it: the connection ends
    use futures_util::StreamExt;
    within("the end", async {
        while let Some(Ok(_)) = c.next().await {}
    })
    .await;
}
