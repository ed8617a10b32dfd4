//! The demo (`cargo run --release`) as a process: its HTTP API and WebSocket rules over
//! real sockets, then the whole thing in headless Chromium (two people chatting, the
//! dashboard, a restart), which also takes the README's screenshots.

use std::io::Write;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::common::*;
use crate::rooms::{next_is, recv_type};
use serde_json::{json, Value};

const SECRET: &str = "a-test-secret-for-the-demo-0123456789";

struct Demo {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The bearer token `/metrics` wants in these tests.
const METRICS_TOKEN: &str = "a-metrics-token-for-the-tests";

async fn start_demo(port: u16) -> Demo {
    start_demo_with(port, None).await
}

async fn start_demo_with(port: u16, redis_url: Option<&str>) -> Demo {
    start_demo_env(
        port,
        &[
            ("REDIS_URL", redis_url),
            ("STREET_JWT_SECRET", Some(SECRET)),
            ("STREET_METRICS_TOKEN", Some(METRICS_TOKEN)),
        ],
    )
    .await
}

/// Start the demo with these variables set (`Some`) or removed (`None`).
async fn start_demo_env(port: u16, env: &[(&str, Option<&str>)]) -> Demo {
    let mut cmd = Command::new(demo_path());
    for (k, v) in env {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    let child = cmd
        .env("PORT", port.to_string())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn the demo");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    crate::examples::wait_listening(addr).await;
    Demo { child, addr }
}

/// A token for `claims` signed with `secret` (the demo's, or a forger's).
fn sign_with(secret: &str, claims: Value) -> String {
    street::jwt::JwtService::new(
        street::jwt::JwtOptions::default().with_secret(Some(secret.into())),
    )
    .expect("jwt")
    .sign(&claims)
    .expect("sign")
}

async fn login(addr: SocketAddr, name: &str) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(format!("http://{addr}/api/login"))
        .json(&json!({ "name": name }))
        .send()
        .await
        .expect("post");
    (r.status().as_u16(), r.json().await.expect("json"))
}

async fn token(addr: SocketAddr, name: &str) -> String {
    let (status, body) = login(addr, name).await;
    assert_eq!(status, 200, "{body}");
    body["token"].as_str().expect("token").to_owned()
}

/// Connect with a token (and any extra query) and read the welcome.
async fn chat_client(addr: SocketAddr, token: &str, extra: &str) -> (Client, Value) {
    let mut c = connect_path(addr, &format!("/ws?token={token}{extra}")).await;
    let w = next_is(&mut c, "welcome").await;
    (c, w)
}

#[tokio::test]
async fn demo_login_and_connection_rules() {
    let demo = start_demo(crate::examples::free_port()).await;
    let addr = demo.addr;
    // names: empty, too long, control characters → 400; markup is just a name
    assert_eq!(login(addr, "  ").await.0, 400);
    let (status, body) = login(addr, &"n".repeat(33)).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("name is longer than 32 characters"))
    );
    assert_eq!(login(addr, "a\u{7}b").await.0, 400);
    let (status, body) = login(addr, "<b>Zed</b>").await;
    assert_eq!((status, body["name"].as_str()), (200, Some("<b>Zed</b>")));

    // a bad or expired token: close 4001 with the reason
    let mut bad = connect_path(addr, "/ws?token=not.a.token").await;
    assert_eq!(
        recv_close(&mut bad).await,
        (4001, "Unauthorized: invalid token".into())
    );
    let expired = sign_with(SECRET, json!({ "sub": "ana", "exp": 1 }));
    let mut old = connect_path(addr, &format!("/ws?token={expired}")).await;
    assert_eq!(
        recv_close(&mut old).await,
        (4001, "Unauthorized: token expired".into())
    );
    let forged = sign_with("another-secret-of-enough-length", json!({ "sub": "ana" }));
    let mut f = connect_path(addr, &format!("/ws?token={forged}")).await;
    assert_eq!(recv_close(&mut f).await.0, 4001);

    // identity is the token's: a claimed member in the query or payload changes nothing
    let ana_token = token(addr, "ana").await;
    let (mut ana, w) = chat_client(addr, &ana_token, "&member=bo").await;
    assert_eq!(w["memberId"], "ana");
    let (mut bo, _) = chat_client(addr, &token(addr, "bo").await, "").await;
    for c in [&mut ana, &mut bo] {
        send_env(c, "room:join", json!({ "channel": "general" })).await;
        let _ = recv_type(c, "room:joined").await;
    }
    send_env(
        &mut ana,
        "chat",
        json!({ "channel": "general", "text": "hi", "memberId": "bo" }),
    )
    .await;
    let m = recv_type(&mut bo, "chat").await;
    assert_eq!(
        (m["memberId"].as_str(), m["text"].as_str()),
        (Some("ana"), Some("hi"))
    );

    // a typing flood is one event for the others
    for _ in 0..100 {
        send_env(
            &mut ana,
            "typing",
            json!({ "channel": "general", "typing": true }),
        )
        .await;
    }
    send_env(
        &mut ana,
        "chat",
        json!({ "channel": "general", "text": "marker" }),
    )
    .await;
    let mut typing_events = 0;
    loop {
        let v = recv_json(&mut bo).await;
        match v["type"].as_str() {
            Some("typing") => typing_events += 1,
            Some("chat") if v["payload"]["text"] == "marker" => break,
            _ => {}
        }
    }
    assert_eq!(typing_events, 1);

    // a too-long message, a closed room, a room one is not in
    send_env(
        &mut ana,
        "chat",
        json!({ "channel": "general", "text": "x".repeat(1001) }),
    )
    .await;
    assert_eq!(
        recv_type(&mut ana, "chat:error").await["reason"],
        "message is longer than 1000 characters"
    );
    send_env(&mut ana, "room:join", json!({ "channel": "staff" })).await;
    assert_eq!(
        recv_type(&mut ana, "room:error").await,
        json!({ "channel": "staff", "action": "join", "reason": "forbidden" })
    );
    send_env(
        &mut ana,
        "chat",
        json!({ "channel": "random", "text": "hello?" }),
    )
    .await;
    assert_eq!(
        recv_type(&mut ana, "chat:error").await["reason"],
        "join the room first"
    );

    // history for a latecomer: nothing is pushed on join; the page asks (the rooms'
    // `room:history` request) and gets the room's recent past from the broker, for a room
    // it may join (before joining it); for a closed room, a refusal
    let (mut cy, _) = chat_client(addr, &token(addr, "cy").await, "").await;
    for (id, channel) in [(1, "general"), (2, "staff")] {
        let ask = json!({ "type": "room:history", "payload": { "channel": channel }, "id": id });
        send_text(&mut cy, &ask.to_string()).await;
    }
    let mut replies = std::collections::BTreeMap::new();
    while replies.len() < 2 {
        let v = recv_json(&mut cy).await;
        if v["type"] == "street:reply" {
            replies.insert(
                v["payload"]["id"].as_u64().expect("id"),
                v["payload"].clone(),
            );
        }
    }
    let h = &replies[&1]["result"];
    assert_eq!(h["channel"], "general", "{h}");
    let texts: Vec<&str> = h["publications"]
        .as_array()
        .expect("publications")
        .iter()
        .filter(|p| p["type"] == "chat")
        .filter_map(|p| p["payload"]["text"].as_str())
        .collect();
    assert_eq!(texts, ["hi", "marker"], "{h}");
    assert_eq!(
        replies[&2]["error"],
        json!({ "code": "rejected", "message": "forbidden" }),
        "{replies:?}"
    );

    // the Prometheus route (with its token) and the dashboard feed
    let text = reqwest::Client::new()
        .get(format!("http://{addr}/metrics"))
        .bearer_auth(METRICS_TOKEN)
        .send()
        .await
        .expect("get")
        .text()
        .await
        .expect("text");
    assert!(
        text.contains("street_ws_connections{server=\"chat\"} 3"),
        "{text}"
    );
    assert!(
        text.contains("street_app_events_total{event=\"chat_messages\"} 2"),
        "{text}"
    );
    let mut feed = reqwest::get(format!("http://{addr}/api/metrics/stream"))
        .await
        .expect("get");
    let first = within("a dashboard sample", feed.chunk())
        .await
        .expect("chunk")
        .expect("data");
    let first = String::from_utf8_lossy(&first);
    assert!(
        first.contains("event: metrics") && first.contains("\"connections\":3"),
        "{first}"
    );
    // the one history answered (cy's)
    assert!(first.contains("\"historySent\":1"), "{first}");
}

