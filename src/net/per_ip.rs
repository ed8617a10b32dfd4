//! Per-IP admission: how many connections (or streams) one address holds at once, and
//! how fast it may open new ones.
//!
//! One [`PerIp`] table per resource (HTTP connections, WebSockets, SSE streams). An
//! admission is an [`IpSlot`]: a guard that gives the place back when it is dropped,
//! however the connection ends (an early return, an error, a panic), so no code path
//! releases by hand.
//!
//! IPv6 addresses are keyed by their /64 prefix: one host usually controls a whole /64,
//! so per-address limits would be trivially bypassed. IPv4-mapped IPv6 addresses count as
//! their IPv4 address.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use crate::ws::limits::Bucket;

/// Most addresses one table tracks; entries of addresses holding nothing are evicted to
/// make room, and when none can be, admission fails with [`IpRefusal::TableFull`].
pub(crate) const MAX_TRACKED: usize = 65_536;

/// The key for per-IP limits: the address, or its /64 for IPv6.
pub(crate) fn ip_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
        v4 => v4,
    }
}

#[derive(Debug)]
struct IpState {
    held: u32,
    opens: Bucket,
}

/// Why a per-IP table refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IpRefusal {
    /// The address already holds the most it may.
    TooMany,
    /// The address opens faster than its rate.
    TooFast,
    /// The table tracks [`MAX_TRACKED`] busy addresses.
    TableFull,
}

/// Per-IP counts of held places and, optionally, a token bucket of openings.
#[derive(Debug)]
pub(crate) struct PerIp {
    map: Mutex<HashMap<IpAddr, IpState>>,
    max_held: u32,
    rate: f32,
    cap: usize,
}

impl PerIp {
    /// A table allowing `max_held` places per address (0: no cap) and `opens_per_sec`
    /// openings per second with a burst of the same size (0: no rate).
    pub(crate) fn new(max_held: u32, opens_per_sec: u32) -> Arc<Self> {
        Arc::new(Self {
            map: Mutex::new(HashMap::new()),
            max_held,
            rate: opens_per_sec as f32,
            cap: MAX_TRACKED,
        })
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<IpAddr, IpState>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether any limit is on (otherwise nothing is tracked and every admission is free).
    pub(crate) fn enabled(&self) -> bool {
        self.max_held > 0 || self.rate > 0.0
    }

    /// Admit one more place for `ip`, held until the returned slot is dropped; or say why
    /// not. With no limit on, the slot tracks nothing.
    pub(crate) fn admit(self: &Arc<Self>, ip: IpAddr, now: Instant) -> Result<IpSlot, IpRefusal> {
        if !self.enabled() {
            return Ok(IpSlot { held: None });
        }
        let key = ip_key(ip);
        let mut map = self.lock();
        if !map.contains_key(&key) && map.len() >= self.cap {
            self.evict(&mut map, now);
            if map.len() >= self.cap {
                return Err(IpRefusal::TableFull);
            }
        }
        let burst = self.rate;
        let st = map.entry(key).or_insert_with(|| IpState {
            held: 0,
            opens: Bucket::full(burst, now),
        });
        if self.max_held > 0 && st.held >= self.max_held {
            return Err(IpRefusal::TooMany);
        }
        if self.rate > 0.0 && !st.opens.take(1.0, self.rate, burst, now) {
            return Err(IpRefusal::TooFast);
        }
        st.held += 1;
        Ok(IpSlot {
            held: Some((self.clone(), key)),
        })
    }

    fn release(&self, key: IpAddr) {
        let mut map = self.lock();
        if let Some(st) = map.get_mut(&key) {
            st.held = st.held.saturating_sub(1);
            // without a rate there is nothing to remember about an address holding nothing
            if st.held == 0 && self.rate == 0.0 {
                map.remove(&key);
            }
        }
    }

    /// Forget addresses holding nothing whose bucket has refilled.
    pub(crate) fn sweep(&self, now: Instant) {
        let mut map = self.lock();
        self.evict(&mut map, now);
    }

    fn evict(&self, map: &mut HashMap<IpAddr, IpState>, now: Instant) {
        let rate = self.rate;
        map.retain(|_, st| st.held > 0 || (rate > 0.0 && !st.opens.is_full(rate, rate, now)));
    }

    /// Places `ip` holds now.
    #[cfg(test)]
    fn held(&self, ip: IpAddr) -> u32 {
        self.lock().get(&ip_key(ip)).map_or(0, |st| st.held)
    }

    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.lock().len()
    }
}

/// One admitted place in a [`PerIp`] table; dropping it gives the place back.
#[derive(Debug)]
#[must_use = "the place is given back when the slot is dropped"]
pub(crate) struct IpSlot {
    held: Option<(Arc<PerIp>, IpAddr)>,
}

impl IpSlot {
    /// A slot that holds nothing (no table, or the address is exempt).
    pub(crate) fn none() -> Self {
        Self { held: None }
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        if let Some((table, key)) = self.held.take() {
            table.release(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn caps_rates_and_forgets() {
        let t = Instant::now();
        let table = PerIp::new(2, 3);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let a = table.admit(ip, t).unwrap();
        let b = table.admit(ip, t).unwrap();
        assert_eq!(table.admit(ip, t).unwrap_err(), IpRefusal::TooMany);
        drop(a);
        let c = table.admit(ip, t).unwrap();
        drop((b, c));
        // three openings used in the same instant: the fourth is refused
        assert_eq!(table.admit(ip, t).unwrap_err(), IpRefusal::TooFast);
        let d = table.admit(ip, t + Duration::from_secs(1)).unwrap();
        drop(d);
        // IPv6 addresses of one /64 share an entry
        let v6a: IpAddr = "2001:db8::1".parse().unwrap();
        let v6b: IpAddr = "2001:db8::ffff".parse().unwrap();
        assert_eq!(ip_key(v6a), ip_key(v6b));
        let e = table.admit(v6a, t).unwrap();
        assert_eq!(table.held(v6b), 1);
        table.sweep(t + Duration::from_secs(10));
        assert_eq!(table.tracked(), 1, "only the address holding a place stays");
        drop(e);
        assert_eq!(table.held(v6a), 0);
    }

    #[test]
    fn a_table_without_a_rate_forgets_at_once() {
        let table = PerIp::new(1, 0);
        let ip: IpAddr = "10.0.0.2".parse().unwrap();
        let s = table.admit(ip, Instant::now()).unwrap();
        assert_eq!(table.tracked(), 1);
        drop(s);
        assert_eq!(table.tracked(), 0);
        let off = PerIp::new(0, 0);
        let _free = off.admit(ip, Instant::now()).unwrap();
        assert_eq!(off.tracked(), 0);
    }
}
