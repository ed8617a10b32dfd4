//! Requests with a reply, both ways, over a real socket (the wire of `street::ws::ack`):
//! a client's request answered with a result or an error of a documented code; the
//! server's request to a client, settled by its reply, its timeout, the bound on waiting
//! requests, or the connection's end.

use std::time::Duration;

use crate::common::*;
use serde_json::{json, Value};
use street::ws::{AckError, ConnectRequest, Socket, WebSocketServer};
use tokio::sync::mpsc;

async fn request(c: &mut Client, event: &str, payload: Value, id: u64) {
    let frame = json!({"type": event, "payload": payload, "ts": 1, "id": id});
    send_text(c, &frame.to_string()).await;
}

/// The next `street:reply`'s payload (other events skipped).
async fn reply(c: &mut Client) -> Value {
    loop {
        let v = recv_json(c).await;
        if v["type"] == "street:reply" {
            return v["payload"].clone();
        }
    }
}

#[tokio::test]
async fn a_request_is_answered_with_its_result_or_an_error_with_a_code() {
    let wss = WebSocketServer::new(opts().with_request_timeout(Duration::from_millis(300)));
    wss.on_connection(|socket: Socket, _: ConnectRequest| {
        socket.on_request("sum", |(a, b): (i64, i64)| {
            a.checked_add(b).ok_or("overflow")
        })?;
        socket.on_request("slow", |ms: u64| async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok::<_, String>(ms)
        })?;
        socket.on_request("boom", |_: Value| -> Result<u8, String> {
            panic!("kaboom")
        })?;
        // the same name as an ordinary event: an envelope without an id goes here
        let s = socket.clone();
        socket.on("sum", move |_: Value| s.emit("plain", &"not a request"))?;
        assert!(matches!(
            socket.on_request("sum", |_: Value| Ok::<_, String>(0)),
            Err(street::ws::SocketError::RequestHandlerTaken(e)) if e == "sum"
        ));
        Ok::<_, street::ws::SocketError>(())
    });
    let srv = serve(&wss).await;
    let mut c = connect(srv.local_addr()).await;

    request(&mut c, "sum", json!([1, 2]), 1).await;
    assert_eq!(reply(&mut c).await, json!({"id": 1, "result": 3}));
    request(&mut c, "sum", json!([i64::MAX, 1]), 2).await;
    assert_eq!(
        reply(&mut c).await,
        json!({"id": 2, "error": {"code": "rejected", "message": "overflow"}})
    );
    request(&mut c, "sum", json!("one and two"), 3).await;
    let r = reply(&mut c).await;
    assert_eq!(
        (r["id"].clone(), r["error"]["code"].clone()),
        (json!(3), json!("bad_payload")),
        "{r}"
    );
    request(&mut c, "nobody", json!(null), 4).await;
    assert_eq!(reply(&mut c).await["error"]["code"], "no_handler");
    request(&mut c, "slow", json!(5_000), 5).await;
    let r = reply(&mut c).await;
    assert_eq!(
        (r["id"].clone(), r["error"]["code"].clone()),
        (json!(5), json!("timeout")),
        "{r}"
    );
    request(&mut c, "boom", json!(null), 6).await;
    let r = reply(&mut c).await;
    assert_eq!(r["error"]["code"], "internal", "{r}");
    // the connection goes on; a fast one after the slow one
    request(&mut c, "slow", json!(1), 7).await;
    assert_eq!(reply(&mut c).await, json!({"id": 7, "result": 1}));
    // no id: an ordinary event, for `on`
    send_env(&mut c, "sum", json!([1, 2])).await;
    assert_eq!(
        crate::rooms::recv_type(&mut c, "plain").await,
        "not a request"
    );
    let st = wss.stats();
    assert_eq!((st.requests, st.requests_failed), (7, 5), "{st:?}");
    // of those, only the panic is a failure of the app's handler (a rejection is an answer)
    assert_eq!(st.handler_errors, 1, "{st:?}");
}

/// What the server saw of its requests, sent to the test.
type Seen = mpsc::UnboundedSender<(String, Result<Value, AckError>, usize)>;

