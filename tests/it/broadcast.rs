use std::sync::atomic::{AtomicUsize, Ordering};

use crate::common::*;
use serde::{Serialize, Serializer};
use street::ws::{ConnectRequest, Socket, WebSocketServer};

static SERIALIZATIONS: AtomicUsize = AtomicUsize::new(0);

struct Counted(&'static str);
impl Serialize for Counted {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        SERIALIZATIONS.fetch_add(1, Ordering::SeqCst);
        s.serialize_str(self.0)
    }
}

#[tokio::test]
async fn broadcast_serializes_once_and_reaches_everyone() {
    let wss = WebSocketServer::new(opts());
    wss.on_connection(|socket: Socket, _: ConnectRequest| {
        let _ = socket.emit("ready", &());
    });
    let srv = serve(&wss).await;
    let mut clients = Vec::new();
    for _ in 0..20 {
        let mut c = connect(srv.local_addr()).await;
        assert_eq!(recv_json(&mut c).await["type"], "ready");
        clients.push(c);
    }
    assert_eq!(wss.connection_count(), 20);
    let n = wss
        .broadcast("announcement", &Counted("Server restarting in 60s"))
        .expect("broadcast");
    assert_eq!(n, 20);
    assert_eq!(
        SERIALIZATIONS.load(Ordering::SeqCst),
        1,
        "one serialization for 20 recipients"
    );
    let mut frames = Vec::new();
    for c in &mut clients {
        let m = recv_json(c).await;
        assert_eq!(m["type"], "announcement");
        assert_eq!(m["payload"], "Server restarting in 60s");
        frames.push(m.to_string());
    }
    frames.dedup();
    assert_eq!(
        frames.len(),
        1,
        "every client got the identical frame (same ts)"
    );
    assert_eq!(wss.stats().broadcasts, 1);
    srv.shutdown().await;
}
