//! Server-Sent Events over real HTTP: exact bytes, heartbeats, disconnect detection,
//! close, slow readers, the stream cap, shutdown, `Last-Event-ID`, a room's fan-out to
//! streams and their resume, controllers, a 10 000-stream storm, and a browser (headless Chromium).

use std::time::{Duration, Instant};

use crate::common::*;
use futures_util::StreamExt;
use serde_json::json;
use street::cluster::HistoryOptions;
use street::rooms::{PublishOptions, Rooms, RoomsOptions};
use street::sse::{Sse, SseError, SseEvent, SseOptions, SseRequest};
use tokio::sync::mpsc;

async fn serve_sse(opts: SseOptions) -> (street::app::ServerHandle, mpsc::UnboundedReceiver<Sse>) {
    serve_sse_app(opts, app_opts()).await
}

/// An app with `GET /events` creating a stream through the `SseRequest` extractor; each
/// handle is sent to the test.
async fn serve_sse_app(
    opts: SseOptions,
    app_options: street::AppOptions,
) -> (street::app::ServerHandle, mpsc::UnboundedReceiver<Sse>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let route = axum::routing::get(move |req: SseRequest| {
        let (tx, opts) = (tx.clone(), opts.clone());
        async move {
            let (sse, resp) = req.create_with(opts);
            let _ = tx.send(sse);
            resp
        }
    });
    let app = street::app(app_options);
    (serve_app(app.route("/events", route)).await, rx)
}

/// Reads a `text/event-stream` body event by event.
pub struct Events {
    stream:
        std::pin::Pin<Box<dyn futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    buf: String,
}

impl Events {
    pub fn new(resp: reqwest::Response) -> Self {
        Self {
            stream: Box::pin(resp.bytes_stream()),
            buf: String::new(),
        }
    }

    /// The next block (without its blank line), skipping heartbeats; `None` at the end.
    pub async fn next(&mut self) -> Option<String> {
        within("an event", async {
            loop {
                if let Some(i) = self.buf.find("\n\n") {
                    let block: String = self.buf.drain(..i + 2).collect();
                    let block = block.trim_end_matches('\n').to_owned();
                    if block.starts_with(": heartbeat") {
                        continue;
                    }
                    return Some(block);
                }
                match self.stream.next().await {
                    Some(Ok(b)) => self.buf.push_str(std::str::from_utf8(&b).expect("utf8")),
                    _ => return None,
                }
            }
        })
        .await
    }
}

pub async fn get_with(
    addr: std::net::SocketAddr,
    path: &str,
    last_id: Option<&str>,
) -> reqwest::Response {
    // as EventSource asks: the first request of a connection, taken out of hyper
    let mut r = reqwest::Client::new()
        .get(format!("http://{addr}{path}"))
        .header("Accept", "text/event-stream");
    if let Some(id) = last_id {
        r = r.header("Last-Event-ID", id);
    }
    within("GET", r.send()).await.expect("get")
}

/// Serve one SSE route and open it with reqwest: the server, the response, the handle.
async fn open(opts: SseOptions) -> (street::app::ServerHandle, reqwest::Response, Sse) {
    let (srv, mut rx) = serve_sse(opts).await;
    let resp = get_with(srv.local_addr(), "/events", None).await;
    let sse = within("stream", rx.recv()).await.expect("sse");
    (srv, resp, sse)
}

