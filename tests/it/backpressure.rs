//! Backpressure: one slow client among 1 000 never delays the others, is disconnected, and
//! its queue never grows past the limit; volatile messages are dropped instead.

use std::sync::Arc;

use crate::common::*;
use futures_util::StreamExt;
use street::ws::{ConnectRequest, Socket, SocketError, WebSocketServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

#[derive(Clone)]
struct Slow;

const LIMIT: usize = 32 * 1024;

/// Every socket the server accepts, as it connects.
fn sockets(wss: &WebSocketServer) -> tokio::sync::mpsc::UnboundedReceiver<Socket> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Socket>();
    wss.on_connection(move |socket: Socket, _: ConnectRequest| {
        let _ = tx.send(socket);
    });
    rx
}

/// A client that completes the handshake with a tiny receive buffer and never reads again.
async fn slow_client(addr: std::net::SocketAddr) -> tokio::net::TcpStream {
    let sock = tokio::net::TcpSocket::new_v4().expect("socket");
    sock.set_recv_buffer_size(4096).expect("rcvbuf");
    let mut s = within("connect", sock.connect(addr))
        .await
        .expect("connect");
    let req = format!(
        "GET /ws?slow=1 HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.expect("write");
    let mut head = Vec::new();
    within("101", async {
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            assert_eq!(s.read(&mut b).await.expect("read"), 1);
            head.push(b[0]);
        }
    })
    .await;
    assert!(head.starts_with(b"HTTP/1.1 101"));
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_slow_client_among_1000_is_disconnected_and_the_rest_get_everything_in_order() {
    const N: usize = 1000;
    const MSGS: u64 = 200;
    let wss = WebSocketServer::new(
        opts()
            .with_max_queue_bytes(LIMIT)
            .with_max_connections(N + 10)
            // bound the kernel's share too, so the slow client's backlog lands in our queue
            .with_send_buffer_bytes(Some(16 * 1024)),
    );
    wss.on_connection(|socket: Socket, req: ConnectRequest| {
        if req.query_param("slow").is_some() {
            socket.set(Slow);
        }
    });
    let srv = serve(&wss).await;
    let addr = srv.local_addr();
    let _slow = slow_client(addr).await;

    // 1 000 readers, each checking it gets 0..MSGS in order
    let mut readers = Vec::with_capacity(N);
    let sem = Arc::new(tokio::sync::Semaphore::new(64));
    for _ in 0..N {
        let permit = sem.clone().acquire_owned().await.expect("permit");
        let mut c = connect(addr).await;
        drop(permit);
        readers.push(tokio::spawn(async move {
            let mut next = 0u64;
            while next < MSGS {
                match c.next().await {
                    Some(Ok(Message::Text(t))) => {
                        let v: serde_json::Value = serde_json::from_str(&t).expect("json");
                        assert_eq!(v["payload"]["seq"].as_u64(), Some(next), "out of order");
                        next += 1;
                    }
                    Some(Ok(_)) => {}
                    other => panic!("reader ended early at {next}: {other:?}"),
                }
            }
            next
        }));
    }
    eventually("all registered", || wss.connection_count() == N + 1).await;

    // broadcast 200 × ~1 KB as fast as the fast clients drain (the slow one never does)
    let filler = "x".repeat(1000);
    let mut max_slow_queue = 0;
    for seq in 0..MSGS {
        wss.broadcast("tick", &serde_json::json!({"seq": seq, "fill": filler}))
            .expect("broadcast");
        within("fast clients to drain", async {
            loop {
                let clients = wss.clients();
                let mut busy = false;
                for s in &clients {
                    if s.get::<Slow>().is_some() {
                        max_slow_queue = max_slow_queue.max(s.queued_bytes());
                    } else if s.queued_bytes() > LIMIT / 2 {
                        busy = true;
                    }
                }
                if !busy {
                    return;
                }
                tokio::task::yield_now().await;
            }
        })
        .await;
    }
    for r in readers {
        assert_eq!(within("reader", r).await.expect("reader panicked"), MSGS);
    }
    let st = wss.stats();
    assert_eq!(
        st.slow_consumers, 1,
        "exactly the slow client was disconnected"
    );
    assert!(
        max_slow_queue <= LIMIT,
        "slow queue grew to {max_slow_queue} > {LIMIT}"
    );
    // its resources go within close_timeout even though it never reads the close frame
    // (the fast clients leave as their readers finish, so look for the slow one itself)
    eventually("slow client gone", || {
        wss.clients().iter().all(|s| s.get::<Slow>().is_none())
    })
    .await;
    srv.shutdown().await;
}

#[tokio::test]
async fn volatile_messages_are_dropped_for_a_full_queue_instead_of_disconnecting() {
    let wss = WebSocketServer::new(opts().with_max_queue_bytes(8 * 1024));
    let mut rx = sockets(&wss);
    let srv = serve(&wss).await;
    let _slow = slow_client(srv.local_addr()).await;
    let socket = within("socket", rx.recv()).await.expect("socket");
    let big = "y".repeat(4000);
    let mut dropped = 0;
    for i in 0..200 {
        match socket.emit_volatile("pos", &serde_json::json!({"i": i, "fill": big})) {
            Ok(()) => {}
            Err(SocketError::Dropped { limit }) => {
                assert_eq!(limit, 8 * 1024);
                dropped += 1;
            }
            Err(e) => panic!("unexpected {e}"),
        }
        assert!(socket.queued_bytes() <= 8 * 1024 + 4100);
    }
    assert!(dropped > 100, "dropped {dropped}");
    assert!(!socket.closed(), "volatile overflow must not disconnect");
    assert_eq!(wss.stats().volatile_dropped, dropped);
    assert_eq!(wss.stats().slow_consumers, 0);
    // a normal emit over the limit does disconnect
    assert!(matches!(
        socket.emit("pos", &big),
        Err(SocketError::SlowConsumer { .. })
    ));
    assert!(socket.closed());
    srv.shutdown().await;
}

#[tokio::test]
async fn a_slow_consumer_is_released_within_close_timeout() {
    let wss = WebSocketServer::new(
        opts()
            .with_max_queue_bytes(8 * 1024)
            .with_send_buffer_bytes(Some(8 * 1024)),
    );
    let mut rx = sockets(&wss);
    let srv = serve(&wss).await;
    let _slow = slow_client(srv.local_addr()).await;
    let socket = within("socket", rx.recv()).await.expect("socket");
    let big = "z".repeat(4000);
    let mut n = 0;
    while socket.emit("x", &big).is_ok() {
        n += 1;
        assert!(n < 10_000, "never became a slow consumer");
        tokio::task::yield_now().await;
    }
    assert_eq!(wss.stats().slow_consumers, 1);
    eventually("released", || wss.connection_count() == 0).await;
    srv.shutdown().await;
}
