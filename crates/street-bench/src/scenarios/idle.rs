//! `idle`: N connections opened with C concurrent handshakes; the server's RSS per
//! connection.

use std::sync::Arc;
use std::time::Duration;

use crate::args::Args;
use crate::conn::open_many;
use crate::measure::Meter;
use crate::measure::{listen_overflows, rss_kib};
use crate::report::{round, Report};

pub(crate) async fn idle(a: &Args, r: &mut Report, meter: &Arc<Meter>) -> Result<u64, String> {
    let overflows0 = listen_overflows();
    let base = a.server_pid.and_then(rss_kib);
    // CPU is charged over the connect phase only (not the settle time or the teardown)
    let (s0, p0) = meter.sample();
    let (conns, failed, took) = open_many(&a.url, a.connections, a.concurrency).await;
    let (s1, p1) = meter.sample();
    meter.set_window((s0, p0, s1, p1, took.as_secs_f64()));
    let ok = conns.len();
    r.put("connections", ok);
    r.put("failed", failed);
    r.put("handshakes_per_s", round(ok as f64 / took.as_secs_f64(), 0));
    if let (Some(o0), Some(o1)) = (overflows0, listen_overflows()) {
        r.put("listen_overflows", o1.saturating_sub(o0));
    }
    // let the server settle, then read its RSS with every connection open
    tokio::time::sleep(Duration::from_secs(1)).await;
    if let (Some(pid), Some(base)) = (a.server_pid, base) {
        if let Some(now) = rss_kib(pid) {
            r.put("server_rss_base_kib", base);
            r.put("server_rss_kib", now);
            r.put(
                "server_rss_per_conn_bytes",
                round(
                    (now.saturating_sub(base) as f64 * 1024.0) / ok.max(1) as f64,
                    0,
                ),
            );
        }
    }
    drop(conns);
    Ok(ok as u64)
}
