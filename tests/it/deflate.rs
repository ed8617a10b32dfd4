//! permessage-deflate (RFC 7692) over real sockets: Node's `ws` and Python's `websockets`
//! with their default offers, a broadcast compressed once for all its recipients, and what
//! a hostile client can send (a deflate bomb, data that does not inflate, RSV1 where it
//! does not belong), which closes that client only.

use std::process::Command;

use crate::common::*;
use street::ws::{Compression, CompressionMode, WsOptions};

fn compressed(mode: CompressionMode) -> WsOptions {
    opts().with_compression(Some(Compression::default().with_mode(mode)))
}

/// Raw deflate with a sync flush, its tail removed: what a client puts in a frame.
fn deflate(data: &[u8]) -> Vec<u8> {
    let mut w = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::new(9));
    std::io::Write::write_all(&mut w, data).expect("deflate");
    std::io::Write::flush(&mut w).expect("flush");
    let mut z = w.get_ref().clone();
    assert!(z.ends_with(&[0, 0, 0xff, 0xff]));
    z.truncate(z.len() - 4);
    z
}

/// A masked client frame with RSV1 set (a compressed message).
fn rsv1(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = frame(fin, opcode, payload, true);
    f[0] |= 0x40;
    f
}

const OFFER: &str = "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n";
const SHARED_ANSWER: &str =
    "sec-websocket-extensions: permessage-deflate; server_no_context_takeover; client_no_context_takeover";

