//! What is Redis's own, against a real `redis-server` (Debian's package; scripts/test
//! installs it; each test starts its own instance on a free port): liveness keys under
//! load, presence fields after a restart with data, TLS. The scenarios every broker
//! shares are in `brokers.rs`.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use crate::common::*;
use crate::rooms::{node, recv_type, Node};
use serde_json::json;
use street::cluster::redis::{RedisBroker, RedisOptions};
use street::cluster::{Broker, BrokerError, ClusterMessage, Target};
use street::rooms::{PublishOptions, Rooms, RoomsOptions};
use street::ws::{WebSocketServer, WsOptions};

/// A `redis-server` on a free port, killed on drop.
pub struct Redis {
    child: Option<Child>,
    pub port: u16,
}

impl Redis {
    pub async fn start() -> Self {
        Self::start_on(crate::examples::free_port()).await
    }

    pub async fn start_on(port: u16) -> Self {
        Self::start_with(port, &[]).await
    }

    /// A server that loads `{dir}/dump.rdb` at start (and writes it on [`Redis::command`]
    /// `SAVE`): killed and started again in the same `dir`, it comes back with its data.
    pub async fn start_persistent(port: u16, dir: &std::path::Path) -> Self {
        std::fs::create_dir_all(dir).expect("redis dir");
        let dir = dir.to_str().expect("utf-8 dir").to_owned();
        Self::start_with(port, &["--dir", &dir, "--dbfilename", "dump.rdb"]).await
    }

    /// Start `redis-server` on loopback with `listen` (its port options) and `extra`,
    /// without waiting for it; `port` is where it answers.
    fn spawn(listen: &[&str], extra: &[&str], port: u16) -> Self {
        assert!(
            std::path::Path::new("/usr/bin/redis-server").exists()
                || Command::new("redis-server")
                    .arg("--version")
                    .output()
                    .is_ok(),
            "redis-server is missing; scripts/test installs it (apt: redis-server)"
        );
        let child = Command::new("redis-server")
            .args(listen)
            .args([
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "no",
            ])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        Self {
            child: Some(child),
            port,
        }
    }

