//! Inbound limits: token buckets for per-connection message rates (the per-IP table behind
//! the per-IP connection cap and handshake rate is [`crate::net`]'s).
//!
//! | limit | default | when hit |
//! |---|---|---|
//! | messages per second per connection | 1 000 (burst 1 000) | close 1008 "rate limit exceeded" |
//! | bytes per second per connection | 8 MiB (burst: the larger of 8 MiB and `max_payload`) | close 1008 |
//! | connections per IP | 1 000 | HTTP 429 + `Retry-After` before the upgrade |
//! | handshakes per second per IP | 100 (burst 100) | HTTP 429 + `Retry-After` before the upgrade |
//! | IPs tracked | 65 536 | entries of IPs with no connection are evicted; if none can be, 503 |

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

    pub(crate) fn is_full(&self, rate: f32, burst: f32, now: Instant) -> bool {
        let elapsed = now_ms(now).wrapping_sub(self.last_ms) as f32 / 1000.0;
        self.tokens + elapsed * rate >= burst
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
}
