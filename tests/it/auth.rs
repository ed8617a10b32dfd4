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
