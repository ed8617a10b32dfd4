use std::time::Duration;

use crate::common::*;
use serde_json::json;
use street::ws::{CloseInfo, ConnectRequest, Socket, WebSocketServer};
use tokio::sync::mpsc;

#[tokio::test]
async fn close_sends_1001_after_pending_messages_runs_handlers_and_refuses_new_upgrades() {
    let wss = WebSocketServer::new(opts());
    let (tx, mut rx) = mpsc::unbounded_channel::<CloseInfo>();
    wss.on_connection(move |socket: Socket, _: ConnectRequest| {
        let t = tx.clone();
        let _ = socket.emit("ready", &());
        socket.on_close(move |i: CloseInfo| {
            let _ = t.send(i);
        })
    });
    let srv = serve(&wss).await;
    let addr = srv.local_addr();
    let mut a = connect(addr).await;
    let mut b = connect(addr).await;
    assert_eq!(recv_json(&mut a).await["type"], "ready");
    assert_eq!(recv_json(&mut b).await["type"], "ready");

    // messages emitted right before close() must arrive before the 1001
    for i in 0..100 {
        wss.broadcast("n", &i).expect("broadcast");
    }
    let closer = {
        let w = wss.clone();
        tokio::spawn(async move { w.close().await })
    };
    for c in [&mut a, &mut b] {
        for i in 0..100 {
            assert_eq!(recv_json(c).await["payload"], json!(i));
        }
        assert_eq!(recv_close(c).await, (1001, "Going Away".into()));
    }
    for _ in 0..2 {
        assert_eq!(
            within("close handler", rx.recv()).await.map(|i| i.code.0),
            Some(1001)
        );
    }
    within("close()", closer).await.expect("join");
    assert_eq!(wss.connection_count(), 0);
    // new upgrades get 503
    assert_eq!(try_connect_with(addr, "/ws", &[]).await.err(), Some(503));
    // idempotent
    within("second close()", wss.close()).await;
    srv.shutdown().await;
}

#[tokio::test]
async fn close_drops_clients_that_never_finish_the_handshake_by_the_deadline() {
    let wss = WebSocketServer::new(
        opts()
            .with_shutdown_timeout(Duration::from_millis(300))
            .with_close_timeout(Duration::from_secs(30)),
    );
    let srv = serve(&wss).await;
    // never reads, never answers the close
    let (mut raw, _) = raw_connect(srv.local_addr(), "/ws", "").await;
    eventually("registered", || wss.connection_count() == 1).await;
    within("close() bounded by its deadline", wss.close()).await;
    assert_eq!(wss.connection_count(), 0);
    raw.eof().await;
    srv.shutdown().await;
}

#[tokio::test]
async fn app_shutdown_closes_websockets_with_1001() {
    let wss = WebSocketServer::new(opts());
    let srv = serve(&wss).await;
    let mut c = connect(srv.local_addr()).await;
    eventually("registered", || wss.connection_count() == 1).await;
    let stop = tokio::spawn(srv.shutdown());
    assert_eq!(recv_close(&mut c).await.0, 1001);
    within("app shutdown", stop).await.expect("join");
    assert!(wss.is_closing());
}
