//! `fanout` and `sse-fanout`: N subscribers, one publisher with at most K broadcasts
//! outstanding; a broadcast completes when all N received it.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use futures_util::{SinkExt, StreamExt};
use tokio::sync::Semaphore;
use tokio_websockets::Message;

use crate::args::Args;
use crate::conn::{open_spread, payload_id, Ws};
use crate::measure::Meter;
use crate::report::{hist, round, Report};
use crate::sse::{open_many_sse, read_sse_ids};

pub(crate) async fn fanout(a: &Args, r: &mut Report, meter: &Arc<Meter>) -> Result<u64, String> {
    const WINDOW: usize = 1024;
    let sse = a.scenario == "sse-fanout";
    let n = a.connections;
    // subscribers spread over every --url; the publisher is the first connection (on the
    // first url), popped from the front below
    let mut urls = vec![a.url.clone()];
    urls.extend(a.more_urls.iter().cloned());
    // with SSE the publisher is a client of bench_server's /sse/publish endpoint
    let pub_urls = if sse {
        let uri: http::Uri = a.url.parse().map_err(|e| format!("bad url: {e}"))?;
        let auth = uri.authority().ok_or("url has no host")?;
        vec![format!("ws://{auth}/sse/publish")]
    } else {
        urls.clone()
    };
    // with --deflate only the publisher is a WebSocket client of ours; the subscribers
    // are raw readers that offer permessage-deflate
    let ws_clients = if sse || a.deflate { 1 } else { n };
    let (mut conns, failed, _) = open_spread(&pub_urls, ws_clients, a.concurrency).await;
    if failed > 0 {
        return Err(format!("{failed} connections failed"));
    }
    let sse_readers = if sse {
        open_many_sse(&a.url, n, a.concurrency).await?
    } else {
        Vec::new()
    };
    let mut deflate_readers = Vec::new();
    if a.deflate && !sse {
        // n - 1: the publisher receives its own broadcasts too
        for i in 0..n.saturating_sub(1) {
            deflate_readers.push(crate::deflate::open(&urls[i % urls.len()]).await?);
        }
    }
    // bytes read by the compressed subscribers, and messages they got
    let (wire, wire_msgs) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    if conns.is_empty() {
        return Err("no connections".into());
    }
    if let Some(room) = &a.room {
        join_room(&mut conns, room).await?;
    }
    let publisher = conns.swap_remove(0);
    let t_base = Instant::now();
    let sent_at: Arc<Vec<AtomicU64>> = Arc::new((0..WINDOW).map(|_| AtomicU64::new(0)).collect());
    let counts: Arc<Vec<AtomicUsize>> =
        Arc::new((0..WINDOW).map(|_| AtomicUsize::new(0)).collect());
    let window = Arc::new(Semaphore::new(a.outstanding.max(1)));
    let hist_all = Arc::new(std::sync::Mutex::new(hist()));
    let delivered = Arc::new(AtomicU64::new(0));
    let completed = Arc::new(AtomicU64::new(0));
    let measure_from = Arc::new(AtomicU64::new(u64::MAX)); // first id counted
    let start = Instant::now() + a.warmup;
    let end = start + a.duration;
    let sampler = meter.window(start, end);

    let (mut pub_sink, pub_stream) = publisher.split();
    let mut readers = Vec::new();
    let on_id = {
        let (sent_at, counts, window, hist_all, delivered, completed, measure_from) = (
            sent_at.clone(),
            counts.clone(),
            window.clone(),
            hist_all.clone(),
            delivered.clone(),
            completed.clone(),
            measure_from.clone(),
        );
        Arc::new(move |id: u64| {
            let slot = (id as usize) % WINDOW;
            let from = measure_from.load(Ordering::Relaxed);
            if id >= from {
                delivered.fetch_add(1, Ordering::Relaxed);
            }
            if counts[slot].fetch_add(1, Ordering::AcqRel) + 1 == n {
                let lat = (t_base.elapsed().as_nanos() as u64)
                    .saturating_sub(sent_at[slot].load(Ordering::Acquire));
                if id >= from {
                    completed.fetch_add(1, Ordering::Relaxed);
                    if let Ok(mut h) = hist_all.lock() {
                        let _ = h.record((lat / 1000).max(1));
                    }
                }
                window.add_permits(1);
            }
        })
    };
    let spawn_reader = |mut stream: futures_util::stream::SplitStream<Ws>| {
        let on_id = on_id.clone();
        tokio::spawn(async move {
            while let Some(Ok(m)) = stream.next().await {
                if let Some(id) = payload_id(m.as_payload()) {
                    on_id(id);
                }
            }
        })
    };
    for ws in conns {
        let (_sink, stream) = ws.split();
        // keep the sink alive with the stream: dropping it does not close the socket
        std::mem::forget(_sink);
        readers.push(spawn_reader(stream));
    }
    for tcp in deflate_readers {
        let (on_id, wire, msgs) = (on_id.clone(), wire.clone(), wire_msgs.clone());
        readers.push(tokio::spawn(crate::deflate::read(tcp, wire, move |m| {
            msgs.fetch_add(1, Ordering::Relaxed);
            if let Some(id) = payload_id(m) {
                on_id(id);
            }
        })));
    }
    for tcp in sse_readers {
        let on_id = on_id.clone();
        readers.push(tokio::spawn(read_sse_ids(tcp, move |id| on_id(id))));
    }
    // (with SSE the publisher receives nothing: it is not a subscriber)
    readers.push(spawn_reader(pub_stream));
    let kind = if sse { "sse" } else { "broadcast" };
    let room = a
        .room
        .as_deref()
        .map(|r| serde_json::to_string(r).unwrap_or_default());

    let mut id: u64 = 0;
    let mut sent = 0u64;
    loop {
        let now = Instant::now();
        if now >= end {
            break;
        }
        let permit = tokio::time::timeout(end - now, window.acquire()).await;
        let Ok(Ok(permit)) = permit else { break };
        permit.forget();
        id += 1;
        if Instant::now() >= start && measure_from.load(Ordering::Relaxed) == u64::MAX {
            measure_from.store(id, Ordering::Relaxed);
        }
        let slot = (id as usize) % WINDOW;
        counts[slot].store(0, Ordering::Release);
        sent_at[slot].store(t_base.elapsed().as_nanos() as u64, Ordering::Release);
        let text = match &room {
            Some(r) => {
                format!(r#"{{"type":"publish","payload":{{"channel":{r},"payload":{id}}}}}"#)
            }
            None if a.chat_bytes > 0 => format!(
                r#"{{"type":"{kind}","payload":{{"id":{id},"from":"ana","room":"general","text":"{}"}}}}"#,
                chat_text(a.chat_bytes)
            ),
            None => format!(r#"{{"type":"{kind}","payload":{id}}}"#),
        };
        pub_sink
            .send(Message::text(text))
            .await
            .map_err(|e| e.to_string())?;
        sent += 1;
    }
    let _ = sampler.await;
    let elapsed = a.duration.as_secs_f64();
    let d = delivered.load(Ordering::Relaxed);
    let c = completed.load(Ordering::Relaxed);
    let h = hist_all.lock().map_err(|_| "poisoned")?.clone();
    for t in &readers {
        t.abort();
    }
    r.put("subscribers", n);
    if let Some(room) = &a.room {
        r.put("room", room.as_str());
    }
    r.put("nodes", urls.len());
    r.put("broadcasts_sent", sent);
    r.put("broadcasts_per_s", round(c as f64 / elapsed, 1));
    r.put("deliveries_per_s", round(d as f64 / elapsed, 0));
    r.put("completion_p50_us", h.value_at_quantile(0.5));
    r.put("completion_p99_us", h.value_at_quantile(0.99));
    if a.deflate {
        // bytes the compressed subscribers read per message, whole run (the publisher's
        // own copy is uncompressed and not counted)
        let (b, m) = (
            wire.load(Ordering::Relaxed),
            wire_msgs.load(Ordering::Relaxed),
        );
        r.put(
            "wire_bytes_per_message",
            round(b as f64 / m.max(1) as f64, 1),
        );
    }
    Ok(d)
}

/// Join every connection to `room` (the rooms client protocol) and wait for each
/// `room:joined`, so that the first publication reaches them all.
async fn join_room(conns: &mut [Ws], room: &str) -> Result<(), String> {
    let join =
        serde_json::json!({ "type": "room:join", "payload": { "channel": room } }).to_string();
    for ws in conns.iter_mut() {
        ws.send(Message::text(join.clone()))
            .await
            .map_err(|e| e.to_string())?;
    }
    for ws in conns.iter_mut() {
        loop {
            let m = tokio::time::timeout(std::time::Duration::from_secs(30), ws.next())
                .await
                .map_err(|_| "no room:joined within 30 s")?;
            let Some(Ok(m)) = m else {
                return Err("closed while joining".into());
            };
            let text = m.as_text().unwrap_or_default();
            if text.contains("\"room:error\"") {
                return Err(format!("join refused: {text}"));
            }
            if text.contains("\"room:joined\"") {
                break;
            }
        }
    }
    Ok(())
}

/// Chat-like text of about `bytes` bytes (words, so it compresses as chat does).
fn chat_text(bytes: usize) -> String {
    const WORDS: [&str; 12] = [
        "hello", "street", "room", "message", "the", "a", "deploy", "today", "see", "you", "lunch",
        "ok",
    ];
    let mut s = String::with_capacity(bytes + 16);
    let mut i = 7usize;
    while s.len() + 70 < bytes {
        i = i.wrapping_mul(31).wrapping_add(17);
        s.push_str(WORDS[i % WORDS.len()]);
        s.push(' ');
    }
    s
}