/// Without `STREET_JWT_SECRET` the demo signs with a random secret of its own: a token
/// signed with the secret that used to be in the source is refused, its own tokens work.
/// Names that could pass for someone else's (invisible, bidi, odd whitespace) are refused
/// at login; the login page says that login is open. No `STREET_METRICS_TOKEN`: no
/// `/metrics`.
#[tokio::test]
async fn demo_identity_random_secret_name_rule_and_open_login_notice() {
    let demo = start_demo_env(
        crate::examples::free_port(),
        &[
            ("REDIS_URL", None),
            ("STREET_JWT_SECRET", None),
            ("STREET_METRICS_TOKEN", None),
        ],
    )
    .await;
    let addr = demo.addr;
    let old_constant = sign_with(
        "street-demo-development-secret-change-me",
        json!({ "sub": "admin" }),
    );
    let mut forged = connect_path(addr, &format!("/ws?token={old_constant}")).await;
    assert_eq!(
        recv_close(&mut forged).await,
        (4001, "Unauthorized: invalid token".into())
    );
    let (_ana, w) = chat_client(addr, &token(addr, "ana").await, "").await;
    assert_eq!(w["memberId"], "ana");

    for (name, code_point) in [
        ("an\u{200B}a", "U+200B"),
        ("\u{202E}ana", "U+202E"),
        ("ana\u{2066}", "U+2066"),
        ("\u{FEFF}ana", "U+FEFF"),
        ("an\u{00AD}a", "U+00AD"),
        ("ana\u{FE0F}", "U+FE0F"),
        ("an\u{00A0}a", "U+00A0"),
        ("\u{3164}", "U+3164"),
    ] {
        let (status, body) = login(addr, name).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (
                400,
                Some(
                    format!(
                        "name contains an invisible or direction-changing character ({code_point})"
                    )
                    .as_str()
                )
            ),
            "{name:?}"
        );
    }
    let (status, body) = login(addr, "an\u{1b}a").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("name contains a control character (U+001B)"))
    );
    let (status, body) = login(addr, "\u{2003} Ana   Bo \t").await;
    assert_eq!(
        (status, body["name"].as_str()),
        (200, Some("Ana Bo")),
        "{body}"
    );
    let (status, body) = login(addr, "Zoë 🙂 Ана").await;
    assert_eq!(
        (status, body["name"].as_str()),
        (200, Some("Zoë 🙂 Ана")),
        "{body}"
    );

    let page = reqwest::get(format!("http://{addr}/"))
        .await
        .expect("get")
        .text()
        .await
        .expect("text");
    assert!(
        page.contains("This is an open demo: anyone can log in under any name."),
        "{page}"
    );
    let metrics = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .expect("get");
    assert_eq!(metrics.status(), 404);
}

