//! RFC 6455 errors with hand-made frames over raw TCP.

use crate::common::*;
use street::ws::WebSocketServer;

async fn setup(max_payload: usize) -> (street::app::ServerHandle, WebSocketServer) {
    let wss = WebSocketServer::new(opts().with_max_payload(max_payload));
    let srv = serve(&wss).await;
    (srv, wss)
}

async fn expect_close(srv: &street::app::ServerHandle, bytes: &[u8], code: u16) {
    let (mut raw, head) = raw_connect(srv.local_addr(), "/ws", "").await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    raw.send(bytes).await;
    assert_eq!(
        raw.close_code().await,
        Some(code),
        "frame {:02x?}",
        &bytes[..bytes.len().min(4)]
    );
    raw.eof().await;
}

#[tokio::test]
async fn protocol_violations_get_the_rfc_close_codes() {
    let (srv, wss) = setup(1024).await;
    // message over max_payload -> 1009 (single frame and fragmented)
    expect_close(&srv, &frame(true, 1, &[b'a'; 2000], true), 1009).await;
    let mut frag = frame(false, 1, &[b'a'; 600], true);
    frag.extend(frame(true, 0, &[b'a'; 600], true));
    expect_close(&srv, &frag, 1009).await;
    // invalid UTF-8 in a text message -> 1007
    expect_close(&srv, &frame(true, 1, &[0xff, 0xfe, 0x41], true), 1007).await;
    // unmasked client frame -> 1002
    expect_close(&srv, &frame(true, 1, b"hi", false), 1002).await;
    // reserved opcode -> 1002
    expect_close(&srv, &frame(true, 3, b"", true), 1002).await;
    // fragmented control frame -> 1002
    expect_close(&srv, &frame(false, 9, b"", true), 1002).await;
    // oversized control frame (126 bytes) -> 1002
    expect_close(&srv, &frame(true, 9, &[0u8; 126], true), 1002).await;
    // RSV bit set without an extension -> 1002
    let mut rsv = frame(true, 1, b"x", true);
    rsv[0] |= 0x40;
    expect_close(&srv, &rsv, 1002).await;
    // continuation without a start -> 1002
    expect_close(&srv, &frame(true, 0, b"x", true), 1002).await;
    assert!(wss.stats().protocol_errors >= 9);
    eventually("all failed connections gone", || {
        wss.connection_count() == 0
    })
    .await;
    srv.shutdown().await;
}

#[tokio::test]
async fn a_bad_client_does_not_disturb_another() {
    let (srv, wss) = setup(1024).await;
    wss.on_connection(|s: street::ws::Socket, _: street::ws::ConnectRequest| {
        let t = s.clone();
        s.on("echo", move |v: serde_json::Value| t.emit("echo", &v))
    });
    let mut good = connect(srv.local_addr()).await;
    expect_close(&srv, &frame(true, 1, &[0xff], true), 1007).await;
    send_env(&mut good, "echo", serde_json::json!("still here")).await;
    assert_eq!(recv_json(&mut good).await["payload"], "still here");
    srv.shutdown().await;
}
