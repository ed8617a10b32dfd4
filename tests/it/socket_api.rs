use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::common::*;
use serde::Deserialize;
use serde_json::{json, Value};
use street::ws::{
    CloseCode, CloseInfo, ConnectRequest, Envelope, ErrorEvent, RawMessage, Socket, SocketError,
    WebSocketServer,
};
use tokio::sync::mpsc;

#[derive(Debug, Deserialize)]
struct Move {
    x: i32,
    y: i32,
}

#[tokio::test]
async fn typed_handlers_errors_and_ordering() {
    let wss = WebSocketServer::new(opts());
    wss.on_connection(|socket: Socket, _: ConnectRequest| {
        let s = socket.clone();
        socket.on("move", move |m: Move| {
            s.emit("moved", &json!({"sum": m.x + m.y}))
        })?;
        // async handler: slower for smaller n; order must still be kept
        let s = socket.clone();
        socket.on("slow", move |n: u64| {
            let s = s.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(50 - n * 10)).await;
                s.emit("slow-done", &n)
            }
        })?;
        let s = socket.clone();
        socket.on_error(move |e: ErrorEvent| {
            let _ = s.emit("error-seen", &e);
        })?;
        let s = socket.clone();
        socket.on("boom", move |_: Value| -> Result<(), String> {
            let _ = &s;
            panic!("handler bug")
        })?;
        socket.on("fails", |_: Value| Err::<(), _>("nope"))?;
        Ok::<_, SocketError>(())
    });
    let srv = serve(&wss).await;
    let mut c = connect(srv.local_addr()).await;

    send_env(&mut c, "move", json!({"x": 2, "y": 3})).await;
    let r = recv_json(&mut c).await;
    assert_eq!(r["type"], "moved");
    assert_eq!(r["payload"], json!({"sum": 5}));
    assert!(r["ts"].as_i64().is_some_and(|t| t > 1_600_000_000_000));

    // wrong payload type: error event, connection stays
    send_env(&mut c, "move", json!("not a move")).await;
    let e = recv_json(&mut c).await;
    assert_eq!(e["type"], "error-seen");
    assert_eq!(e["payload"]["kind"], "payload");
    assert_eq!(e["payload"]["event"], "move");

    // malformed JSON and non-envelope JSON
    send_text(&mut c, "{not json").await;
    assert_eq!(recv_json(&mut c).await["payload"]["kind"], "malformed_json");
    send_text(&mut c, "[1,2,3]").await;
    assert_eq!(recv_json(&mut c).await["payload"]["kind"], "not_envelope");

    // panicking and failing handlers are reported, not fatal
    send_env(&mut c, "boom", json!(null)).await;
    let e = recv_json(&mut c).await;
    assert_eq!(e["payload"]["kind"], "handler");
    assert!(e["payload"]["message"]
        .as_str()
        .unwrap_or("")
        .contains("handler bug"));
    send_env(&mut c, "fails", json!(null)).await;
    assert_eq!(recv_json(&mut c).await["payload"]["message"], "nope");

    // per-socket ordering with async handlers
    for n in 0..5 {
        send_env(&mut c, "slow", json!(n)).await;
    }
    for n in 0..5 {
        let r = recv_json(&mut c).await;
        assert_eq!(
            (r["type"].as_str(), r["payload"].as_u64()),
            (Some("slow-done"), Some(n))
        );
    }
    // still alive after all that
    send_env(&mut c, "move", json!({"x": 1, "y": 1})).await;
    assert_eq!(recv_json(&mut c).await["payload"]["sum"], 2);

    let st = wss.stats();
    assert_eq!(st.payload_errors, 1);
    assert_eq!(st.malformed_json, 1);
    assert_eq!(st.not_envelope, 1);
    assert_eq!(st.handler_errors, 2);
    srv.shutdown().await;
}

