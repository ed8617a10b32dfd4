//! The connection state machine over `tokio::io::duplex`: no TCP, no HTTP, the client's
//! frames written by hand and the server's read back byte for byte.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::sync::oneshot;

use super::close::{CloseCode, CloseInfo};
use super::proto::{OP_BINARY, OP_CLOSE, OP_CONTINUATION, OP_PING, OP_PONG, OP_TEXT};
use super::server::{WebSocketServer, WsOptions};
use super::socket::{Socket, SocketId};
use super::transport::Io;
use super::upgrade::{run, Accepted, Admission, ConnectRequest};

const LIMIT: Duration = Duration::from_secs(10);

/// A connection task over one end of a duplex pipe of `capacity` bytes; the other end
/// is the client. `setup` is the connection handler.
struct Harness {
    client: DuplexStream,
    socket: Socket,
    done: tokio::task::JoinHandle<()>,
    closed: oneshot::Receiver<CloseInfo>,
}

fn start(
    opts: WsOptions,
    capacity: usize,
    setup: impl Fn(&Socket) + Send + Sync + 'static,
) -> Harness {
    let wss = WebSocketServer::new(opts.clone());
    let socket = Socket::new(
        SocketId::new(),
        wss.shared.stats.clone(),
        super::socket::SocketLimits::of(&opts),
        None,
        None,
        http::Extensions::new(),
    );
    let (tx, closed) = oneshot::channel();
    let tx = Mutex::new(Some(tx));
    socket.on_close_internal(move |info| {
        if let Some(tx) = tx.lock().ok().and_then(|mut t| t.take()) {
            let _ = tx.send(info);
        }
    });
    setup(&socket);
    let (client, server) = tokio::io::duplex(capacity);
    let acc = Accepted {
        admission: Admission::of(&wss),
        wss,
        socket: socket.clone(),
        request: ConnectRequest::for_test("/ws"),
        stream: Io(server),
        pre: Bytes::new(),
        deflate: None,
    };
    let done = tokio::spawn(run(Box::new(acc)));
    Harness {
        client,
        socket,
        done,
        closed,
    }
}

