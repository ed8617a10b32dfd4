//! One conformance suite for every broker: the same scenarios, written once against
//! [`Engine`], run on the memory broker, on Redis and on NATS (real `redis-server` and
//! `nats-server`, Debian's packages, started here on free ports). What a broker cannot
//! have (the memory broker has no server to kill or restart, no bus to inject into) is
//! left out of its list, and said so at the `suite!` call.
//!
//! - delivery to every node: broadcast, room publish (except a socket, except a member),
//!   emit to a socket and to a member on another node;
//! - order per publisher per room, on every node;
//! - presence: the union over nodes, a graceful leave at once, a killed node's members gone
//!   within 3 heartbeats;
//! - the server restarted: local clients keep going, fan-out and presence come back by
//!   themselves, the gap is counted;
//! - an outage holds at most `max_queue_bytes`, the newest dropped and counted;
//! - the server stalled (SIGSTOP): local clients served, the queue bounded, everything
//!   back after SIGCONT;
//! - the server unreachable at start: an error, or the documented degraded start;
//! - what is not a cluster message never reaches a socket.
//!
//! History and recovery, the rest of the contract, are in `history.rs`, on every engine.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use crate::common::*;
use crate::redis_cluster::{eventually_async, redis_opts, Redis};
use crate::rooms::{next_is, node, recv_type, Node};
use serde_json::json;
use street::cluster::memory::MemoryBroker;
use street::cluster::nats::{HistoryStorage, NatsBroker, NatsOptions};
use street::cluster::redis::RedisBroker;
use street::cluster::{Broker, BrokerError};
use street::rooms::{PublishOptions, Rooms, RoomsOptions};
use street::ws::{WebSocketServer, WsOptions};

/// A `nats-server` on a free port (JetStream on, stored in a directory of its own), killed
/// on drop.
pub struct Nats {
    child: Option<Child>,
    pub port: u16,
    dir: PathBuf,
}

impl Nats {
    pub async fn start() -> Self {
        let port = crate::examples::free_port();
        let dir = std::env::temp_dir().join(format!("street-nats-{port}-{}", std::process::id()));
        Self::start_in(port, dir, true).await
    }

    /// Without JetStream: core NATS only.
    pub async fn start_core() -> Self {
        let port = crate::examples::free_port();
        let dir = std::env::temp_dir().join(format!("street-nats-{port}-{}", std::process::id()));
        Self::start_in(port, dir, false).await
    }

