//! Rooms with history and recovery over real sockets: one node on the memory broker and
//! two nodes on a real Redis. A client leaves, publications go on (on the other node),
//! it comes back with `since` (on either node) and gets exactly what it missed, in
//! order, between `room:joined` and the live stream; trimmed, aged or wiped history says
//! `recovered: false` and replays nothing; the seam holds under concurrent publishing.

use std::sync::Arc;
use std::time::Duration;

use crate::brokers::{nats_opts, Engine, Nats};
use crate::common::*;
use crate::redis_cluster::{redis_opts, Redis};
use crate::rooms::{node, Node};
use serde_json::{json, Value};
use street::cluster::memory::MemoryBroker;
use street::cluster::nats::NatsBroker;
use street::cluster::redis::RedisBroker;
use street::cluster::{Broker, HistoryOptions};
use street::rooms::{ClientPolicy, PublishOptions, RoomsOptions};

const ROOM: &str = "h:r";

fn history_opts(broker: Arc<dyn Broker>, id: &str, size: usize, ttl: Duration) -> RoomsOptions {
    RoomsOptions::default()
        .with_broker(Some(broker))
        .with_node_id(Some(id.into()))
        .with_history("h:*", HistoryOptions::new(size, ttl))
        .with_client(ClientPolicy::default().with_publishable_events(vec!["m".into()]))
}

/// Nodes sharing one broker: one on the memory broker, or two on Redis.
async fn memory_nodes(size: usize, ttl: Duration) -> Vec<Node> {
    let b = MemoryBroker::new();
    let n = node(history_opts(Arc::new(b), "m", size, ttl)).await;
    n.rooms.authorize(|_, _, _| true);
    vec![n]
}

async fn redis_nodes(redis: &Redis, size: usize, ttl: Duration) -> Vec<Node> {
    let mut out = Vec::new();
    for id in ["a", "b"] {
        let b = RedisBroker::new(redis_opts(&redis.url(), "t"));
        let n = node(history_opts(Arc::new(b), id, size, ttl)).await;
        n.rooms.authorize(|_, _, _| true);
        out.push(n);
    }
    out
}

async fn nats_nodes(nats: &Nats, size: usize, ttl: Duration) -> Vec<Node> {
    let mut out = Vec::new();
    for id in ["a", "b"] {
        let b = NatsBroker::new(nats_opts(&nats.url(), "t"));
        let n = node(history_opts(Arc::new(b), id, size, ttl)).await;
        n.rooms.authorize(|_, _, _| true);
        out.push(n);
    }
    out
}

/// Run `scenario` on the nodes of every broker that keeps history, each with this
/// history: one node on the memory broker, two on Redis, two on NATS (JetStream).
async fn on_every_broker(size: usize, ttl: Duration, mut scenario: impl AsyncFnMut(&mut [Node])) {
    scenario(&mut memory_nodes(size, ttl).await).await;
    let redis = Redis::start().await;
    scenario(&mut redis_nodes(&redis, size, ttl).await).await;
    let nats = Nats::start().await;
    scenario(&mut nats_nodes(&nats, size, ttl).await).await;
}

/// Join `ROOM` (with `since` when given) and return `room:joined`'s payload.
async fn join(c: &mut Client, since: Option<(&str, u64)>) -> Value {
    let j = try_join(c, since).await;
    assert_eq!(j["type"], "room:joined", "join refused: {j}");
    j["payload"].clone()
}

/// Join `ROOM`: the `room:joined` or `room:error` envelope.
async fn try_join(c: &mut Client, since: Option<(&str, u64)>) -> Value {
    let mut p = json!({ "channel": ROOM });
    if let Some((e, k)) = since {
        p["since"] = json!({ "epoch": e, "offset": k });
    }
    send_env(c, "room:join", p).await;
    loop {
        let v = recv_json(c).await;
        if v["type"] == "room:joined" || v["type"] == "room:error" {
            return v;
        }
    }
}

/// The next publication of `ROOM` (skipping presence and typing, which have no
/// offset): `(offset, payload)`.
async fn next_pub(c: &mut Client) -> (u64, Value) {
    loop {
        let v = recv_json(c).await;
        if v["type"] == "room:joined" || v["type"] == "room:error" {
            panic!("unexpected {v}");
        }
        if let Some(k) = v["offset"].as_u64() {
            assert_eq!(v["channel"], ROOM, "{v}");
            return (k, v["payload"].clone());
        }
    }
}

fn publish(n: &Node, i: u64) {
    n.rooms
        .publish(ROOM, "m", &i, PublishOptions::default())
        .expect("publish");
}

