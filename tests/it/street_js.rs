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

/// A server that accepts and then closes at once, again and again (4008 slow consumer,
/// 1008 rate limit): street.js keeps retrying (1008 is not terminal) and its waits grow,
/// because the backoff starts over only after a connection stayed up for `stableAfterMs`
/// (300 ms here): connection 4 is held 600 ms, so the reconnect after it is attempt 1 again.
#[tokio::test]
async fn street_js_backs_off_from_a_server_that_keeps_closing_it_even_with_1008() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use street::ws::{CloseCode, ConnectRequest, Socket, WebSocketServer};

    let wss = WebSocketServer::new(opts());
    let n = Arc::new(AtomicUsize::new(0));
    let (tx, mut seen) = tokio::sync::mpsc::unbounded_channel::<std::time::Instant>();
    wss.on_connection(move |socket: Socket, _: ConnectRequest| {
        let _ = tx.send(std::time::Instant::now());
        let i = n.fetch_add(1, Ordering::SeqCst);
        let (code, reason) = if i.is_multiple_of(2) {
            (CloseCode(street::ws::SLOW_CONSUMER_CODE), "slow consumer")
        } else {
            (CloseCode::POLICY_VIOLATION, "rate limit exceeded")
        };
        if i == 4 {
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(600)).await;
                let _ = socket.close(code, reason);
            });
        } else {
            let _ = socket.close(code, reason);
        }
    });
    let server = serve(&wss).await;
    let (mut client, mut rx) =
        street_client(&["backoff", &format!("ws://{}/ws", server.local_addr()), "6"]);
    let report = line(&mut rx, 20).await;
    let _ = client.wait();
    let v: serde_json::Value = serde_json::from_str(&report).expect("json");
    let field = |k: &str| -> Vec<serde_json::Value> {
        v["reconnects"]
            .as_array()
            .expect("reconnects")
            .iter()
            .map(|r| r[k].clone())
            .collect()
    };
    assert_eq!(
        field("attempt"),
        [1, 2, 3, 4, 1, 2].map(serde_json::Value::from),
        "{v}"
    );
    assert_eq!(
        field("delayMs"),
        [25, 50, 100, 200, 25, 50].map(serde_json::Value::from),
        "{v}"
    );
    assert_eq!(
        field("code"),
        [4008, 1008, 4008, 1008, 4008, 1008].map(serde_json::Value::from),
        "{v}"
    );
    // what the server saw: the gaps between connections follow the waits
    let mut at = Vec::new();
    while let Ok(t) = seen.try_recv() {
        at.push(t);
    }
    assert!(at.len() >= 6, "{} connections", at.len());
    let gap = |i: usize| at[i + 1].duration_since(at[i]);
    assert!(gap(0) >= Duration::from_millis(25), "{:?}", gap(0));
    assert!(gap(3) >= Duration::from_millis(200), "{:?}", gap(3));
    assert!(gap(3) > gap(0), "{:?} then {:?}", gap(0), gap(3));
    server.shutdown().await;
}

/// Envelopes named like street.js's lifecycle events (`state`, `open`, `close`, `error`)
/// are ordinary server events: delivered to `on(…)`, never to `onLifecycle(…)`, so a room
/// member cannot fake "closed" or "open" on other people's pages.
#[tokio::test]
async fn street_js_server_events_named_state_or_close_are_not_lifecycle_events() {
    use serde_json::json;
    use street::ws::{ConnectRequest, Socket, WebSocketServer};

    let wss = WebSocketServer::new(opts());
    wss.on_connection(|socket: Socket, _: ConnectRequest| {
        let _ = socket.emit("state", &json!({ "state": "closed", "code": 4001 }));
        let _ = socket.emit("close", &json!({ "code": 4001, "reason": "fake" }));
        let _ = socket.emit("open", &json!("fake"));
        let _ = socket.emit("error", &json!({ "kind": "fake" }));
        let _ = socket.emit("done", &json!(null));
    });
    let server = serve(&wss).await;
    let (mut client, mut rx) =
        street_client(&["lifecycle", &format!("ws://{}/ws", server.local_addr())]);
    let report = line(&mut rx, 20).await;
    let _ = client.wait();
    let v: serde_json::Value = serde_json::from_str(&report).expect("json");
    assert_eq!(v["states"], json!(["connecting", "open"]), "{v}");
    assert_eq!(
        (&v["opens"], &v["closes"], &v["errors"]),
        (&json!(1), &json!(0), &json!(0)),
        "{v}"
    );
    assert_eq!(
        v["server"],
        json!({
            "state": { "state": "closed", "code": 4001 },
            "close": { "code": 4001, "reason": "fake" },
            "open": "fake",
            "error": { "kind": "fake" },
        }),
        "{v}"
    );
    // (`done` reaches its own listener, which reports, before the wildcard)
    assert_eq!(v["any"], json!(["state", "close", "open", "error"]), "{v}");
    assert_eq!(v["unknownLifecycle"], "TypeError", "{v}");
    server.shutdown().await;
}

