//! street in the host's own server: `WebSocketServer::route` in an axum `Router` on
//! `axum::serve`, `App::layer` and `App::into_router`, and a non-TCP transport (a Unix
//! socket served by hyper), which takes the generic `AsyncRead + AsyncWrite` path.

use std::net::SocketAddr;

use axum::extract::Request;
use axum::middleware::Next;
use serde_json::json;
use street::ws::{AuthRejection, ConnectRequest, Socket, WebSocketServer, WsOptions};

use crate::common::*;

#[derive(Clone, Debug)]
struct User(String);

/// The host's auth middleware: `x-user` becomes a `User` extension.
async fn user_from_header(mut req: Request, next: Next) -> axum::response::Response {
    if let Some(u) = req.headers().get("x-user").and_then(|v| v.to_str().ok()) {
        let u = User(u.to_owned());
        req.extensions_mut().insert(u);
    }
    next.run(req).await
}

/// Greets with the `User` the auth hook took from the request extensions.
fn greeting_server(opts: WsOptions) -> WebSocketServer {
    let wss = WebSocketServer::new(opts);
    wss.auth(|req: ConnectRequest| async move {
        req.extensions()
            .get::<User>()
            .cloned()
            .ok_or_else(|| AuthRejection::new("no user"))
    });
    wss.on_connection(|socket: Socket, req: ConnectRequest| {
        let user = socket.get::<User>().map(|u| u.0).unwrap_or_default();
        let room = req.path_param("room").map(str::to_owned);
        socket.emit("hello", &json!({ "user": user, "room": room }))
    });
    wss
}

async fn serve_router(router: axum::Router) -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let _ = axum::serve(
            listener,
            router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async move {
            let _ = rx.await;
        })
        .await;
    });
    (addr, tx)
}

#[tokio::test]
async fn app_layer_puts_middleware_extensions_in_front_of_the_auth_hook() {
    let wss = greeting_server(opts());
    let srv = serve_app(
        street::app(app_opts())
            .websocket(&wss)
            .layer(axum::middleware::from_fn(user_from_header)),
    )
    .await;
    let mut c = try_connect_with(srv.local_addr(), "/ws", &[("x-user", "ada")])
        .await
        .expect("admitted");
    let m = recv_json(&mut c).await;
    assert_eq!(m["payload"], json!({"user": "ada", "room": null}));
    // without the header the middleware sets nothing and the hook refuses
    assert_eq!(
        try_connect_with(srv.local_addr(), "/ws", &[]).await.err(),
        Some(401)
    );
}

#[tokio::test]
async fn a_route_in_the_hosts_router_on_axum_serve_keeps_caps_per_ip_limits_and_shutdown() {
    let wss = greeting_server(
        opts()
            .with_max_connections(3)
            .with_max_connections_per_ip(2),
    );
    let router = axum::Router::new()
        .route("/", axum::routing::get(|| async { "host" }))
        .route("/rooms/{room}/ws", wss.route())
        .layer(axum::middleware::from_fn(user_from_header));
    let (addr, stop) = serve_router(router).await;
    assert_eq!(
        reqwest::get(format!("http://{addr}/"))
            .await
            .expect("get")
            .text()
            .await
            .expect("body"),
        "host"
    );
    let hdr = [("x-user", "bob")];
    // a path parameter that is not UTF-8 once decoded: 400, not an absent parameter
    assert_eq!(
        try_connect_with(addr, "/rooms/%FF/ws", &hdr).await.err(),
        Some(400)
    );
    let mut a = try_connect_with(addr, "/rooms/blue/ws", &hdr)
        .await
        .expect("first");
    let m = recv_json(&mut a).await;
    assert_eq!(m["payload"], json!({"user": "bob", "room": "blue"}));
    let _b = try_connect_with(addr, "/rooms/red/ws", &hdr)
        .await
        .expect("second");
    // a third from 127.0.0.1: over the per-address cap (axum's ConnectInfo)
    assert_eq!(
        try_connect_with(addr, "/rooms/x/ws", &hdr).await.err(),
        Some(429)
    );
    // another address still gets in, up to the server's cap
    let mut raw = connect_from("127.0.0.2", addr).await.expect("tcp");
    let req = "GET /rooms/green/ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\
               Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
               Sec-WebSocket-Version: 13\r\nx-user: cy\r\n\r\n";
    assert_eq!(
        http_on(&mut raw, req.as_bytes()).await.map(|r| r.0),
        Some(101)
    );
    assert_eq!(wss.connection_count(), 3);
    // the host's shutdown closes the server: 1001 to its clients
    within("close", wss.close()).await;
    assert_eq!(recv_close(&mut a).await.0, 1001);
    let _ = stop.send(());
}

