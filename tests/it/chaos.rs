//! Chaos: a frozen client process, shutdown in the middle of a broadcast loop, 10 000
//! connections in cycles (leaks), and a restart under 5 000 reconnecting clients.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::*;
use futures_util::StreamExt;
use street::ws::{CloseInfo, ConnectRequest, Socket, WebSocketServer};
use tokio_tungstenite::tungstenite::Message;

/// The load tool's binary (scripts/test builds it next to the examples' target dir).
fn street_bench() -> std::path::PathBuf {
    let bench = crate::examples::example_path("bench_server")
        .parent()
        .and_then(|p| p.parent())
        .map(|d| d.join("street-bench"))
        .expect("target dir");
    assert!(
        bench.exists(),
        "{} is missing: scripts/test builds it",
        bench.display()
    );
    bench
}

#[tokio::test]
async fn a_sigstopped_node_client_is_reaped_within_two_heartbeat_intervals() {
    let js = js_dir();
    let interval = Duration::from_millis(300);
    let wss = WebSocketServer::new(opts().with_heartbeat_interval(interval));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<CloseInfo>();
    wss.on_connection(move |socket: Socket, _: ConnectRequest| {
        let tx = tx.clone();
        socket.on_close(move |i: CloseInfo| {
            let _ = tx.send(i);
        })
    });
    let srv = serve(&wss).await;
    let mut child = Command::new("node")
        .arg(js.join("stopped.js"))
        .arg(srv.local_addr().port().to_string())
        .stdout(Stdio::piped())
        .spawn()
        .expect("node");
    let stdout = child.stdout.take().expect("stdout");
    let line = within(
        "node to connect",
        tokio::task::spawn_blocking(move || {
            let mut l = String::new();
            let _ = BufReader::new(stdout).read_line(&mut l);
            l
        }),
    )
    .await
    .expect("join");
    assert_eq!(line.trim(), "open");
    eventually("registered", || wss.connection_count() == 1).await;
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-STOP", &pid])
        .status()
        .expect("kill")
        .success());
    let stopped_at = Instant::now();
    let info = within("reap", rx.recv()).await.expect("close info");
    let took = stopped_at.elapsed();
    let _ = Command::new("kill").args(["-CONT", &pid]).status();
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(
        (info.code.0, info.reason.as_str()),
        (1006, "heartbeat timeout")
    );
    assert!(
        took <= interval * 2 + Duration::from_millis(300),
        "reaped after {took:?}"
    );
    assert_eq!(wss.stats().reaped, 1);
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_while_broadcasting_loses_no_message_emitted_before_close() {
    const CLIENTS: usize = 20;
    let wss = WebSocketServer::new(opts());
    let srv = serve(&wss).await;
    let mut readers = Vec::new();
    for _ in 0..CLIENTS {
        let mut c = connect(srv.local_addr()).await;
        readers.push(tokio::spawn(async move {
            let mut seqs = Vec::new();
            loop {
                match c.next().await {
                    Some(Ok(Message::Text(t))) => {
                        let v: serde_json::Value = serde_json::from_str(&t).expect("json");
                        seqs.push(v["payload"].as_u64().expect("seq"));
                    }
                    Some(Ok(Message::Close(f))) => return (seqs, f.map(|f| u16::from(f.code))),
                    Some(Ok(_)) => {}
                    other => panic!("ended without a close frame: {other:?}"),
                }
            }
        }));
    }
    eventually("all registered", || wss.connection_count() == CLIENTS).await;

    // A broadcaster that never stops on its own; `last_full` is the last sequence number
    // that was queued for every client.
    let last_full = Arc::new(AtomicU64::new(u64::MAX));
    let (started_tx, started_rx) = tokio::sync::oneshot::channel::<()>();
    let broadcaster = {
        let (wss, last_full) = (wss.clone(), last_full.clone());
        tokio::spawn(async move {
            let mut started = Some(started_tx);
            for seq in 0u64.. {
                let n = wss.broadcast("n", &seq).expect("broadcast");
                if n == 0 {
                    return seq;
                }
                assert_eq!(n, CLIENTS, "a broadcast reaches every client or none");
                last_full.store(seq, Ordering::SeqCst);
                if seq == 500 {
                    if let Some(tx) = started.take() {
                        let _ = tx.send(());
                    }
                }
                tokio::task::yield_now().await;
            }
            unreachable!()
        })
    };
    within("500 broadcasts", started_rx).await.expect("started");
    within("close()", wss.close()).await;
    within("broadcaster to stop", broadcaster)
        .await
        .expect("join");
    let last = last_full.load(Ordering::SeqCst);
    assert!(last >= 500);
    for r in readers {
        let (seqs, code) = within("reader", r).await.expect("reader");
        assert_eq!(code, Some(1001));
        assert_eq!(
            seqs.len() as u64,
            last + 1,
            "every message queued before close() arrived"
        );
        assert!(
            seqs.iter().enumerate().all(|(i, s)| *s == i as u64),
            "in order, no gaps"
        );
    }
    srv.shutdown().await;
}

