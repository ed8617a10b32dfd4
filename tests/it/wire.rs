use crate::common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use street::ws::{ConnectRequest, ErrorEvent, RawMessage, Socket, SocketError, WebSocketServer};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn frames_are_exactly_type_payload_ts_in_that_order() {
    let wss = WebSocketServer::new(opts());
    wss.on_connection(|socket: Socket, _: ConnectRequest| {
        let _ = socket.emit("greet", &json!({"a": [1, "two", null], "b": "é\"\n"}));
    });
    let srv = serve(&wss).await;
    let mut c = connect(srv.local_addr()).await;
    let text = match within("frame", c.next()).await {
        Some(Ok(Message::Text(t))) => t.to_string(),
        other => panic!("{other:?}"),
    };
    let prefix = r#"{"type":"greet","payload":{"a":[1,"two",null],"b":"é\"\n"},"ts":"#;
    assert!(text.starts_with(prefix), "{text}");
    let ts: i64 = text[prefix.len()..text.len() - 1]
        .parse()
        .expect("ts is an integer");
    assert!((ts - street::ws::envelope::now_ms()).abs() < 60_000);
    assert!(text.ends_with('}'));
    srv.shutdown().await;
}

#[tokio::test]
async fn binary_frames_go_to_the_raw_hook_or_the_error_hook() {
    let wss = WebSocketServer::new(opts());
    wss.on_connection(|socket: Socket, req: ConnectRequest| {
        let s = socket.clone();
        if req.query_param("raw").is_some() {
            socket.on_raw(move |m: RawMessage| {
                if let RawMessage::Binary(b) = m {
                    let _ = s.emit("raw", &b.len());
                }
            })?;
        } else {
            socket.on_error(move |e: ErrorEvent| {
                let _ = s.emit("err", &e);
            })?;
        }
        Ok::<_, SocketError>(())
    });
    let srv = serve(&wss).await;
    let mut a = connect_path(srv.local_addr(), "/ws?raw=1").await;
    a.send(Message::binary(vec![1u8, 2, 3]))
        .await
        .expect("send");
    assert_eq!(recv_json(&mut a).await["payload"], 3);
    let mut b = connect(srv.local_addr()).await;
    b.send(Message::binary(vec![9u8; 10])).await.expect("send");
    let e = recv_json(&mut b).await;
    assert_eq!(
        e["payload"],
        json!({"kind": "unexpected_raw", "binary": true, "len": 10})
    );
    assert_eq!(wss.stats().unexpected_raw, 1);
    srv.shutdown().await;
}

#[tokio::test]
async fn custom_subprotocol_gets_raw_frames_with_gates_still_applied() {
    let wss = WebSocketServer::new(opts().with_max_connections(1));
    wss.on_protocol("echo-v1", |socket: Socket, _: ConnectRequest| {
        let s = socket.clone();
        socket.on_raw(move |m: RawMessage| s.send_raw(m))
    });
    wss.on_connection(|socket: Socket, _: ConnectRequest| {
        let _ = socket.emit("envelope-mode", &());
    });
    let srv = serve(&wss).await;
    let mut req = url(srv.local_addr(), "/ws")
        .into_client_request()
        .expect("req");
    req.headers_mut().insert(
        "sec-websocket-protocol",
        "other, echo-v1".parse().expect("hv"),
    );
    let (mut c, resp) = tokio_tungstenite::connect_async(req)
        .await
        .expect("connect");
    assert_eq!(
        resp.headers()
            .get("sec-websocket-protocol")
            .map(|v| v.as_bytes()),
        Some(&b"echo-v1"[..])
    );
    c.send(Message::text("not an envelope"))
        .await
        .expect("send");
    match within("echo", c.next()).await {
        Some(Ok(Message::Text(t))) => assert_eq!(t.as_str(), "not an envelope"),
        other => panic!("{other:?}"),
    }
    c.send(Message::binary(vec![0u8, 255])).await.expect("send");
    match within("echo", c.next()).await {
        Some(Ok(Message::Binary(b))) => assert_eq!(&b[..], &[0u8, 255]),
        other => panic!("{other:?}"),
    }
    // capacity applies to subprotocol connections too
    let mut d = connect(srv.local_addr()).await;
    assert_eq!(recv_close(&mut d).await.0, 1013);
    srv.shutdown().await;
}
