//! `restart`: N connections wait for the server to go away, then reconnect with
//! exponential backoff and full jitter; how the reconnects spread.

use std::time::{Duration, Instant};

use futures_util::StreamExt;

use crate::args::Args;
use crate::conn::{connect, open_many};
use crate::report::{round, Report};

/// Full-jitter exponential backoff (AWS's "full jitter"): attempt `k` waits a uniformly
/// random time in `[0, min(cap, window * 2^k))`. Spreads a crowd that lost its server at
/// the same instant over the window instead of returning as one burst.
fn backoff(window: Duration, attempt: u32) -> Duration {
    let cap = Duration::from_secs(30);
    let range = window.saturating_mul(1u32 << attempt.min(10)).min(cap);
    range.mul_f64(fastrand::f64())
}

/// What one client saw: its close code, when the close arrived, when it was back.
struct Reconnect {
    code: Option<u16>,
    closed_at: Duration,
    back_at: Option<Duration>,
    attempts: u32,
}

pub(crate) async fn restart(a: &Args, r: &mut Report) -> Result<u64, String> {
    let n = a.connections;
    let (conns, failed, _) = open_many(&a.url, n, a.concurrency).await;
    if failed > 0 {
        return Err(format!("{failed} connections failed"));
    }
    // the driver (a test, a person) restarts the server after this line
    println!("READY {n}");
    let t0 = Instant::now();
    let deadline = t0 + a.timeout;
    let mut tasks = Vec::with_capacity(n);
    for mut ws in conns {
        let (url, window) = (a.url.clone(), a.reconnect_window);
        tasks.push(tokio::spawn(async move {
            let mut code = None;
            while let Some(m) = ws.next().await {
                match m {
                    Ok(m) => {
                        if let Some((c, _)) = m.as_close() {
                            code = Some(u16::from(c));
                        }
                    }
                    Err(_) => break,
                }
            }
            let closed_at = t0.elapsed();
            let mut attempts = 0;
            let back_at = loop {
                tokio::time::sleep(backoff(window, attempts)).await;
                attempts += 1;
                if Instant::now() >= deadline {
                    break None;
                }
                if let Ok(ws) = connect(&url).await {
                    let at = t0.elapsed();
                    // stay connected until the report is made
                    std::mem::forget(ws);
                    break Some(at);
                }
            };
            Reconnect {
                code,
                closed_at,
                back_at,
                attempts,
            }
        }));
    }
    let mut seen = Vec::with_capacity(n);
    for t in tasks {
        seen.push(t.await.map_err(|e| e.to_string())?);
    }
    let got_1001 = seen.iter().filter(|s| s.code == Some(1001)).count();
    let first_close = seen.iter().map(|s| s.closed_at).min().unwrap_or_default();
    let last_close = seen.iter().map(|s| s.closed_at).max().unwrap_or_default();
    let mut back: Vec<f64> = seen
        .iter()
        .filter_map(|s| s.back_at)
        .map(|b| (b - first_close).as_secs_f64() * 1000.0)
        .collect();
    back.sort_by(f64::total_cmp);
    let pct = |q: f64| -> f64 {
        if back.is_empty() {
            return 0.0;
        }
        back[((back.len() - 1) as f64 * q).round() as usize]
    };
    // the busiest 100 ms of reconnects
    let mut buckets = std::collections::HashMap::<u64, usize>::new();
    for b in &back {
        *buckets.entry((*b / 100.0) as u64).or_default() += 1;
    }
    let peak = buckets.values().copied().max().unwrap_or(0);
    let attempts: u32 = seen.iter().map(|s| s.attempts).sum();
    r.put("connections", n);
    r.put("closed_1001", got_1001);
    r.put(
        "close_spread_ms",
        round((last_close - first_close).as_secs_f64() * 1000.0, 1),
    );
    r.put("reconnected", back.len());
    r.put("reconnect_attempts", attempts);
    r.put("reconnect_window_ms", a.reconnect_window.as_millis() as u64);
    r.put("back_min_ms", round(pct(0.0), 1));
    r.put("back_p10_ms", round(pct(0.1), 1));
    r.put("back_p50_ms", round(pct(0.5), 1));
    r.put("back_p90_ms", round(pct(0.9), 1));
    r.put("back_max_ms", round(pct(1.0), 1));
    r.put("peak_reconnects_per_100ms", peak);
    Ok(back.len() as u64)
}
