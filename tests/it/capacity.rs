use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::common::*;
use street::ws::{CapacityPolicy, ConnectRequest, Socket, WebSocketServer};

fn counting_server(max: usize, policy: CapacityPolicy) -> (WebSocketServer, Arc<AtomicUsize>) {
    let wss = WebSocketServer::new(
        opts()
            .with_max_connections(max)
            .with_capacity_policy(policy),
    );
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    wss.on_connection(move |socket: Socket, _: ConnectRequest| {
        c.fetch_add(1, Ordering::SeqCst);
        let _ = socket.emit("welcome", &());
    });
    (wss, calls)
}

#[tokio::test]
async fn connection_over_cap_is_closed_with_1013_and_never_reaches_the_handler() {
    let (wss, calls) = counting_server(2, CapacityPolicy::Close1013);
    let srv = serve(&wss).await;
    let mut a = connect(srv.local_addr()).await;
    let mut b = connect(srv.local_addr()).await;
    assert_eq!(recv_json(&mut a).await["type"], "welcome");
    assert_eq!(recv_json(&mut b).await["type"], "welcome");

    let mut c = connect(srv.local_addr()).await;
    let (code, reason) = recv_close(&mut c).await;
    assert_eq!(code, 1013);
    assert_eq!(reason, "Server at capacity");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "handler must not run for the rejected one"
    );
    assert_eq!(wss.connection_count(), 2);
    assert_eq!(wss.stats().rejected_capacity, 1);

    // a slot frees up when a client leaves
    close(&mut a).await;
    eventually("slot freed", || wss.connection_count() == 1).await;
    let mut d = connect(srv.local_addr()).await;
    assert_eq!(recv_json(&mut d).await["type"], "welcome");
    srv.shutdown().await;
}

#[tokio::test]
async fn http_503_policy_refuses_before_the_upgrade_with_retry_after() {
    let (wss, calls) = counting_server(1, CapacityPolicy::Http503);
    let srv = serve(&wss).await;
    let mut a = connect(srv.local_addr()).await;
    assert_eq!(recv_json(&mut a).await["type"], "welcome");
    let status = try_connect_with(srv.local_addr(), "/ws", &[]).await.err();
    assert_eq!(status, Some(503));
    let head = raw_connect(srv.local_addr(), "/ws", "").await.1;
    assert!(head.starts_with("HTTP/1.1 503"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("retry-after: 5"),
        "{head}"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    srv.shutdown().await;
}

#[tokio::test]
async fn connect_storm_at_four_times_the_cap_never_exceeds_it() {
    const CAP: usize = 50;
    let (wss, calls) = counting_server(CAP, CapacityPolicy::Close1013);
    let srv = serve(&wss).await;
    let addr = srv.local_addr();
    let mut tasks = Vec::new();
    for _ in 0..CAP * 4 {
        tasks.push(tokio::spawn(async move {
            let mut c = connect(addr).await;
            // either a welcome (admitted) or a 1013 close
            loop {
                match within("first frame", futures_util::StreamExt::next(&mut c)).await {
                    Some(Ok(tokio_tungstenite::tungstenite::Message::Text(_))) => return (true, c),
                    Some(Ok(tokio_tungstenite::tungstenite::Message::Close(Some(f)))) => {
                        assert_eq!(u16::from(f.code), 1013);
                        return (false, c);
                    }
                    Some(Ok(_)) => continue,
                    other => panic!("unexpected {other:?}"),
                }
            }
        }));
    }
    let mut admitted = 0;
    let mut keep = Vec::new();
    for t in tasks {
        let (ok, c) = t.await.expect("task");
        if ok {
            admitted += 1;
            keep.push(c);
        }
    }
    assert_eq!(
        admitted, CAP,
        "exactly the cap is admitted while all stay open"
    );
    assert_eq!(calls.load(Ordering::SeqCst), CAP);
    let st = wss.stats();
    assert_eq!(
        st.peak_connections, CAP as u64,
        "live count never exceeded the cap"
    );
    assert_eq!(st.rejected_capacity, (CAP * 3) as u64);
    assert_eq!(wss.connection_count(), CAP);
    drop(keep);
    srv.shutdown().await;
}
