use crate::common::*;
use street::ws::WebSocketServer;

#[tokio::test]
async fn same_origin_rule_without_allowed_origins() {
    let wss = WebSocketServer::new(opts());
    let srv = serve(&wss).await;
    let addr = srv.local_addr();
    let own = format!("http://{addr}");
    assert!(
        try_connect_with(addr, "/ws", &[]).await.is_ok(),
        "no Origin: allowed"
    );
    assert!(try_connect_with(addr, "/ws", &[("Origin", &own)])
        .await
        .is_ok());
    assert_eq!(
        try_connect_with(addr, "/ws", &[("Origin", "http://evil.example")])
            .await
            .err(),
        Some(403)
    );
    assert_eq!(
        try_connect_with(addr, "/ws", &[("Origin", "garbage")])
            .await
            .err(),
        Some(403)
    );
    assert_eq!(
        try_connect_with(addr, "/ws", &[("Origin", "null")])
            .await
            .err(),
        Some(403)
    );
    assert_eq!(wss.stats().rejected_origin, 3);
    assert_eq!(wss.stats().accepted, 2);
    srv.shutdown().await;
}

#[tokio::test]
async fn allowed_origins_are_normalized() {
    let wss =
        WebSocketServer::new(opts().with_allowed_origins(vec!["https://App.Example.com".into()]));
    let srv = serve(&wss).await;
    let addr = srv.local_addr();
    assert!(
        try_connect_with(addr, "/ws", &[("Origin", "https://app.example.com:443")])
            .await
            .is_ok()
    );
    assert_eq!(
        try_connect_with(addr, "/ws", &[("Origin", "http://app.example.com")])
            .await
            .err(),
        Some(403)
    );
    // with an allow-list, even the own origin must be listed
    let own = format!("http://{addr}");
    assert_eq!(
        try_connect_with(addr, "/ws", &[("Origin", &own)])
            .await
            .err(),
        Some(403)
    );
    srv.shutdown().await;
}
