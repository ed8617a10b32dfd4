//! TLS in-process (feature `tls`): `https://` and `wss://` on one port with a
//! self-signed certificate made here, driven by a Rust client (tokio-rustls), Node `ws`
//! and Chromium; failed and stalled handshakes; reloading the certificate; the TLS path
//! of `bench_server` and `embed` (`--tls-cert`/`--tls-key`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use street::sse::SseRequest;
use street::tls::TlsConfig;
use street::ws::{ConnectRequest, Socket, WebSocketServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::rustls;
use tokio_tungstenite::tungstenite::Message;

use crate::common::*;

/// A self-signed certificate for `localhost` and 127.0.0.1, written as PEM files.
pub struct Cert {
    pub dir: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub der: Vec<u8>,
}

impl Drop for Cert {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

pub fn make_cert() -> Cert {
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("street-tls-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let der = write_cert(&cert, &key);
    Cert {
        dir,
        cert,
        key,
        der,
    }
}

/// Write a fresh self-signed certificate and key; returns the certificate's DER.
fn write_cert(cert: &Path, key: &Path) -> Vec<u8> {
    let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
    let c = rcgen::generate_simple_self_signed(names).expect("certificate");
    std::fs::write(cert, c.cert.pem()).expect("write cert");
    std::fs::write(key, c.key_pair.serialize_pem()).expect("write key");
    c.cert.der().to_vec()
}

fn client_config(der: &[u8]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from(der.to_vec()))
        .expect("root");
    Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth(),
    )
}

type Tls = tokio_rustls::client::TlsStream<TcpStream>;

async fn tls_connect(addr: SocketAddr, der: &[u8]) -> Tls {
    let tcp = TcpStream::connect(addr).await.expect("tcp");
    let connector = tokio_rustls::TlsConnector::from(client_config(der));
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    within("TLS handshake", connector.connect(name, tcp))
        .await
        .expect("TLS handshake")
}

pub async fn wss_connect(
    addr: SocketAddr,
    der: &[u8],
    path: &str,
) -> tokio_tungstenite::WebSocketStream<Tls> {
    let tls = tls_connect(addr, der).await;
    let (ws, _) = within(
        "ws handshake",
        tokio_tungstenite::client_async(format!("wss://localhost{path}"), tls),
    )
    .await
    .expect("ws handshake");
    ws
}

/// A GET over TLS; the status and the whole response (the server closes).
async fn https_get(addr: SocketAddr, der: &[u8], path: &str) -> (u16, String) {
    let mut tls = tls_connect(addr, der).await;
    let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    tls.write_all(req.as_bytes()).await.expect("write");
    let mut buf = Vec::new();
    let _ = within("response", tls.read_to_end(&mut buf)).await;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}

const PAGE: &str = "<!doctype html><title>street over TLS</title><p>hello";

/// An app on TLS: `/` a page, `/ws` echo, `/sse` one `tick` event every 100 ms.
async fn tls_app(
    tls: TlsConfig,
    header_timeout: Duration,
) -> (street::app::ServerHandle, WebSocketServer) {
    let wss = WebSocketServer::new(opts());
    wss.on_connection(|socket: Socket, _: ConnectRequest| {
        let s = socket.clone();
        socket.on("echo", move |v: serde_json::Value| s.emit("echo", &v))
    });
    let app = street::app(
        app_opts()
            .with_tls(Some(tls))
            .with_header_read_timeout(header_timeout),
    )
    .route(
        "/",
        axum::routing::get(|| async { axum::response::Html(PAGE) }),
    )
    .route(
        "/sse",
        axum::routing::get(|req: SseRequest| async move {
            let (sse, resp) = req.create(Duration::from_secs(15));
            tokio::spawn(async move {
                for i in 0.. {
                    if sse.send(&i, Some("tick")).is_err() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            });
            resp
        }),
    )
    .websocket(&wss);
    (serve_app(app).await, wss)
}

#[tokio::test]
async fn pages_sse_and_websockets_share_one_tls_port() {
    let cert = make_cert();
    let cfg = TlsConfig::from_pem_files(&cert.cert, &cert.key).expect("config");
    let (srv, wss) = tls_app(cfg.clone(), Duration::from_secs(5)).await;
    let addr = srv.local_addr();

    let (status, body) = https_get(addr, &cert.der, "/").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.ends_with(PAGE), "{body}");

    let mut c = wss_connect(addr, &cert.der, "/ws").await;
    // small and large messages both ways (a large one spans many TLS records and writes)
    for payload in [json!("hi"), json!("x".repeat(300_000))] {
        c.send(Message::text(
            json!({"type": "echo", "payload": payload}).to_string(),
        ))
        .await
        .expect("send");
        let m = within("echo", c.next()).await.expect("frame").expect("ok");
        let v: serde_json::Value = serde_json::from_str(m.to_text().expect("text")).expect("json");
        assert_eq!(v["payload"], payload);
    }
    // pings are answered over TLS too
    c.send(Message::Ping(b"tls".to_vec().into()))
        .await
        .expect("ping");
    let m = within("pong", c.next()).await.expect("frame").expect("ok");
    assert_eq!(m, Message::Pong(b"tls".to_vec().into()));

    // SSE over https
    let mut tls = tls_connect(addr, &cert.der).await;
    tls.write_all(b"GET /sse HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .expect("write");
    let mut seen = Vec::new();
    within("an SSE event", async {
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&seen).contains("event: tick") {
            let n = tls.read(&mut buf).await.expect("read");
            assert!(n > 0, "stream ended");
            seen.extend_from_slice(&buf[..n]);
        }
    })
    .await;
    let text = String::from_utf8_lossy(&seen);
    assert!(text.contains("text/event-stream"), "{text}");

    // shutdown over TLS: 1001
    let stop = tokio::spawn(srv.shutdown());
    assert_eq!(recv_close_tls(&mut c).await, 1001);
    within("shutdown", stop).await.expect("join");
    assert_eq!(wss.connection_count(), 0);
    assert_eq!(cfg.stats().handshakes, 3, "page, WebSocket, SSE");
}

async fn recv_close_tls(c: &mut tokio_tungstenite::WebSocketStream<Tls>) -> u16 {
    within("close", async {
        loop {
            match c.next().await {
                Some(Ok(Message::Close(Some(f)))) => return u16::from(f.code),
                Some(Ok(_)) => continue,
                other => panic!("no close frame: {other:?}"),
            }
        }
    })
    .await
}

/// Plain HTTP to the TLS port, and a client that never starts its handshake: both are
/// closed (counted), and neither delays a real client.
#[tokio::test]
async fn failed_and_stalled_handshakes_are_closed_and_counted() {
    let cert = make_cert();
    let cfg = TlsConfig::from_pem_files(&cert.cert, &cert.key).expect("config");
    let (srv, _wss) = tls_app(cfg.clone(), Duration::from_millis(500)).await;
    let addr = srv.local_addr();
    // plain HTTP: not a ClientHello
    let mut plain = TcpStream::connect(addr).await.expect("tcp");
    plain
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let mut buf = Vec::new();
    let _ = within("closed", plain.read_to_end(&mut buf)).await;
    assert!(!String::from_utf8_lossy(&buf).contains("200 OK"));
    // silent clients, from a second address
    let mut silent = Vec::new();
    for _ in 0..20 {
        silent.push(connect_from("127.0.0.2", addr).await.expect("tcp"));
    }
    // a real client is served meanwhile
    let (status, _) = https_get(addr, &cert.der, "/").await;
    assert_eq!(status, 200);
    // the silent ones are closed after the handshake deadline
    for s in &mut silent {
        let mut b = [0u8; 16];
        let n = within("closed after the deadline", s.read(&mut b)).await;
        assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    }
    let st = cfg.stats();
    assert_eq!(st.failed, 1, "{st:?}");
    assert_eq!(st.timed_out, 20, "{st:?}");
    srv.shutdown().await;
}

#[tokio::test]
async fn reload_serves_the_new_certificate_to_new_connections() {
    let cert = make_cert();
    let cfg = TlsConfig::from_pem_files(&cert.cert, &cert.key).expect("config");
    let (srv, _wss) = tls_app(cfg.clone(), Duration::from_secs(5)).await;
    let addr = srv.local_addr();
    let old = wss_connect(addr, &cert.der, "/ws").await;
    let fresh = write_cert(&cert.cert, &cert.key);
    assert_ne!(fresh, cert.der);
    // a broken file is refused and the current certificate stays
    std::fs::write(&cert.key, "not a key").expect("write");
    assert!(cfg.reload().is_err());
    let (status, _) = https_get(addr, &cert.der, "/").await;
    assert_eq!(status, 200, "still the old certificate");
    // fixed: reload takes it
    let fresh = write_cert(&cert.cert, &cert.key);
    cfg.reload().expect("reload");
    let (status, _) = https_get(addr, &fresh, "/").await;
    assert_eq!(status, 200, "new connections get the new certificate");
    // a client that trusts only the old one is refused now
    let tcp = TcpStream::connect(addr).await.expect("tcp");
    let connector = tokio_rustls::TlsConnector::from(client_config(&cert.der));
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    assert!(within("handshake", connector.connect(name, tcp))
        .await
        .is_err());
    assert_eq!(cfg.stats().reloads, 1);
    drop(old);
    srv.shutdown().await;
}

#[test]
fn bad_files_are_typed_errors() {
    let cert = make_cert();
    let missing = cert.dir.join("nope.pem");
    assert!(matches!(
        TlsConfig::from_pem_files(&missing, &cert.key),
        Err(street::tls::TlsError::Read { .. })
    ));
    let empty = cert.dir.join("empty.pem");
    std::fs::write(&empty, "").expect("write");
    assert!(matches!(
        TlsConfig::from_pem_files(&empty, &cert.key),
        Err(street::tls::TlsError::NoCertificate(_))
    ));
    // a key that is not the certificate's
    let other = make_cert();
    assert!(matches!(
        TlsConfig::from_pem_files(&cert.cert, &other.key),
        Err(street::tls::TlsError::Key(_))
    ));
}

/// Node `ws` (verifying the certificate) and Chromium, against https:// and wss://.
#[tokio::test]
async fn node_ws_and_chromium_speak_to_street_over_tls() {
    let cert = make_cert();
    let cfg = TlsConfig::from_pem_files(&cert.cert, &cert.key).expect("config");
    let (srv, _wss) = tls_app(cfg, Duration::from_secs(5)).await;
    let js = js_dir();
    let (mut node, mut rx) = spawn_lines(
        std::process::Command::new("node")
            .arg(js.join("tls_clients.js"))
            .arg(format!("https://127.0.0.1:{}/", srv.local_addr().port()))
            .arg(&cert.cert)
            .current_dir(&js),
    );
    let report = tokio::time::timeout(Duration::from_secs(50), rx.recv())
        .await
        .expect("report within 50 s")
        .expect("line");
    let _ = node.wait();
    assert!(!report.starts_with("ERROR"), "{report}");
    let v: serde_json::Value = serde_json::from_str(&report).expect("json");
    assert_eq!(v["node"], "from node", "{v}");
    assert_eq!(v["nodeWithoutCa"], "DEPTH_ZERO_SELF_SIGNED_CERT", "{v}");
    assert_eq!(v["pageStatus"], 200, "{v}");
    assert_eq!(v["pageProtocol"], "https:", "{v}");
    assert_eq!(v["browserWs"], "from chromium", "{v}");
    assert_eq!(v["browserSse"], "0", "{v}");
    srv.shutdown().await;
}

/// `--tls-cert`/`--tls-key` on the bench contract's servers: street's listener
/// (`bench_server`) and the host's `axum::serve` with `TlsListener` (`embed`).
#[tokio::test]
async fn the_contract_servers_take_the_tls_flags() {
    let cert = make_cert();
    for example in ["bench_server", "embed"] {
        let args = [
            "--tls-cert",
            cert.cert.to_str().expect("path"),
            "--tls-key",
            cert.key.to_str().expect("path"),
        ];
        let ex =
            crate::examples::start_with(example, crate::examples::free_port(), &args, &[]).await;
        let mut c = wss_connect(ex.addr, &cert.der, "/ws").await;
        c.send(Message::text(r#"{"type":"echo","payload":[1]}"#))
            .await
            .expect("send");
        let m = within("echo", c.next()).await.expect("frame").expect("ok");
        assert!(
            m.to_text().expect("text").contains(r#""payload":[1]"#),
            "{example}: {m:?}"
        );
        let mut e = wss_connect(ex.addr, &cert.der, "/echo").await;
        e.send(Message::binary(vec![9u8; 70_000]))
            .await
            .expect("send");
        let m = within("echo", e.next()).await.expect("frame").expect("ok");
        assert_eq!(m, Message::binary(vec![9u8; 70_000]), "{example}");
        // SIGTERM: 1001 over TLS
        ex.signal("-TERM");
        assert_eq!(recv_close_tls(&mut c).await, 1001, "{example}");
    }
    // only one of the two flags
    let half = std::process::Command::new(crate::examples::example_path("bench_server"))
        .args(["--tls-cert", cert.cert.to_str().expect("path")])
        .output()
        .expect("run");
    assert_eq!(half.status.code(), Some(2));
}

/// `TlsListener` on the host's `axum::serve`: an address that opens connections and never
/// starts its handshake gets `max_handshakes_per_ip` of them; the rest are closed at once
/// (counted), and a client from another address is served meanwhile.
#[tokio::test]
async fn tls_listener_caps_stalled_handshakes_per_address() {
    use axum::serve::ListenerExt;
    let cert = make_cert();
    let cfg = TlsConfig::from_pem_files(&cert.cert, &cert.key).expect("config");
    let wss = WebSocketServer::new(opts());
    wss.on_connection(|socket: Socket, _: ConnectRequest| {
        let s = socket.clone();
        socket.on("echo", move |v: serde_json::Value| s.emit("echo", &v))
    });
    let router = axum::Router::new().route("/ws", wss.route());
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = tcp.local_addr().expect("addr");
    let listener =
        street::tls::TlsListener::with_limits(tcp, cfg.clone(), Duration::from_secs(30), 512, 4)
            .tap_io(|_| {});
    tokio::spawn(async move {
        let _ = axum::serve(
            listener,
            router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await;
    });
    let mut silent = Vec::new();
    for _ in 0..10 {
        silent.push(connect_from("127.0.0.2", addr).await.expect("tcp"));
    }
    // six of the ten are closed without a byte
    let mut closed = 0;
    for s in &mut silent {
        let mut b = [0u8; 8];
        if let Ok(r) = tokio::time::timeout(Duration::from_millis(300), s.read(&mut b)).await {
            assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
            closed += 1;
        }
    }
    assert_eq!(closed, 6);
    assert_eq!(cfg.stats().refused_per_ip, 6);
    // another address is served at once
    let mut c = wss_connect(addr, &cert.der, "/ws").await;
    c.send(Message::text(r#"{"type":"echo","payload":"ok"}"#))
        .await
        .expect("send");
    let m = within("echo", c.next()).await.expect("frame").expect("ok");
    assert!(m.to_text().expect("text").contains("ok"));
}