fn asking_server(max_pending: usize, seen: Seen) -> WebSocketServer {
    let wss = WebSocketServer::new(opts().with_max_pending_acks(max_pending));
    wss.on_connection(move |socket: Socket, _: ConnectRequest| {
        let seen = seen.clone();
        let s = socket.clone();
        // the client says what to ask of it: {"ask": event, "timeout_ms": n}
        socket.on("please", move |p: Value| {
            let (s, seen) = (s.clone(), seen.clone());
            let event = p["ask"].as_str().unwrap_or("x").to_owned();
            let ms = p["timeout_ms"].as_u64().unwrap_or(2_000);
            tokio::spawn(async move {
                let got = s
                    .emit_with_ack::<_, Value>(&event, &"question", Duration::from_millis(ms))
                    .await;
                let _ = seen.send((event, got, s.pending_acks()));
            });
        })?;
        Ok::<_, street::ws::SocketError>(())
    });
    wss
}

async fn next(
    rx: &mut mpsc::UnboundedReceiver<(String, Result<Value, AckError>, usize)>,
) -> (String, Result<Value, AckError>, usize) {
    within("the server's outcome", rx.recv())
        .await
        .expect("outcome")
}

/// The request the server sends: `(event, id)`.
async fn asked(c: &mut Client) -> (String, u64) {
    loop {
        let v = recv_json(c).await;
        if let Some(id) = v["id"].as_u64() {
            assert_eq!(v["payload"], "question", "{v}");
            return (v["type"].as_str().expect("type").to_owned(), id);
        }
    }
}

async fn answer(c: &mut Client, id: u64, body: Value) {
    let mut p = body;
    p["id"] = json!(id);
    send_env(c, "street:reply", p).await;
}

#[tokio::test]
async fn the_server_asks_a_client_and_gets_its_reply_or_a_typed_error() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let wss = asking_server(2, tx);
    let srv = serve(&wss).await;
    let mut c = connect(srv.local_addr()).await;

    send_env(&mut c, "please", json!({"ask": "confirm"})).await;
    let (event, id) = asked(&mut c).await;
    assert_eq!(event, "confirm");
    answer(&mut c, id, json!({"result": {"ok": true}})).await;
    let (_, got, pending) = next(&mut rx).await;
    assert_eq!((got, pending), (Ok(json!({"ok": true})), 0));

    send_env(&mut c, "please", json!({"ask": "delete"})).await;
    let (_, id) = asked(&mut c).await;
    answer(
        &mut c,
        id,
        json!({"error": {"code": "no", "message": "not yours"}}),
    )
    .await;
    let (_, got, _) = next(&mut rx).await;
    assert_eq!(
        got,
        Err(AckError::Rejected {
            code: "no".into(),
            message: "not yours".into()
        })
    );

    // no answer: a timeout, and the request is forgotten (a late reply is dropped)
    send_env(
        &mut c,
        "please",
        json!({"ask": "silent", "timeout_ms": 200}),
    )
    .await;
    let (_, late) = asked(&mut c).await;
    let (_, got, pending) = next(&mut rx).await;
    assert_eq!(
        (got, pending),
        (Err(AckError::Timeout(Duration::from_millis(200))), 0)
    );
    answer(&mut c, late, json!({"result": 1})).await;

    // two may wait; the third fails at once
    for _ in 0..3 {
        send_env(
            &mut c,
            "please",
            json!({"ask": "hold", "timeout_ms": 5_000}),
        )
        .await;
    }
    let (_, got, _) = next(&mut rx).await;
    assert_eq!(got, Err(AckError::TooMany { limit: 2 }));
    let (_, a) = asked(&mut c).await;
    let (_, b) = asked(&mut c).await;
    assert_ne!(a, b, "ids are unique among those waiting");
    // the connection's end settles both
    close(&mut c).await;
    for _ in 0..2 {
        let (_, got, _) = next(&mut rx).await;
        assert_eq!(got, Err(AckError::Closed));
    }
    assert!(wss.stats().acks_timed_out >= 1);
}

