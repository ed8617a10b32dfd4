//! Inbound limits: token buckets for per-connection message rates, and the per-IP table
//! behind the per-IP connection cap and handshake rate.
//!
//! | limit | default | when hit |
//! |---|---|---|
//! | messages per second per connection | 1 000 (burst 1 000) | close 1008 "rate limit exceeded" |
//! | bytes per second per connection | 8 MiB (burst: the larger of 8 MiB and `max_payload`) | close 1008 |
//! | connections per IP | 1 000 | HTTP 429 + `Retry-After` before the upgrade |
//! | handshakes per second per IP | 100 (burst 100) | HTTP 429 + `Retry-After` before the upgrade |
//! | IPs tracked | 65 536 | entries of IPs with no connection are evicted; if none can be, 503 |
//!
//! IPv6 addresses are keyed by their /64 prefix: one host usually controls a whole /64,
//! so per-address limits would be trivially bypassed.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

/// Milliseconds since a process-wide epoch: 4 bytes instead of a 16-byte `Instant` in
/// every connection's buckets (wraps after 49 days, which only refills a bucket early).
pub(crate) fn now_ms(now: Instant) -> u32 {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let epoch = *EPOCH.get_or_init(|| now);
    now.saturating_duration_since(epoch).as_millis() as u32
}

/// A token bucket: `rate` tokens per second, at most `burst` stored. 8 bytes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bucket {
    tokens: f32,
    last_ms: u32,
}

impl Bucket {
    pub(crate) fn full(burst: f32, now: Instant) -> Self {
        Self {
            tokens: burst,
            last_ms: now_ms(now),
        }
    }

    /// Take `n` tokens if available.
    pub(crate) fn take(&mut self, n: f32, rate: f32, burst: f32, now: Instant) -> bool {
        let ms = now_ms(now);
        let elapsed = ms.wrapping_sub(self.last_ms) as f32 / 1000.0;
        self.last_ms = ms;
        self.tokens = (self.tokens + elapsed * rate).min(burst);
        if self.tokens >= n {
            self.tokens -= n;
            true
        } else {
            false
        }
    }

    fn is_full(&self, rate: f32, burst: f32, now: Instant) -> bool {
        let elapsed = now_ms(now).wrapping_sub(self.last_ms) as f32 / 1000.0;
        self.tokens + elapsed * rate >= burst
    }
}

/// The key for per-IP limits: the address, or its /64 for IPv6.
pub(crate) fn ip_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
        v4 => v4,
    }
}

#[derive(Debug)]
struct IpState {
    conns: u32,
    handshakes: Bucket,
}

/// Why the per-IP gate refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IpRefusal {
    TooManyConnections,
    TooManyHandshakes,
    TableFull,
}

/// Per-IP connection counts and handshake buckets.
#[derive(Debug)]
pub(crate) struct PerIp {
    map: Mutex<HashMap<IpAddr, IpState>>,
    max_conns: u32,
    rate: f32,
    cap: usize,
}

impl PerIp {
    pub(crate) fn new(max_conns: u32, handshakes_per_sec: u32) -> Self {
        Self {
            map: Mutex::new(HashMap::new()),
            max_conns,
            rate: handshakes_per_sec as f32,
            cap: 65_536,
        }
    }

    /// Whether any per-IP limit is on (otherwise nothing is tracked).
    pub(crate) fn enabled(&self) -> bool {
        self.max_conns > 0 || self.rate > 0.0
    }

    /// Admit one more connection from `ip` (counted until [`PerIp::release`]), or say why
    /// not.
    pub(crate) fn admit(&self, ip: IpAddr, now: Instant) -> Result<(), IpRefusal> {
        let key = ip_key(ip);
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if !map.contains_key(&key) && map.len() >= self.cap {
            self.evict(&mut map, now);
            if map.len() >= self.cap {
                return Err(IpRefusal::TableFull);
            }
        }
        let burst = self.rate;
        let st = map.entry(key).or_insert_with(|| IpState {
            conns: 0,
            handshakes: Bucket::full(burst, now),
        });
        if self.max_conns > 0 && st.conns >= self.max_conns {
            return Err(IpRefusal::TooManyConnections);
        }
        if self.rate > 0.0 && !st.handshakes.take(1.0, self.rate, burst, now) {
            return Err(IpRefusal::TooManyHandshakes);
        }
        st.conns += 1;
        Ok(())
    }

    /// A connection admitted from `ip` has ended.
    pub(crate) fn release(&self, ip: IpAddr) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(st) = map.get_mut(&ip_key(ip)) {
            st.conns = st.conns.saturating_sub(1);
        }
    }

    /// Forget IPs with no connection whose handshake bucket has refilled.
    pub(crate) fn sweep(&self, now: Instant) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        self.evict(&mut map, now);
    }

    fn evict(&self, map: &mut HashMap<IpAddr, IpState>, now: Instant) {
        let (rate, burst) = (self.rate, self.rate);
        map.retain(|_, st| {
            st.conns > 0 || (rate > 0.0 && !st.handshakes.is_full(rate, burst, now))
        });
    }

    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.map.lock().map(|m| m.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn bucket_refills_at_its_rate() {
        let t0 = Instant::now();
        let mut b = Bucket::full(2.0, t0);
        assert!(b.take(1.0, 2.0, 2.0, t0));
        assert!(b.take(1.0, 2.0, 2.0, t0));
        assert!(!b.take(1.0, 2.0, 2.0, t0));
        assert!(b.take(1.0, 2.0, 2.0, t0 + Duration::from_millis(500)));
        assert!(!b.take(1.0, 2.0, 2.0, t0 + Duration::from_millis(500)));
    }

    #[test]
    fn per_ip_caps_rates_and_forgets() {
        let t = Instant::now();
        let table = PerIp::new(2, 3);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        table.admit(ip, t).unwrap();
        table.admit(ip, t).unwrap();
        assert_eq!(
            table.admit(ip, t).unwrap_err(),
            IpRefusal::TooManyConnections
        );
        table.release(ip);
        table.admit(ip, t).unwrap();
        table.release(ip);
        // three handshakes used in the same instant: the fourth is refused
        assert_eq!(
            table.admit(ip, t).unwrap_err(),
            IpRefusal::TooManyHandshakes
        );
        assert!(table.admit(ip, t + Duration::from_secs(1)).is_ok());
        // IPv6 addresses of one /64 share an entry
        let v6a: IpAddr = "2001:db8::1".parse().unwrap();
        let v6b: IpAddr = "2001:db8::ffff".parse().unwrap();
        assert_eq!(ip_key(v6a), ip_key(v6b));
        table.admit(v6a, t).unwrap();
        table.release(v6b);
        table.sweep(t + Duration::from_secs(10));
        assert_eq!(
            table.tracked(),
            1,
            "only the IP with open connections stays"
        );
    }
}
