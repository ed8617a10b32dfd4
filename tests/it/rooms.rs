//! Rooms over real sockets: presence reference-counted per connection, publish with
//! exceptions, typing with TTL, leaving on close (including a heartbeat reap), name
//! validation, the opt-in client protocol with authorization, and two nodes on the
//! in-memory broker.

use std::sync::Arc;
use std::time::Duration;

use crate::common::*;
use serde_json::{json, Value};
use street::cluster::memory::MemoryBroker;
use street::rooms::{ClientPolicy, PublishOptions, RoomError, Rooms, RoomsOptions};
use street::ws::{ConnectRequest, Socket, WebSocketServer, WsOptions};
use tokio::sync::mpsc;

/// A node: a server whose connections attach as `?member=NAME` (client protocol on);
/// each socket is also handed to the test.
pub struct Node {
    pub srv: street::app::ServerHandle,
    pub wss: WebSocketServer,
    pub rooms: Rooms,
    pub sockets: mpsc::UnboundedReceiver<Socket>,
}

impl Node {
    pub fn addr(&self) -> std::net::SocketAddr {
        self.srv.local_addr()
    }

    /// Connect as `member` and return the client and its server-side socket.
    pub async fn client(&mut self, member: &str) -> (Client, Socket) {
        let c = connect_path(self.addr(), &format!("/ws?member={member}")).await;
        let s = within("socket", self.sockets.recv()).await.expect("socket");
        (c, s)
    }
}

pub async fn node_with(ws: WsOptions, opts: RoomsOptions) -> Node {
    let wss = WebSocketServer::new(ws);
    let rooms = Rooms::new(&wss, opts.with_client_protocol(true))
        .await
        .expect("rooms");
    let (tx, rx) = mpsc::unbounded_channel();
    let r = rooms.clone();
    wss.on_connection(move |socket: Socket, req: ConnectRequest| {
        let member = req.query_param("member").unwrap_or_else(|| "anon".into());
        let res = r.attach(&socket, &member);
        let _ = tx.send(socket);
        res
    });
    let srv = serve(&wss).await;
    Node {
        srv,
        wss,
        rooms,
        sockets: rx,
    }
}

pub async fn node(rooms: RoomsOptions) -> Node {
    node_with(opts(), rooms).await
}

/// The next envelope of type `ty`, skipping others (bounded).
pub async fn recv_type(c: &mut Client, ty: &str) -> Value {
    loop {
        let v = recv_json(c).await;
        if v["type"] == ty {
            return v["payload"].clone();
        }
    }
}

/// A node with a typing TTL of `ttl_ms`, and ana and bo in room `r` (ana saw bo arrive).
async fn typing_room(ttl_ms: u64) -> (Node, Client, Client) {
    let mut n =
        node(RoomsOptions::default().with_typing_ttl(Some(Duration::from_millis(ttl_ms)))).await;
    let (mut a, a_s) = n.client("ana").await;
    let (b, b_s) = n.client("bo").await;
    n.rooms.join(&a_s, "r", "ana").expect("join");
    n.rooms.join(&b_s, "r", "bo").expect("join");
    let _ = recv_type(&mut a, "presence:join").await;
    (n, a, b)
}

/// Send `room:join` through the client protocol and wait for `room:joined`.
async fn join_room(c: &mut Client, room: &str) {
    send_env(c, "room:join", json!({"channel": room})).await;
    let _ = next_is(c, "room:joined").await;
}

/// Tasks alive on this runtime (the server runs in the test's runtime).
fn alive_tasks() -> usize {
    tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks()
}

/// The very next envelope, which must be of type `ty`: what must *not* arrive is checked
/// by a marker sent after it (delivery is ordered per connection), never by waiting.
pub async fn next_is(c: &mut Client, ty: &str) -> Value {
    let v = recv_json(c).await;
    assert_eq!(v["type"], ty, "got {v}");
    v["payload"].clone()
}

