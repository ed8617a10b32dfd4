//! `echo`: C connections, each sends an echo and waits for the reply.

use std::sync::Arc;
use std::time::Instant;

use futures_util::{SinkExt, StreamExt};
use tokio_websockets::Message;

use crate::args::Args;
use crate::conn::open_many;
use crate::measure::Meter;
use crate::report::{hist, round, Report};

pub(crate) async fn echo(a: &Args, r: &mut Report, meter: &Arc<Meter>) -> Result<u64, String> {
    let (conns, failed, _) = open_many(&a.url, a.connections, a.concurrency).await;
    if failed > 0 {
        return Err(format!("{failed} connections failed"));
    }
    let payload = "x".repeat(a.payload_bytes);
    let msg = format!(r#"{{"type":"echo","payload":"{payload}"}}"#);
    let start = Instant::now() + a.warmup;
    let end = start + a.duration;
    let sampler = meter.window(start, end);
    let mut tasks = Vec::new();
    for mut ws in conns {
        let msg = msg.clone();
        tasks.push(tokio::spawn(async move {
            let mut h = hist();
            let mut n = 0u64;
            loop {
                let t0 = Instant::now();
                if t0 >= end {
                    break;
                }
                if ws.send(Message::text(msg.clone())).await.is_err() {
                    return Err("send failed".to_string());
                }
                loop {
                    match ws.next().await {
                        Some(Ok(m)) if m.is_text() => break,
                        Some(Ok(_)) => continue,
                        _ => return Err("connection ended".to_string()),
                    }
                }
                if t0 >= start {
                    let _ = h.record(t0.elapsed().as_micros() as u64);
                    n += 1;
                }
            }
            let _ = ws.close().await;
            Ok((h, n))
        }));
    }
    let mut h = hist();
    let mut total = 0;
    for t in tasks {
        let (hh, n) = t.await.map_err(|e| e.to_string())??;
        h.add(hh).map_err(|e| e.to_string())?;
        total += n;
    }
    let _ = sampler.await;
    let secs = a.duration.as_secs_f64();
    r.put("round_trips", total);
    r.put("round_trips_per_s", round(total as f64 / secs, 0));
    r.put("rtt_p50_us", h.value_at_quantile(0.5));
    r.put("rtt_p99_us", h.value_at_quantile(0.99));
    Ok(total)
}