    /// A server on `port` keeping JetStream's files in `dir` (started again in the same
    /// `dir`, it comes back with them).
    pub async fn start_in(port: u16, dir: PathBuf, jetstream: bool) -> Self {
        assert!(
            Command::new("nats-server")
                .arg("--version")
                .output()
                .is_ok(),
            "nats-server is missing; scripts/test installs it (apt: nats-server)"
        );
        let mut cmd = Command::new("nats-server");
        cmd.args(["-a", "127.0.0.1", "-p", &port.to_string()]);
        if jetstream {
            std::fs::create_dir_all(&dir).expect("nats dir");
            cmd.args(["-js", "-sd", dir.to_str().expect("utf-8 dir")]);
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn nats-server");
        let n = Self {
            child: Some(child),
            port,
            dir,
        };
        within("nats-server to answer PING", async {
            while !n.ping().await {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        n
    }

    /// Speak the protocol as any client could: `lines` after CONNECT, then PING; true
    /// once PONG comes back (the server took everything before it).
    async fn raw(&self, lines: &[u8]) -> bool {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
        let Ok(s) = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await else {
            return false;
        };
        let mut s = BufReader::new(s);
        let mut line = String::new();
        if s.read_line(&mut line).await.is_err() || !line.starts_with("INFO") {
            return false;
        }
        let mut req = b"CONNECT {\"verbose\":false,\"pedantic\":false}\r\n".to_vec();
        req.extend_from_slice(lines);
        req.extend_from_slice(b"PING\r\n");
        if s.get_mut().write_all(&req).await.is_err() {
            return false;
        }
        loop {
            line.clear();
            match s.read_line(&mut line).await {
                Ok(0) | Err(_) => return false,
                Ok(_) if line.starts_with("PONG") => return true,
                Ok(_) => {}
            }
        }
    }

    async fn ping(&self) -> bool {
        self.raw(b"").await
    }

    /// Publish `payload` on `subject`, as any client of the server could.
    pub async fn publish(&self, subject: &str, payload: &[u8]) {
        let mut req = format!("PUB {subject} {}\r\n", payload.len()).into_bytes();
        req.extend_from_slice(payload);
        req.extend_from_slice(b"\r\n");
        assert!(within("a raw NATS publish", self.raw(&req)).await);
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The server's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL the server.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn nats_opts(url: &str, prefix: &str) -> NatsOptions {
    NatsOptions::url(url)
        .with_prefix(prefix)
        .with_heartbeat(Duration::from_millis(200))
        .with_response_timeout(Duration::from_millis(500))
        .with_history_storage(HistoryStorage::Memory)
}

/// A broker engine and, for Redis and NATS, its server.
pub enum Engine {
    Memory(MemoryBroker),
    Redis(Redis),
    Nats(Nats),
}

impl Engine {
    pub async fn memory() -> Self {
        Self::Memory(MemoryBroker::new())
    }
    pub async fn redis() -> Self {
        Self::Redis(Redis::start().await)
    }
    pub async fn nats() -> Self {
        Self::Nats(Nats::start().await)
    }

    /// A broker for one more node, with `liveness` heartbeats of 200 ms.
    pub fn broker_with(&self, liveness: u32, max_queue_bytes: usize) -> Arc<dyn Broker> {
        match self {
            Self::Memory(m) => Arc::new(m.node()),
            Self::Redis(r) => Arc::new(RedisBroker::new(
                redis_opts(&r.url(), "t")
                    .with_liveness(liveness)
                    .with_max_queue_bytes(max_queue_bytes),
            )),
            Self::Nats(n) => Arc::new(NatsBroker::new(
                nats_opts(&n.url(), "t")
                    .with_liveness(liveness)
                    .with_max_queue_bytes(max_queue_bytes),
            )),
        }
    }

    pub fn broker(&self) -> Arc<dyn Broker> {
        self.broker_with(3, 64 << 20)
    }

    pub async fn node_on(&self, id: &str, broker: Arc<dyn Broker>) -> Node {
        node(
            RoomsOptions::default()
                .with_broker(Some(broker))
                .with_node_id(Some(id.into())),
        )
        .await
    }

    pub async fn node(&self, id: &str) -> Node {
        self.node_on(id, self.broker()).await
    }

    fn port(&self) -> u16 {
        match self {
            Self::Memory(_) => unreachable!("the memory broker has no server"),
            Self::Redis(r) => r.port,
            Self::Nats(n) => n.port,
        }
    }

    /// SIGKILL the server.
    pub fn kill(&mut self) {
        match self {
            Self::Memory(_) => unreachable!("the memory broker has no server"),
            Self::Redis(r) => r.kill(),
            Self::Nats(n) => n.kill(),
        }
    }

    /// Send `sig` (`-STOP`, `-CONT`) to the server.
    pub fn signal(&self, sig: &str) {
        let pid = match self {
            Self::Memory(_) => unreachable!("the memory broker has no server"),
            Self::Redis(r) => r.pid(),
            Self::Nats(n) => n.pid(),
        }
        .expect("the server runs");
        let ok = Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill {sig} {pid}");
    }

    /// Start the server again on its port (empty: Redis without its dump, NATS without
    /// JetStream's files).
    pub async fn restart(&mut self) {
        let port = self.port();
        match self {
            Self::Memory(_) => unreachable!("the memory broker has no server"),
            Self::Redis(r) => *r = Redis::start_on(port).await,
            Self::Nats(n) => {
                let dir = n.dir.clone();
                let _ = std::fs::remove_dir_all(&dir);
                *n = Nats::start_in(port, dir, true).await;
            }
        }
    }

    /// A broker pointed at a port where nothing listens.
    fn broker_to_nowhere(&self, port: u16, require_at_start: bool) -> Arc<dyn Broker> {
        match self {
            Self::Memory(_) => unreachable!("the memory broker has no server"),
            Self::Redis(_) => Arc::new(RedisBroker::new(
                redis_opts(&format!("redis://127.0.0.1:{port}"), "t")
                    .with_require_at_start(require_at_start),
            )),
            Self::Nats(_) => Arc::new(NatsBroker::new(
                nats_opts(&format!("nats://127.0.0.1:{port}"), "t")
                    .with_require_at_start(require_at_start),
            )),
        }
    }

    /// Start a server of this engine on `port`.
    async fn start_on(&self, port: u16) -> Engine {
        match self {
            Self::Memory(_) => unreachable!("the memory broker has no server"),
            Self::Redis(_) => Self::Redis(Redis::start_on(port).await),
            Self::Nats(_) => {
                let dir = std::env::temp_dir().join(format!("street-nats-{port}-b"));
                Self::Nats(Nats::start_in(port, dir, true).await)
            }
        }
    }

    /// Put raw bytes on the bus (prefix `t`), as any client of the server could.
    pub async fn inject(&self, payload: &[u8]) {
        match self {
            Self::Memory(_) => unreachable!("the memory broker's bus takes only messages"),
            Self::Redis(r) => {
                let reply = r.command(&[b"PUBLISH", b"t:bus", payload]).await;
                assert!(reply.starts_with(':'), "{reply}");
            }
            Self::Nats(n) => n.publish("t.bus", payload).await,
        }
    }

    /// The environment that points `examples/cluster.rs` at this engine (prefix
    /// `street`, the default).
    fn example_env(&self) -> (&'static str, String) {
        match self {
            Self::Memory(_) => unreachable!("the memory broker is in one process"),
            Self::Redis(r) => ("REDIS_URL", r.url()),
            Self::Nats(n) => ("NATS_URL", n.url()),
        }
    }

    fn default_prefix_broker(&self) -> Arc<dyn Broker> {
        match self {
            Self::Memory(_) => unreachable!("the memory broker is in one process"),
            Self::Redis(r) => Arc::new(RedisBroker::new(redis_opts(&r.url(), "street"))),
            Self::Nats(n) => Arc::new(NatsBroker::new(nats_opts(&n.url(), "street"))),
        }
    }
}

/// Publish "m" to room "r" from `rooms` until `client` (on another node) receives one:
/// fan-out works again. Messages sent while it did not are lost (at most once), so each
/// try is a fresh message, waited for 200 ms.
pub async fn publish_until_seen(rooms: &Rooms, client: &mut Client, what: &str) {
    within(what, async {
        for i in 1000.. {
            rooms
                .publish("r", "m", &i, PublishOptions::default())
                .expect("publish");
            if tokio::time::timeout(Duration::from_millis(200), recv_type(client, "m"))
                .await
                .is_ok()
            {
                return;
            }
        }
    })
    .await;
}

async fn presence_is(rooms: &Rooms, room: &str, want: &[&str]) -> bool {
    rooms
        .presence(room)
        .await
        .is_ok_and(|p| p.iter().map(String::as_str).eq(want.iter().copied()))
}

async fn broadcast_room_publish_and_targeted_emits_reach_every_node(e: Engine) {
    let mut a = e.node("a").await;
    let mut b = e.node("b").await;
    let mut c = e.node("c").await;
    let (mut ana, ana_s) = a.client("ana").await;
    let (mut bo, bo_s) = b.client("bo").await;
    let (mut cy, cy_s) = c.client("cy").await;
    a.rooms.join(&ana_s, "r", "ana").expect("join");
    b.rooms.join(&bo_s, "r", "bo").expect("join");
    // cy is on node c but not in the room
    assert_eq!(
        next_is(&mut ana, "presence:join").await,
        json!({"channel": "r", "memberId": "bo"})
    );
    b.rooms
        .publish("r", "m", &"hello", PublishOptions::except_socket(bo_s.id()))
        .expect("publish");
    assert_eq!(next_is(&mut ana, "m").await, "hello");
    c.rooms.broadcast("all", &1).expect("broadcast");
    for cl in [&mut ana, &mut bo, &mut cy] {
        // (bo may first see ana's presence:join: it crossed the broker after bo joined)
        assert_eq!(recv_type(cl, "all").await, 1);
    }
    // except a member who is on another node
    a.rooms
        .publish("r", "m", &"not bo", PublishOptions::except_member("bo"))
        .expect("publish");
    a.rooms
        .publish("r", "m", &"all", PublishOptions::default())
        .expect("publish");
    assert_eq!(next_is(&mut bo, "m").await, "all");
    assert_eq!(next_is(&mut ana, "m").await, "not bo");
    assert_eq!(next_is(&mut ana, "m").await, "all");
    // to a socket and to a member on other nodes
    assert_eq!(a.rooms.emit_to_socket(cy_s.id(), "you", &2), Ok(false));
    assert_eq!(next_is(&mut cy, "you").await, 2);
    c.rooms.emit_to_member("ana", "dm", &3).expect("emit");
    assert_eq!(next_is(&mut ana, "dm").await, 3);
    // presence is the union, on every node
    for n in [&a, &b, &c] {
        eventually_async("presence is the union", || async {
            presence_is(&n.rooms, "r", &["ana", "bo"]).await
        })
        .await;
    }
    assert_eq!(c.rooms.connection_count("r").await.expect("count"), 2);
    let st = a.rooms.stats().broker;
    assert!(st.published > 0 && st.received > 0, "{st:?}");
    assert_eq!((st.dropped, st.publish_errors), (0, 0), "{st:?}");
}

async fn messages_from_one_publisher_to_a_room_arrive_in_order_on_every_node(e: Engine) {
    const N: u64 = 2_000;
    let a = e.node("a").await;
    let mut b = e.node("b").await;
    let mut c = e.node("c").await;
    let (mut bo, bo_s) = b.client("bo").await;
    let (mut cy, cy_s) = c.client("cy").await;
    b.rooms.join(&bo_s, "r", "bo").expect("join");
    c.rooms.join(&cy_s, "r", "cy").expect("join");
    let _ = recv_type(&mut bo, "presence:join").await; // cy's join proves c's subscription
    for i in 0..N {
        a.rooms
            .publish("r", "n", &i, PublishOptions::default())
            .expect("publish");
    }
    for cl in [&mut bo, &mut cy] {
        for i in 0..N {
            assert_eq!(recv_type(cl, "n").await, i);
        }
    }
}

/// A graceful stop removes the node's members from everyone's presence at once: well
/// within a liveness (here 50 heartbeats, 10 s) that would otherwise keep them.
async fn a_gracefully_stopped_node_leaves_presence_at_once(e: Engine) {
    let mut a = e.node_on("a", e.broker_with(50, 64 << 20)).await;
    let mut b = e.node_on("b", e.broker_with(50, 64 << 20)).await;
    let (_ana, ana_s) = a.client("ana").await;
    let (_bo, bo_s) = b.client("bo").await;
    a.rooms.join(&ana_s, "r", "ana").expect("join");
    b.rooms.join(&bo_s, "r", "bo").expect("join");
    eventually_async("both present", || async {
        presence_is(&a.rooms, "r", &["ana", "bo"]).await
    })
    .await;
    b.wss.close().await;
    b.rooms.shutdown().await;
    let left = std::time::Instant::now();
    eventually_async("bo gone", || async {
        presence_is(&a.rooms, "r", &["ana"]).await
    })
    .await;
    assert!(
        left.elapsed() < Duration::from_secs(2),
        "took {:?}: liveness, not the goodbye",
        left.elapsed()
    );
}

/// A node process killed with SIGKILL: its members disappear from the union within the
/// liveness window (3 heartbeats of 200 ms here).
async fn a_killed_node_disappears_from_presence_within_three_heartbeats(e: Engine) {
    let mut a = e.node_on("a", e.default_prefix_broker()).await;
    let port = crate::examples::free_port();
    let (var, url) = e.example_env();
    let child = crate::examples::start_with(
        "cluster",
        port,
        &["--cluster-heartbeat-ms", "200"],
        &[(var, url.as_str())],
    )
    .await;
    let b_addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let (_ana, ana_s) = a.client("ana").await;
    a.rooms.join(&ana_s, "lobby", "ana").expect("join");
    // two clients of the child node join the lobby through the client protocol
    let mut kids = Vec::new();
    for who in ["kim", "lou"] {
        let mut k = connect_path(b_addr, &format!("/ws?member={who}")).await;
        send_env(&mut k, "room:join", json!({"channel": "lobby"})).await;
        assert_eq!(recv_type(&mut k, "room:joined").await["channel"], "lobby");
        kids.push(k);
    }
    eventually_async("every member present", || async {
        presence_is(&a.rooms, "lobby", &["ana", "kim", "lou"]).await
    })
    .await;
    let mut child = child;
    let _ = child.child.kill(); // SIGKILL: no goodbye
    let killed = std::time::Instant::now();
    eventually_async("the dead node's members to disappear", || async {
        presence_is(&a.rooms, "lobby", &["ana"]).await
    })
    .await;
    let took = killed.elapsed();
    println!("presence converged {took:?} after SIGKILL (liveness 3 x 200 ms)");
    // the bound is the liveness (600 ms from the last beat before the kill); the slack
    // only covers this test's polling on a busy machine
    assert!(
        took <= Duration::from_millis(1200),
        "converged after {took:?}"
    );
    drop(kids);
}

async fn the_server_down_and_back_local_clients_keep_going_and_fan_out_resumes(mut e: Engine) {
    let mut a = e.node("a").await;
    let mut b = e.node("b").await;
    let (mut ana, ana_s) = a.client("ana").await;
    let (mut al, al_s) = a.client("al").await;
    let (mut bo, bo_s) = b.client("bo").await;
    a.rooms.join(&ana_s, "r", "ana").expect("join");
    a.rooms.join(&al_s, "r", "al").expect("join");
    b.rooms.join(&bo_s, "r", "bo").expect("join");
    let _ = recv_type(&mut ana, "presence:join").await;
    a.rooms
        .publish("r", "m", &0, PublishOptions::default())
        .expect("publish");
    assert_eq!(recv_type(&mut bo, "m").await, 0);
    assert_eq!(recv_type(&mut al, "m").await, 0);

    e.kill();
    // node a keeps serving its own clients while the server is gone
    for i in 1..=20 {
        a.rooms
            .publish("r", "m", &i, PublishOptions::except_socket(ana_s.id()))
            .expect("publish");
        assert_eq!(recv_type(&mut al, "m").await, i);
    }
    // a member leaves meanwhile: its leave is lost with the server, or queued
    let (_cy, cy_s) = b.client("cy").await;
    b.rooms.join(&cy_s, "r", "cy").expect("join");
    e.restart().await;
    // fan-out resumes by itself: publish until bo sees one
    publish_until_seen(&a.rooms, &mut bo, "fan-out to resume").await;
    // presence converges on both nodes, cy included
    for n in [&a, &b] {
        eventually_async("presence converged", || async {
            presence_is(&n.rooms, "r", &["al", "ana", "bo", "cy"]).await
        })
        .await;
    }
    let st = a.rooms.stats().broker;
    assert!(st.disconnects >= 1, "the gap is counted: {st:?}");
    // and the node re-sends its presence once the server is back (at its next heartbeat)
    eventually("a presence resync", || a.rooms.stats().broker.resyncs >= 1).await;
}

/// During an outage a node holds at most `max_queue_bytes` of messages; the newest are
/// dropped and counted, in the stats and in the metrics, and fan-out resumes after.
async fn an_outage_holds_at_most_max_queue_bytes_and_drops_the_newest_counted(mut e: Engine) {
    let a = e.node_on("a", e.broker_with(3, 1024 * 1024)).await;
    let mut b = e.node("b").await;
    let (mut bo, bo_s) = b.client("bo").await;
    b.rooms.join(&bo_s, "r", "bo").expect("join");
    publish_until_seen(&a.rooms, &mut bo, "b to be subscribed").await;
    e.kill();
    // wait until the node knows (a client may take a publish or two before it does)
    eventually("the node to see the outage", || {
        a.rooms.stats().broker.disconnects >= 1
    })
    .await;
    let big = "x".repeat(64 * 1024);
    for _ in 0..200 {
        a.rooms
            .publish("r", "big", &big, PublishOptions::default())
            .expect("publish");
    }
    // 200 × 64 KiB = 12.5 MiB offered; 1 MiB (16 of them, and what the client's own
    // buffers took) may wait
    let st = a.rooms.stats().broker;
    assert!(st.dropped_over_bytes >= 200 - 20, "{st:?}");
    assert_eq!(
        st.dropped, st.dropped_over_bytes,
        "the count bound is far: {st:?}"
    );
    let metrics = street::metrics::Metrics::new();
    metrics.rooms("main", &a.rooms);
    let text = metrics.render();
    let line = text
        .lines()
        .find(|l| l.starts_with("street_cluster_dropped_over_bytes_total"))
        .expect("the counter is exported");
    assert!(
        line.ends_with(&format!(" {}", st.dropped_over_bytes)),
        "{line} vs {st:?}"
    );
    e.restart().await;
    publish_until_seen(&a.rooms, &mut bo, "fan-out to resume").await;
}

/// The server stalls (SIGSTOP: connections open, nothing answered) under a stream of
/// large publications: local clients are served throughout, the node holds at most its
/// bound and counts what it drops, and once the server goes on (SIGCONT) fan-out and
/// presence come back by themselves.
async fn a_stalled_server_costs_a_bounded_queue_and_fan_out_resumes_after(e: Engine) {
    let mut a = e.node_on("a", e.broker_with(3, 256 * 1024)).await;
    let mut b = e.node("b").await;
    let (mut al, al_s) = a.client("al").await;
    let (mut bo, bo_s) = b.client("bo").await;
    a.rooms.join(&al_s, "r", "al").expect("join");
    b.rooms.join(&bo_s, "r", "bo").expect("join");
    publish_until_seen(&a.rooms, &mut bo, "b to be subscribed").await;
    e.signal("-STOP");
    // 25 MiB offered (to a room nobody here is in: the point is the bus, not slow
    // consumers): more than the bound and whatever the sockets' buffers take
    let big = "x".repeat(64 * 1024);
    for i in 0..400u32 {
        a.rooms
            .publish("firehose", "big", &big, PublishOptions::default())
            .expect("publish");
        if i % 50 == 0 {
            // the node's own clients are served while the server is stalled
            a.rooms
                .publish("r", "local", &i, PublishOptions::except_member("bo"))
                .expect("publish");
            assert_eq!(recv_type(&mut al, "local").await, i);
        }
        tokio::task::yield_now().await;
    }
    let st = a.rooms.stats().broker;
    assert!(
        st.dropped_over_bytes + st.publish_errors >= 1,
        "the stall costs a bounded queue, the rest dropped and counted: {st:?}"
    );
    e.signal("-CONT");
    publish_until_seen(&a.rooms, &mut bo, "fan-out to resume").await;
    for n in [&a, &b] {
        eventually_async("presence after the stall", || async {
            presence_is(&n.rooms, "r", &["al", "bo"]).await
        })
        .await;
    }
}

async fn the_server_unavailable_at_start_is_an_error_or_a_documented_degraded_start(e: Engine) {
    let port = crate::examples::free_port(); // nothing listens there
    let wss = WebSocketServer::new(WsOptions::default());
    let strict = Rooms::new(
        &wss,
        RoomsOptions::default().with_broker(Some(e.broker_to_nowhere(port, true))),
    )
    .await;
    assert!(
        matches!(strict, Err(BrokerError::Unavailable(_))),
        "{strict:?}"
    );
    // degraded: starts, serves local clients, joins the cluster once the server is there
    let mut a = e.node_on("a", e.broker_to_nowhere(port, false)).await;
    let (mut ana, ana_s) = a.client("ana").await;
    a.rooms.join(&ana_s, "r", "ana").expect("join");
    a.rooms
        .publish("r", "m", &1, PublishOptions::default())
        .expect("publish");
    assert_eq!(recv_type(&mut ana, "m").await, 1);
    let later = e.start_on(port).await;
    let mut b = later.node("b").await;
    let (mut bo, bo_s) = b.client("bo").await;
    b.rooms.join(&bo_s, "r", "bo").expect("join");
    publish_until_seen(&a.rooms, &mut bo, "a to join the cluster").await;
    eventually_async("a's presence seen by b", || async {
        presence_is(&b.rooms, "r", &["ana", "bo"]).await
    })
    .await;
}

/// Anything on the bus that is not a valid cluster message (no header, or an envelope
/// that is not UTF-8, which browsers answer with close 1007) is dropped and counted
/// before it reaches a socket; clients stay connected and get the next valid message.
async fn garbage_on_the_bus_never_reaches_a_socket(e: Engine) {
    let a = e.node("a").await;
    let mut b = e.node("b").await;
    let (mut bo, bo_s) = b.client("bo").await;
    b.rooms.join(&bo_s, "r", "bo").expect("join");
    publish_until_seen(&a.rooms, &mut bo, "b to be subscribed").await;
    for garbage in [
        &b"\xff\xfe not even a header"[..],
        b"{\"o\":\"evil\",\"k\":\"a\"}\n{\"type\":\"m\",\"payload\":\"\xc3\x28\",\"ts\":1}",
        b"{\"o\":\"evil\",\"k\":\"r\",\"r\":\"r\"}\n\x80",
    ] {
        e.inject(garbage).await;
    }
    a.rooms
        .publish("r", "m", &"after", PublishOptions::default())
        .expect("publish");
    // the very next frame bo gets is the valid message: the socket is open and no
    // garbage reached it
    assert_eq!(next_is(&mut bo, "m").await, "after");
    let st = b.rooms.stats().broker;
    assert_eq!(st.invalid, 3, "{st:?}");
}

/// Each scenario as a test of one engine: `suite!(engine: scenario, …)`.
macro_rules! suite {
    ($engine:ident: $($scenario:ident),* $(,)?) => {
        mod $engine {
            $(
                #[tokio::test]
                async fn $scenario() {
                    super::$scenario(super::Engine::$engine().await).await
                }
            )*
        }
    };
}

// the memory broker: one process, so no server to kill, restart or reach with garbage
suite!(memory:
    broadcast_room_publish_and_targeted_emits_reach_every_node,
    messages_from_one_publisher_to_a_room_arrive_in_order_on_every_node,
    a_gracefully_stopped_node_leaves_presence_at_once,
);

suite!(redis:
    broadcast_room_publish_and_targeted_emits_reach_every_node,
    messages_from_one_publisher_to_a_room_arrive_in_order_on_every_node,
    a_gracefully_stopped_node_leaves_presence_at_once,
    a_killed_node_disappears_from_presence_within_three_heartbeats,
    the_server_down_and_back_local_clients_keep_going_and_fan_out_resumes,
    an_outage_holds_at_most_max_queue_bytes_and_drops_the_newest_counted,
    a_stalled_server_costs_a_bounded_queue_and_fan_out_resumes_after,
    the_server_unavailable_at_start_is_an_error_or_a_documented_degraded_start,
    garbage_on_the_bus_never_reaches_a_socket,
);

suite!(nats:
    broadcast_room_publish_and_targeted_emits_reach_every_node,
    messages_from_one_publisher_to_a_room_arrive_in_order_on_every_node,
    a_gracefully_stopped_node_leaves_presence_at_once,
    a_killed_node_disappears_from_presence_within_three_heartbeats,
    the_server_down_and_back_local_clients_keep_going_and_fan_out_resumes,
    an_outage_holds_at_most_max_queue_bytes_and_drops_the_newest_counted,
    a_stalled_server_costs_a_bounded_queue_and_fan_out_resumes_after,
    the_server_unavailable_at_start_is_an_error_or_a_documented_degraded_start,
    garbage_on_the_bus_never_reaches_a_socket,
);