/// Every HTTP response of the demo carries the strict headers: pages, assets, the
/// client, the API (success and error), the SSE feed, `/metrics` (with and without its
/// token) and a 404. `/metrics` wants the bearer token.
#[tokio::test]
async fn demo_every_response_carries_strict_headers_and_metrics_wants_its_token() {
    let demo = start_demo(crate::examples::free_port()).await;
    let addr = demo.addr;
    let http = reqwest::Client::new();
    let get = |path: &str| http.get(format!("http://{addr}{path}"));
    let login = |name: &str| {
        http.post(format!("http://{addr}/api/login"))
            .json(&json!({ "name": name }))
    };
    let cases = [
        ("/", get("/"), 200),
        ("/dashboard", get("/dashboard"), 200),
        ("/app.css", get("/app.css"), 200),
        ("/chat.js", get("/chat.js"), 200),
        ("/dashboard.js", get("/dashboard.js"), 200),
        ("/street.js", get("/street.js"), 200),
        ("/street.mjs", get("/street.mjs"), 200),
        ("/health", get("/health"), 200),
        ("/api/login", login("ana"), 200),
        ("/api/login (bad name)", login(""), 400),
        ("/api/metrics/stream", get("/api/metrics/stream"), 200),
        ("/metrics", get("/metrics").bearer_auth(METRICS_TOKEN), 200),
        (
            "/metrics (scheme in lower case)",
            get("/metrics").header("authorization", format!("bearer {METRICS_TOKEN}")),
            200,
        ),
        ("/metrics (no token)", get("/metrics"), 401),
        (
            "/metrics (the token as Basic)",
            get("/metrics").header("authorization", format!("Basic {METRICS_TOKEN}")),
            401,
        ),
        (
            "/metrics (wrong token)",
            get("/metrics").bearer_auth("a-metrics-token-for-the-testz"),
            401,
        ),
        ("/no-such-page", get("/no-such-page"), 404),
    ];
    for (what, req, status) in cases {
        let r = within(what, req.send()).await.expect("send");
        assert_eq!(r.status().as_u16(), status, "{what}");
        let h = |name: &str| {
            r.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned()
        };
        let csp = h("content-security-policy");
        assert!(
            csp.contains("connect-src 'self';")
                && csp.contains("frame-ancestors 'none'")
                && csp.contains("default-src 'self'")
                && !csp.contains("ws:"),
            "{what}: {csp}"
        );
        assert_eq!(h("x-content-type-options"), "nosniff", "{what}");
        assert_eq!(h("referrer-policy"), "no-referrer", "{what}");
        assert_eq!(h("x-frame-options"), "DENY", "{what}");
        if status == 401 {
            assert_eq!(h("www-authenticate"), "Bearer", "{what}");
        }
    }
    // the client comes from the library (street::client), as it is in client/
    for (path, file) in [
        ("/street.js", street::client::SCRIPT),
        ("/street.mjs", street::client::MODULE),
    ] {
        let r = within(path, get(path).send()).await.expect("send");
        let kind = r.headers()[reqwest::header::CONTENT_TYPE]
            .to_str()
            .ok()
            .map(str::to_owned);
        assert_eq!(
            kind.as_deref(),
            Some("text/javascript; charset=utf-8"),
            "{path}"
        );
        let body = within(path, r.text()).await.expect("body");
        assert!(body == file && body.contains("function Street("), "{path}");
    }
}