#[tokio::test]
async fn into_router_serves_an_app_from_the_hosts_server() {
    let wss = WebSocketServer::new(opts());
    wss.on_connection(|socket: Socket, _: ConnectRequest| {
        let s = socket.clone();
        socket.on("echo", move |v: serde_json::Value| s.emit("echo", &v))
    });
    let app = street::app(app_opts().with_max_body_bytes(1024))
        .route("/api/ping", axum::routing::get(|| async { "pong" }))
        .route(
            "/api/echo",
            axum::routing::post(|body: String| async move { body }),
        )
        .websocket(&wss);
    let host = axum::Router::new().nest("/rt", app.into_router());
    let (addr, stop) = serve_router(host).await;
    let body = reqwest::get(format!("http://{addr}/rt/api/ping"))
        .await
        .expect("get")
        .text()
        .await
        .expect("body");
    assert_eq!(body, "pong");
    // the app's body limit comes along
    let post = |n: usize| {
        reqwest::Client::new()
            .post(format!("http://{addr}/rt/api/echo"))
            .body("x".repeat(n))
            .send()
    };
    assert_eq!(post(1000).await.expect("post").status(), 200);
    assert_eq!(post(2000).await.expect("post").status(), 413);
    let mut c = connect_path(addr, "/rt/ws").await;
    send_env(&mut c, "echo", json!([1, 2])).await;
    assert_eq!(recv_json(&mut c).await["payload"], json!([1, 2]));
    let _ = stop.send(());
}

/// A Unix socket served by hyper: the upgraded stream is not a `TcpStream`, so street
/// runs the connection through its generic transport. Messages both ways, a fragmented
/// message, and the close handshake.
#[tokio::test]
async fn a_unix_socket_server_speaks_websocket_through_the_generic_transport() {
    use futures_util::{SinkExt, StreamExt};
    use hyper_util::rt::TokioIo;
    use hyper_util::service::TowerToHyperService;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    use tokio_tungstenite::tungstenite::protocol::frame::{Frame, FrameHeader};
    use tokio_tungstenite::tungstenite::Message;

    let wss = WebSocketServer::new(opts());
    wss.on_connection(|socket: Socket, _: ConnectRequest| {
        let s = socket.clone();
        socket.on("echo", move |v: serde_json::Value| s.emit("echo", &v))
    });
    let router = axum::Router::new().route("/ws", wss.route());
    let dir = std::env::temp_dir().join(format!("street-uds-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join("ws.sock");
    let _ = std::fs::remove_file(&path);
    let listener = tokio::net::UnixListener::bind(&path).expect("bind unix");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let svc = TowerToHyperService::new(router.clone());
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .with_upgrades(),
            );
        }
    });
    let stream = tokio::net::UnixStream::connect(&path)
        .await
        .expect("connect unix");
    let (mut c, _) = within(
        "handshake",
        tokio_tungstenite::client_async("ws://localhost/ws", stream),
    )
    .await
    .expect("handshake");
    c.send(Message::text(r#"{"type":"echo","payload":"over unix"}"#))
        .await
        .expect("send");
    let m = within("reply", c.next()).await.expect("frame").expect("ok");
    let v: serde_json::Value = serde_json::from_str(m.to_text().expect("text")).expect("json");
    assert_eq!(v["payload"], "over unix");
    // a message in two fragments
    let text = br#"{"type":"echo","payload":"in two parts"}"#;
    let (p1, p2) = text.split_at(12);
    let first = Frame::message(p1.to_vec(), OpCode::Data(Data::Text), false);
    let mut last = Frame::message(p2.to_vec(), OpCode::Data(Data::Continue), true);
    *last.header_mut() = FrameHeader {
        is_final: true,
        opcode: OpCode::Data(Data::Continue),
        ..FrameHeader::default()
    };
    c.send(Message::Frame(first)).await.expect("send");
    c.send(Message::Frame(last)).await.expect("send");
    let m = within("reply", c.next()).await.expect("frame").expect("ok");
    assert!(m.to_text().expect("text").contains("in two parts"));
    // the close handshake: our 1000 is echoed
    c.close(None).await.expect("close");
    let end = within("close", c.next()).await;
    assert!(matches!(end, Some(Ok(Message::Close(_))) | None), "{end:?}");
    within("unregistered", async {
        while wss.connection_count() > 0 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// The heartbeat runs in embedded mode too: on the host's `axum::serve`, a peer that
/// answers no ping is dropped within two intervals, and its close handler sees 1006.
#[tokio::test]
async fn the_heartbeat_reaps_a_silent_peer_on_the_hosts_server() {
    let wss =
        WebSocketServer::new(opts().with_heartbeat_interval(std::time::Duration::from_millis(200)));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    wss.on_connection(move |socket: Socket, _: ConnectRequest| {
        let tx = tx.clone();
        socket.on_close(move |info: street::ws::CloseInfo| {
            let _ = tx.send(info.code);
        })
    });
    let (addr, stop) = serve_router(axum::Router::new().route("/live", wss.route())).await;
    let (mut raw, head) = raw_connect(addr, "/live", "").await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    // never read, never answer: reaped, and the connection ends
    let code = within("reaped", rx.recv()).await;
    assert_eq!(code, Some(street::ws::CloseCode::ABNORMAL));
    raw.eof().await;
    assert_eq!(wss.connection_count(), 0);
    let _ = stop.send(());
}