#[tokio::test]
async fn presence_is_counted_per_connection_and_nobody_sees_their_own_event() {
    let mut n = node(RoomsOptions::default()).await;
    let (mut bo, bo_s) = n.client("bo").await;
    let (mut ana1, ana1_s) = n.client("ana").await;
    let (mut ana2, ana2_s) = n.client("ana").await;
    let r = &n.rooms;
    assert!(r.join(&bo_s, "lobby", "bo").expect("join").newly_present);
    assert!(r.join(&ana1_s, "lobby", "ana").expect("join").newly_present);
    assert_eq!(
        next_is(&mut bo, "presence:join").await,
        json!({"channel": "lobby", "memberId": "ana"})
    );
    // ana's second device: not newly present, no event
    assert!(!r.join(&ana2_s, "lobby", "ana").expect("join").newly_present);
    assert_eq!(r.local_presence("lobby"), ["bo", "ana"]);
    assert_eq!(r.presence("lobby").await.expect("presence"), ["ana", "bo"]);
    assert_eq!(r.member_count("lobby").await.expect("count"), 2);
    assert_eq!(r.connection_count("lobby").await.expect("count"), 3);
    // a marker proves nothing arrived in between
    r.publish("lobby", "marker", &1, PublishOptions::default())
        .expect("publish");
    assert_eq!(next_is(&mut bo, "marker").await, 1);
    // ana's first connection never got her own presence:join
    assert_eq!(next_is(&mut ana1, "marker").await, 1);
    assert_eq!(next_is(&mut ana2, "marker").await, 1);
    // one device leaves: ana is still present, no event
    let out = r.leave(&ana1_s, "lobby");
    assert!(out.left && !out.now_absent);
    r.publish("lobby", "marker", &2, PublishOptions::default())
        .expect("publish");
    assert_eq!(next_is(&mut bo, "marker").await, 2);
    // the last device closes: presence:leave, to the others only
    close(&mut ana2).await;
    assert_eq!(
        next_is(&mut bo, "presence:leave").await,
        json!({"channel": "lobby", "memberId": "ana"})
    );
    eventually("ana gone", || r.local_presence("lobby") == ["bo"]).await;
    drop(ana1);
    close(&mut bo).await;
    eventually("room dropped", || r.room_names().is_empty()).await;
    assert_eq!(r.stats().rooms, 0);
}

/// The payloads of "m" messages up to and including "end".
async fn collect_until_end(c: &mut Client) -> Vec<String> {
    let mut v = Vec::new();
    loop {
        let p = recv_type(c, "m").await;
        let s = p.as_str().expect("string payload").to_owned();
        let end = s == "end";
        v.push(s);
        if end {
            return v;
        }
    }
}

#[tokio::test]
async fn publish_skips_a_connection_or_every_connection_of_a_member() {
    let mut n = node(RoomsOptions::default()).await;
    let (mut a1, a1_s) = n.client("ana").await;
    let (mut a2, a2_s) = n.client("ana").await;
    let (mut b, b_s) = n.client("bo").await;
    let (mut outsider, _o) = n.client("cy").await;
    for (s, m) in [(&a1_s, "ana"), (&a2_s, "ana"), (&b_s, "bo")] {
        n.rooms.join(s, "r", m).expect("join");
    }
    let _ = recv_type(&mut a1, "presence:join").await; // bo joined after ana
    let _ = recv_type(&mut a2, "presence:join").await;
    let r = &n.rooms;
    assert_eq!(
        r.publish("r", "m", &"all", PublishOptions::default()),
        Ok(3)
    );
    assert_eq!(
        r.publish(
            "r",
            "m",
            &"not a1",
            PublishOptions::except_socket(a1_s.id())
        ),
        Ok(2)
    );
    assert_eq!(
        r.publish("r", "m", &"not ana", PublishOptions::except_member("ana")),
        Ok(1)
    );
    r.publish("r", "m", &"end", PublishOptions::default())
        .expect("publish");
    assert_eq!(collect_until_end(&mut a1).await, ["all", "end"]);
    assert_eq!(collect_until_end(&mut a2).await, ["all", "not a1", "end"]);
    assert_eq!(
        collect_until_end(&mut b).await,
        ["all", "not a1", "not ana", "end"]
    );
    // not in the room: nothing (the first thing it gets is a direct marker)
    assert_eq!(r.emit_to_member("cy", "direct", &1), Ok(1));
    assert_eq!(next_is(&mut outsider, "direct").await, 1);
    // to a member's every connection, and to one socket
    assert_eq!(r.emit_to_member("ana", "dm", &"hi"), Ok(2));
    assert_eq!(next_is(&mut a1, "dm").await, "hi");
    assert_eq!(next_is(&mut a2, "dm").await, "hi");
    assert_eq!(r.emit_to_socket(b_s.id(), "you", &true), Ok(true));
    assert_eq!(next_is(&mut b, "you").await, true);
}