/// `REDIS_URL` makes the demo a cluster node: two demos on two ports share rooms,
/// presence and chat.
#[tokio::test]
async fn two_demo_nodes_through_redis_chat_across() {
    let redis = crate::redis_cluster::Redis::start().await;
    let url = redis.url();
    let one = start_demo_with(crate::examples::free_port(), Some(&url)).await;
    let two = start_demo_with(crate::examples::free_port(), Some(&url)).await;
    let (mut ana, w1) = chat_client(one.addr, &token(one.addr, "ana").await, "").await;
    // a token from node one works on node two: same secret
    let (mut bo, w2) = chat_client(two.addr, &token(one.addr, "bo").await, "").await;
    assert_ne!(w1["node"], w2["node"]);
    send_env(&mut ana, "room:join", json!({ "channel": "general" })).await;
    assert_eq!(
        recv_type(&mut ana, "room:joined").await["members"],
        json!(["ana"])
    );
    // bo's view of presence is the union: ana is on the other node (her node writes its
    // presence to Redis asynchronously, so ask again until it is there; a repeated join is
    // a no-op that answers with the current members)
    within("the presence union", async {
        loop {
            send_env(&mut bo, "room:join", json!({ "channel": "general" })).await;
            if recv_type(&mut bo, "room:joined").await["members"] == json!(["ana", "bo"]) {
                break;
            }
        }
    })
    .await;
    assert_eq!(
        recv_type(&mut ana, "presence:join").await,
        json!({ "channel": "general", "memberId": "bo" })
    );
    send_env(
        &mut ana,
        "chat",
        json!({ "channel": "general", "text": "across nodes" }),
    )
    .await;
    let m = recv_type(&mut bo, "chat").await;
    assert_eq!(
        (m["memberId"].as_str(), m["text"].as_str()),
        (Some("ana"), Some("across nodes"))
    );
    send_env(
        &mut bo,
        "typing",
        json!({ "channel": "general", "typing": true }),
    )
    .await;
    assert_eq!(recv_type(&mut ana, "typing").await["memberId"], "bo");
    // a page opening the room on node two loads what was said on node one
    let (mut cy, _) = chat_client(two.addr, &token(one.addr, "cy").await, "").await;
    let ask = json!({ "type": "room:history", "payload": { "channel": "general" }, "id": 1 });
    send_text(&mut cy, &ask.to_string()).await;
    let h = recv_type(&mut cy, "street:reply").await;
    let texts: Vec<&str> = h["result"]["publications"]
        .as_array()
        .expect("publications")
        .iter()
        .filter_map(|p| p["payload"]["text"].as_str())
        .collect();
    assert_eq!(texts, ["across nodes"], "{h}");
    drop((one, two));
}

