//! Measuring: /proc readings (CPU time, RSS, listen-queue overflows, the open-files
//! limit) and the CPU [`Meter`] of the measured window.

use std::sync::Arc;
use std::time::Instant;

/// CPU seconds (user + system) of a process, from /proc/PID/stat.
pub(crate) fn cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0) // USER_HZ is 100 on Linux
}

pub(crate) fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Raise the soft open-files limit to the hard limit (10k connections need it).
pub(crate) fn raise_nofile() {
    // Without libc: ask the shell's ulimit is not possible from here; use prlimit if present.
    let pid = std::process::id().to_string();
    let _ = std::process::Command::new("prlimit")
        .args(["--pid", &pid, "--nofile=unlimited:unlimited"])
        .stderr(std::process::Stdio::null())
        .status();
    if let Ok(limits) = std::fs::read_to_string("/proc/self/limits") {
        if let Some(line) = limits.lines().find(|l| l.starts_with("Max open files")) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if let (Some(soft), Some(hard)) = (f.get(3), f.get(4)) {
                if soft != hard {
                    let _ = std::process::Command::new("prlimit")
                        .args(["--pid", &pid, &format!("--nofile={hard}:{hard}")])
                        .status();
                }
            }
        }
    }
}

/// The kernel's count of connections dropped because a listen queue was full.
pub(crate) fn listen_overflows() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/net/netstat").ok()?;
    let mut lines = s.lines().filter(|l| l.starts_with("TcpExt:"));
    let names = lines.next()?;
    let values = lines.next()?;
    let i = names
        .split_whitespace()
        .position(|n| n == "ListenOverflows")?;
    values.split_whitespace().nth(i)?.parse().ok()
}

/// CPU samples over the measured window (after connecting and warming up), so setup work
/// is not charged to the operations counted.
#[derive(Default)]
pub(crate) struct Meter {
    pid: Option<u32>,
    window: std::sync::Mutex<Option<Window>>,
}

/// CPU seconds of this process and of the server at the start and the end of a window,
/// and the window's length in seconds.
pub(crate) type Window = (f64, Option<f64>, f64, Option<f64>, f64);

impl Meter {
    /// A meter of this process and, given its pid, the server.
    pub(crate) fn new(pid: Option<u32>) -> Self {
        Self {
            pid,
            ..Default::default()
        }
    }

    pub(crate) fn sample(&self) -> (f64, Option<f64>) {
        (
            cpu_seconds("self").unwrap_or(0.0),
            self.pid.and_then(|p| cpu_seconds(&p.to_string())),
        )
    }

    /// Sample at `start` and `end` in the background.
    pub(crate) fn window(
        self: &Arc<Self>,
        start: Instant,
        end: Instant,
    ) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(start.into()).await;
            let (s0, p0) = me.sample();
            tokio::time::sleep_until(end.into()).await;
            let (s1, p1) = me.sample();
            if let Ok(mut w) = me.window.lock() {
                *w = Some((s0, p0, s1, p1, (end - start).as_secs_f64()));
            }
        })
    }

    /// Record a window measured by the caller.
    pub(crate) fn set_window(&self, window: Window) {
        if let Ok(mut w) = self.window.lock() {
            *w = Some(window);
        }
    }

    /// The measured window, if there was one.
    pub(crate) fn measured(&self) -> Option<Window> {
        self.window.lock().ok().and_then(|w| *w)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_readings_work_for_self() {
        assert!(cpu_seconds("self").is_some());
        assert!(rss_kib(std::process::id()).is_some_and(|k| k > 0));
    }
}