async fn run_node(script: &str, args: &[String]) -> serde_json::Value {
    let js = js_dir();
    let (script, args) = (js.join(script), args.to_vec());
    let output = within(
        "node client",
        tokio::task::spawn_blocking(move || Command::new("node").arg(script).args(args).output()),
    )
    .await
    .expect("join")
    .expect("node runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("{e}: {stdout} {}", String::from_utf8_lossy(&output.stderr)))
}

#[tokio::test]
async fn node_ws_negotiates_deflate_and_a_broadcast_is_compressed_once_for_all() {
    let wss = echo_server(compressed(CompressionMode::Shared));
    let srv = serve(&wss).await;
    let port = srv.local_addr().port().to_string();
    let v = run_node("deflate.js", &[port, "20".into()]).await;
    assert!(
        v.get("error").is_none() && v.get("timeout").is_none(),
        "{v}"
    );
    assert_eq!(v["extensions"], "permessage-deflate", "{v}");
    // the echo came compressed from the client (ws compresses 1 KiB and more): inflated
    assert_eq!(v["echoOk"], true, "{v}");
    assert_eq!(v["broadcastOk"], true, "{v}");
    // each client read the ~1 KB broadcast in far fewer bytes
    let (wire, len) = (v["maxWireBytes"].as_u64(), v["broadcastLen"].as_u64());
    let (Some(wire), Some(len)) = (wire, len) else {
        panic!("{v}");
    };
    assert!(
        len > 900 && wire * 4 < len,
        "{wire} bytes on the wire for {len}"
    );
    let st = wss.stats();
    assert_eq!(st.compressed_connections, 20);
    // the echo to one client, the broadcast to 20: compressed twice in all (this test's
    // server runs on one thread), written compressed 21 times
    assert_eq!((st.compressions, st.compressed_out), (2, 21), "{st:?}");
    srv.shutdown().await;
}

#[tokio::test]
async fn python_websockets_negotiates_deflate_both_ways() {
    let wss = echo_server(compressed(CompressionMode::ContextTakeover));
    let srv = serve(&wss).await;
    let python = std::env::var("STREET_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = js_dir().join("deflate_client.py");
    let port = srv.local_addr().port().to_string();
    let output = within(
        "python client",
        tokio::task::spawn_blocking(move || Command::new(&python).arg(script).arg(port).output()),
    )
    .await
    .expect("join")
    .expect("python runs (scripts/test sets STREET_TEST_PYTHON)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let v: serde_json::Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("{e}: {stdout} {}", String::from_utf8_lossy(&output.stderr)));
    assert_eq!(v["extensions"], serde_json::json!(["permessage-deflate"]));
    assert_eq!(v["echoOk"], true, "{v}");
    let st = wss.stats();
    assert_eq!((st.compressed_connections, st.compressed_out), (1, 1));
    srv.shutdown().await;
}

#[tokio::test]
async fn compression_is_agreed_only_when_on_and_offered() {
    let off = echo_server(opts());
    let srv = serve(&off).await;
    let (_raw, head) = raw_connect(srv.local_addr(), "/ws", OFFER).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        !head
            .to_ascii_lowercase()
            .contains("sec-websocket-extensions"),
        "{head}"
    );
    srv.shutdown().await;

    let on = echo_server(compressed(CompressionMode::Shared));
    let srv = serve(&on).await;
    let (_raw, head) = raw_connect(srv.local_addr(), "/ws", "").await;
    assert!(
        !head
            .to_ascii_lowercase()
            .contains("sec-websocket-extensions"),
        "{head}"
    );
    let (_raw, head) = raw_connect(srv.local_addr(), "/ws", OFFER).await;
    assert!(head.to_ascii_lowercase().contains(SHARED_ANSWER), "{head}");
    // an offer that limits the server's window is answered (and honoured by sending
    // uncompressed); an invalid one is declined, the next taken
    let (_raw, head) = raw_connect(
        srv.local_addr(),
        "/ws",
        "Sec-WebSocket-Extensions: permessage-deflate; server_max_window_bits=20, permessage-deflate\r\n",
    )
    .await;
    assert!(head.to_ascii_lowercase().contains(SHARED_ANSWER), "{head}");
    assert_eq!(on.stats().compressed_connections, 2);
    srv.shutdown().await;
}

/// A small compressed frame that inflates past `max_payload` is closed with 1009 once the
/// output passes the limit (never inflated whole); data that does not inflate, 1007;
/// RSV1 on a continuation or a control frame, or without the extension agreed, 1002.
/// Another client of the same server is unaffected throughout.
#[tokio::test]
async fn a_deflate_bomb_gets_1009_garbage_1007_and_a_misplaced_rsv1_1002() {
    let wss = echo_server(compressed(CompressionMode::Shared).with_max_payload(64 * 1024));
    let srv = serve(&wss).await;
    let addr = srv.local_addr();
    let mut bystander = connect(addr).await;

    // 16 MiB of spaces in about 16 KB
    let bomb = deflate(&vec![b' '; 16 << 20]);
    assert!(bomb.len() < 64 * 1024, "{}", bomb.len());
    let cases: [(&str, Vec<u8>, u16); 4] = [
        ("bomb", rsv1(true, 1, &bomb), 1009),
        (
            "garbage",
            rsv1(true, 1, &[0xff, 0xfe, 0xfd, 0xfc, 0xfb]),
            1007,
        ),
        ("rsv1 on a ping", rsv1(true, 9, b"x"), 1002),
        (
            "rsv1 on a continuation",
            [frame(false, 1, b"{", true), rsv1(true, 0, b"}")].concat(),
            1002,
        ),
    ];
    for (what, bytes, code) in cases {
        let (mut raw, head) = raw_connect(addr, "/ws", OFFER).await;
        assert!(head.to_ascii_lowercase().contains(SHARED_ANSWER), "{head}");
        raw.send(&bytes).await;
        assert_eq!(raw.close_code().await, Some(code), "{what}");
    }
    // a compressed message where no compression was agreed
    let (mut raw, _) = raw_connect(addr, "/ws", "").await;
    raw.send(&rsv1(true, 1, &deflate(b"{\"type\":\"echo\"}")))
        .await;
    assert_eq!(raw.close_code().await, Some(1002));
    // a compressed message that inflates to a valid envelope is read as one
    let (mut raw, _) = raw_connect(addr, "/ws", OFFER).await;
    let env = br#"{"type":"echo","payload":"squeezed","ts":1}"#;
    raw.send(&rsv1(true, 1, &deflate(env))).await;
    match raw.next().await {
        Some(ServerFrame::Text(t)) => assert!(t.contains("\"squeezed\""), "{t}"),
        _ => panic!("no echo"),
    }
    send_env(&mut bystander, "echo", serde_json::json!("still here")).await;
    assert_eq!(recv_json(&mut bystander).await["payload"], "still here");
    assert!(wss.stats().protocol_errors >= 5);
    srv.shutdown().await;
}

/// Compressed data that inflates to nothing is charged its size on the wire: a client
/// cannot make the server inflate megabytes a second past `max_bytes_per_sec` by sending
/// empty deflate blocks.
#[tokio::test]
async fn the_byte_rate_limit_charges_compressed_messages_their_wire_size() {
    let wss = echo_server(
        compressed(CompressionMode::Shared)
            .with_max_payload(64 * 1024)
            .with_max_bytes_per_sec(64 * 1024),
    );
    let srv = serve(&wss).await;
    let (mut raw, head) = raw_connect(srv.local_addr(), "/ws", OFFER).await;
    assert!(head.to_ascii_lowercase().contains(SHARED_ANSWER), "{head}");
    // 12 000 empty stored blocks (5 bytes each): 60 000 bytes that inflate to ""
    let empty_blocks = [0u8, 0, 0, 0xff, 0xff].repeat(12_000);
    let frame = rsv1(true, 1, &empty_blocks);
    for _ in 0..4 {
        raw.send(&frame).await;
    }
    assert_eq!(raw.close_code().await, Some(1008));
    assert_eq!(wss.stats().rate_limited, 1);
    srv.shutdown().await;
}