#[tokio::test]
async fn typing_is_sent_on_changes_only_and_clears_itself_after_the_ttl() {
    let (n, mut a, mut b) = typing_room(300).await;
    // a flood of typing from ana's client: one event for bo
    for _ in 0..50 {
        send_env(&mut a, "typing", json!({"channel": "r", "typing": true})).await;
    }
    assert_eq!(
        next_is(&mut b, "typing").await,
        json!({"channel": "r", "memberId": "ana", "typing": true})
    );
    eventually("ana typing", || n.rooms.typing_members("r") == ["ana"]).await;
    // nothing more until the TTL clears it (to everyone, ana included)
    assert_eq!(
        next_is(&mut b, "typing").await,
        json!({"channel": "r", "memberId": "ana", "typing": false})
    );
    assert_eq!(
        next_is(&mut a, "typing").await,
        json!({"channel": "r", "memberId": "ana", "typing": false})
    );
    assert!(n.rooms.typing_members("r").is_empty());
    // typing in a room one is not in is refused
    send_env(
        &mut b,
        "typing",
        json!({"channel": "elsewhere", "typing": true}),
    )
    .await;
    assert_eq!(
        next_is(&mut b, "room:error").await,
        json!({"channel": "elsewhere", "action": "typing", "reason": "not in room"})
    );
    assert_eq!(
        n.rooms.set_typing("nope", "bo", true, None),
        Err(RoomError::NotInRoom {
            room: "nope".into()
        })
    );
}

#[tokio::test]
async fn a_reaped_socket_leaves_its_rooms_and_the_others_see_presence_leave() {
    let ws = opts().with_heartbeat_interval(Duration::from_millis(200));
    let mut n = node_with(ws, RoomsOptions::default()).await;
    let (mut watcher, w_s) = n.client("watcher").await;
    n.rooms.join(&w_s, "r", "watcher").expect("join");
    // a raw peer that completes the handshake and then never answers a ping
    let (raw, _) = raw_connect(n.addr(), "/ws?member=ghost", "").await;
    let ghost = within("socket", n.sockets.recv()).await.expect("socket");
    n.rooms.join(&ghost, "r", "ghost").expect("join");
    n.rooms.join(&ghost, "r2", "ghost").expect("join");
    assert_eq!(
        next_is(&mut watcher, "presence:join").await,
        json!({"channel": "r", "memberId": "ghost"})
    );
    // the watcher keeps answering pings (tungstenite does) while it waits
    assert_eq!(
        recv_type(&mut watcher, "presence:leave").await,
        json!({"channel": "r", "memberId": "ghost"})
    );
    assert!(n.rooms.rooms_of(&ghost).is_empty());
    assert_eq!(n.rooms.room_names(), ["r"]);
    drop(raw);
}

#[tokio::test]
async fn bad_names_and_limits_are_clear_errors() {
    let mut n = node(
        RoomsOptions::default()
            .with_max_rooms_per_socket(2)
            .with_max_name_bytes(8),
    )
    .await;
    let (_c, s) = n.client("ana").await;
    let r = &n.rooms;
    assert_eq!(
        r.join(&s, "", "ana"),
        Err(RoomError::Empty { what: "room" })
    );
    assert_eq!(
        r.join(&s, "r", ""),
        Err(RoomError::Empty { what: "member" })
    );
    assert_eq!(
        r.join(&s, "123456789", "ana"),
        Err(RoomError::TooLong {
            what: "room",
            limit: 8
        })
    );
    assert_eq!(
        r.join(&s, "a\nb", "ana"),
        Err(RoomError::ControlCharacter { what: "room" })
    );
    r.join(&s, "one", "ana").expect("join");
    r.join(&s, "one", "ana").expect("join again is a no-op");
    r.join(&s, "two", "ana").expect("join");
    assert_eq!(
        r.join(&s, "three", "ana"),
        Err(RoomError::TooManyRoomsForSocket { limit: 2 })
    );
    assert_eq!(r.rooms_of(&s), ["one", "two"]);
}