#[tokio::test]
async fn wildcard_off_lifecycle_names_and_listener_limit() {
    let wss = WebSocketServer::new(opts());
    let (tx, mut rx) = mpsc::unbounded_channel::<String>();
    wss.on_connection(move |socket: Socket, _: ConnectRequest| {
        let t = tx.clone();
        socket.on("*", move |env: Envelope| {
            let _ = t.send(format!("*:{}:{}", env.event, env.payload));
        })?;
        let t = tx.clone();
        let id = socket.on("ping", move |_: Value| {
            let _ = t.send("ping-handler".into());
        })?;
        // lifecycle names are refused by `on`, with the typed method to use
        for (event, method) in [
            ("close", "on_close"),
            ("error", "on_error"),
            ("raw", "on_raw"),
        ] {
            let t = tx.clone();
            let err = socket
                .on(event, move |_: Value| {
                    let _ = t.send("never".into());
                })
                .expect_err("a lifecycle name must be refused");
            assert!(
                matches!(err, SocketError::ReservedEvent { event: e, method: m } if e == event && m == method),
                "{err:?}"
            );
            assert!(err.to_string().contains(&format!("Socket::{method}")), "{err}");
            assert_eq!(socket.listener_count(event), 0);
        }
        // ...and reachable through the typed methods, which off/listener_count name
        let t = tx.clone();
        socket.on_close(move |_: CloseInfo| {
            let _ = t.send("close-handler".into());
        })?;
        let t = tx.clone();
        socket.on_error(move |_: ErrorEvent| {
            let _ = t.send("error-handler".into());
        })?;
        let raw = socket.on_raw(|_: RawMessage| {})?;
        assert_eq!(
            (
                socket.listener_count("close"),
                socket.listener_count("error"),
                socket.listener_count("raw")
            ),
            (1, 1, 1)
        );
        assert!(socket.off("raw", raw));
        assert_eq!(socket.listener_count("raw"), 0);
        let s = socket.clone();
        socket.on("unping", move |_: Value| {
            assert!(s.off("ping", id));
            assert!(!s.off("ping", id));
        })?;
        // the 64-listener limit
        let t = tx.clone();
        socket.on("many", move |_: Value| {
            let _ = t.send("many".into());
        })?;
        for _ in 1..64 {
            socket.on("many", |_: Value| {})?;
        }
        assert_eq!(socket.listener_count("many"), 64);
        let err = socket
            .on("many", |_: Value| {})
            .expect_err("65th listener must fail");
        assert!(matches!(
            err,
            SocketError::TooManyListeners { limit: 64, .. }
        ));
        assert!(err
            .to_string()
            .contains("too many listeners for event \"many\""));
        let _ = socket.emit("ready", &());
        Ok::<_, SocketError>(())
    });
    let srv = serve(&wss).await;
    let mut c = connect(srv.local_addr()).await;
    assert_eq!(recv_json(&mut c).await["type"], "ready");

    send_env(&mut c, "ping", json!(1)).await;
    assert_eq!(
        within("rx", rx.recv()).await.as_deref(),
        Some("ping-handler")
    );
    assert_eq!(within("rx", rx.recv()).await.as_deref(), Some("*:ping:1"));
    // lifecycle names from the client do not trigger lifecycle handlers (only `*`): the
    // error handler would send "error-handler" and the close handler "close-handler"
    send_env(&mut c, "close", json!({"code": 1000, "reason": "x"})).await;
    assert_eq!(
        within("rx", rx.recv()).await.as_deref(),
        Some(r#"*:close:{"code":1000,"reason":"x"}"#)
    );
    send_env(
        &mut c,
        "error",
        json!({"kind": "handler", "event": "e", "message": "m"}),
    )
    .await;
    assert_eq!(
        within("rx", rx.recv()).await.as_deref(),
        Some(r#"*:error:{"event":"e","kind":"handler","message":"m"}"#)
    );
    send_env(&mut c, "unping", json!(null)).await;
    assert_eq!(
        within("rx", rx.recv()).await.as_deref(),
        Some("*:unping:null")
    );
    send_env(&mut c, "ping", json!(2)).await;
    assert_eq!(
        within("rx", rx.recv()).await.as_deref(),
        Some("*:ping:2"),
        "off() removed the handler"
    );
    send_env(&mut c, "many", json!(0)).await;
    assert_eq!(within("rx", rx.recv()).await.as_deref(), Some("many"));
    assert_eq!(within("rx", rx.recv()).await.as_deref(), Some("*:many:0"));
    close(&mut c).await;
    assert_eq!(
        within("rx", rx.recv()).await.as_deref(),
        Some("close-handler")
    );
    srv.shutdown().await;
}

#[tokio::test]
async fn close_handlers_run_exactly_once_for_each_way_of_ending() {
    let wss = WebSocketServer::new(opts());
    let (tx, mut rx) = mpsc::unbounded_channel::<(String, CloseInfo)>();
    let count = Arc::new(AtomicUsize::new(0));
    let cnt = count.clone();
    wss.on_connection(move |socket: Socket, req: ConnectRequest| {
        let who = req.query_param("who").unwrap_or_default();
        let (t, c1, w) = (tx.clone(), cnt.clone(), who.clone());
        socket.on_close(move |info: CloseInfo| {
            c1.fetch_add(1, Ordering::SeqCst);
            let _ = t.send((w.clone(), info));
        })?;
        let s = socket.clone();
        socket.on("quit", move |code: u16| {
            match s.close(CloseCode(code), "server says bye") {
                // a code the app may not send: typed error, nothing sent, still open
                Err(SocketError::InvalidCloseCode(c)) => s.emit("refused", &c.0),
                other => other,
            }
        })?;
        Ok::<_, SocketError>(())
    });
    let srv = serve(&wss).await;
    let addr = srv.local_addr();

    // 1. peer closes
    let mut a = connect_path(addr, "/ws?who=peer").await;
    close(&mut a).await;
    let (w, info) = within("close", rx.recv()).await.expect("info");
    assert_eq!((w.as_str(), info.code.0), ("peer", 1000));

    // 2. server closes (with an app code, like the seed's 4001)
    let mut b = connect_path(addr, "/ws?who=server").await;
    send_env(&mut b, "quit", json!(4001)).await;
    assert_eq!(recv_close(&mut b).await, (4001, "server says bye".into()));
    let (w, info) = within("close", rx.recv()).await.expect("info");
    assert_eq!(
        (w.as_str(), info.code.0, info.reason.as_str()),
        ("server", 4001, "server says bye")
    );

    // 3. invalid close codes are refused by the API and do not close
    let mut c = connect_path(addr, "/ws?who=bad").await;
    for code in [1006, 1005, 1015, 1004, 999, 2000, 5000] {
        send_env(&mut c, "quit", json!(code)).await;
        let r = recv_json(&mut c).await;
        assert_eq!(
            (r["type"].as_str(), r["payload"].as_u64()),
            (Some("refused"), Some(code))
        );
    }
    send_env(&mut c, "quit", json!(1000)).await;
    assert_eq!(recv_close(&mut c).await.0, 1000);
    let (w, _) = within("close", rx.recv()).await.expect("info");
    assert_eq!(w, "bad");

    // 4. peer vanishes (TCP dropped without a close frame)
    let (raw, _) = raw_connect(addr, "/ws?who=vanish", "").await;
    eventually("registered", || wss.connection_count() == 1).await;
    drop(raw);
    let (w, info) = within("close", rx.recv()).await.expect("info");
    assert_eq!((w.as_str(), info.code.0), ("vanish", 1006));

    assert_eq!(count.load(Ordering::SeqCst), 4);
    assert_eq!(wss.connection_count(), 0);
    srv.shutdown().await;
    assert!(rx.try_recv().is_err(), "no handler ran twice");
}

#[tokio::test]
async fn typed_per_socket_data_and_clients_subset() {
    #[derive(Clone, PartialEq, Debug)]
    struct UserId(String);
    let wss = WebSocketServer::new(opts());
    wss.on_connection(|socket: Socket, req: ConnectRequest| {
        if let Some(u) = req.query_param("user") {
            socket.set(UserId(u));
        }
        let _ = socket.emit("ready", &());
    });
    let srv = serve(&wss).await;
    let addr = srv.local_addr();
    let mut alice = connect_path(addr, "/ws?user=alice").await;
    let mut bob = connect_path(addr, "/ws?user=bob").await;
    let mut anon = connect_path(addr, "/ws").await;
    for c in [&mut alice, &mut bob, &mut anon] {
        assert_eq!(recv_json(c).await["type"], "ready");
    }
    // the seed's "broadcast to a subset" loop
    let mut sent = 0;
    for socket in wss.clients() {
        if socket.get::<UserId>() == Some(UserId("bob".into())) {
            socket
                .emit(
                    "notification",
                    &json!({"message": "You have a new message"}),
                )
                .expect("emit");
            sent += 1;
        }
    }
    assert_eq!(sent, 1);
    assert_eq!(
        recv_json(&mut bob).await["payload"]["message"],
        "You have a new message"
    );
    wss.broadcast("tick", &1).expect("broadcast");
    assert_eq!(
        recv_json(&mut alice).await["type"],
        "tick",
        "alice got nothing before the broadcast"
    );
    assert_eq!(recv_json(&mut anon).await["type"], "tick");
    assert_eq!(wss.connection_count(), 3);
    srv.shutdown().await;
}

#[tokio::test]
async fn listeners_and_their_captures_are_released_when_the_socket_closes() {
    let wss = WebSocketServer::new(opts());
    let sentinel = Arc::new(());
    let (tx, mut rx) = mpsc::unbounded_channel::<Socket>();
    let held = sentinel.clone();
    wss.on_connection(move |socket: Socket, _: ConnectRequest| {
        // a handler that captures the socket itself (a reference cycle) and the sentinel
        let (s, h) = (socket.clone(), held.clone());
        socket.on("x", move |_: Value| {
            let _ = (&s, &h);
        })?;
        let _ = tx.send(socket.clone());
        Ok::<_, SocketError>(())
    });
    let srv = serve(&wss).await;
    let mut c = connect(srv.local_addr()).await;
    let socket = within("socket", rx.recv()).await.expect("socket");
    assert!(!socket.closed());
    assert_eq!(
        Arc::strong_count(&sentinel),
        3,
        "sentinel + on_connection closure + listener"
    );
    close(&mut c).await;
    eventually("socket finished", || wss.connection_count() == 0).await;
    assert!(socket.closed());
    assert_eq!(socket.listener_count("x"), 0);
    assert_eq!(
        Arc::strong_count(&sentinel),
        2,
        "the listener (and its cycle) was dropped"
    );
    assert!(matches!(socket.emit("late", &1), Err(SocketError::Closed)));
    srv.shutdown().await;
}

/// A second `on_connection` adds a handler (like Node's `on('connection')`): they run in
/// registration order, each (async ones too) finishing before the next; an error in one
/// closes with 1011 and the later ones do not run.
#[tokio::test]
async fn connection_handlers_add_up_and_run_in_order() {
    #[derive(Clone)]
    struct First;
    let wss = WebSocketServer::new(opts());
    let (tx, mut rx) = mpsc::unbounded_channel::<String>();
    let t = tx.clone();
    wss.on_connection(move |socket: Socket, _: ConnectRequest| {
        socket.set(First);
        let t2 = t.clone();
        socket.on_close(move |_: CloseInfo| {
            let _ = t2.send("closed".into());
        })?;
        let _ = t.send("1".into());
        Ok::<_, SocketError>(())
    });
    let t = tx.clone();
    wss.on_connection(move |socket: Socket, req: ConnectRequest| {
        let t = t.clone();
        async move {
            // async: the next handler must wait for this future
            tokio::task::yield_now().await;
            assert!(
                socket.get::<First>().is_some(),
                "the first handler ran before"
            );
            let _ = t.send("2".into());
            match req.query_param("fail") {
                Some(_) => Err("second handler failed"),
                None => Ok(()),
            }
        }
    });
    let t = tx.clone();
    wss.on_connection(move |socket: Socket, _: ConnectRequest| {
        let _ = t.send("3".into());
        socket.emit("ready", &())
    });
    let srv = serve(&wss).await;
    let addr = srv.local_addr();

    let mut c = connect(addr).await;
    assert_eq!(recv_json(&mut c).await["type"], "ready");
    for want in ["1", "2", "3"] {
        assert_eq!(within("rx", rx.recv()).await.as_deref(), Some(want));
    }
    close(&mut c).await;
    assert_eq!(within("rx", rx.recv()).await.as_deref(), Some("closed"));

    // the second fails: 1011, and the third never runs (the close handler comes next)
    let mut c = connect_path(addr, "/ws?fail=1").await;
    assert_eq!(recv_close(&mut c).await, (1011, "internal error".into()));
    for want in ["1", "2", "closed"] {
        assert_eq!(within("rx", rx.recv()).await.as_deref(), Some(want));
    }
    assert_eq!(wss.stats().handler_errors, 1);
    srv.shutdown().await;
    assert!(rx.try_recv().is_err());
}

/// A second `on_protocol` with the same name adds a handler for that subprotocol.
#[tokio::test]
async fn protocol_handlers_for_one_name_add_up() {
    let wss = WebSocketServer::new(opts());
    wss.on_protocol("echo-v1", |socket: Socket, _: ConnectRequest| {
        let s = socket.clone();
        socket.on_raw(move |m: RawMessage| s.send_raw(m))?;
        Ok::<_, SocketError>(())
    });
    wss.on_protocol("echo-v1", |socket: Socket, _: ConnectRequest| {
        socket.send_text("hello")
    });
    let srv = serve(&wss).await;
    let mut c = try_connect_with(
        srv.local_addr(),
        "/ws",
        &[("sec-websocket-protocol", "echo-v1")],
    )
    .await
    .expect("connect");
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let next_text = |m: Option<Result<Message, _>>| match m {
        Some(Ok(Message::Text(t))) => t.to_string(),
        other => panic!("expected text, got {other:?}"),
    };
    assert_eq!(next_text(within("hello", c.next()).await), "hello");
    c.send(Message::text("ping")).await.expect("send");
    assert_eq!(next_text(within("echo", c.next()).await), "ping");
    close(&mut c).await;
    srv.shutdown().await;
}