/// A masked client frame.
fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    let mut f = vec![if fin { 0x80 } else { 0 } | opcode];
    match payload.len() {
        n if n < 126 => f.push(0x80 | n as u8),
        n if n <= 0xffff => {
            f.push(0x80 | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(0x80 | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

fn close_frame(code: u16, reason: &str) -> Vec<u8> {
    let mut p = code.to_be_bytes().to_vec();
    p.extend_from_slice(reason.as_bytes());
    frame(true, OP_CLOSE, &p)
}

/// The next server frame: (fin, opcode, payload). Server frames are never masked.
async fn read_frame(io: &mut DuplexStream) -> (bool, u8, Vec<u8>) {
    tokio::time::timeout(LIMIT, async {
        let mut h = [0u8; 2];
        io.read_exact(&mut h).await.expect("frame header");
        assert_eq!(h[1] & 0x80, 0, "server frames are not masked");
        let len = match h[1] & 0x7f {
            126 => u64::from(io.read_u16().await.expect("len16")),
            127 => io.read_u64().await.expect("len64"),
            n => u64::from(n),
        };
        let mut p = vec![0u8; len as usize];
        io.read_exact(&mut p).await.expect("payload");
        (h[0] & 0x80 != 0, h[0] & 0x0f, p)
    })
    .await
    .expect("a frame in time")
}

async fn read_close(io: &mut DuplexStream) -> (u16, String) {
    loop {
        let (_, op, p) = read_frame(io).await;
        if op == OP_CLOSE {
            assert!(p.len() >= 2, "close frame with a code");
            let code = u16::from_be_bytes([p[0], p[1]]);
            return (
                code,
                String::from_utf8(p[2..].to_vec()).expect("utf8 reason"),
            );
        }
    }
}

async fn closed(h: &mut Harness) -> CloseInfo {
    tokio::time::timeout(LIMIT, &mut h.closed)
        .await
        .expect("closed in time")
        .expect("close info")
}

fn echo(s: &Socket) {
    let me = s.clone();
    s.on("echo", move |text: String| me.emit("echo", &text))
        .expect("listener");
}

#[tokio::test]
async fn a_fragmented_message_is_reassembled_and_dispatched_once() {
    let mut h = start(WsOptions::default(), 64 * 1024, echo);
    let msg = br#"{"type":"echo","payload":"hello fragments"}"#;
    let (a, rest) = msg.split_at(10);
    let (b, c) = rest.split_at(15);
    let mut bytes = frame(false, OP_TEXT, a);
    // a ping between fragments is answered at once (RFC 6455 §5.4)
    bytes.extend(frame(true, OP_PING, b"mid"));
    bytes.extend(frame(false, OP_CONTINUATION, b));
    bytes.extend(frame(true, OP_CONTINUATION, c));
    h.client.write_all(&bytes).await.expect("write");
    let (fin, op, p) = read_frame(&mut h.client).await;
    assert_eq!((fin, op, p.as_slice()), (true, OP_PONG, &b"mid"[..]));
    let (fin, op, p) = read_frame(&mut h.client).await;
    assert!(fin);
    assert_eq!(op, OP_TEXT);
    let v: serde_json::Value = serde_json::from_slice(&p).expect("json");
    assert_eq!(v["type"], "echo");
    assert_eq!(v["payload"], "hello fragments");
}

#[tokio::test]
async fn a_continuation_without_a_start_fails_with_1002() {
    let mut h = start(WsOptions::default(), 64 * 1024, echo);
    h.client
        .write_all(&frame(true, OP_CONTINUATION, b"x"))
        .await
        .expect("write");
    assert_eq!(read_close(&mut h.client).await.0, 1002);
    h.client.shutdown().await.expect("shutdown");
    assert_eq!(closed(&mut h).await.code, CloseCode::PROTOCOL_ERROR.0);
}

#[tokio::test]
async fn the_peer_closes_and_the_server_echoes_its_code_then_ends() {
    let mut h = start(WsOptions::default(), 64 * 1024, echo);
    h.client
        .write_all(&close_frame(4000, "bye"))
        .await
        .expect("write");
    let (code, reason) = read_close(&mut h.client).await;
    assert_eq!((code, reason.as_str()), (4000, ""));
    // then the server shuts its side: end of stream after the close frame
    let mut rest = Vec::new();
    tokio::time::timeout(LIMIT, h.client.read_to_end(&mut rest))
        .await
        .expect("eof in time")
        .expect("read");
    assert!(rest.is_empty(), "nothing after the close frame");
    // the server lingers until we end our side too
    h.client.shutdown().await.expect("shutdown");
    let info = closed(&mut h).await;
    assert_eq!((info.code.0, info.reason.as_str()), (4000, "bye"));
    tokio::time::timeout(LIMIT, h.done)
        .await
        .expect("task ends")
        .expect("no panic");
}

#[tokio::test]
async fn the_server_closes_and_waits_for_the_peers_answer() {
    let mut h = start(WsOptions::default(), 64 * 1024, |_| {});
    h.socket.emit("last", &1).expect("emit");
    h.socket.close(CloseCode::NORMAL, "done").expect("close");
    // what was emitted before the close arrives first
    let (_, op, p) = read_frame(&mut h.client).await;
    assert_eq!(op, OP_TEXT);
    assert!(String::from_utf8_lossy(&p).contains(r#""type":"last""#));
    assert_eq!(read_close(&mut h.client).await, (1000, "done".into()));
    // the connection is not over until the peer answers
    assert!(h.closed.try_recv().is_err());
    h.client
        .write_all(&close_frame(1000, ""))
        .await
        .expect("write");
    let info = closed(&mut h).await;
    assert_eq!((info.code.0, info.reason.as_str()), (1000, "done"));
}

#[tokio::test]
async fn pings_are_answered_in_order_with_their_payloads() {
    let mut h = start(WsOptions::default(), 64 * 1024, |_| {});
    let mut bytes = Vec::new();
    for i in 0..5u8 {
        bytes.extend(frame(true, OP_PING, &[b'p', i]));
    }
    h.client.write_all(&bytes).await.expect("write");
    for i in 0..5u8 {
        let (fin, op, p) = read_frame(&mut h.client).await;
        assert_eq!((fin, op, p), (true, OP_PONG, vec![b'p', i]));
    }
}

#[tokio::test]
async fn a_ping_flood_from_a_peer_that_does_not_read_keeps_a_bounded_pong_queue() {
    // a 1 KiB pipe: the server's pongs stop fitting almost at once (rate limits off:
    // pings count against them, which is another test's subject)
    let opts = WsOptions {
        max_messages_per_sec: 0,
        max_bytes_per_sec: 0,
        ..WsOptions::default()
    };
    let h = start(opts, 1024, |_| {});
    let bytes: Vec<u8> = (0..2_000u32)
        .flat_map(|i| frame(true, OP_PING, &i.to_be_bytes()))
        .collect();
    let (rd, mut wr) = tokio::io::split(h.client);
    let writer = tokio::spawn(async move { wr.write_all(&bytes).await.map(|()| wr) });
    let wr = tokio::time::timeout(LIMIT, writer)
        .await
        .expect("the server reads every ping while its pongs wait")
        .expect("no panic")
        .expect("write");
    // Now read: pongs arrive in order, and far fewer than 2 000 were kept.
    let mut client = rd.unsplit(wr);
    let mut last = None;
    let mut n = 0;
    client
        .write_all(&close_frame(1000, ""))
        .await
        .expect("write close");
    loop {
        let (_, op, p) = read_frame(&mut client).await;
        if op == OP_CLOSE {
            break;
        }
        assert_eq!(op, OP_PONG);
        let i = u32::from_be_bytes([p[0], p[1], p[2], p[3]]);
        assert!(last.is_none_or(|l| i > l), "pongs in order");
        last = Some(i);
        n += 1;
    }
    assert_eq!(last, Some(1_999), "the latest ping is answered");
    assert!(n < 300, "{n} pongs kept for a peer that did not read");
}

#[tokio::test]
async fn a_client_that_does_not_read_is_closed_as_a_slow_consumer() {
    let opts = WsOptions {
        max_queue_bytes: 64 * 1024,
        ..WsOptions::default()
    };
    let mut h = start(opts, 4096, |_| {});
    let payload = "x".repeat(1024);
    let mut refused = None;
    for i in 0..1_000 {
        if let Err(e) = h.socket.emit("bulk", &payload) {
            refused = Some((i, e));
            break;
        }
        tokio::task::yield_now().await;
    }
    let (i, e) = refused.expect("the queue limit is reached");
    assert!(
        matches!(e, super::socket::SocketError::SlowConsumer { limit: 65536 }),
        "{e:?}"
    );
    assert!(i >= 60, "only {i} messages before the limit");
    // The client reads what made it to the pipe, then the typed close.
    let (code, reason) = read_close(&mut h.client).await;
    assert_eq!((code, reason.as_str()), (4008, "slow consumer"));
    h.client
        .write_all(&close_frame(4008, ""))
        .await
        .expect("write");
    assert_eq!(closed(&mut h).await.code, 4008);
    assert!(
        h.socket.emit("late", &1).is_err(),
        "no emit after the close"
    );
}

#[tokio::test(start_paused = true)]
async fn a_peer_that_stops_reading_does_not_hold_the_close_past_its_timeout() {
    let opts = WsOptions {
        close_timeout: Duration::from_secs(3),
        ..WsOptions::default()
    };
    let mut h = start(opts, 1024, |_| {});
    // fill the pipe, then close: our close frame cannot be written
    for _ in 0..8 {
        h.socket.emit("fill", &"y".repeat(512)).expect("emit");
    }
    h.socket.close(CloseCode::NORMAL, "bye").expect("close");
    let started = tokio::time::Instant::now();
    let info = closed(&mut h).await;
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(3) && waited < Duration::from_secs(4),
        "ended after {waited:?}"
    );
    assert_eq!(info.code, 1000, "the code we sent: {info:?}");
    tokio::time::timeout(LIMIT, h.done)
        .await
        .expect("task ends")
        .expect("no panic");
}

#[tokio::test]
async fn a_binary_message_without_raw_handlers_is_reported_not_dropped_silently() {
    let errors = Arc::new(Mutex::new(Vec::new()));
    let seen = errors.clone();
    let mut h = start(WsOptions::default(), 64 * 1024, move |s| {
        let seen = seen.clone();
        s.on_error(move |e: super::socket::ErrorEvent| {
            seen.lock().expect("lock").push(format!("{e:?}"));
        })
        .expect("listener");
        echo(s);
    });
    let mut bytes = frame(true, OP_BINARY, &[1, 2, 3]);
    bytes.extend(frame(
        true,
        OP_TEXT,
        br#"{"type":"echo","payload":"after"}"#,
    ));
    h.client.write_all(&bytes).await.expect("write");
    let (_, op, p) = read_frame(&mut h.client).await;
    assert_eq!(op, OP_TEXT);
    assert!(String::from_utf8_lossy(&p).contains("after"));
    let errors = errors.lock().expect("lock").clone();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].contains("UnexpectedRaw"), "{errors:?}");
}

#[tokio::test]
async fn invalid_utf8_in_a_fragmented_text_fails_with_1007() {
    let mut h = start(WsOptions::default(), 64 * 1024, echo);
    let mut bytes = frame(false, OP_TEXT, b"{\"type\":\"echo\",\"payload\":\"\xe2");
    bytes.extend(frame(true, OP_CONTINUATION, b"\x28\xa1\"}"));
    h.client.write_all(&bytes).await.expect("write");
    assert_eq!(read_close(&mut h.client).await.0, 1007);
}

#[tokio::test]
async fn a_peer_close_while_ours_waits_behind_data_is_answered_not_dropped() {
    let opts = WsOptions {
        max_queue_bytes: 1 << 20,
        ..WsOptions::default()
    };
    let mut h = start(opts, 1024, |_| {});
    // 200 KB queued behind a full 1 KiB pipe, then our close behind it
    for _ in 0..200 {
        h.socket.emit("bulk", &"z".repeat(1000)).expect("emit");
    }
    h.socket
        .close(CloseCode::NORMAL, "server bye")
        .expect("close");
    // the peer closes before reading any of it
    h.client
        .write_all(&close_frame(4000, "client bye"))
        .await
        .expect("write");
    // what was in flight arrives, then our answer echoing the peer's code
    let (code, _) = read_close(&mut h.client).await;
    assert_eq!(code, 4000);
    h.client.shutdown().await.expect("shutdown");
    let info = closed(&mut h).await;
    assert_eq!((info.code.0, info.reason.as_str()), (4000, "client bye"));
}

/// `queued` messages of 1 KB behind a 1 KiB pipe, then our close 1001, then a protocol
/// error from the peer; the close frame the peer reads.
async fn protocol_error_behind(queued: usize) -> (Harness, (u16, String)) {
    let mut h = start(WsOptions::default(), 1024, |_| {});
    for _ in 0..queued {
        h.socket.emit("bulk", &"z".repeat(1000)).expect("emit");
    }
    h.socket.close(CloseCode::GOING_AWAY, "bye").expect("close");
    h.client
        .write_all(&frame(true, OP_CONTINUATION, b"x"))
        .await
        .expect("write");
    let close = read_close(&mut h.client).await;
    (h, close)
}

#[tokio::test]
async fn a_protocol_error_while_our_close_waits_is_reported_as_what_was_sent() {
    // our close still queued (more than one write batch ahead of it): the failure's close
    // replaces it; close handlers see what the peer reads
    let (mut h, (code, _)) = protocol_error_behind(200).await;
    assert_eq!(code, 1002);
    h.client.shutdown().await.expect("shutdown");
    assert_eq!(closed(&mut h).await.code, CloseCode::PROTOCOL_ERROR);

    // our close already in the batch being written: it goes out whole, nothing after it
    let (mut h, close) = protocol_error_behind(10).await;
    assert_eq!(close, (1001, "bye".into()));
    let mut rest = Vec::new();
    tokio::time::timeout(LIMIT, h.client.read_to_end(&mut rest))
        .await
        .expect("eof in time")
        .expect("read");
    assert!(rest.is_empty(), "no second close");
    h.client.shutdown().await.expect("shutdown");
    assert_eq!(closed(&mut h).await.code, CloseCode::GOING_AWAY);
}