#[tokio::test]
async fn the_client_protocol_joins_publishes_and_refuses_what_is_not_allowed() {
    let mut n =
        node(
            RoomsOptions::default().with_client(ClientPolicy::default().with_publishable_events(
                vec!["chat".into(), "message".into(), "presence:leave".into()],
            )),
        )
        .await;
    n.rooms
        .authorize(|_s, room, member| room != "staff" || member == "boss");
    let (mut ana, _a) = n.client("ana").await;
    let (mut bo, _b) = n.client("bo").await;
    send_env(&mut ana, "room:join", json!({"channel": "general"})).await;
    assert_eq!(
        next_is(&mut ana, "room:joined").await,
        json!({"channel": "general", "members": ["ana"]})
    );
    send_env(&mut bo, "room:join", json!({"channel": "general"})).await;
    assert_eq!(
        next_is(&mut bo, "room:joined").await,
        json!({"channel": "general", "members": ["ana", "bo"]})
    );
    assert_eq!(
        next_is(&mut ana, "presence:join").await,
        json!({"channel": "general", "memberId": "bo"})
    );
    // denied: an error event, nothing joined
    send_env(&mut ana, "room:join", json!({"channel": "staff"})).await;
    assert_eq!(
        next_is(&mut ana, "room:error").await,
        json!({"channel": "staff", "action": "join", "reason": "forbidden"})
    );
    assert!(n.rooms.local_presence("staff").is_empty());
    assert_eq!(n.rooms.stats().denied, 1);
    // publish: to the others, with the sender's member id (not one the client claims)
    send_env(
        &mut ana,
        "room:publish",
        json!({"channel": "general", "event": "chat", "payload": {"text": "<b>hi</b>", "memberId": "boss"}}),
    )
    .await;
    assert_eq!(
        next_is(&mut bo, "chat").await,
        json!({"channel": "general", "memberId": "ana", "payload": {"text": "<b>hi</b>", "memberId": "boss"}})
    );
    // impersonating server events is refused
    send_env(
        &mut ana,
        "room:publish",
        json!({"channel": "general", "event": "presence:leave", "payload": {}}),
    )
    .await;
    assert_eq!(
        next_is(&mut ana, "room:error").await["reason"],
        "event not allowed",
        "server event names stay refused even when listed"
    );
    // publishing to a room one is not in is refused
    send_env(
        &mut ana,
        "room:publish",
        json!({"channel": "staff", "payload": 1}),
    )
    .await;
    assert_eq!(
        next_is(&mut ana, "room:error").await["reason"],
        "not in room"
    );
    // bad names come back as errors too
    send_env(&mut ana, "room:join", json!({"channel": ""})).await;
    assert_eq!(
        next_is(&mut ana, "room:error").await["reason"],
        "room must not be empty"
    );
    // leave
    send_env(&mut bo, "room:leave", json!({"channel": "general"})).await;
    assert_eq!(
        next_is(&mut bo, "room:left").await,
        json!({"channel": "general"})
    );
    assert_eq!(
        next_is(&mut ana, "presence:leave").await,
        json!({"channel": "general", "memberId": "bo"})
    );
}