    async fn start_with(port: u16, extra: &[&str]) -> Self {
        let r = Self::spawn(&["--port", &port.to_string()], extra, port);
        within("redis-server to answer PING", async {
            loop {
                if r.ping().await {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        r
    }

    async fn ping(&self) -> bool {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await else {
            return false;
        };
        if s.write_all(b"PING\r\n").await.is_err() {
            return false;
        }
        let mut b = [0u8; 7];
        s.read_exact(&mut b).await.is_ok() && &b == b"+PONG\r\n"
    }

    /// Send one command on a fresh connection, as any Redis client could; the first line
    /// of the reply (`:1`, `+OK`, `-ERR …`).
    pub async fn command(&self, args: &[&[u8]]) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        within("a raw redis command", async {
            let mut s = tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .expect("connect to redis");
            let mut req = format!("*{}\r\n", args.len()).into_bytes();
            for a in args {
                req.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
                req.extend_from_slice(a);
                req.extend_from_slice(b"\r\n");
            }
            s.write_all(&req).await.expect("write to redis");
            let mut line = Vec::new();
            while !line.ends_with(b"\r\n") {
                line.push(s.read_u8().await.expect("read from redis"));
            }
            String::from_utf8_lossy(&line[..line.len() - 2]).into_owned()
        })
        .await
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The server's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL the server (no save: it comes back empty).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn redis_opts(url: &str, prefix: &str) -> RedisOptions {
    RedisOptions::default()
        .with_url(url.to_owned())
        .with_prefix(prefix.to_owned())
        .with_heartbeat(Duration::from_millis(200))
        .with_response_timeout(Duration::from_millis(500))
}

async fn redis_node(url: &str, id: &str) -> Node {
    node(
        RoomsOptions::default()
            .with_broker(Some(Arc::new(RedisBroker::new(redis_opts(url, "t")))))
            .with_node_id(Some(id.into())),
    )
    .await
}

/// Poll an async condition (bounded).
pub async fn eventually_async<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    within(what, async {
        while !cond().await {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

/// Task 2 of issue 11: under a sustained stream of large publishes from a node, its
/// liveness key never lapses (the heartbeat has its own connection) and another node
/// keeps seeing its member present.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn liveness_never_lapses_under_a_stream_of_large_publishes() {
    let redis = Redis::start().await;
    let broker = Arc::new(RedisBroker::new(redis_opts(&redis.url(), "t")));
    let mut a = node(
        RoomsOptions::default()
            .with_broker(Some(broker.clone()))
            .with_node_id(Some("a".into())),
    )
    .await;
    let mut b = redis_node(&redis.url(), "b").await;
    let (_ana, ana_s) = a.client("ana").await;
    let (mut bo, bo_s) = b.client("bo").await;
    a.rooms.join(&ana_s, "r", "ana").expect("join");
    b.rooms.join(&bo_s, "r", "bo").expect("join");
    let _ = recv_type(&mut bo, "presence:join").await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let publisher = {
        let stop = stop.clone();
        // 400 KiB envelopes handed straight to node a's broker as fast as it takes them
        // (its queue stays full: up to `max_queue_bytes`), to a room nobody is in: the
        // point is the bus, not slow consumers
        let envelope = bytes::Bytes::from(
            format!(
                r#"{{"type":"big","payload":"{}","ts":1}}"#,
                "y".repeat(400 * 1024)
            )
            .into_bytes(),
        );
        tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for _ in 0..16 {
                    broker.publish(ClusterMessage {
                        origin: Arc::from("a"),
                        target: Target::Room {
                            room: "firehose".into(),
                            except_socket: None,
                            except_member: None,
                        },
                        envelope: envelope.clone(),
                        position: None,
                    });
                    n += 1;
                }
                tokio::task::yield_now().await;
            }
            n
        })
    };
    // liveness is 3 × 200 ms: watch the key for 10 of those windows
    let ttl = |v: &str| v.strip_prefix(':').and_then(|n| n.parse::<i64>().ok());
    let (mut min_ttl, mut checks) = (i64::MAX, 0);
    let until = std::time::Instant::now() + Duration::from_secs(6);
    while std::time::Instant::now() < until {
        let reply = redis.command(&[b"PTTL", b"t:node:a"]).await;
        let left = ttl(&reply).unwrap_or_else(|| panic!("PTTL answered {reply}"));
        assert!(
            left > 0,
            "node a's liveness lapsed (PTTL {left}) after {checks} checks"
        );
        min_ttl = min_ttl.min(left);
        checks += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        b.rooms.presence("r").await.expect("presence"),
        ["ana", "bo"]
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let sent = within("the publisher to stop", publisher)
        .await
        .expect("publisher");
    let st = b.rooms.stats().broker;
    println!(
        "{checks} checks, lowest PTTL {min_ttl} ms; a offered {sent}, b received {}; a {:?}",
        st.received,
        a.rooms.stats().broker
    );
    assert!(st.received >= 100, "a sustained stream reached b: {st:?}");
}

/// Task 3 of issue 11: a member leaves while Redis is down; Redis comes back *with its
/// data* (from its dump), still listing the member. The node's failed write marked its
/// presence dirty and the resync replaces the node's entries: the member is gone.
#[tokio::test]
async fn a_member_who_left_while_redis_was_down_is_gone_once_it_is_back() {
    let port = crate::examples::free_port();
    let dir = std::env::temp_dir().join(format!("street-redis-{port}"));
    let mut redis = Redis::start_persistent(port, &dir).await;
    // a liveness (10 s) that outlasts the outage: node a's key comes back alive from the
    // dump, so nothing but a's own resync can remove al (a dead node's fields would be
    // cleaned up by the next query anyway)
    let mut a = node(
        RoomsOptions::default()
            .with_broker(Some(Arc::new(RedisBroker::new(
                redis_opts(&redis.url(), "t").with_liveness(50),
            ))))
            .with_node_id(Some("a".into())),
    )
    .await;
    let b = redis_node(&redis.url(), "b").await;
    let (_ana, ana_s) = a.client("ana").await;
    let (_al, al_s) = a.client("al").await;
    a.rooms.join(&ana_s, "r", "ana").expect("join");
    a.rooms.join(&al_s, "r", "al").expect("join");
    eventually_async("both present", || async {
        b.rooms.presence("r").await.ok() == Some(vec!["al".into(), "ana".into()])
    })
    .await;
    assert_eq!(redis.command(&[b"SAVE"]).await, "+OK");
    redis.kill();
    a.rooms.leave(&al_s, "r");
    // the writer is FIFO: once a publish after the leave has failed, so has the leave
    a.rooms
        .publish("r", "m", &1, PublishOptions::default())
        .expect("publish");
    eventually("the write after the leave to fail", || {
        a.rooms.stats().broker.publish_errors >= 1
    })
    .await;
    let resyncs = a.rooms.stats().broker.resyncs;
    // it comes back with al: the dump was saved while al was present, and the leave
    // never reached it
    let redis = Redis::start_persistent(port, &dir).await;
    eventually_async("al to be gone", || async {
        b.rooms.presence("r").await.ok() == Some(vec!["ana".into()])
    })
    .await;
    assert!(a.rooms.stats().broker.resyncs > resyncs);
    assert_eq!(
        redis
            .command(&[b"HEXISTS", b"t:presence:r", b"a\x1fal"])
            .await,
        ":0"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `rediss://`: a `redis-server` that speaks only TLS (a self-signed certificate made
/// here), two nodes trusting it through `RedisOptions::tls_ca_pem`: a broadcast crosses.
/// A node that does not trust the certificate fails at start with a typed error.
#[tokio::test]
async fn nodes_reach_each_other_through_redis_over_tls() {
    let cert = crate::tls::make_cert();
    let port = crate::examples::free_port();
    let cert_path = cert.cert.to_str().expect("path");
    let key_path = cert.key.to_str().expect("path");
    let tls_port = port.to_string();
    let _redis = Redis::spawn(
        &["--port", "0", "--tls-port", &tls_port],
        &[
            "--tls-cert-file",
            cert_path,
            "--tls-key-file",
            key_path,
            "--tls-ca-cert-file",
            cert_path,
            "--tls-auth-clients",
            "no",
        ],
        port,
    );
    crate::examples::wait_listening(format!("127.0.0.1:{port}").parse().expect("addr")).await;
    let url = format!("rediss://localhost:{port}");
    let ca = std::fs::read(&cert.cert).expect("read cert");
    let tls_node = |id: &'static str| {
        let url = url.clone();
        let ca = ca.clone();
        async move {
            node(
                RoomsOptions::default()
                    .with_broker(Some(Arc::new(RedisBroker::new(
                        redis_opts(&url, "tls").with_tls_ca_pem(Some(ca)),
                    ))))
                    .with_node_id(Some(id.into())),
            )
            .await
        }
    };
    let mut a = tls_node("a").await;
    let mut b = tls_node("b").await;
    let (mut ana, _ana_s) = a.client("ana").await;
    let (mut bo, _bo_s) = b.client("bo").await;
    within("both nodes subscribed", async {
        loop {
            a.rooms.broadcast("over-tls", &json!(1)).expect("broadcast");
            if let Ok(m) =
                tokio::time::timeout(Duration::from_millis(200), recv_type(&mut bo, "over-tls"))
                    .await
            {
                assert_eq!(m, json!(1));
                return;
            }
        }
    })
    .await;
    let _ = recv_type(&mut ana, "over-tls").await;
    // no CA: the self-signed certificate is refused, and the node says so at start
    let wss = WebSocketServer::new(WsOptions::default());
    let refused = Rooms::new(
        &wss,
        RoomsOptions::default()
            .with_broker(Some(Arc::new(RedisBroker::new(redis_opts(&url, "tls"))))),
    )
    .await;
    assert!(
        matches!(refused, Err(BrokerError::Unavailable(_))),
        "{refused:?}"
    );
    // a CA for a plain redis:// URL is a mistake, said at start rather than ignored
    let plain = Rooms::new(
        &wss,
        RoomsOptions::default().with_broker(Some(Arc::new(RedisBroker::new(
            redis_opts(&format!("redis://127.0.0.1:{port}"), "tls").with_tls_ca_pem(Some(ca)),
        )))),
    )
    .await;
    assert!(
        matches!(&plain, Err(BrokerError::Unavailable(m)) if m.contains("rediss://")),
        "{plain:?}"
    );
    drop(b);
}