/// Channels with history (issue 13), against a fake server in the script itself
/// (`tests/js/street_recovery.js`): street.js re-joins `since` its position after a
/// reconnect and delivers the replay once, in order; drops duplicates; on a gap re-joins
/// `since` its position, drops that channel's publications until the reply and gets the rest
/// from the replay; takes the new position when recovery fails or the epoch changes live; and
/// forgets the position on leave.
#[tokio::test]
async fn street_js_recovers_channels_with_history_drops_duplicates_and_fills_gaps() {
    use serde_json::json;

    let js = js_dir();
    let (mut client, mut rx) = spawn_lines(
        Command::new("node")
            .arg(js.join("street_recovery.js"))
            .current_dir(&js),
    );
    let report = line(&mut rx, 30).await;
    let _ = client.wait();
    let v: serde_json::Value = serde_json::from_str(&report).expect("json");
    assert_eq!(v["afterRecovery"], json!([4, 5, 6, 7]), "{v}");
    assert_eq!(v["duplicates"], 2, "{v}");
    assert_eq!(v["gaps"], 1, "{v}");
    assert_eq!(
        v["delivered"],
        json!([4, 5, 6, 7, 8, 9, 10, 11, 12, 21, 1]),
        "{v}"
    );
    assert_eq!(
        v["recovered"],
        json!([null, true, true, false, false]),
        "{v}"
    );
    assert_eq!(v["position"], json!({ "epoch": "e3", "offset": 1 }), "{v}");
    assert_eq!(v["rejoin"], json!({ "channel": "room" }), "{v}");
    assert_eq!(v["connections"], 3, "{v}");
}

