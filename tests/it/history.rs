//! Rooms with history and recovery over real sockets: one node on the memory broker and
//! two nodes on a real Redis. A client leaves, publications go on (on the other node),
//! it comes back with `since` (on either node) and gets exactly what it missed, in
//! order, between `room:joined` and the live stream; trimmed, aged or wiped history says
//! `recovered: false` and replays nothing; the seam holds under concurrent publishing.

use std::sync::Arc;
use std::time::Duration;

use crate::common::*;
use crate::redis_cluster::{redis_opts, Redis};
use crate::rooms::{node, Node};
use serde_json::{json, Value};
use street::cluster::memory::MemoryBroker;
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

/// Join `ROOM` (with `since` when given) and return `room:joined`'s payload.
async fn join(c: &mut Client, since: Option<(&str, u64)>) -> Value {
    let mut p = json!({ "channel": ROOM });
    if let Some((e, k)) = since {
        p["since"] = json!({ "epoch": e, "offset": k });
    }
    send_env(c, "room:join", p).await;
    loop {
        let v = recv_json(c).await;
        match v["type"].as_str() {
            Some("room:joined") => return v["payload"].clone(),
            Some("room:error") => panic!("join refused: {v}"),
            _ => {}
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
}

#[tokio::test]
async fn history_trimmed_by_size_is_not_recovered_and_nothing_is_replayed() {
    let mut nodes = memory_nodes(3, Duration::from_secs(60)).await;
    more_than_the_history_holds_is_not_recovered(&mut nodes).await;
    let redis = Redis::start().await;
    let mut nodes = redis_nodes(&redis, 3, Duration::from_secs(60)).await;
    more_than_the_history_holds_is_not_recovered(&mut nodes).await;
    assert_eq!(nodes[0].rooms.stats().not_recovered, 1);
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
    let mut nodes = memory_nodes(100, Duration::from_millis(400)).await;
    aged_history_is_not_recovered(&mut nodes).await;
    let redis = Redis::start().await;
    let mut nodes = redis_nodes(&redis, 100, Duration::from_millis(400)).await;
    aged_history_is_not_recovered(&mut nodes).await;
}

#[tokio::test]
async fn redis_restarted_empty_is_another_epoch_live_and_on_rejoin() {
    let mut redis = Redis::start().await;
    let port = redis.port;
    let mut nodes = redis_nodes(&redis, 100, Duration::from_secs(60)).await;
    let (mut live, _) = nodes[0].client("bo").await;
    let (mut c, _) = nodes[0].client("ana").await;
    let j = join(&mut c, None).await;
    let _ = join(&mut live, None).await;
    let old = j["epoch"].as_str().expect("epoch").to_owned();
    publish(&nodes[1], 1);
    let (k, _) = next_pub(&mut c).await;
    assert_eq!(next_pub(&mut live).await.0, k);
    close(&mut c).await;

    redis.kill();
    // while Redis is down a join with history cannot complete: a clear refusal
    let (mut d, _) = nodes[0].client("cy").await;
    send_env(&mut d, "room:join", json!({ "channel": ROOM })).await;
    let refused = crate::rooms::recv_type(&mut d, "room:error").await;
    assert_eq!(refused["reason"], "history unavailable", "{refused}");
    let _redis = Redis::start_on(port).await;

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
    let mut nodes = memory_nodes(10_000, Duration::from_secs(60)).await;
    the_seam_holds_under_load(&mut nodes).await;
    let redis = Redis::start().await;
    let mut nodes = redis_nodes(&redis, 10_000, Duration::from_secs(60)).await;
    the_seam_holds_under_load(&mut nodes).await;
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
