//! Chaos: a frozen client process, and shutdown in the middle of a broadcast loop.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::*;
use futures_util::StreamExt;
use street::ws::{CloseInfo, ConnectRequest, Socket, WebSocketServer, WsOptions};
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn a_sigstopped_node_client_is_reaped_within_two_heartbeat_intervals() {
    let js = js_dir();
    let interval = Duration::from_millis(300);
    let wss = WebSocketServer::new(WsOptions {
        heartbeat_interval: interval,
        ..opts()
    });
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
        (info.code, info.reason.as_str()),
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