/// The browser's next line (bounded); an "ERROR …" line fails the test.
async fn next_line(rx: &mut tokio::sync::mpsc::UnboundedReceiver<String>) -> String {
    let l = tokio::time::timeout(Duration::from_secs(90), rx.recv())
        .await
        .expect("the browser to report within 90 s")
        .expect("a line");
    assert!(!l.starts_with("ERROR"), "{l}");
    l
}

/// Two people in headless Chromium, the dashboard, and a restart (see
/// tests/js/demo_browser.js). `UPDATE_SCREENSHOTS=1` writes the README's pictures to
/// docs/; otherwise they go to target/screenshots/.
#[tokio::test]
async fn demo_in_a_browser_two_people_chat_and_survive_a_restart() {
    let js = js_dir();
    assert!(
        std::path::Path::new("/usr/bin/chromium").exists(),
        "/usr/bin/chromium is missing; scripts/test installs it (apt: chromium)"
    );
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let shots = if std::env::var_os("UPDATE_SCREENSHOTS").is_some() {
        root.join("docs")
    } else {
        root.join("target/screenshots")
    };
    std::fs::create_dir_all(&shots).expect("screenshot dir");
    let port = crate::examples::free_port();
    let mut demo = start_demo(port).await;
    let (mut node, mut rx) = spawn_lines(
        Command::new("node")
            .arg(js.join("demo_browser.js"))
            .arg(format!("http://127.0.0.1:{port}"))
            .arg(&shots)
            .current_dir(&js),
    );
    assert_eq!(next_line(&mut rx).await, "RESTART");
    let _ = Command::new("kill")
        .args(["-TERM", &demo.child.id().to_string()])
        .status();
    let status = tokio::task::spawn_blocking(move || {
        let s = demo.child.wait();
        (s, demo)
    })
    .await
    .expect("join");
    assert!(status.0.expect("wait").success());
    drop(status.1);
    let _again = start_demo(port).await;
    writeln!(node.stdin.take().expect("stdin"), "RESTARTED").expect("write");
    let report = next_line(&mut rx).await;
    let _ = node.wait();
    println!("browser report: {report}");
    let v: Value = serde_json::from_str(&report).expect("json");
    assert_eq!(v["presenceAna"], "Ana (you)Bo", "{v}");
    assert_eq!(v["presenceBo"], "AnaBo (you)", "{v}");
    assert_eq!(v["me"], "signed in as Ana", "{v}");
    assert_eq!(v["typing"], "Bo is typing…", "{v}");
    assert_eq!(
        v["markupShown"], "<img src=x onerror=\"window.pwned=1\"><b>bold?</b>",
        "{v}"
    );
    assert_eq!(
        (v["markupImgs"].as_u64(), v["pwned"].as_str()),
        (Some(0), Some("no")),
        "{v}"
    );
    assert_eq!(v["typingAfterSend"], "", "{v}");
    assert!(
        v["boSaw"]
            .as_str()
            .is_some_and(|s| s.starts_with("Anahello from Ana")),
        "{v}"
    );
    assert_eq!(v["closedRoom"], "Cannot join #staff: forbidden", "{v}");
    assert_eq!(
        v["longMessage"], "message is longer than 1000 characters",
        "{v}"
    );
    assert!(v["history"].as_u64().is_some_and(|n| n >= 2), "{v}");
    assert_eq!(v["longName"], "name is longer than 32 characters", "{v}");
    assert_eq!(
        v["bidiName"], "name contains an invisible or direction-changing character (U+202E)",
        "{v}"
    );
    assert!(
        v["openNotice"].as_str().is_some_and(
            |s| s.starts_with("This is an open demo: anyone can log in under any name.")
        ),
        "{v}"
    );
    assert!(
        v["badToken"]
            .as_str()
            .is_some_and(|s| s.contains("Unauthorized: invalid token")),
        "{v}"
    );
    assert_eq!(v["badTokenState"], "closed", "{v}");
    assert!(v["dashConnections"].as_u64().is_some_and(|n| n >= 2), "{v}");
    let chat = v["dashChat"].as_array().expect("dashChat");
    assert!(chat[1].as_u64() >= chat[0].as_u64().map(|n| n + 3), "{v}");
    assert!(v["dashMaxIn"].as_f64().is_some_and(|n| n > 0.0), "{v}");
    assert!(
        v["afterRestart"]
            .as_str()
            .is_some_and(|s| s.contains("after the restart")),
        "{v}"
    );
    assert_eq!(v["dashboardResumed"], true, "{v}");
    // Chromium's permessage-deflate offer was taken (the chat ran compressed)
    for who in ["Ana", "Bo"] {
        assert_eq!(
            v["wsExtensions"][who],
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover",
            "{v}"
        );
    }
    assert!(shots.join("chat.png").exists() && shots.join("dashboard.png").exists());
}