/// The flow every broker must get right: live, leave, N published elsewhere, back with
/// `since` on `back_on` → exactly those N, then live.
async fn a_client_recovers_exactly_what_it_missed(nodes: &mut [Node], back_on: usize) {
    let last = nodes.len() - 1;
    let (mut c, _) = nodes[0].client("ana").await;
    let j = join(&mut c, None).await;
    let epoch = j["epoch"].as_str().expect("epoch").to_owned();
    let top = j["offset"].as_u64().expect("offset");
    assert!(j.get("recovered").is_none(), "{j}");
    for i in 1..=3 {
        publish(&nodes[last], i);
    }
    for i in 1..=3 {
        assert_eq!(next_pub(&mut c).await, (top + i, json!(i)));
    }
    close(&mut c).await;
    for i in 4..=8 {
        publish(&nodes[last], i);
    }
    let (mut c, _) = nodes[back_on].client("ana").await;
    let j = join(&mut c, Some((&epoch, top + 3))).await;
    assert_eq!(j["recovered"], true, "{j}");
    assert_eq!(j["epoch"], epoch.as_str());
    assert_eq!(j["members"], json!(["ana"]));
    // the publication carries its position at the top level, StreetJS's fields intact
    for i in 4..=8 {
        assert_eq!(next_pub(&mut c).await, (top + i, json!(i)));
    }
    publish(&nodes[last], 9);
    assert_eq!(next_pub(&mut c).await, (top + 9, json!(9)), "then live");
    // the sender's own client publication comes back positioned too (one stream for all)
    send_env(
        &mut c,
        "room:publish",
        json!({ "channel": ROOM, "event": "m", "payload": "mine" }),
    )
    .await;
    let (k, p) = next_pub(&mut c).await;
    assert_eq!((k, &p["payload"]), (top + 10, &json!("mine")), "{p}");
}

#[tokio::test]
async fn one_node_recovers_exactly_the_missed_publications() {
    let mut nodes = memory_nodes(100, Duration::from_secs(60)).await;
    a_client_recovers_exactly_what_it_missed(&mut nodes, 0).await;
    let s = nodes[0].rooms.stats();
    assert_eq!((s.recovered, s.not_recovered), (1, 0));
}

#[tokio::test]
async fn two_nodes_on_redis_recover_on_either_node() {
    let redis = Redis::start().await;
    let mut nodes = redis_nodes(&redis, 100, Duration::from_secs(60)).await;
    // back on the publisher's node, then on the first one again (other room state)
    a_client_recovers_exactly_what_it_missed(&mut nodes, 1).await;
    let mut nodes = redis_nodes(&redis, 100, Duration::from_secs(60)).await;
    a_client_recovers_exactly_what_it_missed(&mut nodes, 0).await;
}

#[tokio::test]
async fn two_nodes_on_nats_jetstream_recover_on_either_node() {
    let nats = Nats::start().await;
    let mut nodes = nats_nodes(&nats, 100, Duration::from_secs(60)).await;
    a_client_recovers_exactly_what_it_missed(&mut nodes, 1).await;
    let mut nodes = nats_nodes(&nats, 100, Duration::from_secs(60)).await;
    a_client_recovers_exactly_what_it_missed(&mut nodes, 0).await;
    let st = nodes[0].rooms.stats().broker;
    assert_eq!(
        (st.publish_errors, st.dropped, st.invalid),
        (0, 0, 0),
        "{st:?}"
    );
}

/// Leave at offset `left_at`, let `missed` be published, come back: `room:joined`.
async fn back_after(
    nodes: &mut [Node],
    missed: u64,
    wait: Duration,
) -> (Client, Value, String, u64) {
    let last = nodes.len() - 1;
    let (mut c, _) = nodes[0].client("ana").await;
    let (mut watcher, _) = nodes[0].client("wat").await;
    let j = join(&mut c, None).await;
    let _ = join(&mut watcher, None).await;
    let epoch = j["epoch"].as_str().expect("epoch").to_owned();
    publish(&nodes[last], 0);
    let (left_at, _) = next_pub(&mut c).await;
    close(&mut c).await;
    for i in 1..=missed {
        publish(&nodes[last], i);
    }
    // the broker has them all once a client that stayed has seen the last one
    let mut seen = next_pub(&mut watcher).await.0;
    while seen < left_at + missed {
        seen = next_pub(&mut watcher).await.0;
    }
    // the history's age is the condition under test: time must pass
    tokio::time::sleep(wait).await;
    let (mut c, _) = nodes[0].client("ana").await;
    let j = join(&mut c, Some((&epoch, left_at))).await;
    (c, j, epoch, left_at)
}

async fn more_than_the_history_holds_is_not_recovered(nodes: &mut [Node]) {
    let (mut c, j, epoch, left_at) = back_after(nodes, 5, Duration::ZERO).await;
    assert_eq!(j["recovered"], false, "{j}");
    assert_eq!(j["epoch"], epoch.as_str());
    assert_eq!(j["offset"].as_u64(), Some(left_at + 5));
    // nothing replayed: the very next publication is the live one
    publish(&nodes[nodes.len() - 1], 99);
    assert_eq!(next_pub(&mut c).await, (left_at + 6, json!(99)));
    assert_eq!(nodes[0].rooms.stats().not_recovered, 1);
}

#[tokio::test]
async fn history_trimmed_by_size_is_not_recovered_and_nothing_is_replayed() {
    on_every_broker(3, Duration::from_secs(60), async |n| {
        more_than_the_history_holds_is_not_recovered(n).await
    })
    .await;
}

async fn aged_history_is_not_recovered(nodes: &mut [Node]) {
    // 400 ms TTL: the 2 missed publications are older than that when the client is back
    let (mut c, j, _, _) = back_after(nodes, 2, Duration::from_millis(600)).await;
    assert_eq!(j["recovered"], false, "{j}");
    publish(&nodes[nodes.len() - 1], 99);
    let (_, p) = next_pub(&mut c).await;
    assert_eq!(p, json!(99), "nothing replayed");
}

#[tokio::test]
async fn history_older_than_its_ttl_is_not_recovered() {
    on_every_broker(100, Duration::from_millis(400), async |n| {
        aged_history_is_not_recovered(n).await
    })
    .await;
}

