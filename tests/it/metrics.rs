//! The Prometheus route over real traffic: counters and the fan-out histogram move.

use crate::common::*;
use serde_json::json;
use street::metrics::Metrics;
use street::ws::{ConnectRequest, Socket, SocketError, WebSocketServer, WsOptions};

/// The value of the sample line `series` (exact match of everything before the value).
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no sample {series} in\n{text}"))
}

#[tokio::test]
async fn metrics_count_connections_messages_rejections_and_fanout() {
    let wss = WebSocketServer::new(WsOptions {
        allowed_origins: vec!["https://good.example".into()],
        ..opts()
    });
    let hub = wss.clone();
    wss.on_connection(move |socket: Socket, _: ConnectRequest| {
        let h = hub.clone();
        socket.on("shout", move |p: serde_json::Value| {
            h.broadcast("shout", &p)
        })?;
        Ok::<_, SocketError>(())
    });
    let app = street::app(app_opts());
    let metrics = Metrics::new();
    metrics.websocket("chat", &wss);
    metrics.sse(app.sse_registry());
    metrics.track("logins", 2);
    let srv = serve_app(app.websocket(&wss).route("/metrics", metrics.route())).await;
    let addr = srv.local_addr();
    let mut a = connect(addr).await;
    let mut b = connect(addr).await;
    assert_eq!(
        try_connect_with(addr, "/ws", &[("origin", "https://evil.example")])
            .await
            .err(),
        Some(403)
    );
    send_env(&mut a, "shout", json!("hi")).await;
    assert_eq!(recv_json(&mut b).await["payload"], "hi");
    assert_eq!(recv_json(&mut a).await["payload"], "hi");

    let resp = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .expect("get");
    assert_eq!(
        resp.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let text = resp.text().await.expect("text");
    assert_eq!(sample(&text, "street_ws_connections{server=\"chat\"}"), 2.0);
    assert_eq!(
        sample(
            &text,
            "street_ws_connections_accepted_total{server=\"chat\"}"
        ),
        2.0
    );
    assert_eq!(
        sample(
            &text,
            "street_ws_connections_rejected_total{server=\"chat\",reason=\"origin\"}"
        ),
        1.0
    );
    assert_eq!(
        sample(&text, "street_ws_messages_in_total{server=\"chat\"}"),
        1.0
    );
    assert!(sample(&text, "street_ws_messages_out_total{server=\"chat\"}") >= 2.0);
    assert_eq!(
        sample(&text, "street_ws_broadcasts_total{server=\"chat\"}"),
        1.0
    );
    assert_eq!(
        sample(
            &text,
            "street_ws_fanout_duration_seconds_count{server=\"chat\"}"
        ),
        1.0
    );
    assert_eq!(
        sample(
            &text,
            "street_ws_fanout_duration_seconds_bucket{server=\"chat\",le=\"+Inf\"}"
        ),
        1.0
    );
    assert_eq!(sample(&text, "street_sse_streams"), 0.0);
    assert_eq!(
        sample(&text, "street_app_events_total{event=\"logins\"}"),
        2.0
    );
    assert!(sample(&text, "process_resident_memory_bytes") > 1e6);
    // every series has one HELP and one TYPE
    for l in text.lines().filter(|l| l.starts_with("# TYPE ")) {
        assert_eq!(text.matches(&format!("{l}\n")).count(), 1, "{l}");
    }
    close(&mut a).await;
    close(&mut b).await;
    srv.shutdown().await;
}