/// The demo's `historySent` now (the dashboard feed's next sample): how many times this
/// process answered a page's `chat:history`.
async fn history_sent(addr: SocketAddr) -> u64 {
    let mut feed = reqwest::get(format!("http://{addr}/api/metrics/stream"))
        .await
        .expect("get");
    within("a dashboard sample", async {
        let mut buf = String::new();
        loop {
            let chunk = feed.chunk().await.expect("chunk").expect("data");
            buf.push_str(&String::from_utf8_lossy(&chunk));
            let sample = buf
                .split_inclusive('\n')
                .filter(|l| l.ends_with('\n'))
                .find_map(|l| l.strip_prefix("data:"))
                .and_then(|d| serde_json::from_str::<Value>(d.trim()).ok());
            if let Some(n) = sample.and_then(|v| v["historySent"].as_u64()) {
                return n;
            }
        }
    })
    .await
}

/// A child process killed when the test ends, however it ends.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The demo chat across a server restart in headless Chromium (issue 13; see
/// tests/js/demo_recovery.js). With Redis, the rooms' history outlives the demo process:
/// Ana's page is kept offline while the demo restarts and Bo publishes, then comes back,
/// re-joins `since` its position, is told `recovered: true` and gets every message it
/// missed once, in order, without asking for the room's history again.
#[tokio::test]
async fn demo_in_a_browser_recovers_what_it_missed_across_a_restart() {
    let js = js_dir();
    assert!(
        std::path::Path::new("/usr/bin/chromium").exists(),
        "/usr/bin/chromium is missing; scripts/test installs it (apt: chromium)"
    );
    let redis = crate::redis_cluster::Redis::start().await;
    let url = redis.url();
    let port = crate::examples::free_port();
    let mut demo = start_demo_with(port, Some(&url)).await;
    let (node, mut rx) = spawn_lines(
        Command::new("node")
            .arg(js.join("demo_recovery.js"))
            .arg(format!("http://127.0.0.1:{port}"))
            .current_dir(&js),
    );
    let mut node = KillOnDrop(node);
    let mut stdin = node.0.stdin.take().expect("stdin");
    assert_eq!(next_line(&mut rx).await, "READY");
    // Ana's page asked for the room's history once: its first join
    assert_eq!(history_sent(demo.addr).await, 1);

    // the demo stops (SIGTERM, a clean shutdown); Ana's page goes offline
    let _ = Command::new("kill")
        .args(["-TERM", &demo.child.id().to_string()])
        .status();
    let status = tokio::task::spawn_blocking(move || (demo.child.wait(), demo))
        .await
        .expect("join");
    assert!(status.0.expect("wait").success());
    drop(status.1);
    writeln!(stdin, "DOWN").expect("write");
    assert_eq!(next_line(&mut rx).await, "OFFLINE");

    // the demo is back; Bo publishes while Ana cannot reconnect, and sees it published
    let demo = start_demo_with(port, Some(&url)).await;
    let (mut bo, _) = chat_client(demo.addr, &token(demo.addr, "Bo").await, "").await;
    send_env(&mut bo, "room:join", json!({ "channel": "general" })).await;
    let _ = recv_type(&mut bo, "room:joined").await;
    for i in 1..=5 {
        let text = format!("missed {i}");
        send_env(
            &mut bo,
            "chat",
            json!({ "channel": "general", "text": text }),
        )
        .await;
        assert_eq!(recv_type(&mut bo, "chat").await["text"], text);
    }
    writeln!(stdin, "PUBLISHED").expect("write");
    assert_eq!(next_line(&mut rx).await, "RECOVERED");
    send_env(
        &mut bo,
        "chat",
        json!({ "channel": "general", "text": "live after recovery" }),
    )
    .await;
    writeln!(stdin, "LIVE").expect("write");
    let report = next_line(&mut rx).await;
    let _ = node.0.wait();
    println!("browser report: {report}");
    let v: Value = serde_json::from_str(&report).expect("json");

    // Ana was away while Bo published: she tried to reconnect (offline, it failed), never
    // was 'open', received no frame and was shown nothing new
    assert!(
        v["statesWhileAway"]
            .as_array()
            .is_some_and(|s| s.len() >= 2 && s.iter().all(|st| st == "reconnecting")),
        "{v}"
    );
    assert_eq!(v["stateWhenPublished"], "reconnecting", "{v}");
    assert_eq!(v["receivedWhileAway"], 0, "{v}");
    assert_eq!(
        v["shownWhileAway"],
        json!([["Ana", "before the restart"]]),
        "{v}"
    );

    // her page shows everything once, in order
    assert_eq!(
        v["shown"],
        json!([
            ["Ana", "before the restart"],
            ["Bo", "missed 1"],
            ["Bo", "missed 2"],
            ["Bo", "missed 3"],
            ["Bo", "missed 4"],
            ["Bo", "missed 5"],
            ["Bo", "live after recovery"]
        ]),
        "{v}"
    );

    // the first connection: a plain join, not recovered, so the page asked for the history
    assert_eq!(v["welcomedSockets"], 2, "{v}");
    let first = &v["first"];
    assert_eq!(first["joins"], json!([{ "channel": "general" }]), "{v}");
    let joined = &first["joined"][0];
    assert_ne!(joined["recovered"], true, "{v}");
    let epoch = joined["epoch"].as_str().expect("an epoch");
    assert_eq!(
        (&first["historyAsked"], &first["historyAnswers"]),
        (&json!(1), &json!(1)),
        "{v}"
    );
    assert_eq!(
        first["chat"],
        json!([{ "channel": "general", "offset": 1, "who": "Ana", "text": "before the restart" }]),
        "{v}"
    );

    // after the restart: joined since her position, recovered in the same epoch (Redis
    // kept it), every missed publication once and in offset order, then the live one; the
    // page did not ask for the history
    let back = &v["recovered"];
    assert_eq!(
        back["joins"],
        json!([{ "channel": "general", "since": { "epoch": epoch, "offset": 1 } }]),
        "{v}"
    );
    assert_eq!(back["joined"].as_array().map(Vec::len), Some(1), "{v}");
    let joined = &back["joined"][0];
    assert_eq!(
        (&joined["recovered"], joined["epoch"].as_str()),
        (&json!(true), Some(epoch)),
        "{v}"
    );
    assert_eq!(joined["members"], json!(["Ana", "Bo"]), "{v}");
    let chat: Vec<(u64, String)> = back["chat"]
        .as_array()
        .expect("chat")
        .iter()
        .map(|m| {
            (
                m["offset"].as_u64().expect("offset"),
                m["text"].as_str().expect("text").to_owned(),
            )
        })
        .collect();
    let want: Vec<(u64, String)> = (1..=5)
        .map(|i| (i + 1, format!("missed {i}")))
        .chain([(7, "live after recovery".to_owned())])
        .collect();
    assert_eq!(chat, want, "{v}");
    assert_eq!(
        (&back["historyAsked"], &back["historyAnswers"]),
        (&json!(0), &json!(0)),
        "{v}"
    );
    // and the restarted demo answered no history request at all (Bo never asks)
    assert_eq!(history_sent(demo.addr).await, 0);
    drop((bo, demo, redis));
}