/// 10 000 connections opened and closed three times: the server's RSS with all of them
/// open stays within 10% of the first cycle (no per-connection leak). The server is the
/// bench_server example in its own process; the load tool opens the connections.
#[tokio::test]
async fn ten_thousand_connections_in_three_cycles_leave_server_rss_flat() {
    let bench = street_bench();
    let ex = crate::examples::start("bench_server", &[]).await;
    let pid = ex.child.id().to_string();
    let url = format!("ws://{}/ws", ex.addr);
    let mut rss = Vec::new();
    for _ in 0..3 {
        let (bench, url, pid) = (bench.clone(), url.clone(), pid.clone());
        let out = tokio::time::timeout(
            Duration::from_secs(60),
            tokio::task::spawn_blocking(move || {
                Command::new(bench)
                    .args([
                        "idle",
                        "--url",
                        &url,
                        "--connections",
                        "10000",
                        "--server-pid",
                        &pid,
                        "--json",
                    ])
                    .output()
            }),
        )
        .await
        .expect("a cycle within 60 s")
        .expect("join")
        .expect("street-bench runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        assert_eq!(v["connections"], 10_000, "{v}");
        assert_eq!(v["failed"], 0, "{v}");
        rss.push(v["server_rss_kib"].as_f64().expect("rss"));
    }
    assert!(
        rss[2] <= rss[0] * 1.10,
        "RSS with 10k open per cycle (KiB): {rss:?}"
    );
    assert!(
        rss[1] <= rss[0] * 1.10,
        "RSS with 10k open per cycle (KiB): {rss:?}"
    );
}

/// A server restart under 5 000 connections: every client gets 1001, and the load tool's
/// reconnecting clients (exponential backoff with full jitter over a 2 s window) come
/// back spread over the window instead of in one burst. The figures are printed for the
/// record; the assertions are on counts and on the shape of the spread.
#[tokio::test]
async fn a_restart_under_5000_connections_sends_1001_and_reconnects_spread_by_jitter() {
    const N: u64 = 5_000;
    let bench = street_bench();
    let port = crate::examples::free_port();
    let mut old = crate::examples::start_on("bench_server", port, &[]).await;
    let (mut tool, mut rx) = spawn_lines(Command::new(bench).args([
        "restart",
        "--url",
        &format!("ws://127.0.0.1:{port}/ws"),
        "--connections",
        &N.to_string(),
        "--reconnect-window-ms",
        "2000",
        "--timeout",
        "40",
        "--json",
    ]));
    let ready = tokio::time::timeout(Duration::from_secs(60), rx.recv())
        .await
        .expect("5 000 connected within 60 s")
        .expect("line");
    assert_eq!(ready, format!("READY {N}"));
    old.signal("-TERM");
    assert!(old.exited().await.success());
    let _new = crate::examples::start_on("bench_server", port, &[]).await;
    let report = tokio::time::timeout(Duration::from_secs(60), rx.recv())
        .await
        .expect("report within 60 s")
        .expect("line");
    let _ = tool.wait();
    println!("restart under {N} connections: {report}");
    let v: serde_json::Value = serde_json::from_str(&report).expect("json");
    assert_eq!(v["closed_1001"], N, "{v}");
    assert_eq!(v["reconnected"], N, "{v}");
    let f = |k: &str| v[k].as_f64().expect(k);
    // uniform over 2 s puts p10..p90 about 1.6 s apart; a burst would put them together
    assert!(f("back_p90_ms") - f("back_p10_ms") >= 800.0, "{v}");
    // uniform: about 250 per 100 ms; without jitter, all 5 000 in one
    assert!(f("peak_reconnects_per_100ms") <= (N / 5) as f64, "{v}");
}