/// An `"id"` that is not an integer ≥ 0 is an unknown field like any other, and an id on
/// an event that has `on` listeners but no request handler stays an ordinary event (a
/// client that numbers its messages keeps working); with no listener at all, the
/// requester is told `no_handler` at once.
#[tokio::test]
async fn an_id_is_a_request_only_for_a_request_handler_or_when_nothing_else_listens() {
    let wss = WebSocketServer::new(opts());
    wss.on_connection(|socket: Socket, _: ConnectRequest| {
        let s = socket.clone();
        socket.on("chat", move |p: Value| s.emit("got", &p))?;
        Ok::<_, street::ws::SocketError>(())
    });
    let srv = serve(&wss).await;
    let mut c = connect(srv.local_addr()).await;
    for (n, id) in [
        (1, json!("abc")),
        (2, json!(-1)),
        (3, json!(1.5)),
        (4, json!(5)),
    ] {
        let frame = json!({"type": "chat", "payload": n, "id": id});
        send_text(&mut c, &frame.to_string()).await;
        // the very next frame is the event's echo: no reply, no error
        assert_eq!(recv_json(&mut c).await["payload"], n);
    }
    request(&mut c, "nobody", json!(null), 9).await;
    let r = recv_json(&mut c).await;
    assert_eq!(
        (r["type"].clone(), r["payload"]["error"]["code"].clone()),
        (json!("street:reply"), json!("no_handler")),
        "{r}"
    );
    let st = wss.stats();
    assert_eq!((st.not_envelope, st.requests), (0, 1), "{st:?}");
}

/// `emit_with_ack` awaited inside a handler of the same socket could never read its
/// reply (the socket's reader waits for the handler): it fails at once, saying so.
#[tokio::test]
async fn emit_with_ack_in_its_own_sockets_handler_fails_at_once() {
    let wss = WebSocketServer::new(opts());
    wss.on_connection(|socket: Socket, _: ConnectRequest| {
        let s = socket.clone();
        socket.on("ask", move |_: Value| {
            let s = s.clone();
            async move {
                let got = s
                    .emit_with_ack::<_, Value>("q", &1, Duration::from_secs(30))
                    .await;
                s.emit("outcome", &got.err().map(|e| e.to_string()))
            }
        })?;
        Ok::<_, street::ws::SocketError>(())
    });
    let srv = serve(&wss).await;
    let mut c = connect(srv.local_addr()).await;
    send_env(&mut c, "ask", json!(null)).await;
    let v = recv_json(&mut c).await;
    assert_eq!(v["type"], "outcome", "no request went out: {v}");
    assert_eq!(v["payload"], AckError::InHandler.to_string(), "{v}");
}

/// A socket's reader waits while one of its handlers runs, pongs included: the heartbeat
/// spares it meanwhile (a slow handler, or a slow connection handler, does not get a live
/// peer reaped) and counts its silence from the handler's end.
#[tokio::test]
async fn a_handler_that_outlasts_the_heartbeat_keeps_its_live_peer() {
    let beat = Duration::from_millis(100);
    let wss = WebSocketServer::new(
        opts()
            .with_heartbeat_interval(beat)
            .with_request_timeout(Duration::from_secs(5)),
    );
    wss.on_connection(move |socket: Socket, _: ConnectRequest| async move {
        tokio::time::sleep(beat * 6).await; // the connection handler itself, slow
        socket.on_request("slow", move |ms: u64| async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok::<_, String>(ms)
        })
    });
    let srv = serve(&wss).await;
    let mut c = connect(srv.local_addr()).await;
    // six intervals and more in a handler: three sweeps would have reaped the peer
    request(&mut c, "slow", json!(600), 1).await;
    assert_eq!(reply(&mut c).await, json!({"id": 1, "result": 600}));
    request(&mut c, "slow", json!(1), 2).await;
    assert_eq!(reply(&mut c).await, json!({"id": 2, "result": 1}));
    assert_eq!(wss.stats().reaped, 0, "{:?}", wss.stats());
}

/// What the client sent does not come back larger in an error reply: serde's message
/// quotes a bad payload (escaped, longer than it came), so the message is cut.
#[tokio::test]
async fn a_bad_payload_is_not_echoed_back_amplified() {
    let wss = WebSocketServer::new(opts());
    wss.on_connection(|socket: Socket, _: ConnectRequest| {
        socket.on_request("n", |n: u64| Ok::<_, String>(n))
    });
    let srv = serve(&wss).await;
    let mut c = connect(srv.local_addr()).await;
    // U+00AD: two bytes in, `\u{ad}` (seven) in serde's message, more once JSON-escaped
    let payload = "\u{ad}".repeat(20_000);
    request(&mut c, "n", json!(payload), 1).await;
    let r = reply(&mut c).await;
    assert_eq!(r["error"]["code"], "bad_payload", "{r}");
    let message = r["error"]["message"].as_str().expect("a message");
    assert!(message.len() <= 256, "{} bytes", message.len());
}