/// `STREET_TRUSTED_PROXIES` must be CIDRs: a typo stops the demo with a clear message
/// instead of silently trusting nobody (or everybody).
#[tokio::test]
async fn demo_refuses_bad_trusted_proxies() {
    let out = within(
        "the demo to exit",
        tokio::task::spawn_blocking(|| {
            Command::new(demo_path())
                .env("PORT", crate::examples::free_port().to_string())
                .env("STREET_TRUSTED_PROXIES", "10.0.0.0/8, proxy.internal")
                .stdout(Stdio::null())
                .output()
        }),
    )
    .await
    .expect("join")
    .expect("run the demo");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("STREET_TRUSTED_PROXIES") && err.contains("proxy.internal"),
        "{err}"
    );
}

/// The demo's binary (`crates/street-demo`, built by scripts/test next to this test).
pub fn demo_path() -> std::path::PathBuf {
    // target/<profile>/deps/it-HASH -> target/<profile>/street
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let p = dir.join("street");
    assert!(
        p.exists(),
        "{} is not built; run scripts/test (or `cargo build -p street-demo` first)",
        p.display()
    );
    p
}

/// The next `street:reply`'s payload.
async fn reply(c: &mut Client) -> Value {
    loop {
        let v = recv_json(c).await;
        if v["type"] == "street:reply" {
            return v["payload"].clone();
        }
    }
}