/// The broker's storage wiped (Redis or NATS restarted empty): the stream's past is
/// lost, which clients learn live (a new epoch before the new stream's first
/// publication) and on rejoin (their old position is not recovered).
async fn restarted_empty_is_another_epoch_live_and_on_rejoin(e: &mut Engine) {
    let mut nodes = match &*e {
        Engine::Redis(r) => redis_nodes(r, 100, Duration::from_secs(60)).await,
        Engine::Nats(n) => nats_nodes(n, 100, Duration::from_secs(60)).await,
        Engine::Memory(_) => unreachable!("the memory broker has no server"),
    };
    let (mut live, _) = nodes[0].client("bo").await;
    let (mut c, _) = nodes[0].client("ana").await;
    let j = join(&mut c, None).await;
    let _ = join(&mut live, None).await;
    let old = j["epoch"].as_str().expect("epoch").to_owned();
    publish(&nodes[1], 1);
    let (k, _) = next_pub(&mut c).await;
    assert_eq!(next_pub(&mut live).await.0, k);
    close(&mut c).await;

    e.kill();
    // while the server is down a join with history cannot complete: a clear refusal
    let (mut d, _) = nodes[0].client("cy").await;
    send_env(&mut d, "room:join", json!({ "channel": ROOM })).await;
    let refused = crate::rooms::recv_type(&mut d, "room:error").await;
    assert_eq!(refused["reason"], "history unavailable", "{refused}");
    e.restart().await;
    // publish until the brokers are back (a publication sent while reconnecting is lost)
    let got = within("a publication after the restart", async {
        loop {
            publish(&nodes[1], 2);
            let next = async {
                loop {
                    let v = recv_json(&mut live).await;
                    if v["type"] == "room:joined" || v.get("offset").is_some() {
                        return v;
                    }
                }
            };
            if let Ok(v) = tokio::time::timeout(Duration::from_millis(300), next).await {
                return v;
            }
        }
    })
    .await;
    // the live client is told its position is void before the new stream's first one
    assert_eq!(got["type"], "room:joined", "{got}");
    assert_eq!(got["payload"]["recovered"], false, "{got}");
    let new = got["payload"]["epoch"].as_str().expect("epoch").to_owned();
    assert_ne!(new, old);
    let k0 = got["payload"]["offset"].as_u64().expect("offset");
    assert_eq!(next_pub(&mut live).await.0, k0 + 1);

    // the client that was away asks from its old position: another epoch, not recovered
    let (mut c, _) = nodes[0].client("ana").await;
    let j = join(&mut c, Some((&old, k))).await;
    assert_eq!(j["recovered"], false, "{j}");
    assert_eq!(j["epoch"], new.as_str());
}

#[tokio::test]
async fn redis_restarted_empty_is_another_epoch_live_and_on_rejoin() {
    restarted_empty_is_another_epoch_live_and_on_rejoin(&mut Engine::redis().await).await;
}

#[tokio::test]
async fn nats_restarted_empty_is_another_epoch_live_and_on_rejoin() {
    restarted_empty_is_another_epoch_live_and_on_rejoin(&mut Engine::nats().await).await;
}

