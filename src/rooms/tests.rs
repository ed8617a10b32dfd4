//! Unit tests of the rooms: presence events, typing.

use super::*;
use crate::ws::WsOptions;

fn socket() -> Socket {
    Socket::for_test()
}

/// The envelope types queued for a socket, oldest first (and clears the queue).
fn sent(s: &Socket) -> Vec<String> {
    s.inner
        .outbox
        .drain_data()
        .into_iter()
        .filter_map(|payload| {
            let v: serde_json::Value = serde_json::from_slice(&payload).ok()?;
            Some(format!("{} {}", v["type"].as_str()?, v["payload"]))
        })
        .collect()
}

#[tokio::test]
async fn refcounted_presence_events_and_the_broker_view() {
    let wss = WebSocketServer::new(WsOptions::default());
    let rooms = Rooms::new(&wss, RoomsOptions::default())
        .await
        .expect("rooms");
    let (a1, a2, b) = (socket(), socket(), socket());
    rooms.join(&b, "r", "bo").expect("join");
    rooms.join(&a1, "r", "ana").expect("join");
    rooms.join(&a2, "r", "ana").expect("join");
    assert_eq!(
        sent(&b),
        [r#"presence:join {"channel":"r","memberId":"ana"}"#]
    );
    assert_eq!(sent(&a1), Vec::<String>::new());
    assert_eq!(rooms.snapshot().len(), 2);
    assert_eq!(rooms.connection_count("r").await.expect("count"), 3);
    assert!(!rooms.leave(&a1, "r").now_absent);
    assert!(sent(&b).is_empty());
    rooms.disconnect(&a2);
    assert_eq!(
        sent(&b),
        [r#"presence:leave {"channel":"r","memberId":"ana"}"#]
    );
    assert!(sent(&a2).is_empty());
    assert_eq!(rooms.presence("r").await.expect("presence"), ["bo"]);
    rooms.disconnect(&b);
    assert!(rooms.room_names().is_empty());
    assert!(rooms.snapshot().is_empty());
    assert_eq!(
        rooms.presence("r").await.expect("presence"),
        Vec::<String>::new()
    );
}

#[tokio::test]
async fn a_leave_clears_the_members_typing_and_typing_refreshes_are_silent() {
    let wss = WebSocketServer::new(WsOptions::default());
    let rooms = Rooms::new(
        &wss,
        RoomsOptions {
            typing_ttl: None,
            ..RoomsOptions::default()
        },
    )
    .await
    .expect("rooms");
    let (a, b) = (socket(), socket());
    rooms.join(&a, "r", "ana").expect("join");
    rooms.join(&b, "r", "bo").expect("join");
    let _ = sent(&a);
    rooms
        .set_typing("r", "ana", true, Some(&a))
        .expect("typing");
    rooms
        .set_typing("r", "ana", true, Some(&a))
        .expect("refresh");
    rooms
        .set_typing("r", "ana", false, Some(&a))
        .expect("typing");
    rooms
        .set_typing("r", "ana", false, Some(&a))
        .expect("no change");
    assert_eq!(
        sent(&b),
        [
            r#"typing {"channel":"r","memberId":"ana","typing":true}"#,
            r#"typing {"channel":"r","memberId":"ana","typing":false}"#
        ]
    );
    assert!(sent(&a).is_empty());
    rooms.set_typing("r", "ana", true, None).expect("typing");
    rooms.leave(&a, "r");
    assert!(rooms.typing_members("r").is_empty());
}