#[tokio::test]
async fn two_nodes_on_the_memory_broker_share_rooms_presence_and_targets() {
    let bus = MemoryBroker::new();
    let second = bus.node();
    let mut a = node(
        RoomsOptions::default()
            .with_broker(Some(Arc::new(bus)))
            .with_node_id(Some("a".into())),
    )
    .await;
    let mut b = node(
        RoomsOptions::default()
            .with_broker(Some(Arc::new(second)))
            .with_node_id(Some("b".into())),
    )
    .await;
    let (mut ana, ana_s) = a.client("ana").await;
    let (mut bo, bo_s) = b.client("bo").await;
    a.rooms.join(&ana_s, "r", "ana").expect("join");
    b.rooms.join(&bo_s, "r", "bo").expect("join");
    // bo's join on node b reaches ana on node a
    assert_eq!(
        next_is(&mut ana, "presence:join").await,
        json!({"channel": "r", "memberId": "bo"})
    );
    assert_eq!(
        a.rooms.presence("r").await.expect("presence"),
        ["ana", "bo"]
    );
    assert_eq!(b.rooms.connection_count("r").await.expect("count"), 2);
    a.rooms
        .publish("r", "m", &1, PublishOptions::default())
        .expect("publish");
    assert_eq!(next_is(&mut ana, "m").await, 1);
    assert_eq!(next_is(&mut bo, "m").await, 1);
    a.rooms.broadcast("all", &2).expect("broadcast");
    assert_eq!(next_is(&mut ana, "all").await, 2);
    assert_eq!(next_is(&mut bo, "all").await, 2);
    assert_eq!(a.rooms.emit_to_socket(bo_s.id(), "you", &3), Ok(false));
    assert_eq!(next_is(&mut bo, "you").await, 3);
    a.rooms.emit_to_member("bo", "dm", &4).expect("emit");
    assert_eq!(next_is(&mut bo, "dm").await, 4);
    // node b leaves the cluster: its members are gone from the union at once
    b.wss.close().await;
    b.rooms.shutdown().await;
    assert_eq!(a.rooms.presence("r").await.expect("presence"), ["ana"]);
    assert_eq!(
        next_is(&mut ana, "presence:leave").await,
        json!({"channel": "r", "memberId": "bo"})
    );
}

/// Rooms are closed until the app opens them, and clients publish only the event names
/// the app allows (issue 11: a member could publish `welcome`, `chat`, or street.js's own
/// `state`/`close` and fake them on every page).
#[tokio::test]
async fn rooms_are_closed_by_default_and_publications_are_allow_listed() {
    let mut n = node(RoomsOptions::default()).await;
    let (mut ana, _a) = n.client("ana").await;
    send_env(&mut ana, "room:join", json!({"channel": "general"})).await;
    assert_eq!(
        next_is(&mut ana, "room:error").await,
        json!({"channel": "general", "action": "join", "reason": "forbidden"})
    );
    assert_eq!(n.rooms.stats().denied, 1);
    n.rooms.authorize(|_, _, _| true);
    let (mut bo, _b) = n.client("bo").await;
    for c in [&mut ana, &mut bo] {
        join_room(c, "general").await;
    }
    let _ = next_is(&mut ana, "presence:join").await;
    for event in [
        "welcome",
        "chat",
        "chat:error",
        "state",
        "open",
        "close",
        "error",
        "typing",
        "room:joined",
    ] {
        send_env(
            &mut ana,
            "room:publish",
            json!({"channel": "general", "event": event, "payload": {"memberId": "mallory"}}),
        )
        .await;
        assert_eq!(
            next_is(&mut ana, "room:error").await,
            json!({"channel": "general", "action": "publish", "reason": "event not allowed"}),
            "{event}"
        );
    }
    // the default event is allowed
    send_env(
        &mut ana,
        "room:publish",
        json!({"channel": "general", "payload": "hi"}),
    )
    .await;
    assert_eq!(
        next_is(&mut bo, "message").await,
        json!({"channel": "general", "memberId": "ana", "payload": "hi"})
    );
    assert_eq!(n.rooms.stats().publishes_refused, 9);
}

