//! Node's `ws` (what `@streetjs/websocket` runs on) as the client.

use std::process::Command;

use crate::common::*;

#[tokio::test]
async fn node_ws_client_emits_receives_broadcasts_and_sees_1013() {
    let js = js_dir();
    let wss = echo_server(opts().with_max_connections(2));
    let srv = serve(&wss).await;
    let port = srv.local_addr().port().to_string();
    let output = within(
        "node client",
        tokio::task::spawn_blocking(move || {
            Command::new("node")
                .arg(js.join("interop.js"))
                .arg(port)
                .output()
        }),
    )
    .await
    .expect("join")
    .expect("node runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let v: serde_json::Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("{e}: {stdout} {}", String::from_utf8_lossy(&output.stderr)));
    assert!(
        v.get("error").is_none() && v.get("timeout").is_none(),
        "{v}"
    );
    assert_eq!(v["echo"]["type"], "echo");
    assert_eq!(
        v["echo"]["payload"],
        serde_json::json!({"text": "héllo", "n": 1})
    );
    assert!(v["echo"]["ts"].is_i64());
    assert_eq!(v["broadcastA"]["payload"], "to all");
    assert_eq!(v["broadcastB"]["payload"], "to all");
    assert_eq!(
        v["overCap"],
        serde_json::json!({"code": 1013, "reason": "Server at capacity"})
    );
    srv.shutdown().await;
}
