//! `client/street.js`, the browser client, driven from Node (with `ws`): it speaks the
//! `@streetjs/websocket` wire to the real StreetJS server, and a thousand of them come
//! back after a restart honouring the server's retry hint, spread by jitter.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::*;

/// Spawn `node tests/js/street_client.js ARGS…`; its stdout lines arrive on the channel.
fn street_client(
    args: &[&str],
) -> (
    std::process::Child,
    tokio::sync::mpsc::UnboundedReceiver<String>,
) {
    let js = js_dir();
    spawn_lines(
        Command::new("node")
            .arg(js.join("street_client.js"))
            .args(args)
            .current_dir(&js),
    )
}

async fn line(rx: &mut tokio::sync::mpsc::UnboundedReceiver<String>, within_s: u64) -> String {
    let l = tokio::time::timeout(Duration::from_secs(within_s), rx.recv())
        .await
        .expect("a line from node in time")
        .expect("node exited early");
    assert!(!l.starts_with("ERROR"), "{l}");
    l
}

#[tokio::test]
async fn street_js_speaks_the_streetjs_wire_to_the_real_streetjs_server() {
    let js = js_dir();
    assert!(
        js.join("node_modules/@streetjs/websocket").exists(),
        "@streetjs/websocket is not installed in tests/js; run scripts/test"
    );
    let port = crate::examples::free_port();
    let mut server = Command::new("node")
        .arg(js.join("streetjs-server.mjs"))
        .args(["--addr", &format!("127.0.0.1:{port}")])
        .current_dir(&js)
        .stdout(Stdio::null())
        .spawn()
        .expect("node streetjs server");
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    crate::examples::wait_listening(addr).await;
    let (mut client, mut rx) = street_client(&["wire", &format!("ws://127.0.0.1:{port}/ws")]);
    let report = line(&mut rx, 20).await;
    let _ = client.wait();
    let _ = server.kill();
    let _ = server.wait();
    let v: serde_json::Value = serde_json::from_str(&report).expect("json");
    assert_eq!(v["echo"]["p"], serde_json::json!({"hello": "world"}), "{v}");
    assert_eq!(v["echo"]["ts"], "number", "{v}");
    assert_eq!(v["broadcastA"], serde_json::json!([1, "two"]), "{v}");
    assert_eq!(v["broadcastB"], serde_json::json!([1, "two"]), "{v}");
    assert_eq!(
        v["states"],
        serde_json::json!(["connecting", "open"]),
        "{v}"
    );
}

/// A restart under 1 000 street.js clients: every one gets 1001 with the server's hint
/// (`--reconnect-hint-ms 1000`), waits at least the hint, and the jitter spreads them over
/// the next second instead of one burst.
#[tokio::test]
async fn street_js_clients_come_back_after_a_restart_honouring_the_hint_with_jitter() {
    const N: u64 = 1000;
    let port = crate::examples::free_port();
    let args = ["--reconnect-hint-ms", "1000"];
    let mut old = crate::examples::start_with("bench_server", port, &args, &[]).await;
    let (mut client, mut rx) = street_client(&[
        "reconnect",
        &format!("ws://127.0.0.1:{port}/ws"),
        &N.to_string(),
    ]);
    assert_eq!(line(&mut rx, 30).await, format!("READY {N}"));
    old.signal("-TERM");
    assert!(old.exited().await.success());
    let _new = crate::examples::start_with("bench_server", port, &args, &[]).await;
    let report = line(&mut rx, 40).await;
    let _ = client.wait();
    println!("street.js restart under {N} clients: {report}");
    let v: serde_json::Value = serde_json::from_str(&report).expect("json");
    assert_eq!(
        v["closes"],
        serde_json::json!({"1001 Going Away retry=1000": N}),
        "{v}"
    );
    assert_eq!(v["reconnected"], N, "{v}");
    let f = |k: &str| v[k].as_f64().expect(k);
    assert!(f("back_min_ms") >= 1000.0, "the hint is a minimum: {v}");
    assert!(
        f("back_p90_ms") - f("back_p10_ms") >= 400.0,
        "spread by jitter: {v}"
    );
    assert!(
        f("peak_reconnects_per_100ms") <= (N / 4) as f64,
        "no burst: {v}"
    );
}