/// The client package as a user gets it: `street.mjs` is what `street.js` makes, and its
/// TypeScript types (ESM and CommonJS) accept typed event maps and refuse what they
/// should (`tests/js/types/check.mts`, every `@ts-expect-error` must be an error).
#[tokio::test]
async fn the_client_package_is_built_from_its_source_and_its_types_check() {
    let js = js_dir();
    let root = js.join("../..");
    let check = Command::new("node")
        .args(["client/build.mjs", "--check"])
        .current_dir(&root)
        .output()
        .expect("node");
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    let tsc = js.join("node_modules/.bin/tsc");
    assert!(
        tsc.exists(),
        "typescript is not installed in tests/js; run scripts/test"
    );
    let out = within(
        "tsc",
        tokio::task::spawn_blocking(move || {
            Command::new(tsc)
                .args(["-p", "types"])
                .current_dir(&js)
                .output()
        }),
    )
    .await
    .expect("join")
    .expect("tsc");
    assert!(
        out.status.success(),
        "tsc: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Requests both ways between the client package (its ES module, then its CommonJS
/// build, in Node) and a real street server: results, the server's error codes, the
/// client's own (timeout, too many, closed), the server's requests answered by
/// `onRequest`, and replies kept away from `on()` listeners.
#[tokio::test]
async fn the_client_package_makes_and_answers_requests_as_esm_and_commonjs() {
    use serde_json::{json, Value};
    use street::ws::{ConnectRequest, Socket, WebSocketServer};
    let wss = WebSocketServer::new(opts());
    wss.on_connection(|socket: Socket, _: ConnectRequest| {
        socket.on_request("sum", |(a, b): (i64, i64)| {
            a.checked_add(b).ok_or("overflow")
        })?;
        socket.on_request("slow", |ms: u64| async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok::<_, String>(ms)
        })?;
        let s = socket.clone();
        socket.on("please", move |p: Value| {
            let s = s.clone();
            let ask = p["ask"].as_str().unwrap_or("").to_owned();
            tokio::spawn(async move {
                let got = s
                    .emit_with_ack::<_, Value>(&ask, &"question", Duration::from_secs(5))
                    .await;
                let out = match got {
                    Ok(v) => json!({"ask": ask, "result": v}),
                    Err(street::ws::AckError::Rejected { code, .. }) => {
                        json!({"ask": ask, "code": code})
                    }
                    Err(e) => json!({"ask": ask, "other": e.to_string()}),
                };
                let _ = s.emit("outcome", &out);
            });
        })?;
        Ok::<_, street::ws::SocketError>(())
    });
    let srv = serve(&wss).await;
    let js = js_dir();
    let (mut child, mut rx) = spawn_lines(
        Command::new("node")
            .arg(js.join("street_acks.mjs"))
            .arg(url(srv.local_addr(), "/ws"))
            .current_dir(&js),
    );
    let report = line(&mut rx, 30).await;
    let _ = child.wait();
    let v: Value = serde_json::from_str(&report).expect("json");
    let result = |k: &str| v[k]["result"].clone();
    let code = |k: &str| v[k]["code"].clone();
    assert_eq!(
        (result("early"), result("sum")),
        (json!(42), json!(3)),
        "{v}"
    );
    assert_eq!(code("rejected"), "rejected", "{v}");
    assert_eq!(code("noHandler"), "no_handler", "{v}");
    assert_eq!(code("clientTimeout"), "timeout", "{v}");
    assert_eq!(v["clientTimeout"]["name"], "StreetAckError", "{v}");
    assert_eq!(code("tooMany"), "too_many", "{v}");
    assert_eq!(v["held"], json!([300, 300, 300]), "{v}");
    let mut asked = v["serverAsked"].as_array().expect("array").clone();
    asked.sort_by_key(|o| o["ask"].as_str().unwrap_or("").to_owned());
    assert_eq!(
        asked,
        [
            json!({"ask": "confirm", "result": {"sure": true, "q": "question"}}),
            json!({"ask": "later", "result": "question!"}),
            json!({"ask": "refuse", "code": "denied"}),
            json!({"ask": "unknown", "code": "no_handler"}),
        ],
        "{v}"
    );
    assert_eq!(
        (result("afterListeners"), v["leaked"].clone()),
        (json!(5), json!(0)),
        "{v}"
    );
    assert_eq!(code("closed"), "closed", "{v}");
    assert_eq!(
        (result("cjs"), v["cjsDefault"].clone()),
        (json!(10), json!(true)),
        "{v}"
    );
}

/// Tokens that expire, with the client package's `getToken`: a fresh token at every
/// connect, an in-band refresh when the server says the token expired, and after a
/// refused refresh (closed with 4010) a reconnect with a new token.
#[tokio::test]
async fn the_client_package_refreshes_expiring_tokens_in_band_and_reconnects_after_4010() {
    use serde_json::{json, Value};
    use std::time::SystemTime;
    use street::ws::{CloseCode, ConnectRequest, Socket, WebSocketServer};
    let wss = WebSocketServer::new(
        opts()
            .with_heartbeat_interval(Duration::from_millis(150))
            .with_expiry_grace(Duration::from_millis(300)),
    );
    wss.on_connection(|socket: Socket, req: ConnectRequest| {
        let token = req.query_param("token").unwrap_or_default();
        if !token.starts_with('t') {
            let _ = socket.close(CloseCode(4001), "Unauthorized");
            return Ok(());
        }
        socket.set_expiry(Some(SystemTime::now() + Duration::from_millis(300)));
        let s = socket.clone();
        socket.on_request("street:auth", move |p: Value| {
            let ok = p["token"].as_str().is_some_and(|t| t.starts_with('t'));
            if ok {
                s.set_expiry(Some(SystemTime::now() + Duration::from_secs(60)));
            }
            ok.then_some(true).ok_or("invalid token")
        })?;
        socket.on_request("ping", |_: Value| Ok::<_, String>("pong"))?;
        socket.emit("welcome", &json!({ "token": token }))
    });
    let srv = serve(&wss).await;
    let js = js_dir();
    let (mut child, mut rx) = spawn_lines(
        Command::new("node")
            .arg(js.join("street_token.mjs"))
            .arg(url(srv.local_addr(), "/ws"))
            .current_dir(&js),
    );
    let report = line(&mut rx, 30).await;
    let _ = child.wait();
    let v: Value = serde_json::from_str(&report).expect("json");
    assert_eq!(v["tokens"], json!(["t1", "bad", "t3", "t4"]), "{v}");
    assert_eq!(v["welcomes"], json!(["t1", "t3"]), "{v}");
    assert_eq!(v["closes"], json!([4010]), "{v}");
    assert_eq!(
        v["lifecycle"],
        json!([
            "expired:warned",
            "token:failed",
            "expired:warned",
            "token:refreshed"
        ]),
        "{v}"
    );
    assert_eq!(v["ping"], "pong", "{v}");
    assert_eq!(wss.stats().expired, 1);
}

/// The client package's binary frames (to the server's raw handler and back) and its
/// liveness timeout: after a `street:ping` announcing 100 ms, a connection on which
/// nothing arrives is given up within two intervals and reconnected.
#[tokio::test]
async fn the_client_package_sends_binary_and_gives_up_a_silent_connection() {
    use serde_json::{json, Value};
    use street::ws::{ConnectRequest, RawMessage, Socket, WebSocketServer};
    let wss = WebSocketServer::new(opts());
    wss.on_connection(|socket: Socket, _: ConnectRequest| {
        let s = socket.clone();
        socket.on_raw(move |m: RawMessage| s.send_raw(m))
    });
    let srv = serve(&wss).await;
    let js = js_dir();
    let (mut child, mut rx) = spawn_lines(
        Command::new("node")
            .arg(js.join("street_details.mjs"))
            .arg(url(srv.local_addr(), "/ws"))
            .current_dir(&js),
    );
    let report = line(&mut rx, 30).await;
    let _ = child.wait();
    let v: Value = serde_json::from_str(&report).expect("json");
    assert_eq!(
        (v["binaryIsArrayBuffer"].clone(), v["binary"].clone()),
        (json!(true), json!([1, 2, 3, 250])),
        "{v}"
    );
    assert_eq!(
        v["close"],
        json!({"code": 4000, "reason": "liveness timeout"}),
        "{v}"
    );
    let after = v["gaveUpAfterMs"].as_u64().expect("ms");
    assert!(
        (150..2000).contains(&after),
        "two intervals (200 ms) after the ping: {v}"
    );
    assert_eq!(
        (v["connections"].clone(), v["leaked"].clone()),
        (json!(2), json!(0)),
        "{v}"
    );
}

/// The client package at its edges (tests/js/street_edges.mjs, against `ws` servers of
/// its own): after a final close requests fail `closed` at once, not after their
/// timeout; a result JSON cannot encode is answered `internal`; the queue (joins first)
/// goes out before what an `open` listener sends; `once` passes every argument and
/// `off` removes it; `close()` ends at once (with a code the WebSocket refuses too, sent
/// as 1000; once); a `getToken` that never settles is a
/// failed attempt, retried; a bad URL is final; the caller's query object is untouched.
#[tokio::test]
async fn the_client_package_at_its_edges() {
    use serde_json::{json, Value};
    let js = js_dir();
    let (mut child, mut rx) = spawn_lines(
        Command::new("node")
            .arg(js.join("street_edges.mjs"))
            .current_dir(&js),
    );
    let report = line(&mut rx, 30).await;
    let _ = child.wait();
    let v: Value = serde_json::from_str(&report).unwrap_or_else(|_| panic!("{report}"));
    assert_eq!(
        (v["finalState"]["code"].clone(), v["afterFinal"].clone()),
        (json!(4001), json!("closed")),
        "{v}"
    );
    // it had gone out on the connection the server then closed
    assert_eq!(v["queuedAtFinal"], "disconnected", "{v}");
    assert_eq!(v["bigint"]["id"], 5, "{v}");
    assert_eq!(v["bigint"]["error"]["code"], "internal", "{v}");
    assert_eq!(v["onceStar"], json!(["hello", 1, "object"]), "{v}");
    assert_eq!(v["removedOnceCalled"], false, "{v}");
    assert_eq!(
        v["order"],
        json!(["room:join", "queued", "from-open"]),
        "{v}"
    );
    assert_eq!(
        v["closedAtOnce"],
        json!({"state": "closed", "close": {"code": 1000, "reason": ""}, "request": "closed"}),
        "{v}"
    );
    assert_eq!(v["hungToken"]["state"], "failed", "{v}");
    assert_eq!(v["tokenAskedAgain"], true, "{v}");
    assert_eq!(
        v["badUrl"],
        json!({"state": "closed", "code": 1006, "final": true}),
        "{v}"
    );
    assert_eq!(
        v["refusedCode"],
        json!({"serverSawClose": 1000, "state": "closed", "closedStates": 1}),
        "{v}"
    );
    assert_eq!(
        v["closeInOpen"],
        json!(["state:connecting", "state:open", "close", "state:closed"]),
        "no 'open' after 'closed': {v}"
    );
    assert_eq!(v["callerQuery"], json!({"room": "a"}), "{v}");
    assert_eq!(
        v["clientQuery"],
        json!({"room": "a", "token": "tok"}),
        "{v}"
    );
}
