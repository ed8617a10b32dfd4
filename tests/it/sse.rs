//! Server-Sent Events over real HTTP: exact bytes, heartbeats, disconnect detection,
//! close, slow readers.

use std::time::{Duration, Instant};

use crate::common::*;
use futures_util::StreamExt;
use serde_json::json;
use street::sse::{Sse, SseError, SseEvent, SseOptions};
use tokio::sync::mpsc;

async fn serve_sse(opts: SseOptions) -> (street::app::ServerHandle, mpsc::UnboundedReceiver<Sse>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let route = axum::routing::get(move || {
        let (tx, opts) = (tx.clone(), opts.clone());
        async move {
            let (sse, resp) = street::sse::create_with(opts);
            let _ = tx.send(sse);
            resp
        }
    });
    // Ending SSE streams at shutdown is not built yet (issue 5): bound the wait instead.
    let app = street::app(street::AppOptions {
        shutdown_timeout: Duration::from_secs(1),
        ..app_opts()
    });
    (serve_app(app.route("/events", route)).await, rx)
}

/// Serve one SSE route and open it with reqwest: the server, the response, the handle.
async fn open(opts: SseOptions) -> (street::app::ServerHandle, reqwest::Response, Sse) {
    let (srv, mut rx) = serve_sse(opts).await;
    let resp = reqwest::get(format!("http://{}/events", srv.local_addr()))
        .await
        .expect("get");
    let sse = within("stream", rx.recv()).await.expect("sse");
    (srv, resp, sse)
}

#[tokio::test]
async fn frames_headers_ids_multiline_data_and_injection_attempts() {
    let (srv, resp, sse) = open(SseOptions {
        heartbeat: Duration::from_millis(200),
        retry: Some(Duration::from_millis(1500)),
        ..Default::default()
    })
    .await;
    assert_eq!(resp.status(), 200);
    let h = resp.headers();
    assert_eq!(h["content-type"], "text/event-stream");
    assert_eq!(h["cache-control"], "no-cache, no-transform");
    assert_eq!(h["x-accel-buffering"], "no");
    sse.send("plain string", Some("greet")).expect("send");
    sse.send(&json!({"a": 1}), None).expect("send");
    sse.send_event(SseEvent {
        id: Some("x\ny".into()),
        event: Some("e\r\nevent: admin".into()),
        data: "l1\r\nl2\rl3\nl4".into(),
        retry: None,
    })
    .expect("send");
    let mut body = String::new();
    let mut stream = resp.bytes_stream();
    let expected = "retry: 1500\n\n\
        id: 1\nevent: greet\ndata: plain string\n\n\
        id: 2\ndata: {\"a\":1}\n\n\
        id: xy\nevent: eevent: admin\ndata: l1\ndata: l2\ndata: l3\ndata: l4\n\n\
        : heartbeat\n\n";
    within("events and a heartbeat", async {
        while body.len() < expected.len() {
            let chunk = stream.next().await.expect("open").expect("chunk");
            body.push_str(std::str::from_utf8(&chunk).expect("utf8"));
        }
    })
    .await;
    assert_eq!(body, expected);
    srv.shutdown().await;
}

#[tokio::test]
async fn a_client_going_away_is_seen_within_a_heartbeat() {
    let hb = Duration::from_millis(200);
    let (srv, resp, sse) = open(SseOptions {
        heartbeat: hb,
        ..Default::default()
    })
    .await;
    sse.send("hello", None).expect("send");
    let mut stream = resp.bytes_stream();
    let _ = within("first event", stream.next()).await;
    drop(stream); // the browser closes the tab
    let t = Instant::now();
    within("gone()", sse.gone()).await;
    assert!(t.elapsed() <= hb * 3, "noticed after {:?}", t.elapsed());
    assert!(sse.closed());
    assert_eq!(sse.send("late", None), Err(SseError::Closed));
    srv.shutdown().await;
}

#[tokio::test]
async fn close_ends_the_response_after_queued_events() {
    let (srv, resp, sse) = open(SseOptions {
        heartbeat: Duration::ZERO,
        ..Default::default()
    })
    .await;
    sse.send("last", Some("bye")).expect("send");
    sse.close();
    within("gone()", sse.gone()).await;
    let body = within("body to end", resp.text()).await.expect("text");
    assert_eq!(body, "id: 1\nevent: bye\ndata: last\n\n");
    srv.shutdown().await;
}

#[tokio::test]
async fn a_reader_that_never_reads_is_ended_not_buffered_forever() {
    let (srv, mut rx) = serve_sse(SseOptions {
        heartbeat: Duration::ZERO,
        max_queue_bytes: 16 * 1024,
        ..Default::default()
    })
    .await;
    // a client that sends the request and never reads the response
    let mut s = tokio::net::TcpStream::connect(srv.local_addr())
        .await
        .expect("tcp");
    tokio::io::AsyncWriteExt::write_all(&mut s, b"GET /events HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let sse = within("stream", rx.recv()).await.expect("sse");
    let chunk = "z".repeat(8 * 1024);
    let err = within("slow reader detected", async {
        loop {
            match sse.send(&chunk, None) {
                Ok(()) => tokio::task::yield_now().await,
                Err(e) => return e,
            }
        }
    })
    .await;
    assert_eq!(err, SseError::SlowReader { limit: 16 * 1024 });
    assert!(sse.closed());
    drop(s);
    srv.shutdown().await;
}