#[tokio::test]
async fn frames_headers_ids_multiline_data_and_injection_attempts() {
    let (srv, resp, sse) = open(
        SseOptions::default()
            .with_heartbeat(Duration::from_millis(200))
            .with_retry(Some(Duration::from_millis(1500))),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let h = resp.headers();
    assert_eq!(h["content-type"], "text/event-stream");
    assert_eq!(h["cache-control"], "no-cache, no-transform");
    assert_eq!(h["x-accel-buffering"], "no");
    sse.send("plain string", Some("greet")).expect("send");
    sse.send(&json!({"a": 1}), None).expect("send");
    sse.send_event(SseEvent {
        id: Some("x\n\0y\r".into()),
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
    let (srv, resp, sse) = open(SseOptions::default().with_heartbeat(hb)).await;
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
    let (srv, resp, sse) = open(SseOptions::default().with_heartbeat(Duration::ZERO)).await;
    sse.send("last", Some("bye")).expect("send");
    sse.close();
    within("gone()", sse.gone()).await;
    let body = within("body to end", resp.text()).await.expect("text");
    assert_eq!(body, "id: 1\nevent: bye\ndata: last\n\n");
    srv.shutdown().await;
}

#[tokio::test]
async fn a_reader_that_never_reads_is_ended_not_buffered_forever() {
    let (srv, mut rx) = serve_sse(
        SseOptions::default()
            .with_heartbeat(Duration::ZERO)
            .with_max_queue_bytes(16 * 1024),
    )
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

#[tokio::test]
async fn shutdown_ends_every_stream_after_its_queued_events() {
    // a long HTTP drain deadline: only ending the streams lets shutdown finish in time
    let (srv, mut rx) = serve_sse_app(
        SseOptions::default(),
        app_opts().with_shutdown_timeout(Duration::from_secs(60)),
    )
    .await;
    let addr = srv.local_addr();
    let mut readers = Vec::new();
    let mut handles = Vec::new();
    for _ in 0..3 {
        readers.push(get_with(addr, "/events", None).await);
        handles.push(within("stream", rx.recv()).await.expect("sse"));
    }
    for (i, h) in handles.iter().enumerate() {
        h.send(&json!({"n": i}), Some("last")).expect("send");
    }
    within(
        "shutdown (streams ended, not drained by the deadline)",
        srv.shutdown(),
    )
    .await;
    for (i, r) in readers.into_iter().enumerate() {
        let body = within("body end", r.text()).await.expect("text");
        assert_eq!(body, format!("id: 1\nevent: last\ndata: {{\"n\":{i}}}\n\n"));
    }
    for h in &handles {
        within("gone()", h.gone()).await;
        assert_eq!(h.send("late", None), Err(SseError::Closed));
    }
}

#[tokio::test]
async fn over_the_stream_cap_is_a_503_and_a_closed_stream_frees_its_place() {
    let app = street::app(app_opts().with_max_sse_streams(2));
    let registry = app.sse_registry().clone();
    let ran = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let r = ran.clone();
    let app = app.route(
        "/events",
        axum::routing::get(move |req: SseRequest| {
            r.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async move { req.create(Duration::from_secs(15)).1 }
        }),
    );
    let srv = serve_app(app).await;
    let addr = srv.local_addr();
    let a = get_with(addr, "/events", None).await;
    let b = get_with(addr, "/events", None).await;
    assert_eq!((a.status().as_u16(), b.status().as_u16()), (200, 200));
    let c = get_with(addr, "/events", None).await;
    assert_eq!(c.status(), 503);
    assert_eq!(c.headers()["retry-after"], "5");
    assert_eq!(
        ran.load(std::sync::atomic::Ordering::SeqCst),
        2,
        "the handler did not run"
    );
    let st = registry.stats();
    assert_eq!((st.open, st.opened, st.rejected), (2, 2, 1));
    drop(a); // the browser closes one tab
    eventually("its place freed", || registry.open_streams() == 1).await;
    let d = get_with(addr, "/events", None).await;
    assert_eq!(d.status(), 200);
    drop((b, d));
    eventually("every place freed", || registry.open_streams() == 0).await;
    srv.shutdown().await;
}

#[tokio::test]
async fn last_event_id_reaches_the_handler_and_ids_continue_after_it() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let app = street::app(app_opts()).route(
        "/events",
        axum::routing::get(move |req: SseRequest| {
            let _ = tx.send(req.last_event_id().map(str::to_owned));
            async move {
                let (sse, resp) = req.create(Duration::from_secs(15));
                let _ = sse.send("a", None);
                let _ = sse.send("b", None);
                resp
            }
        }),
    );
    let srv = serve_app(app).await;
    let addr = srv.local_addr();
    let mut fresh = Events::new(get_with(addr, "/events", None).await);
    assert_eq!(rx.recv().await, Some(None));
    assert_eq!(fresh.next().await.as_deref(), Some("id: 1\ndata: a"));
    let mut resumed = Events::new(get_with(addr, "/events", Some("41")).await);
    assert_eq!(rx.recv().await, Some(Some("41".to_owned())));
    assert_eq!(resumed.next().await.as_deref(), Some("id: 42\ndata: a"));
    assert_eq!(resumed.next().await.as_deref(), Some("id: 43\ndata: b"));
    // a non-numeric id is passed through; automatic ids then start at 1
    let mut odd = Events::new(get_with(addr, "/events", Some("v2-abc")).await);
    assert_eq!(rx.recv().await, Some(Some("v2-abc".to_owned())));
    assert_eq!(odd.next().await.as_deref(), Some("id: 1\ndata: a"));
    srv.shutdown().await;
}

/// An app whose `GET /topics/{topic}` subscribes to the room `topic` of `rooms`
/// ([`Rooms::sse`](street::rooms::Rooms::sse), street's one hub for sockets and streams).
async fn serve_channels(
    rooms_opts: RoomsOptions,
    stream: SseOptions,
) -> (street::app::ServerHandle, Rooms, street::sse::SseRegistry) {
    let wss = street::ws::WebSocketServer::new(street::ws::WsOptions::default());
    let rooms = Rooms::new(&wss, rooms_opts).await.expect("rooms");
    let r = rooms.clone();
    let app = street::app(app_opts());
    let registry = app.sse_registry().clone();
    let app = app.route(
        "/topics/{topic}",
        axum::routing::get(
            move |axum::extract::Path(topic): axum::extract::Path<String>, req: SseRequest| {
                let (r, stream) = (r.clone(), stream.clone());
                async move {
                    match r.sse(req, &topic, stream).await {
                        Ok((_, response)) => response,
                        Err(e) => axum::response::IntoResponse::into_response(e),
                    }
                }
            },
        ),
    );
    (serve_app(app).await, rooms, registry)
}

fn with_history(size: usize, ttl: Duration) -> RoomsOptions {
    RoomsOptions::default().with_history("*", HistoryOptions::new(size, ttl))
}

fn publish(rooms: &Rooms, room: &str, payload: &serde_json::Value) {
    rooms
        .publish(room, "m", payload, PublishOptions::default())
        .expect("publish");
}

/// A `street:joined` event: its id, and its data.
fn joined(block: Option<String>) -> (String, serde_json::Value) {
    let block = block.expect("an event");
    let mut lines = block.lines();
    let id = lines.next().and_then(|l| l.strip_prefix("id: "));
    let event = lines.next();
    let data = lines.next().and_then(|l| l.strip_prefix("data: "));
    assert_eq!(event, Some("event: street:joined"), "{block}");
    let (Some(id), Some(data)) = (id, data) else {
        panic!("not a joined event: {block}");
    };
    (id.to_owned(), serde_json::from_str(data).expect("json"))
}

#[tokio::test]
async fn a_room_sends_every_stream_the_same_bytes_in_order() {
    let (srv, rooms, _) = serve_channels(RoomsOptions::default(), SseOptions::default()).await;
    let addr = srv.local_addr();
    let mut subs = Vec::new();
    for _ in 0..50 {
        subs.push(Events::new(get_with(addr, "/topics/news", None).await));
    }
    let mut other = Events::new(get_with(addr, "/topics/sport", None).await);
    eventually("50 streams", || rooms.local_stream_count("news") == 50).await;
    for i in 0..20 {
        let sent = rooms.publish("news", "item", &json!({"i": i}), PublishOptions::default());
        assert_eq!(sent, Ok(50));
    }
    let sent = rooms.publish("sport", "goal", "one\nnil", PublishOptions::default());
    assert_eq!(sent, Ok(1));
    for s in &mut subs {
        for i in 0..20 {
            let want = format!("event: item\ndata: {{\"i\":{i}}}");
            assert_eq!(s.next().await, Some(want));
        }
    }
    // data is the payload's JSON: a string arrives quoted, its newline escaped
    assert_eq!(
        other.next().await.as_deref(),
        Some("event: goal\ndata: \"one\\nnil\"")
    );
    let st = rooms.stats();
    assert_eq!((st.published, st.delivered, st.streams), (21, 1001, 51));
    // nobody listening: nothing delivered, and not an error
    let sent = rooms.publish("empty", "x", "x", PublishOptions::default());
    assert_eq!(sent, Ok(0));
    drop(subs);
    eventually("streams gone", || rooms.stats().streams == 1).await;
    srv.shutdown().await;
}

#[tokio::test]
async fn a_stream_resumes_from_its_last_event_id_or_is_told_it_cannot() {
    let (srv, rooms, _) = serve_channels(
        with_history(3, Duration::from_secs(60)),
        SseOptions::default(),
    )
    .await;
    let addr = srv.local_addr();
    let mut first = Events::new(get_with(addr, "/topics/t", None).await);
    let (id, j) = joined(first.next().await);
    let epoch = j["epoch"].as_str().expect("epoch").to_owned();
    assert_eq!(id, format!("{epoch}:0"));
    assert_eq!(j, json!({"channel": "t", "epoch": epoch, "offset": 0}));
    for i in 1..=2 {
        publish(&rooms, "t", &json!(i));
    }
    for i in 1..=2 {
        let want = format!("id: {epoch}:{i}\nevent: m\ndata: {i}");
        assert_eq!(first.next().await, Some(want));
    }
    drop(first); // the connection drops
    eventually("unsubscribed", || rooms.local_stream_count("t") == 0).await;
    for i in 3..=4 {
        publish(&rooms, "t", &json!(i));
    }
    // EventSource reconnects with the last id it saw: where the stream stands, then what
    // it missed, then live
    let mut again = Events::new(get_with(addr, "/topics/t", Some(&format!("{epoch}:2"))).await);
    let (id, j) = joined(again.next().await);
    assert_eq!((id, &j["recovered"]), (format!("{epoch}:4"), &json!(true)));
    for i in 3..=4 {
        let want = format!("id: {epoch}:{i}\nevent: m\ndata: {i}");
        assert_eq!(again.next().await, Some(want));
    }
    publish(&rooms, "t", &json!(5));
    assert_eq!(
        again.next().await,
        Some(format!("id: {epoch}:5\nevent: m\ndata: 5"))
    );
    assert_eq!(
        (rooms.stats().recovered, rooms.stats().not_recovered),
        (1, 0)
    );
    // too far behind (the history holds 3..=5): told so, nothing replayed, then live
    let mut late = Events::new(get_with(addr, "/topics/t", Some(&format!("{epoch}:1"))).await);
    let (id, j) = joined(late.next().await);
    assert_eq!((id, &j["recovered"]), (format!("{epoch}:5"), &json!(false)));
    publish(&rooms, "t", &json!(6));
    assert_eq!(
        late.next().await,
        Some(format!("id: {epoch}:6\nevent: m\ndata: 6"))
    );
    assert_eq!(
        (rooms.stats().recovered, rooms.stats().not_recovered),
        (1, 1)
    );
    srv.shutdown().await;
}

/// A backlog after `Last-Event-ID` bigger than half the stream's queue: not recovered,
/// nothing replayed, the stream stays open for live events, and reconnecting with the
/// last id seen does not ask for the backlog again (no resume loop).
#[tokio::test]
async fn a_resume_with_more_backlog_than_the_queue_is_not_recovered_and_goes_on_live() {
    let (srv, rooms, sse) = serve_channels(
        with_history(256, Duration::from_secs(60)),
        SseOptions::default().with_max_queue_bytes(4096),
    )
    .await;
    let addr = srv.local_addr();
    let mut first = Events::new(get_with(addr, "/topics/t", None).await);
    let (_, j) = joined(first.next().await);
    let epoch = j["epoch"].as_str().expect("epoch").to_owned();
    drop(first);
    eventually("unsubscribed", || rooms.local_stream_count("t") == 0).await;
    let big = "x".repeat(500);
    for i in 1..=40 {
        publish(&rooms, "t", &json!(format!("{i} {big}")));
    }
    // ~520 bytes an event, 2048 bytes of replay at most
    let mut s = Events::new(get_with(addr, "/topics/t", Some(&format!("{epoch}:0"))).await);
    let (id, j) = joined(s.next().await);
    assert_eq!(
        (id, &j["recovered"]),
        (format!("{epoch}:40"), &json!(false))
    );
    publish(&rooms, "t", &json!("live"));
    assert_eq!(
        s.next().await,
        Some(format!("id: {epoch}:41\nevent: m\ndata: \"live\""))
    );
    drop(s);
    // EventSource reconnects with the last id it saw: nothing to replay, then live
    let mut again = Events::new(get_with(addr, "/topics/t", Some(&format!("{epoch}:41"))).await);
    let (_, j) = joined(again.next().await);
    assert_eq!(j["recovered"], true);
    publish(&rooms, "t", &json!("next"));
    assert_eq!(
        again.next().await,
        Some(format!("id: {epoch}:42\nevent: m\ndata: \"next\""))
    );
    assert_eq!(sse.stats().slow_readers, 0);
    srv.shutdown().await;
}

/// `Last-Event-ID: u64::MAX` used to overflow `last + 1` (a panic in debug builds, which
/// these tests are): a plain stream's ids start again at 1; a room's stream (an id that
/// is not a position, or a position from the future) is told it did not recover, then
/// gets live events.
#[tokio::test]
async fn a_last_event_id_of_u64_max_does_not_overflow() {
    const MAX: &str = "18446744073709551615";
    let (srv, mut rx) = serve_sse(SseOptions::default()).await;
    let mut plain = Events::new(get_with(srv.local_addr(), "/events", Some(MAX)).await);
    let sse = within("stream", rx.recv()).await.expect("sse");
    sse.send("a", None).expect("send");
    sse.send("b", None).expect("send");
    assert_eq!(plain.next().await.as_deref(), Some("id: 1\ndata: a"));
    assert_eq!(plain.next().await.as_deref(), Some("id: 2\ndata: b"));
    srv.shutdown().await;

    let (srv, rooms, _) = serve_channels(
        with_history(16, Duration::from_secs(60)),
        SseOptions::default(),
    )
    .await;
    let addr = srv.local_addr();
    for i in 1..=3 {
        publish(&rooms, "t", &json!(i));
    }
    let mut probe = Events::new(get_with(addr, "/topics/t", None).await);
    let (_, j) = joined(probe.next().await);
    let epoch = j["epoch"].as_str().expect("epoch").to_owned();
    for last in [MAX.to_owned(), format!("{epoch}:{MAX}")] {
        let mut sub = Events::new(get_with(addr, "/topics/t", Some(&last)).await);
        let (id, j) = joined(sub.next().await);
        assert_eq!((id, &j["recovered"]), (format!("{epoch}:3"), &json!(false)));
        drop(sub);
    }
    publish(&rooms, "t", &json!("live"));
    let live = probe.next().await;
    assert_eq!(
        live,
        Some(format!("id: {epoch}:4\nevent: m\ndata: \"live\""))
    );
    assert_eq!(rooms.stats().not_recovered, 2);
    srv.shutdown().await;
}

#[tokio::test]
async fn a_room_ends_a_slow_stream_and_keeps_serving_the_others() {
    let (srv, rooms, sse) = serve_channels(
        RoomsOptions::default(),
        SseOptions::default()
            .with_max_queue_bytes(32 * 1024)
            .with_heartbeat(Duration::ZERO),
    )
    .await;
    let addr = srv.local_addr();
    // a subscriber that never reads its response
    let mut stuck = tokio::net::TcpStream::connect(addr).await.expect("tcp");
    tokio::io::AsyncWriteExt::write_all(
        &mut stuck,
        b"GET /topics/t HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n",
    )
    .await
    .expect("write");
    let mut good = Events::new(get_with(addr, "/topics/t", None).await);
    eventually("2 streams", || rooms.local_stream_count("t") == 2).await;
    let chunk = "y".repeat(4096);
    let mut n = 0;
    within("the slow one dropped", async {
        while sse.stats().slow_readers == 0 {
            n += 1;
            publish(&rooms, "t", &json!({"n": n, "pad": chunk}));
            // the good reader keeps up
            let ev = good.next().await.expect("event");
            let want = format!("event: m\ndata: {{\"n\":{n},");
            assert!(ev.starts_with(&want), "{}", &ev[..30]);
        }
    })
    .await;
    assert_eq!(rooms.local_stream_count("t"), 1);
    publish(&rooms, "t", &json!("after"));
    assert_eq!(
        good.next().await.as_deref(),
        Some("event: m\ndata: \"after\"")
    );
    drop(stuck);
    srv.shutdown().await;
}

#[tokio::test]
async fn a_client_that_disconnects_mid_event_only_ends_its_own_stream() {
    let (srv, mut rx) =
        serve_sse(SseOptions::default().with_heartbeat(Duration::from_millis(100))).await;
    let addr = srv.local_addr();
    let mut raw = tokio::net::TcpStream::connect(addr).await.expect("tcp");
    tokio::io::AsyncWriteExt::write_all(&mut raw, b"GET /events HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let dropped = within("stream", rx.recv()).await.expect("sse");
    let mut other = Events::new(get_with(addr, "/events", None).await);
    let kept = within("stream", rx.recv()).await.expect("sse");
    dropped.send(&"x".repeat(100_000), None).expect("send");
    // read a little of the big event, then vanish
    let mut some = [0u8; 1024];
    let n = tokio::io::AsyncReadExt::read(&mut raw, &mut some)
        .await
        .expect("read");
    assert!(n > 0);
    drop(raw);
    within("gone()", dropped.gone()).await;
    kept.send("still here", None).expect("send");
    assert_eq!(
        other.next().await.as_deref(),
        Some("id: 1\ndata: still here")
    );
    srv.shutdown().await;
}

#[tokio::test]
async fn a_controller_groups_routes_and_reaches_request_container_and_state() {
    use axum::extract::State;
    use street::container::Inject;
    #[derive(Clone)]
    struct Greeting(&'static str);
    struct Visits(std::sync::atomic::AtomicU64);

    let container = street::Container::new();
    container.register(Visits(std::sync::atomic::AtomicU64::new(0)));
    let api = street::Controller::new("/api/events/")
        .get(
            "/hello",
            |State(g): State<Greeting>, Inject(v): Inject<Visits>, headers: http::HeaderMap| async move {
                let n = v.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                let who = headers.get("x-user").and_then(|h| h.to_str().ok()).unwrap_or("?").to_owned();
                format!("{} {who} #{n}", g.0)
            },
        )
        .post("/", || async { "created" })
        .with_state(Greeting("hello"));
    let srv = serve_app(
        street::app(app_opts())
            .with_container(container)
            .controller(api),
    )
    .await;
    let base = format!("http://{}", srv.local_addr());
    let c = reqwest::Client::new();
    for n in 1..=2 {
        let r = c
            .get(format!("{base}/api/events/hello"))
            .header("x-user", "ana")
            .send()
            .await
            .expect("get");
        assert_eq!(r.status(), 200);
        assert_eq!(r.text().await.expect("text"), format!("hello ana #{n}"));
    }
    let r = c
        .post(format!("{base}/api/events"))
        .send()
        .await
        .expect("post");
    assert_eq!(r.text().await.expect("text"), "created");
    let r = c.get(format!("{base}/hello")).send().await.expect("get");
    assert_eq!(r.status(), 404);
    let r = c
        .get(format!("{base}/api/events"))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 405);
    srv.shutdown().await;
}

#[tokio::test]
async fn the_seed_example_ticks_every_second_with_ids_that_resume() {
    let ex = crate::examples::start("sse", &[]).await;
    let page = within("page", reqwest::get(format!("http://{}/", ex.addr)))
        .await
        .expect("get");
    assert!(page
        .text()
        .await
        .expect("text")
        .contains("new EventSource('/api/events/stream')"));
    let resp = get_with(ex.addr, "/api/events/stream", Some("7")).await;
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut ev = Events::new(resp);
    for id in 8..=9 {
        let block = ev.next().await.expect("tick");
        let (head, data) = block.split_once("\ndata: ").expect("data line");
        assert_eq!(head, format!("id: {id}\nevent: tick"));
        let v: serde_json::Value = serde_json::from_str(data).expect("json");
        let t = v["time"].as_str().expect("time");
        // new Date().toISOString(): 2026-11-26T21:44:36.123Z
        assert_eq!(t.len(), 24, "{t}");
        assert!(
            t.ends_with('Z') && t.as_bytes()[10] == b'T' && t.as_bytes()[19] == b'.',
            "{t}"
        );
    }
}

/// Headless Chromium (Debian's package; scripts/test installs it) opens the example's
/// page, receives ticks, sees the server restart (SIGTERM ends its stream), reconnects by
/// itself and resumes from its last id: ids 1..=n with no gap and no duplicate.
#[tokio::test]
async fn a_browser_event_source_resumes_after_a_server_restart_without_gaps_or_duplicates() {
    use std::io::Write;
    let js = js_dir();
    assert!(
        std::path::Path::new("/usr/bin/chromium").exists(),
        "/usr/bin/chromium is missing; scripts/test installs it (apt: chromium)"
    );
    let mut ex = crate::examples::start("sse", &[]).await;
    let port = ex.addr.port();
    let shot = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/sse-browser.png");
    let (mut node, mut rx) = spawn_lines(
        std::process::Command::new("node")
            .arg(js.join("sse_browser.js"))
            .arg(format!("http://127.0.0.1:{port}/"))
            .arg(&shot)
            .current_dir(&js),
    );
    let ready = within("browser READY", rx.recv()).await.expect("line");
    assert!(ready.starts_with("READY "), "{ready}");
    ex.signal("-TERM");
    assert!(ex.exited().await.success());
    let _again = crate::examples::start_on("sse", port, &[]).await;
    let mut stdin = node.stdin.take().expect("stdin");
    writeln!(stdin, "RESTARTED").expect("write");
    let report = tokio::time::timeout(Duration::from_secs(40), rx.recv())
        .await
        .expect("browser report within 40 s")
        .expect("line");
    let _ = node.wait();
    assert!(!report.starts_with("ERROR"), "{report}");
    let v: serde_json::Value = serde_json::from_str(&report).expect("json");
    let ids: Vec<u64> = v["ids"]
        .as_array()
        .expect("ids")
        .iter()
        .map(|i| i.as_str().expect("id").parse().expect("number"))
        .collect();
    let before = v["before"].as_u64().expect("before") as usize;
    assert!(ids.len() >= before + 3, "{v}");
    let want: Vec<u64> = (1..=ids.len() as u64).collect();
    assert_eq!(ids, want, "ids across the restart: no gap, no duplicate");
    assert_eq!(
        v["shown"],
        ids.last().expect("last").to_string(),
        "the DOM shows the last tick"
    );
    assert_eq!(v["state"], "open");
    assert_eq!(v["errors"], serde_json::json!([]));
}

/// Open `GET path` on a raw socket and read the response head (status line and headers).
async fn raw_sse(
    addr: std::net::SocketAddr,
    path: &str,
) -> std::io::Result<(String, tokio::net::TcpStream)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await?;
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut b).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        head.push(b[0]);
    }
    Ok((String::from_utf8_lossy(&head).into_owned(), s))
}

/// 10 000 streams opening at once against bench_server (a separate process, so the two
/// sides' 20 000 sockets do not share one file-descriptor limit) with a cap of 10 000:
/// every one is served, the next gets 503, and closing them frees their places.
#[tokio::test]
async fn ten_thousand_streams_opening_at_once_are_all_served_and_the_next_gets_503() {
    const N: usize = 10_000;
    let port = crate::examples::free_port();
    let ex =
        crate::examples::start_with("bench_server", port, &["--max-sse-streams", "10000"], &[])
            .await;
    let addr = ex.addr;
    let opened = tokio::time::timeout(Duration::from_secs(60), async {
        let tasks: Vec<_> = (0..N)
            .map(|_| tokio::spawn(raw_sse(addr, "/sse")))
            .collect();
        let mut streams = Vec::with_capacity(N);
        for t in tasks {
            streams.push(t.await.expect("join"));
        }
        streams
    })
    .await
    .expect("10 000 streams within 60 s");
    let mut ok = Vec::with_capacity(N);
    let mut other = Vec::new();
    for r in opened {
        match r {
            Ok((head, s)) if head.starts_with("HTTP/1.1 200") => ok.push(s),
            Ok((head, _)) => other.push(head.lines().next().unwrap_or("").to_owned()),
            Err(e) => other.push(e.to_string()),
        }
    }
    assert_eq!(
        ok.len(),
        N,
        "not served: {:?}",
        &other[..other.len().min(5)]
    );
    let (head, _) = within("one more", raw_sse(addr, "/sse"))
        .await
        .expect("connect");
    assert!(head.starts_with("HTTP/1.1 503"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("retry-after: 5"),
        "{head}"
    );
    drop(ok); // every browser goes away
    within("places freed", async {
        loop {
            let (head, _s) = raw_sse(addr, "/sse").await.expect("connect");
            if head.starts_with("HTTP/1.1 200") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn a_resume_is_bounded_by_the_history_s_age_and_epochs() {
    let age = Duration::from_millis(100);
    let (srv, rooms, _) = serve_channels(with_history(256, age), SseOptions::default()).await;
    let addr = srv.local_addr();
    let mut probe = Events::new(get_with(addr, "/topics/t", None).await);
    let (_, j) = joined(probe.next().await);
    let epoch = j["epoch"].as_str().expect("epoch").to_owned();
    drop(probe);
    eventually("unsubscribed", || rooms.local_stream_count("t") == 0).await;
    publish(&rooms, "t", &json!("old-1"));
    publish(&rooms, "t", &json!("old-2"));
    // the history's age limit is the condition under test: let it pass
    tokio::time::sleep(age * 2).await;
    publish(&rooms, "t", &json!("fresh"));
    let mut ev = Events::new(get_with(addr, "/topics/t", Some(&format!("{epoch}:0"))).await);
    let (id, j) = joined(ev.next().await);
    // the whole history aged out: another epoch, whose history ("fresh", offset 1)
    // does not continue a position of the old one, not even offset 0 (old-1 and old-2
    // are lost: before, a client at offset 0 was told it recovered)
    assert_eq!(j["recovered"], false, "{j}");
    assert_ne!(j["epoch"], json!(epoch), "{j}");
    assert_eq!(id, format!("{}:1", j["epoch"].as_str().expect("epoch")));
    assert_eq!(rooms.stats().not_recovered, 1);
    srv.shutdown().await;
}

/// The first request of a connection, when it asks for an event stream, is served
/// without hyper (its state would live as long as the stream); the same stream asked on
/// a connection that served a request before stays with hyper. Both give the same bytes.
#[tokio::test]
async fn an_event_stream_is_the_same_taken_out_of_hyper_or_not() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (srv, mut rx) = serve_sse_app(SseOptions::default(), app_opts()).await;
    let srv_addr = srv.local_addr();
    let app =
        serve_app(street::app(app_opts()).route("/ok", axum::routing::get(|| async { "ok" })))
            .await;
    let _ = app;
    async fn read_until(s: &mut tokio::net::TcpStream, buf: &mut Vec<u8>, needle: &str) {
        within("bytes from the server", async {
            while !String::from_utf8_lossy(buf).contains(needle) {
                let mut b = [0u8; 1024];
                let n = s.read(&mut b).await.expect("read");
                assert!(n > 0, "closed early: {}", String::from_utf8_lossy(buf));
                buf.extend_from_slice(&b[..n]);
            }
        })
        .await;
    }
    let ask = b"GET /events HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n";
    // first request: taken over
    let mut first = tokio::net::TcpStream::connect(srv_addr).await.expect("tcp");
    first.write_all(ask).await.expect("write");
    let a = within("stream", rx.recv()).await.expect("sse");
    // second request of a keep-alive connection: hyper
    let mut second = tokio::net::TcpStream::connect(srv_addr).await.expect("tcp");
    second
        .write_all(b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let mut buf2 = Vec::new();
    read_until(&mut second, &mut buf2, "\r\n\r\n").await;
    assert!(String::from_utf8_lossy(&buf2).starts_with("HTTP/1.1 404"));
    buf2.clear();
    second.write_all(ask).await.expect("write");
    let b = within("stream", rx.recv()).await.expect("sse");
    for (sse, s) in [(&a, &mut first), (&b, &mut second)] {
        sse.send_event(SseEvent {
            id: None,
            event: Some("e".into()),
            data: "x".into(),
            retry: None,
        })
        .expect("send");
        let mut buf = Vec::new();
        read_until(s, &mut buf, "data: x\n\n").await;
        let text = String::from_utf8_lossy(&buf).to_ascii_lowercase();
        assert!(text.starts_with("http/1.1 200 ok\r\n"), "{text}");
        assert!(text.contains("content-type: text/event-stream"), "{text}");
        assert!(text.contains("transfer-encoding: chunked"), "{text}");
        assert!(text.contains("event: e\ndata: x\n\n"), "{text}");
        // and the end of the stream ends the chunked body
        sse.close();
        read_until(s, &mut buf, "0\r\n\r\n").await;
    }
    srv.shutdown().await;
}

/// Whatever a route answers an event-stream request taken out of hyper is written
/// through, not buffered: a large answer arrives whole with its length, an empty one too.
#[tokio::test]
async fn other_answers_to_an_event_stream_request_are_written_through() {
    let big = "x".repeat(300_000);
    let b2 = big.clone();
    let app = street::app(app_opts())
        .route("/big", axum::routing::get(move || async move { b2 }))
        .route(
            "/none",
            axum::routing::get(|| async { axum::http::StatusCode::NO_CONTENT }),
        );
    let srv = serve_app(app).await;
    let r = get_with(srv.local_addr(), "/big", None).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.content_length(), Some(300_000));
    assert_eq!(within("body", r.text()).await.expect("text"), big);
    let r = get_with(srv.local_addr(), "/none", None).await;
    assert_eq!(r.status(), 204);
    assert_eq!(within("body", r.text()).await.expect("text"), "");
    srv.shutdown().await;
}
