//! The Prometheus route over real traffic: counters and the fan-out histogram move.

use crate::common::*;
use serde_json::json;
use street::metrics::Metrics;
use street::ws::{ConnectRequest, Socket, SocketError, WebSocketServer};

/// The value of the sample line `series` (exact match of everything before the value).
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no sample {series} in\n{text}"))
}

#[tokio::test]
async fn metrics_count_connections_messages_rejections_and_fanout() {
    let wss =
        WebSocketServer::new(opts().with_allowed_origins(vec!["https://good.example".into()]));
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

/// The exposition is valid for a real parser (Python's `prometheus_client`, installed by
/// scripts/test into a venv named by `STREET_TEST_PYTHON`) with everything registered
/// twice: each family comes once, in one group, whatever the number of servers and rooms
/// reporting it.
#[tokio::test]
async fn the_exposition_parses_with_two_of_everything() {
    let (w1, w2) = (
        WebSocketServer::new(opts()),
        WebSocketServer::new(opts().with_path("/ws2")),
    );
    let app = street::app(app_opts());
    let metrics = Metrics::new();
    metrics.websocket("one", &w1);
    metrics.websocket("two", &w2);
    metrics.sse(app.sse_registry());
    metrics.http(&app.http_stats());
    let r1 = street::rooms::Rooms::new(&w1, Default::default())
        .await
        .expect("rooms");
    let r2 = street::rooms::Rooms::new(&w2, Default::default())
        .await
        .expect("rooms");
    metrics.rooms("r1", &r1);
    metrics.rooms("r2", &r2);
    metrics.track("logins", 1);
    metrics.gauge("queue", 2.5);
    let srv = serve_app(app.websocket(&w1).websocket(&w2)).await;
    let _c = connect(srv.local_addr()).await;
    let text = metrics.render();

    let python = std::env::var("STREET_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let check = r#"
import sys
from prometheus_client.parser import text_string_to_metric_families
names = []
samples = 0
for f in text_string_to_metric_families(sys.stdin.read()):
    names.append(f.name)
    samples += len(f.samples)
dup = sorted({n for n in names if names.count(n) > 1})
assert not dup, "families split into several groups: %s" % dup
print(len(names), samples)
"#;
    let mut child = std::process::Command::new(&python)
        .args(["-c", check])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{python}: {e} (scripts/test sets STREET_TEST_PYTHON)"));
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(text.as_bytes()).expect("write");
    }
    let out = within(
        "the parser",
        tokio::task::spawn_blocking(move || child.wait_with_output()),
    )
    .await
    .expect("join")
    .expect("parser output");
    assert!(
        out.status.success(),
        "prometheus_client refused the exposition: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let counts = String::from_utf8_lossy(&out.stdout);
    let families: usize = counts
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .expect("a count");
    assert!(families > 40, "{counts}");
    // both servers' samples are in the one family
    assert!(
        text.contains("street_ws_connections{server=\"one\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("street_ws_connections{server=\"two\"} 0"),
        "{text}"
    );
    assert_eq!(
        text.matches("# TYPE street_ws_connections gauge").count(),
        1
    );
    srv.shutdown().await;
}