/// The attack of issue 11: one member sends large publications back to back. Oversized
/// ones are refused, the rest is held to the member's budget, and a member who reads
/// nothing meanwhile is still connected afterwards (not closed as a slow consumer).
#[tokio::test]
async fn one_publisher_cannot_empty_a_room() {
    let mut n = node(RoomsOptions::default()).await;
    n.rooms.authorize(|_, _, _| true);
    let (mut mallory, _m) = n.client("mallory").await;
    let (mut reader, _r) = n.client("reader").await;
    for c in [&mut mallory, &mut reader] {
        join_room(c, "general").await;
    }
    let _ = next_is(&mut mallory, "presence:join").await;
    let huge = "x".repeat(400_000);
    for _ in 0..15 {
        send_env(
            &mut mallory,
            "room:publish",
            json!({"channel": "general", "payload": huge}),
        )
        .await;
    }
    let big = "y".repeat(60_000);
    for _ in 0..40 {
        send_env(
            &mut mallory,
            "room:publish",
            json!({"channel": "general", "payload": big}),
        )
        .await;
    }
    let mut reasons = std::collections::BTreeMap::<String, usize>::new();
    for _ in 0..(15 + 40 - 4) {
        let e = next_is(&mut mallory, "room:error").await;
        *reasons
            .entry(e["reason"].as_str().unwrap_or("?").to_owned())
            .or_default() += 1;
    }
    // the byte burst (256 KiB) takes four 60 KB publications; the rest waits for budget
    assert_eq!(reasons.get("payload too large"), Some(&15), "{reasons:?}");
    assert_eq!(reasons.get("rate limit"), Some(&36), "{reasons:?}");
    assert_eq!(n.rooms.stats().publishes_refused, 51);
    // the reader, who read nothing so far, is still there and gets the four
    for _ in 0..4 {
        assert_eq!(
            next_is(&mut reader, "message").await["payload"]
                .as_str()
                .map(str::len),
            Some(60_000)
        );
    }
    send_env(
        &mut reader,
        "room:publish",
        json!({"channel": "general", "payload": "still here"}),
    )
    .await;
    assert_eq!(
        next_is(&mut mallory, "message").await["payload"],
        "still here"
    );
    assert_eq!(n.wss.stats().slow_consumers, 0);
}

/// Typing state costs one timer per (room, member), however many typing messages arrive.
#[tokio::test]
async fn typing_floods_keep_one_timer_per_member() {
    let (n, mut a, mut b) = typing_room(500).await;
    let before = alive_tasks();
    for i in 0..500 {
        // a refresh, and now and then a stop and a start again
        let typing = i % 100 != 50;
        send_env(&mut a, "typing", json!({"channel": "r", "typing": typing})).await;
    }
    // the last message was handled when this echo-less probe's answer comes: ask for an error
    send_env(
        &mut a,
        "typing",
        json!({"channel": "nowhere", "typing": true}),
    )
    .await;
    let _ = next_is(&mut a, "room:error").await;
    assert!(
        alive_tasks() <= before + 1,
        "typing timers: {} tasks before, {} after",
        before,
        alive_tasks()
    );
    assert_eq!(n.rooms.typing_members("r"), ["ana"]);
    // and it still clears itself
    loop {
        let t = recv_type(&mut b, "typing").await;
        if t["typing"] == false && n.rooms.typing_members("r").is_empty() {
            break;
        }
    }
}

/// The sockets of one address share `max_rooms_per_ip`; another address is not affected.
#[tokio::test]
async fn rooms_per_address_are_capped() {
    let mut n = node(RoomsOptions::default().with_max_rooms_per_ip(3)).await;
    n.rooms.authorize(|_, _, _| true);
    let (mut a1, _) = n.client("a1").await;
    let (mut a2, _) = n.client("a2").await;
    for room in ["r1", "r2"] {
        join_room(&mut a1, room).await;
    }
    join_room(&mut a2, "r3").await;
    send_env(&mut a2, "room:join", json!({"channel": "r4"})).await;
    assert_eq!(
        next_is(&mut a2, "room:error").await["reason"],
        "this address is in too many rooms (limit 3)"
    );
    let mut other = connect_ws_from("127.0.0.2", n.addr(), "/ws?member=b").await;
    let _ = within("socket", n.sockets.recv()).await;
    send_env(&mut other, "room:join", json!({"channel": "r4"})).await;
    assert_eq!(next_is(&mut other, "room:joined").await["channel"], "r4");
    // a leave gives the place back
    send_env(&mut a1, "room:leave", json!({"channel": "r1"})).await;
    let _ = next_is(&mut a1, "room:left").await;
    send_env(&mut a2, "room:join", json!({"channel": "r5"})).await;
    assert_eq!(next_is(&mut a2, "room:joined").await["channel"], "r5");
}

