//! The command line: scenario, flags and their defaults.

use std::time::Duration;

#[derive(Debug, Clone)]
pub(crate) struct Args {
    pub(crate) scenario: String,
    pub(crate) url: String,
    /// `--url` given more than once: `fanout` spreads its subscribers over all of them.
    pub(crate) more_urls: Vec<String>,
    pub(crate) connections: usize,
    pub(crate) duration: Duration,
    pub(crate) warmup: Duration,
    pub(crate) concurrency: usize,
    pub(crate) outstanding: usize,
    pub(crate) payload_bytes: usize,
    pub(crate) server_pid: Option<u32>,
    pub(crate) threads: usize,
    pub(crate) json: bool,
    pub(crate) label: String,
    pub(crate) reconnect_window: Duration,
    pub(crate) timeout: Duration,
    /// `fanout --room NAME`: every connection joins room NAME (rooms client protocol)
    /// and the publisher sends `publish {channel, payload}` (examples/cluster.rs) instead
    /// of `broadcast`: the room fan-out path, with or without history.
    pub(crate) room: Option<String>,
    /// `fanout --deflate`: the subscribers offer permessage-deflate and inflate what comes
    /// compressed (the publisher does not offer it); wire bytes are reported.
    pub(crate) deflate: bool,
    /// `fanout --chat-bytes N`: each broadcast's payload is a chat-like JSON object of
    /// about N bytes (`{"id":…,"from":…,"room":…,"text":…}`) instead of the bare id.
    pub(crate) chat_bytes: usize,
}

pub(crate) const USAGE: &str = "usage: street-bench <echo|fanout|idle|connect-storm|restart|sse-fanout> --url ws://HOST:PORT/ws
  [--connections N] [--duration SECS] [--warmup SECS] [--concurrency N] [--outstanding N]
  [--payload-bytes N] [--server-pid PID] [--threads N] [--label NAME] [--json]
  [--reconnect-window-ms MS] [--timeout SECS] [--ca PEM (for wss:// URLs)] [--room NAME]
  [--deflate] [--chat-bytes N]";

pub(crate) fn parse_args() -> Result<Args, String> {
    let mut it = std::env::args().skip(1);
    let scenario = it.next().ok_or(USAGE)?;
    if scenario == "-h" || scenario == "--help" {
        return Err(USAGE.into());
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut a = Args {
        connections: match scenario.as_str() {
            "echo" => 64,
            "fanout" | "sse-fanout" => 1000,
            "idle" => 10_000,
            _ => 1000,
        },
        scenario,
        url: "ws://127.0.0.1:9001/ws".into(),
        more_urls: Vec::new(),
        duration: Duration::from_secs(5),
        warmup: Duration::from_secs(1),
        concurrency: 256,
        outstanding: 4,
        payload_bytes: 32,
        server_pid: None,
        threads: cores,
        json: false,
        room: None,
        deflate: false,
        chat_bytes: 0,
        label: String::new(),
        reconnect_window: Duration::from_secs(2),
        timeout: Duration::from_secs(60),
    };
    let mut url_given = false;
    while let Some(flag) = it.next() {
        let mut val = || it.next().ok_or(format!("{flag} needs a value"));
        let num = |v: String| v.parse::<f64>().map_err(|_| format!("not a number: {v}"));
        match flag.as_str() {
            "--url" if url_given => a.more_urls.push(val()?),
            "--url" => {
                a.url = val()?;
                url_given = true;
            }
            "--connections" | "-n" => a.connections = num(val()?)? as usize,
            "--duration" => a.duration = Duration::from_secs_f64(num(val()?)?),
            "--warmup" => a.warmup = Duration::from_secs_f64(num(val()?)?),
            "--concurrency" => a.concurrency = num(val()?)? as usize,
            "--outstanding" => a.outstanding = num(val()?)? as usize,
            "--payload-bytes" => a.payload_bytes = num(val()?)? as usize,
            "--server-pid" => a.server_pid = Some(num(val()?)? as u32),
            "--threads" => a.threads = (num(val()?)? as usize).clamp(1, cores),
            "--label" => a.label = val()?,
            "--ca" => crate::conn::trust_ca(&val()?)?,
            "--json" => a.json = true,
            "--room" => a.room = Some(val()?),
            "--deflate" => a.deflate = true,
            "--chat-bytes" => a.chat_bytes = num(val()?)? as usize,
            "--reconnect-window-ms" => {
                a.reconnect_window = Duration::from_millis(num(val()?)? as u64);
            }
            "--timeout" => a.timeout = Duration::from_secs_f64(num(val()?)?),
            other => return Err(format!("unknown flag {other}\n{USAGE}")),
        }
    }
    Ok(a)
}
