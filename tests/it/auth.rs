use crate::common::*;
use street::ws::{AuthRejection, ConnectRequest, Socket, WebSocketServer};

#[derive(Clone, Debug, PartialEq)]
struct Claims {
    user: String,
    agent: String,
    peer_is_loopback: bool,
}

#[tokio::test]
async fn auth_hook_runs_before_the_upgrade_and_its_value_rides_on_the_socket() {
    let wss = WebSocketServer::new(opts());
    wss.auth(|req: ConnectRequest| async move {
        assert_eq!(req.method(), http::Method::GET);
        match req.query_param("token").as_deref() {
            Some("good") => Ok(Claims {
                user: "u1".into(),
                agent: req
                    .headers()
                    .get("x-agent")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .into(),
                peer_is_loopback: req.remote_addr().is_some_and(|a| a.ip().is_loopback()),
            }),
            Some("boom") => panic!("hook bug"),
            _ => Err(AuthRejection::new("bad token")),
        }
    });
    wss.on_connection(|socket: Socket, _: ConnectRequest| {
        let c = socket.get::<Claims>();
        let _ = socket.emit(
            "hello",
            &serde_json::json!({"user": c.as_ref().map(|c| c.user.clone()), "agent": c.as_ref().map(|c| c.agent.clone()), "loop": c.map(|c| c.peer_is_loopback)}),
        );
    });
    let srv = serve(&wss).await;
    let addr = srv.local_addr();

    assert_eq!(
        try_connect_with(addr, "/ws?token=bad", &[]).await.err(),
        Some(401)
    );
    assert_eq!(try_connect_with(addr, "/ws", &[]).await.err(), Some(401));
    // a hook that panics is a 401 too, and the server keeps serving
    assert_eq!(
        try_connect_with(addr, "/ws?token=boom", &[]).await.err(),
        Some(401)
    );
    let (_, head) = raw_connect(addr, "/ws?token=bad", "").await;
    assert!(head.starts_with("HTTP/1.1 401"), "{head}");

    let mut c = try_connect_with(addr, "/ws?token=good", &[("x-agent", "test")])
        .await
        .expect("connect");
    let hello = recv_json(&mut c).await;
    assert_eq!(
        hello["payload"],
        serde_json::json!({"user": "u1", "agent": "test", "loop": true})
    );
    assert_eq!(wss.stats().rejected_auth, 4);
    srv.shutdown().await;
}

#[derive(Clone, Debug, PartialEq)]
struct User(String);
#[derive(Clone, Debug, PartialEq)]
struct Role(String);

/// A second `auth` adds a hook: both run in order, both values ride on the socket, and
/// the first rejection is a 401 (later hooks do not run).
#[tokio::test]
async fn auth_hooks_add_up_all_must_accept_and_each_value_is_attached() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    let wss = WebSocketServer::new(opts());
    let second_ran = Arc::new(AtomicUsize::new(0));
    let connected = Arc::new(AtomicUsize::new(0));
    wss.auth(|req: ConnectRequest| async move {
        match req.query_param("token").as_deref() {
            Some("good") => Ok(User("u1".into())),
            _ => Err(AuthRejection::new("bad token")),
        }
    });
    let ran = second_ran.clone();
    wss.auth(move |req: ConnectRequest| {
        ran.fetch_add(1, Ordering::SeqCst);
        async move {
            match req.query_param("role") {
                Some(r) if r != "banned" => Ok(Role(r)),
                _ => Err(AuthRejection::new("no role")),
            }
        }
    });
    let conns = connected.clone();
    wss.on_connection(move |socket: Socket, _: ConnectRequest| {
        conns.fetch_add(1, Ordering::SeqCst);
        let user = socket.get::<User>().map(|u| u.0);
        let role = socket.get::<Role>().map(|r| r.0);
        let _ = socket.emit("hello", &serde_json::json!({"user": user, "role": role}));
    });
    let srv = serve(&wss).await;
    let addr = srv.local_addr();

    // both accept: both values are on the socket
    let mut c = try_connect_with(addr, "/ws?token=good&role=admin", &[])
        .await
        .expect("connect");
    assert_eq!(
        recv_json(&mut c).await["payload"],
        serde_json::json!({"user": "u1", "role": "admin"})
    );
    assert_eq!(second_ran.load(Ordering::SeqCst), 1);

    // the second rejects: 401
    for path in ["/ws?token=good&role=banned", "/ws?token=good"] {
        assert_eq!(try_connect_with(addr, path, &[]).await.err(), Some(401));
    }
    assert_eq!(second_ran.load(Ordering::SeqCst), 3);

    // the first rejects: 401, and the second never ran
    assert_eq!(
        try_connect_with(addr, "/ws?token=bad&role=admin", &[])
            .await
            .err(),
        Some(401)
    );
    assert_eq!(second_ran.load(Ordering::SeqCst), 3);
    assert_eq!(wss.stats().rejected_auth, 3);
    assert_eq!(
        connected.load(Ordering::SeqCst),
        1,
        "refused upgrades never connect"
    );
    srv.shutdown().await;
}