/// The room's own budget: a publisher with many sockets (one address, or many names)
/// still cannot burst more into a room than a fair reader's queue holds.
#[tokio::test]
async fn many_sockets_of_one_publisher_cannot_empty_a_room_either() {
    let mut n = node(RoomsOptions::default()).await;
    n.rooms.authorize(|_, _, _| true);
    let (mut reader, _r) = n.client("reader").await;
    join_room(&mut reader, "general").await;
    let mut socks = Vec::new();
    for i in 0..6 {
        let (mut c, _) = n.client(&format!("mallory{i}")).await;
        join_room(&mut c, "general").await;
        socks.push(c);
    }
    // each socket's own budget would take four 60 KB publications: 1.4 MB in all
    let big = "y".repeat(60_000);
    for c in socks.iter_mut() {
        for _ in 0..5 {
            send_env(
                c,
                "room:publish",
                json!({"channel": "general", "payload": big}),
            )
            .await;
        }
    }
    eventually("the room's budget to refuse the rest", || {
        n.rooms.stats().publishes_refused >= 21
    })
    .await;
    let refused = n.rooms.stats().publishes_refused as usize;
    let delivered = 30 - refused;
    // the room's burst (512 KiB) holds eight of them; the reader's queue is 1 MiB
    assert!((8..=9).contains(&delivered), "{delivered} delivered");
    for _ in 0..delivered {
        assert_eq!(
            recv_type(&mut reader, "message").await["payload"]
                .as_str()
                .map(str::len),
            Some(60_000)
        );
    }
    assert_eq!(n.wss.stats().slow_consumers, 0);
    drop(socks);
}

/// Joins, leaves and typing changes take from the connection's action budget.
#[tokio::test]
async fn join_leave_churn_is_budgeted() {
    let mut n = node(RoomsOptions::default()).await;
    n.rooms.authorize(|_, _, _| true);
    let (mut c, _) = n.client("churn").await;
    for _ in 0..40 {
        send_env(&mut c, "room:join", json!({"channel": "r"})).await;
        send_env(&mut c, "room:leave", json!({"channel": "r"})).await;
    }
    let mut limited = 0;
    for _ in 0..80 {
        let v = recv_json(&mut c).await;
        if v["type"] == "room:error" && v["payload"]["reason"] == "rate limit" {
            limited += 1;
        }
    }
    // a burst of 40 actions, then about 20 a second
    assert!(limited >= 30, "{limited} refused");
    assert_eq!(n.rooms.stats().actions_refused, limited);
}

/// A typing timer left over from before a leave and a rejoin ends at its first wake,
/// even while the member keeps typing in the room again.
#[tokio::test]
async fn typing_timers_do_not_outlive_a_rejoin() {
    let mut n =
        node(RoomsOptions::default().with_typing_ttl(Some(Duration::from_millis(300)))).await;
    let (_a, a_s) = n.client("ana").await;
    let before = alive_tasks();
    for _ in 0..100 {
        n.rooms.join(&a_s, "r", "ana").expect("join");
        n.rooms.set_typing("r", "ana", true, None).expect("typing");
        n.rooms.leave(&a_s, "r");
    }
    n.rooms.join(&a_s, "r", "ana").expect("join");
    // keep typing (refreshes) while the old timers wake: they must all end
    within("the old timers to end", async {
        loop {
            n.rooms.set_typing("r", "ana", true, None).expect("typing");
            if alive_tasks() <= before + 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert_eq!(n.rooms.typing_members("r"), ["ana"]);
}

/// A second `authorize` adds a hook: a join needs every hook's consent.
#[tokio::test]
async fn authorize_hooks_add_up_and_all_must_allow() {
    let mut n = node(RoomsOptions::default()).await;
    n.rooms.authorize(|_s, room, _member| room != "closed");
    n.rooms
        .authorize(|_s, room, member| room != "staff" || member == "boss");
    let (mut ana, _a) = n.client("ana").await;
    let (mut boss, _b) = n.client("boss").await;
    join_room(&mut ana, "general").await;
    // refused by the second hook only, then by the first only
    for (c, room) in [(&mut ana, "staff"), (&mut boss, "closed")] {
        send_env(c, "room:join", json!({"channel": room})).await;
        assert_eq!(
            next_is(c, "room:error").await,
            json!({"channel": room, "action": "join", "reason": "forbidden"})
        );
    }
    join_room(&mut boss, "staff").await;
    assert_eq!(n.rooms.stats().denied, 2);
    assert!(n.rooms.local_presence("closed").is_empty());
}