/// A `"*"` listener watches every message but answers none: a request for an event
/// with no request handler and no `on` listener is answered `no_handler` at once, and
/// the `"*"` listener still sees it.
#[tokio::test]
async fn a_wildcard_listener_does_not_swallow_a_request() {
    let wss = WebSocketServer::new(opts());
    wss.on_connection(|socket: Socket, _: ConnectRequest| {
        let s = socket.clone();
        socket.on("*", move |e: street::ws::Envelope| s.emit("seen", &e.event))?;
        Ok::<_, street::ws::SocketError>(())
    });
    let srv = serve(&wss).await;
    let mut c = connect(srv.local_addr()).await;
    request(&mut c, "nobody", json!(null), 3).await;
    let (mut replied, mut seen) = (None, None);
    while replied.is_none() || seen.is_none() {
        let v = recv_json(&mut c).await;
        match v["type"].as_str() {
            Some("street:reply") => replied = Some(v["payload"].clone()),
            Some("seen") => seen = Some(v["payload"].clone()),
            _ => panic!("unexpected {v}"),
        }
    }
    assert_eq!(
        replied.expect("reply")["error"]["code"],
        "no_handler",
        "answered at once, not left to time out"
    );
    assert_eq!(seen, Some(json!("nobody")));
}

/// A client's error reply shaped its own way is still a rejection (not a reply dropped,
/// its waiter left to time out); a request after `close()` is `Closed`; one from a raw
/// listener of the same socket is `InHandler`, at once.
#[tokio::test]
async fn odd_error_replies_close_and_raw_handlers_give_typed_errors_at_once() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let wss = WebSocketServer::new(opts());
    wss.on_connection(move |socket: Socket, _: ConnectRequest| {
        let (s, seen) = (socket.clone(), tx.clone());
        socket.on("please", move |p: Value| {
            let (s, seen) = (s.clone(), seen.clone());
            let event = p["ask"].as_str().unwrap_or("x").to_owned();
            tokio::spawn(async move {
                let got = s
                    .emit_with_ack::<_, Value>(&event, &"question", Duration::from_secs(5))
                    .await;
                let _ = seen.send((event, got, s.pending_acks()));
            });
        })?;
        let (s, seen) = (socket.clone(), tx.clone());
        socket.on("close-then-ask", move |_: Value| {
            let (s, seen) = (s.clone(), seen.clone());
            let _ = s.close(street::ws::CloseCode::NORMAL, "bye");
            tokio::spawn(async move {
                let got = s
                    .emit_with_ack::<_, Value>("late", &"question", Duration::from_secs(5))
                    .await;
                let _ = seen.send(("late".into(), got, 0));
            });
        })?;
        let (s, seen) = (socket.clone(), tx.clone());
        socket.on_raw(move |_: street::ws::RawMessage| {
            let (s, seen) = (s.clone(), seen.clone());
            async move {
                let got = s
                    .emit_with_ack::<_, Value>("from-raw", &1, Duration::from_secs(30))
                    .await;
                let _ = seen.send(("from-raw".into(), got, 0));
            }
        })?;
        Ok::<_, street::ws::SocketError>(())
    });
    let srv = serve(&wss).await;
    let mut c = connect(srv.local_addr()).await;

    send_env(&mut c, "please", json!({"ask": "a"})).await;
    let (_, id) = asked(&mut c).await;
    answer(&mut c, id, json!({"error": "nope"})).await;
    let (_, got, _) = next(&mut rx).await;
    assert_eq!(
        got,
        Err(AckError::Rejected {
            code: "rejected".into(),
            message: "nope".into()
        })
    );

    use futures_util::SinkExt;
    within(
        "binary",
        c.send(tokio_tungstenite::tungstenite::Message::binary(vec![1u8])),
    )
    .await
    .expect("send");
    let (event, got, _) = next(&mut rx).await;
    assert_eq!(
        (event.as_str(), got),
        ("from-raw", Err(AckError::InHandler))
    );

    send_env(&mut c, "close-then-ask", json!(null)).await;
    let (event, got, _) = next(&mut rx).await;
    assert_eq!((event.as_str(), got), ("late", Err(AckError::Closed)));
}
