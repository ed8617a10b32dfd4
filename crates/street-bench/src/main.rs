//! `street-bench`: a WebSocket load generator for servers that implement
//! `shared/bench/contract.md` (street's `bench_server`, `@streetjs/websocket`, …).
//!
//! Scenarios:
//! - `echo`: C connections, each sends an echo and waits for the reply → round trips/s, RTT;
//! - `fanout`: N subscribers, one of them publishes with at most K broadcasts outstanding; a
//!   broadcast completes when all N received it → broadcasts/s, deliveries/s, completion latency;
//! - `idle`: N connections opened with C concurrent handshakes → handshakes/s, server RSS per
//!   connection (needs `--server-pid`);
//! - `connect-storm`: N connections all at once → admitted, refused (1013/503), errors;
//! - `restart`: N connections wait for the server to go away (close 1001), then reconnect
//!   with exponential backoff and full jitter (`--reconnect-window-ms` is the first delay's
//!   range); prints `READY` once connected, then reports how the reconnects spread;
//! - `sse-fanout` (street's bench_server only): N Server-Sent Events readers of `GET /sse`,
//!   one WebSocket publisher (`/sse/publish`) sending `{"type":"sse","payload":ID}`,
//!   measured as `fanout`.
//!
//! It reports its own CPU time (a load generator that saturates a core understates the
//! faster server) and, given `--server-pid`, the server's CPU per unit of work and its RSS.
//! One worker thread per core at most; receive paths parse only what they need.

mod args;
mod conn;
mod deflate;
mod measure;
mod report;
mod scenarios;
mod sse;

use std::sync::Arc;
use std::time::Instant;

use args::{parse_args, USAGE};
use measure::{cpu_seconds, raise_nofile, rss_kib, Meter};
use report::{round, Report};
use scenarios::{connect_storm, echo, fanout, idle, restart};

fn main() -> std::process::ExitCode {
    let a = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return std::process::ExitCode::from(2);
        }
    };
    raise_nofile();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(a.threads)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("runtime: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    let mut r = Report::default();
    r.put("scenario", a.scenario.clone());
    if !a.label.is_empty() {
        r.put("label", a.label.clone());
    }
    r.put("url", a.url.clone());
    let meter = Arc::new(Meter::new(a.server_pid));
    let self_cpu0 = cpu_seconds("self");
    let srv_cpu0 = a.server_pid.and_then(|p| cpu_seconds(&p.to_string()));
    let wall0 = Instant::now();
    let result = rt.block_on(async {
        match a.scenario.as_str() {
            "echo" => echo(&a, &mut r, &meter).await,
            "fanout" | "sse-fanout" => fanout(&a, &mut r, &meter).await,
            "idle" => idle(&a, &mut r, &meter).await,
            "connect-storm" => connect_storm(&a, &mut r).await,
            "restart" => restart(&a, &mut r).await,
            other => Err(format!("unknown scenario {other}\n{USAGE}")),
        }
    });
    let ops = match result {
        Ok(ops) => ops,
        Err(e) => {
            eprintln!("street-bench: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    let wall = wall0.elapsed().as_secs_f64();
    // CPU over the measured window when the scenario has one, else over the whole run.
    let window = meter.measured();
    let (self_cpu, srv_cpu, secs) = match window {
        Some((s0, p0, s1, p1, secs)) => (Some(s1 - s0), p0.zip(p1).map(|(a0, a1)| a1 - a0), secs),
        None => (
            self_cpu0.zip(cpu_seconds("self")).map(|(c0, c1)| c1 - c0),
            a.server_pid
                .and_then(|p| srv_cpu0.zip(cpu_seconds(&p.to_string())))
                .map(|(c0, c1)| c1 - c0),
            wall,
        ),
    };
    if let Some(c) = self_cpu {
        r.put("loadgen_cpu_s", round(c, 2));
        r.put("loadgen_cpu_pct_of_one_core", round(100.0 * c / secs, 0));
    }
    if let Some(pid) = a.server_pid {
        if let Some(c) = srv_cpu {
            r.put("server_cpu_s", round(c, 2));
            r.put("server_cpu_pct_of_one_core", round(100.0 * c / secs, 0));
            if ops > 0 {
                r.put("server_cpu_us_per_op", round(c * 1e6 / ops as f64, 2));
            }
        }
        if let Some(rss) = rss_kib(pid) {
            r.put("server_rss_end_kib", rss);
        }
    }
    r.put("wall_s", round(wall, 2));
    r.print(a.json);
    drop(rt);
    std::process::ExitCode::SUCCESS
}