/// A publisher every 5 ms on the last node while a client leaves and comes back with
/// `since` several times (alternating nodes): every offset exactly once.
async fn the_seam_holds_under_load(nodes: &mut [Node]) {
    let publisher = nodes[nodes.len() - 1].rooms.clone();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let s2 = stop.clone();
    let pubs = tokio::spawn(async move {
        let mut i = 0u64;
        while !s2.load(std::sync::atomic::Ordering::Relaxed) {
            i += 1;
            let _ = publisher.publish(ROOM, "m", &i, PublishOptions::default());
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        i
    });
    let (mut c, _) = nodes[0].client("ana").await;
    let j = join(&mut c, None).await;
    let epoch = j["epoch"].as_str().expect("epoch").to_owned();
    let first = j["offset"].as_u64().expect("offset");
    let mut got: Vec<u64> = Vec::new();
    let mut last = first;
    for round in 0..8 {
        // take a few live ones, then leave and come back at once
        for _ in 0..5 {
            let (k, _) = next_pub(&mut c).await;
            got.push(k);
            last = k;
        }
        close(&mut c).await;
        let (mut again, _) = nodes[round % nodes.len()].client("ana").await;
        let j = join(&mut again, Some((&epoch, last))).await;
        assert_eq!(j["recovered"], true, "round {round}: {j}");
        c = again;
    }
    // drain until the live stream passes what the publisher had done by now
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let published = pubs.await.expect("publisher");
    publish(&nodes[0], u64::MAX);
    loop {
        let (k, p) = next_pub(&mut c).await;
        got.push(k);
        if p == json!(u64::MAX) {
            break;
        }
    }
    // the publisher started before the first join: offsets up to `first` were before it
    let want: Vec<u64> = (first + 1..=published + 1).collect();
    assert_eq!(got, want, "every offset exactly once, in order");
}

#[tokio::test]
async fn the_seam_between_replay_and_live_has_no_gap_and_no_duplicate() {
    on_every_broker(10_000, Duration::from_secs(60), async |n| {
        the_seam_holds_under_load(n).await
    })
    .await;
}

#[tokio::test]
async fn rooms_without_history_say_they_cannot_recover() {
    let mut nodes = memory_nodes(100, Duration::from_secs(60)).await;
    let (mut c, _) = nodes[0].client("ana").await;
    send_env(
        &mut c,
        "room:join",
        json!({ "channel": "plain", "since": { "epoch": "x", "offset": 3 } }),
    )
    .await;
    let j = crate::rooms::next_is(&mut c, "room:joined").await;
    assert_eq!(j["recovered"], false, "{j}");
    assert!(j.get("epoch").is_none(), "{j}");
    nodes[0]
        .rooms
        .publish("plain", "m", &1, PublishOptions::default())
        .expect("publish");
    let v = recv_json(&mut c).await;
    assert!(
        v.get("offset").is_none() && v.get("channel").is_none(),
        "{v}"
    );
}

/// What one chaos client saw.
#[derive(Debug, Default)]
struct Seen {
    /// Offsets received, in order (replayed and live).
    offsets: Vec<u64>,
    /// Joins with `since` that recovered / did not.
    recovered: u32,
    not_recovered: u32,
    /// From losing its connection to `room:joined` (recovered) on the other node.
    recovery: Vec<Duration>,
    /// Joins refused (`history unavailable`), retried after a pause.
    refused: u32,
    /// From sending a `room:join` with `since` to its `room:joined` (recovered).
    rejoin: Vec<Duration>,
}

/// A client of the chaos test: joins `ROOM` on `addrs[first]`; when its connection dies,
/// waits a random 0–1 s (as street.js's jitter does) and comes back with `since` on the
/// other node; ends at the `"end"` marker.
async fn chaos_client(addrs: [std::net::SocketAddr; 2], first: usize, member: String) -> Seen {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    let mut seen = Seen::default();
    let mut at = first;
    let mut pos: Option<(String, u64)> = None;
    let mut lost_at: Option<std::time::Instant> = None;
    loop {
        let Ok((mut c, _)) =
            tokio_tungstenite::connect_async(url(addrs[at], &format!("/ws?member={member}"))).await
        else {
            at = 1 - at;
            tokio::time::sleep(Duration::from_millis(fastrand::u64(0..1000))).await;
            continue;
        };
        let since = pos.as_ref().map(|(e, k)| (e.as_str(), *k));
        let mut p = json!({ "channel": ROOM });
        if let Some((e, k)) = since {
            p["since"] = json!({ "epoch": e, "offset": k });
        }
        let asked = std::time::Instant::now();
        let sent = futures_util::SinkExt::send(
            &mut c,
            Message::text(json!({"type": "room:join", "payload": p}).to_string()),
        )
        .await;
        let mut reply = Value::Null;
        while sent.is_ok() {
            match c.next().await {
                Some(Ok(Message::Text(t))) => {
                    let v: Value = serde_json::from_str(&t).expect("json");
                    if v["type"] == "room:joined" || v["type"] == "room:error" {
                        reply = v;
                        break;
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(_)) => break,
                None => break,
            }
        }
        if reply["type"] != "room:joined" {
            // a transient refusal: come back as street.js would
            seen.refused += 1;
            drop(c);
            tokio::time::sleep(Duration::from_millis(fastrand::u64(100..1000))).await;
            continue;
        }
        let j = reply["payload"].clone();
        match (&pos, j["recovered"].as_bool()) {
            (Some(_), Some(true)) => {
                seen.recovered += 1;
                seen.rejoin.push(asked.elapsed());
                if let Some(t) = lost_at.take() {
                    seen.recovery.push(t.elapsed());
                }
            }
            (Some(_), _) => seen.not_recovered += 1,
            (None, _) => {
                let e = j["epoch"].as_str().expect("epoch").to_owned();
                pos = Some((e, j["offset"].as_u64().expect("offset")));
            }
        }
        loop {
            match c.next().await {
                Some(Ok(Message::Text(t))) => {
                    let Some(i) = t.find("\"offset\":") else {
                        continue;
                    };
                    let digits: String = t[i + 9..]
                        .chars()
                        .take_while(char::is_ascii_digit)
                        .collect();
                    let k: u64 = digits.parse().expect("offset");
                    seen.offsets.push(k);
                    if let Some(p) = pos.as_mut() {
                        p.1 = k;
                    }
                    if t.contains("\"payload\":\"end\"") {
                        return seen;
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => break,
            }
        }
        lost_at = Some(std::time::Instant::now());
        at = 1 - at;
        tokio::time::sleep(Duration::from_millis(fastrand::u64(0..1000))).await;
    }
}

/// The issue's chaos test: 1 000 clients over two nodes (processes of
/// `examples/cluster.rs` on one Redis), a publication every 10 ms, one node SIGKILLed
/// mid-stream. Every client comes back on the surviving node and holds a gap-free
/// sequence: nothing lost within the history window. The nodes are release builds
/// (100 000 deliveries a second is not a load for a debug build on two cores).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_a_node_dies_mid_stream_and_a_thousand_clients_lose_nothing() {
    let clients_n: usize = std::env::var("CHAOS_CLIENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000);
    #[allow(non_snake_case)]
    let CLIENTS = clients_n;
    const MESSAGES: u64 = 300;
    let redis = Redis::start().await;
    let url = redis.url();
    let flags = [
        "--history-size",
        "2000",
        "--history-ttl-ms",
        "60000",
        "--cluster-heartbeat-ms",
        "200",
    ];
    let mut nodes = Vec::new();
    for _ in 0..2 {
        let port = crate::examples::free_port();
        nodes.push(
            crate::examples::start_release("cluster", port, &flags, &[("REDIS_URL", url.as_str())])
                .await,
        );
    }
    let addrs = [nodes[0].addr, nodes[1].addr];
    // the publisher: a third node in this process, same history rule as the others
    let publisher = node(
        RoomsOptions::default()
            .with_broker(Some(Arc::new(RedisBroker::new(redis_opts(&url, "street")))))
            .with_history("*", HistoryOptions::new(2000, Duration::from_secs(60))),
    )
    .await;
    let mut clients = Vec::new();
    for i in 0..CLIENTS {
        clients.push(tokio::spawn(chaos_client(addrs, i % 2, format!("c{i}"))));
    }
    let rooms = publisher.rooms.clone();
    tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            if rooms.connection_count(ROOM).await.unwrap_or(0) >= CLIENTS {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    })
    .await
    .expect("every client to join");
    let started = std::time::Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    for i in 1..=MESSAGES {
        tick.tick().await;
        rooms
            .publish(ROOM, "m", &i, PublishOptions::default())
            .expect("publish");
        if i == MESSAGES / 3 {
            let _ = nodes[0].child.kill(); // SIGKILL, mid-stream
        }
    }
    rooms
        .publish(ROOM, "m", "end", PublishOptions::default())
        .expect("publish");
    let mut all = Vec::new();
    for c in clients {
        all.push(
            tokio::time::timeout(Duration::from_secs(60), c)
                .await
                .expect("every client reaches the end")
                .expect("client task"),
        );
    }
    let took = started.elapsed();
    let mut delivered = 0;
    let mut lost = 0;
    let mut dup = 0;
    let (mut recovered, mut not_recovered) = (0, 0);
    let mut times: Vec<Duration> = Vec::new();
    let mut rejoins: Vec<Duration> = all.iter().flat_map(|s| s.rejoin.clone()).collect();
    rejoins.sort();
    let rj = |p: usize| {
        rejoins
            .get(rejoins.len() * p / 100)
            .copied()
            .unwrap_or_default()
    };
    let refused: u32 = all.iter().map(|s| s.refused).sum();
    for s in &all {
        delivered += s.offsets.len();
        recovered += s.recovered;
        not_recovered += s.not_recovered;
        times.extend(&s.recovery);
        for w in s.offsets.windows(2) {
            if w[1] <= w[0] {
                dup += 1;
            } else {
                lost += w[1] - w[0] - 1;
            }
        }
    }
    times.sort();
    let pct = |p: usize| {
        times
            .get(times.len() * p / 100)
            .copied()
            .unwrap_or_default()
    };
    println!(
        "chaos: {CLIENTS} clients, {} publications in {took:?}, delivered {delivered}, \
         recovered {recovered} (not {not_recovered}, refused {refused}), lost {lost}, duplicates {dup}, \
         disconnect→recovered p50 {:?} p99 {:?} max {:?} (0–1 s jitter included), \
         room:join→room:joined (recovered) p50 {:?} p99 {:?}",
        MESSAGES + 1,
        pct(50),
        pct(99),
        times.last().copied().unwrap_or_default(),
        rj(50),
        rj(99),
    );
    assert_eq!((lost, dup, not_recovered), (0, 0, 0));
    assert!(
        recovered as usize >= CLIENTS / 2,
        "the dead node's clients came back: {recovered}"
    );
    // and every client ends at the same offset: the whole stream
    let last = all[0].offsets.last().copied();
    assert!(all.iter().all(|s| s.offsets.last().copied() == last));
}

/// An HTTP server for `node`'s channels over SSE: `GET /channels/{room}`.
async fn sse_app(node: &Node) -> street::app::ServerHandle {
    let rooms = node.rooms.clone();
    let route = axum::routing::get(
        move |axum::extract::Path(room): axum::extract::Path<String>,
              req: street::sse::SseRequest| {
            let rooms = rooms.clone();
            async move {
                use axum::response::IntoResponse;
                match rooms
                    .sse(req, &room, street::sse::SseOptions::default())
                    .await
                {
                    Ok((_, resp)) => resp,
                    Err(e) => {
                        (axum::http::StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response()
                    }
                }
            }
        },
    );
    serve_app(street::app(app_opts()).route("/channels/{room}", route)).await
}

/// SSE streams are subscribers of the same channels as sockets, on every node: ids are
/// positions, a resume recovers from them, one that cannot be honoured says so.
#[tokio::test]
async fn sse_streams_subscribe_to_channels_across_nodes_and_resume_from_positions() {
    use crate::sse::{get_with, Events};
    let redis = Redis::start().await;
    let mut nodes = redis_nodes(&redis, 100, Duration::from_secs(60)).await;
    let http = sse_app(&nodes[0]).await;
    let addr = http.local_addr();
    let path = format!("/channels/{ROOM}");
    let mut ev = Events::new(get_with(addr, &path, None).await);
    let first = ev.next().await.expect("joined event");
    let epoch = first
        .split_once("\"epoch\":\"")
        .and_then(|(_, r)| r.split_once('"'))
        .map(|(e, _)| e.to_owned())
        .expect("epoch");
    assert_eq!(
        first,
        format!(
            "id: {epoch}:0\nevent: street:joined\ndata: {{\"channel\":\"{ROOM}\",\"epoch\":\"{epoch}\",\"offset\":0}}"
        )
    );
    // a socket in the same channel, on the same node: one publication, both kinds
    let (mut ws, _) = nodes[0].client("ana").await;
    let _ = join(&mut ws, None).await;
    // ephemeral room events (presence, typing) reach streams too, without a position
    assert_eq!(
        ev.next().await.expect("presence"),
        format!("event: presence:join\ndata: {{\"channel\":\"{ROOM}\",\"memberId\":\"ana\"}}")
    );
    for i in 1..=2 {
        publish(&nodes[1], i);
    }
    for i in 1..=2u64 {
        assert_eq!(
            ev.next().await.expect("event"),
            format!("id: {epoch}:{i}\nevent: m\ndata: {i}")
        );
        assert_eq!(next_pub(&mut ws).await, (i, json!(i)));
    }
    drop(ev);
    for i in 3..=4 {
        publish(&nodes[1], i);
    }
    // wait until the broker has them: the socket that stayed saw the last one
    assert_eq!(next_pub(&mut ws).await.0, 3);
    assert_eq!(next_pub(&mut ws).await.0, 4);
    let mut ev = Events::new(get_with(addr, &path, Some(&format!("{epoch}:2"))).await);
    assert_eq!(
        ev.next().await.expect("joined"),
        format!(
            "id: {epoch}:4\nevent: street:joined\ndata: {{\"channel\":\"{ROOM}\",\"epoch\":\"{epoch}\",\"offset\":4,\"recovered\":true}}"
        )
    );
    for i in 3..=4u64 {
        assert_eq!(
            ev.next().await.expect("replayed"),
            format!("id: {epoch}:{i}\nevent: m\ndata: {i}")
        );
    }
    publish(&nodes[1], 5);
    assert_eq!(
        ev.next().await.expect("live"),
        format!("id: {epoch}:5\nevent: m\ndata: 5")
    );
    // an id from another epoch (or server) cannot be honoured: said so, nothing replayed
    let mut ev = Events::new(get_with(addr, &path, Some("old:1")).await);
    let j = ev.next().await.expect("joined");
    assert!(
        j.contains("\"recovered\":false") && j.starts_with(&format!("id: {epoch}:5\n")),
        "{j}"
    );
    publish(&nodes[1], 6);
    assert_eq!(
        ev.next().await.expect("live"),
        format!("id: {epoch}:6\nevent: m\ndata: 6")
    );
    // a channel without history: a resume is answered "not recovered" too
    let mut plain = Events::new(get_with(addr, "/channels/plain", Some("x:1")).await);
    assert_eq!(
        plain.next().await.expect("joined"),
        "event: street:joined\ndata: {\"channel\":\"plain\",\"recovered\":false}"
    );
    eventually("the plain stream to be subscribed", || {
        nodes[0].rooms.room_names().contains(&"plain".to_owned())
    })
    .await;
    nodes[1]
        .rooms
        .publish("plain", "m", &7, PublishOptions::default())
        .expect("publish");
    assert_eq!(plain.next().await.expect("event"), "event: m\ndata: 7");
    let _ = &mut nodes;
}

/// A stream that ends leaves its room at once: dead streams cannot fill the node's room
/// table (one address opening and dropping streams on ever new names).
#[tokio::test]
async fn an_ended_sse_stream_leaves_its_room() {
    use crate::sse::{get_with, Events};
    let nodes = memory_nodes(100, Duration::from_secs(60)).await;
    let http = sse_app(&nodes[0]).await;
    for i in 0..20 {
        let mut ev =
            Events::new(get_with(http.local_addr(), &format!("/channels/h:{i}"), None).await);
        let _ = ev.next().await.expect("joined");
        assert!(nodes[0].rooms.room_names().contains(&format!("h:{i}")));
        drop(ev);
    }
    eventually("every ended stream to leave its room", || {
        nodes[0].rooms.room_names().is_empty()
    })
    .await;
}

/// Two nodes publish into one channel at once: every publication takes exactly one
/// offset, with no hole and no duplicate, and every node sees them in offset order.
async fn concurrent_publishers_take_every_offset_once(nodes: &mut [Node]) {
    const N: u64 = 300;
    let mut clients = Vec::new();
    for n in nodes.iter_mut() {
        let (mut c, _) = n.client("watcher").await;
        let j = join(&mut c, None).await;
        clients.push((c, j["offset"].as_u64().expect("offset")));
    }
    let top = clients[0].1;
    let tasks: Vec<_> = nodes
        .iter()
        .enumerate()
        .map(|(who, n)| {
            let rooms = n.rooms.clone();
            tokio::spawn(async move {
                for i in 0..N {
                    rooms
                        .publish(ROOM, "m", &json!([who, i]), PublishOptions::default())
                        .expect("publish");
                    tokio::task::yield_now().await;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("publisher");
    }
    let total = N * nodes.len() as u64;
    for (c, _) in &mut clients {
        let mut next = [0u64; 2];
        for k in top + 1..=top + total {
            let (got, p) = next_pub(c).await;
            assert_eq!(got, k, "offsets in order, no hole, no duplicate");
            // each publisher's own order is kept
            let who = p[0].as_u64().expect("who") as usize;
            assert_eq!(p[1].as_u64(), Some(next[who]), "{p}");
            next[who] += 1;
        }
    }
}

#[tokio::test]
async fn concurrent_publishers_on_two_nodes_take_every_offset_once() {
    let redis = Redis::start().await;
    let mut nodes = redis_nodes(&redis, 1000, Duration::from_secs(60)).await;
    concurrent_publishers_take_every_offset_once(&mut nodes).await;
    let nats = Nats::start().await;
    let mut nodes = nats_nodes(&nats, 1000, Duration::from_secs(60)).await;
    concurrent_publishers_take_every_offset_once(&mut nodes).await;
    let st = nodes[0].rooms.stats().broker;
    assert_eq!((st.publish_errors, st.dropped), (0, 0), "{st:?}");
}

/// NATS without JetStream: fan-out works, a channel with history cannot keep it. Its
/// publications are lost and counted, and a join is refused as with history down.
#[tokio::test]
async fn nats_without_jetstream_counts_history_publications_lost_and_refuses_joins() {
    let nats = Nats::start_core().await;
    let mut nodes = nats_nodes(&nats, 100, Duration::from_secs(60)).await;
    let (mut c, _) = nodes[0].client("ana").await;
    send_env(&mut c, "room:join", json!({ "channel": ROOM })).await;
    let refused = crate::rooms::recv_type(&mut c, "room:error").await;
    assert_eq!(refused["reason"], "history unavailable", "{refused}");
    publish(&nodes[1], 1);
    eventually("the lost publication to be counted", || {
        nodes[1].rooms.stats().broker.publish_errors >= 1
    })
    .await;
    // plain rooms still fan out across the nodes
    let (mut bo, bo_s) = nodes[1].client("bo").await;
    nodes[1].rooms.join(&bo_s, "plain", "bo").expect("join");
    within("fan-out without JetStream", async {
        loop {
            nodes[0]
                .rooms
                .publish("plain", "m", &1, PublishOptions::default())
                .expect("publish");
            let got = tokio::time::timeout(
                Duration::from_millis(200),
                crate::rooms::recv_type(&mut bo, "m"),
            )
            .await;
            if got.is_ok() {
                return;
            }
        }
    })
    .await;
}

/// Away for 200 publications, interleaved with as many in another channel of the same
/// stream: recovered whole and in order (NATS reads this many in one batch, after a
/// binary search for the first; a few it walks back one by one).
async fn a_long_absence_is_recovered_whole(nodes: &mut [Node]) {
    const MISSED: u64 = 200;
    let last = nodes.len() - 1;
    let (mut c, _) = nodes[0].client("ana").await;
    let (mut watcher, _) = nodes[0].client("wat").await;
    let j = join(&mut c, None).await;
    let _ = join(&mut watcher, None).await;
    let epoch = j["epoch"].as_str().expect("epoch").to_owned();
    // a few seen first, interleaved too: the client leaves in the middle of the stream
    let both = |i: u64| {
        publish(&nodes[last], i);
        nodes[last]
            .rooms
            .publish("h:other", "m", &i, PublishOptions::default())
            .expect("publish");
    };
    for i in 1..=5 {
        both(i);
    }
    let mut top = 0;
    for _ in 1..=5 {
        top = next_pub(&mut c).await.0;
    }
    close(&mut c).await;
    for i in 6..=5 + MISSED {
        both(i);
    }
    while next_pub(&mut watcher).await.0 < top + MISSED {}
    let (mut c, _) = nodes[0].client("ana").await;
    let j = join(&mut c, Some((&epoch, top))).await;
    assert_eq!(j["recovered"], true, "{j}");
    for i in 1..=MISSED {
        assert_eq!(next_pub(&mut c).await, (top + i, json!(5 + i)));
    }
}

#[tokio::test]
async fn a_long_absence_is_recovered_whole_on_every_broker() {
    on_every_broker(1000, Duration::from_secs(60), async |n| {
        a_long_absence_is_recovered_whole(n).await
    })
    .await;
}

/// JetStream on disk: NATS killed and started again on its files, the channel's past is
/// still there: a client that was away recovers what it missed, in the same epoch.
#[tokio::test]
async fn history_on_nats_file_storage_survives_a_server_restart() {
    let port = crate::examples::free_port();
    let dir = std::env::temp_dir().join(format!("street-nats-file-{port}-{}", std::process::id()));
    let mut nats = Nats::start_in(port, dir.clone(), true).await;
    let mut nodes = Vec::new();
    for id in ["a", "b"] {
        let b = NatsBroker::new(
            nats_opts(&nats.url(), "t")
                .with_history_storage(street::cluster::nats::HistoryStorage::File),
        );
        let n = node(history_opts(Arc::new(b), id, 100, Duration::from_secs(60))).await;
        n.rooms.authorize(|_, _, _| true);
        nodes.push(n);
    }
    let (c, j, epoch, left_at) = back_after(&mut nodes, 3, Duration::ZERO).await;
    assert_eq!(j["recovered"], true, "{j}");
    drop(c);
    nats.kill();
    let _again = Nats::start_in(port, dir.clone(), true).await;
    let (mut c, _) = nodes[0].client("ana").await;
    let j = within("a join once NATS is back", async {
        loop {
            let j = try_join(&mut c, Some((&epoch, left_at))).await;
            if j["type"] == "room:joined" {
                return j["payload"].clone();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert_eq!(j["recovered"], true, "{j}");
    assert_eq!(j["epoch"], epoch.as_str());
    for i in 1..=3 {
        assert_eq!(next_pub(&mut c).await, (left_at + i, json!(i)));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The newest publications of a room, read on any node (`Rooms::latest`, the client's
/// `room:history` request): at most the limit and at most what the history holds (here
/// trimmed by size: the broker's search finds its oldest), oldest first, as delivered.
/// A page that loads them, then joins `since` their position, misses nothing.
async fn the_newest_publications_are_read_on_any_node(nodes: &mut [Node]) {
    use street::cluster::History;
    let last = nodes.len() - 1;
    let offsets = |h: &History| -> Vec<u64> {
        h.since
            .as_ref()
            .expect("always some")
            .iter()
            .map(|(k, _)| *k)
            .collect()
    };
    let empty = nodes[last].rooms.latest(ROOM, 3).await.expect("latest");
    assert_eq!((empty.offset, offsets(&empty)), (0, vec![]));
    // a watcher: once it has all 8, the broker has stored them
    let (mut w, _) = nodes[last].client("wat").await;
    let _ = join(&mut w, None).await;
    for i in 1..=8 {
        publish(&nodes[0], i);
    }
    for _ in 1..=8 {
        let _ = next_pub(&mut w).await;
    }
    let h = nodes[last].rooms.latest(ROOM, 3).await.expect("latest");
    assert_eq!((h.offset, offsets(&h)), (8, vec![6, 7, 8]));
    let (_, newest) = h.since.as_ref().and_then(|p| p.last()).expect("one");
    let v: Value = serde_json::from_slice(newest).expect("json");
    assert_eq!(
        (v["payload"].clone(), v["offset"].clone()),
        (json!(8), json!(8)),
        "{v}"
    );
    // more than the history holds (5): the five it holds
    let h = nodes[0].rooms.latest(ROOM, 50).await.expect("latest");
    assert_eq!(offsets(&h), vec![4, 5, 6, 7, 8]);
    let h = nodes[0].rooms.latest(ROOM, 0).await.expect("latest");
    assert_eq!((h.offset, offsets(&h)), (8, vec![]));

    // the client protocol: room:history (not a member yet), then a join since its position
    let (mut c, _) = nodes[0].client("ana").await;
    let ask = json!({"type": "room:history", "payload": {"channel": ROOM, "limit": 2}, "id": 1});
    send_text(&mut c, &ask.to_string()).await;
    let r = crate::rooms::recv_type(&mut c, "street:reply").await;
    assert_eq!(r["id"], 1, "{r}");
    let recent = &r["result"];
    assert_eq!(
        (recent["channel"].clone(), recent["offset"].clone()),
        (json!(ROOM), json!(8)),
        "{r}"
    );
    let pubs: Vec<Value> = recent["publications"]
        .as_array()
        .expect("publications")
        .clone();
    assert_eq!(
        pubs.iter()
            .map(|p| (p["offset"].clone(), p["payload"].clone()))
            .collect::<Vec<_>>(),
        vec![(json!(7), json!(7)), (json!(8), json!(8))],
        "{r}"
    );
    let epoch = recent["epoch"].as_str().expect("epoch").to_owned();
    publish(&nodes[last], 9);
    let j = join(&mut c, Some((&epoch, 8))).await;
    assert_eq!(j["recovered"], true, "{j}");
    assert_eq!(next_pub(&mut c).await, (9, json!(9)));

    // refusals: a room without history; a room the client may not join
    assert!(matches!(
        nodes[0].rooms.latest("plain", 1).await,
        Err(street::rooms::RoomError::NoHistory { .. })
    ));
    nodes[0].rooms.authorize(|_, room, _| room != "h:secret");
    let ask = json!({"type": "room:history", "payload": {"channel": "h:secret"}, "id": 2});
    send_text(&mut c, &ask.to_string()).await;
    let r = crate::rooms::recv_type(&mut c, "street:reply").await;
    assert_eq!(
        r["error"],
        json!({"code": "rejected", "message": "forbidden"}),
        "{r}"
    );
    assert!(nodes[0].rooms.stats().latest_reads >= 3);
}

#[tokio::test]
async fn the_newest_publications_of_a_room_on_every_broker() {
    on_every_broker(5, Duration::from_secs(60), async |n| {
        the_newest_publications_are_read_on_any_node(n).await
    })
    .await;
}

/// A `room:history` answer is bounded in bytes like a replay (half the connection's
/// queue): the newest publications that fit, `truncated: true`, and the connection stays.
#[tokio::test]
async fn a_history_answer_fits_the_connections_queue() {
    let ws = opts().with_max_queue_bytes(64 * 1024);
    let rooms = history_opts(
        Arc::new(MemoryBroker::new()),
        "m",
        100,
        Duration::from_secs(60),
    );
    let mut n = crate::rooms::node_with(ws, rooms).await;
    n.rooms.authorize(|_, _, _| true);
    let big = "x".repeat(10 * 1024);
    for _ in 0..10 {
        n.rooms
            .publish(ROOM, "m", &big, PublishOptions::default())
            .expect("publish");
    }
    let (mut c, _) = n.client("ana").await;
    let ask = json!({"type": "room:history", "payload": {"channel": ROOM}, "id": 1});
    send_text(&mut c, &ask.to_string()).await;
    let r = crate::rooms::recv_type(&mut c, "street:reply").await;
    let result = &r["result"];
    let pubs = result["publications"].as_array().expect("publications");
    // 32 KiB: three of the 10 KiB publications, the newest
    assert_eq!(
        pubs.iter().map(|p| p["offset"].clone()).collect::<Vec<_>>(),
        vec![json!(8), json!(9), json!(10)],
        "{result:#}"
    );
    assert_eq!(
        (result["offset"].clone(), result["truncated"].clone()),
        (json!(10), json!(true))
    );
    // still open: it answers the next request
    let ask = json!({"type": "room:history", "payload": {"channel": ROOM, "limit": 1}, "id": 2});
    send_text(&mut c, &ask.to_string()).await;
    let r = crate::rooms::recv_type(&mut c, "street:reply").await;
    assert_eq!(r["result"]["publications"][0]["offset"], 10, "{r}");
    assert!(r["result"].get("truncated").is_none(), "{r}");
}