/// The demo's connections last as long as their token, and the page hands in a new one
/// in-band (street.js's getToken, `street:auth`): accepted for the same name only.
#[tokio::test]
async fn demo_takes_a_fresh_token_in_band_for_the_same_name_only() {
    let demo = start_demo(crate::examples::free_port()).await;
    let first = token(demo.addr, "ana").await;
    let (mut c, _) = chat_client(demo.addr, &first, "").await;
    let ask = |token: String, id: u64| {
        json!({"type": "street:auth", "payload": {"token": token}, "id": id}).to_string()
    };
    send_text(&mut c, &ask(token(demo.addr, "ana").await, 1)).await;
    let r = reply(&mut c).await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    assert!(
        r["result"]["expiresAt"]
            .as_u64()
            .is_some_and(|e| e > now + 3000),
        "an hour ahead: {r}"
    );
    send_text(&mut c, &ask(token(demo.addr, "bo").await, 2)).await;
    assert_eq!(
        reply(&mut c).await["error"]["message"],
        "a token for another name"
    );
    send_text(&mut c, &ask("forged".into(), 3)).await;
    assert_eq!(reply(&mut c).await["error"]["message"], "invalid token");
}

/// The client package as an ES module in Chromium: the demo serves `/street.mjs`; a page
/// imports it, connects with `getToken`, and makes requests (the demo's in-band token
/// refresh), an accepted one and a refused one.
#[tokio::test]
async fn the_client_es_module_runs_in_chromium_against_the_demo() {
    let demo = start_demo(crate::examples::free_port()).await;
    let t = token(demo.addr, "ana").await;
    let js = js_dir();
    let (mut child, mut rx) = spawn_lines(
        Command::new("node")
            .arg(js.join("client_browser.mjs"))
            .arg(format!("http://{}/", demo.addr))
            .arg(&t)
            .current_dir(&js),
    );
    let report = within("the browser's report", rx.recv())
        .await
        .expect("a line");
    let _ = child.wait();
    assert!(!report.starts_with("ERROR"), "{report}");
    let v: Value = serde_json::from_str(&report).expect("json");
    assert_eq!(
        (v["member"].clone(), v["calls"].clone()),
        (json!("ana"), json!(1)),
        "{v}"
    );
    assert!(v["refreshed"]["expiresAt"].as_u64().is_some(), "{v}");
    assert_eq!(v["refused"]["code"], "rejected", "{v}");
    assert_eq!(v["refused"]["message"], "invalid token", "{v}");
    assert_eq!(v["errors"], json!([]), "{v}");
}
