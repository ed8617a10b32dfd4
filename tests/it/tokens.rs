//! Credentials that expire on an open connection (`Socket::set_expiry`): the client is
//! warned (`street:expired`), may refresh in-band (a `street:auth` request the app
//! answers), and is closed with 4010 when it does not, after the grace.

use std::time::{Duration, SystemTime};

use crate::common::*;
use serde_json::{json, Value};
use street::ws::{CloseCode, ConnectRequest, Socket, WebSocketServer};

fn expiring_server() -> WebSocketServer {
    let wss = WebSocketServer::new(
        opts()
            .with_heartbeat_interval(Duration::from_millis(150))
            .with_expiry_grace(Duration::from_millis(300)),
    );
    wss.on_connection(|socket: Socket, _: ConnectRequest| {
        socket.set_expiry(Some(SystemTime::now() + Duration::from_millis(200)));
        let s = socket.clone();
        socket.on_request("street:auth", move |p: Value| {
            let good = p["token"] == "good";
            if good {
                s.set_expiry(Some(SystemTime::now() + Duration::from_secs(60)));
            }
            good.then_some("refreshed").ok_or("invalid token")
        })?;
        socket.on_request("ping", |_: Value| Ok::<_, String>("pong"))?;
        Ok::<_, street::ws::SocketError>(())
    });
    wss
}

async fn until_expired(c: &mut Client) -> Value {
    loop {
        let v = recv_json(c).await;
        if v["type"] == "street:expired" {
            return v["payload"].clone();
        }
    }
}

async fn ask(c: &mut Client, event: &str, payload: Value, id: u64) -> Value {
    send_text(
        c,
        &json!({"type": event, "payload": payload, "id": id}).to_string(),
    )
    .await;
    loop {
        let v = recv_json(c).await;
        if v["type"] == "street:reply" {
            return v["payload"].clone();
        }
    }
}

#[tokio::test]
async fn an_expired_connection_is_warned_then_closed_with_4010_unless_it_refreshes_in_band() {
    let wss = expiring_server();
    let srv = serve(&wss).await;
    let mut idle = connect(srv.local_addr()).await;
    let mut fresh = connect(srv.local_addr()).await;
    let mut wrong = connect(srv.local_addr()).await;
    // every client is read all along (reading answers the heartbeat's pings)
    let closed = tokio::sync::Notify::new();
    let closes = async {
        let idle_side = async {
            assert_eq!(until_expired(&mut idle).await, json!({"graceMs": 300}));
            recv_close(&mut idle).await
        };
        let wrong_side = async {
            assert_eq!(until_expired(&mut wrong).await, json!({"graceMs": 300}));
            let r = ask(&mut wrong, "street:auth", json!({"token": "stolen"}), 1).await;
            assert_eq!(r["error"]["message"], "invalid token", "{r}");
            recv_close(&mut wrong).await
        };
        let both = tokio::join!(idle_side, wrong_side);
        closed.notify_one();
        both
    };
    let fresh_side = async {
        assert_eq!(until_expired(&mut fresh).await, json!({"graceMs": 300}));
        assert_eq!(
            ask(&mut fresh, "street:auth", json!({"token": "good"}), 1).await,
            json!({"id": 1, "result": "refreshed"})
        );
        // past its first expiry and grace (the others are closed by then), still served
        loop {
            tokio::select! {
                () = closed.notified() => break,
                v = recv_json(&mut fresh) => assert_ne!(v["type"], "street:expired", "{v}"),
            }
        }
        ask(&mut fresh, "ping", json!(null), 2).await
    };
    let ((idle_close, wrong_close), pong) =
        within("the expiries", async { tokio::join!(closes, fresh_side) }).await;
    let want = (CloseCode::TOKEN_EXPIRED.0, "token expired".to_owned());
    assert_eq!((idle_close, wrong_close), (want.clone(), want));
    assert_eq!(pong, json!({"id": 2, "result": "pong"}));
    assert_eq!(wss.stats().expired, 2);
}

/// A raw connection (`Frames::Raw`, or a custom subprotocol) speaks no envelopes: it is
/// not sent `street:expired`, and is still closed with 4010 after the grace.
#[tokio::test]
async fn a_raw_connection_gets_no_envelope_but_still_4010() {
    let mut o = opts()
        .with_heartbeat_interval(Duration::from_millis(100))
        .with_expiry_grace(Duration::from_millis(200));
    o.frames = street::ws::Frames::Raw;
    let wss = WebSocketServer::new(o);
    wss.on_connection(|socket: Socket, _: ConnectRequest| {
        socket.set_expiry(Some(SystemTime::now() + Duration::from_millis(100)));
    });
    let srv = serve(&wss).await;
    let mut c = connect(srv.local_addr()).await;
    loop {
        use futures_util::StreamExt;
        use tokio_tungstenite::tungstenite::Message;
        match within("the close", c.next()).await {
            Some(Ok(Message::Text(t))) => panic!("a raw connection was sent {t}"),
            Some(Ok(Message::Close(Some(f)))) => {
                assert_eq!(u16::from(f.code), CloseCode::TOKEN_EXPIRED.0);
                break;
            }
            Some(Ok(Message::Close(None))) => panic!("a close without its code"),
            Some(Ok(_)) => {}
            other => panic!("ended without a close frame: {other:?}"),
        }
    }
    eventually("counted once", || wss.stats().expired == 1).await;
}
