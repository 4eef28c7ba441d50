//! Failed authentication per key (client IP, or login username):
//! `rate_limits.auth_failures_per_minute` / `auth_failures_burst`. Each failed
//! attempt takes a cell from the key's bucket; once it is empty, the key is
//! refused with 429 *before* its credentials are checked, until a cell is back,
//! so guessing cannot go on at full speed.
//!
//! The per-IP request limits (`per_ip_rps`, `auth_per_ip_rpm`) are actix-governor
//! middleware, in the HTTP layer (`http::ip_limit`).

use std::net::IpAddr;
use std::time::Duration;

use tokio::time::Instant;

use dashmap::DashMap;
use governor::RateLimiter;
use governor::clock::Clock;
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DashMapStateStore;

use super::rpm::TokioClock;

/// A key is locked out: it used up its allowance of failures. The HTTP layer
/// answers 429 `rate_limit_exceeded` with `retry-after`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockedOut {
    /// Seconds until a cell is back (at least 1).
    pub retry_after: u64,
}

/// Failed authentication attempts per key (client IP, or login username): each
/// failure takes a cell; the failure that finds the bucket empty locks the key
/// out until a cell is back.
pub struct AuthFailures<K: std::hash::Hash + Eq + Clone = IpAddr> {
    limiter: Option<RateLimiter<K, DashMapStateStore<K>, TokioClock, NoOpMiddleware<Duration>>>,
    clock: TokioClock,
    /// Keys whose bucket ran dry, and until when they are refused.
    locked: DashMap<K, Instant>,
}

impl<K: std::hash::Hash + Eq + Clone> AuthFailures<K> {
    /// `per_minute` 0 disables the limit.
    pub fn new(per_minute: u32, burst: u32) -> Self {
        let clock = TokioClock::default();
        let limiter = std::num::NonZeroU32::new(per_minute).map(|rate| {
            let quota = governor::Quota::per_minute(rate)
                .allow_burst(std::num::NonZeroU32::new(burst.max(1)).unwrap_or(rate));
            RateLimiter::dashmap_with_clock(quota, clock)
        });
        Self {
            limiter,
            clock,
            locked: DashMap::new(),
        }
    }

    /// Seconds this key must still wait, if it is locked out.
    pub fn locked_for(&self, key: &K) -> Option<u64> {
        let until = *self.locked.get(key)?;
        let left = until.checked_duration_since(Instant::now());
        if left.is_none() {
            self.locked.remove(key);
        }
        left.map(crate::limits::retry_after_secs)
    }

    /// Records a failed attempt; `Some(seconds)` when it used up the allowance.
    pub fn failed(&self, key: &K) -> Option<u64> {
        let negative = self.limiter.as_ref()?.check_key(key).err()?;
        let wait = negative.wait_time_from(self.clock.now());
        self.locked.insert(key.clone(), Instant::now() + wait);
        Some(crate::limits::retry_after_secs(wait))
    }

    /// [`LockedOut`] while `key` is locked out.
    pub fn check(&self, key: &K) -> Result<(), LockedOut> {
        match self.locked_for(key) {
            Some(retry_after) => Err(LockedOut { retry_after }),
            None => Ok(()),
        }
    }

    /// Records a failure: [`LockedOut`] if it used up the allowance, else
    /// `otherwise`.
    pub fn refuse<E: From<LockedOut>>(&self, key: &K, otherwise: E) -> E {
        match self.failed(key) {
            Some(retry_after) => LockedOut { retry_after }.into(),
            None => otherwise,
        }
    }

    /// Drops state for keys that are no longer limited (their buckets are full).
    pub fn prune(&self) {
        if let Some(l) = &self.limiter {
            l.retain_recent();
            l.shrink_to_fit();
        }
        let now = Instant::now();
        self.locked.retain(|_, until| *until > now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_beyond_the_burst_lock_the_ip_out() {
        let f = AuthFailures::new(60, 3);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        assert_eq!(f.failed(&ip), None);
        assert_eq!(f.failed(&ip), None);
        assert_eq!(f.failed(&ip), None);
        assert_eq!(f.failed(&ip), Some(1));
        assert_eq!(f.locked_for(&ip), Some(1));
        assert_eq!(f.locked_for(&"192.0.2.2".parse().unwrap()), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_locked_out_key_gets_one_attempt_back_per_emission_interval() {
        // 12 a minute: a cell every 5 s.
        let f = AuthFailures::new(12, 2);
        let key = "alice".to_owned();
        assert_eq!(f.failed(&key), None);
        assert_eq!(f.failed(&key), None);
        assert_eq!(f.failed(&key), Some(5), "the burst is spent");
        assert!(f.check(&key).is_err());
        tokio::time::advance(Duration::from_millis(4_001)).await;
        assert_eq!(f.locked_for(&key), Some(1), "rounded up, never 0");
        tokio::time::advance(Duration::from_millis(998)).await;
        assert_eq!(f.locked_for(&key), Some(1));
        // Just past one interval after the lock-out: free, with one attempt back.
        // (At the very instant the lock ends, `locked_for` still answers 1 s.)
        tokio::time::advance(Duration::from_millis(2)).await;
        assert_eq!(f.locked_for(&key), None);
        assert!(f.check(&key).is_ok());
        assert_eq!(f.failed(&key), None);
        assert_eq!(f.failed(&key), Some(5));
        // Long after the bucket is full again, pruning forgets the key.
        tokio::time::advance(Duration::from_secs(60)).await;
        f.prune();
        assert!(f.locked.is_empty());
        assert_eq!(f.limiter.as_ref().map(|l| l.len()), Some(0));
        assert_eq!(f.failed(&key), None);
    }

    #[tokio::test(start_paused = true)]
    async fn zero_per_minute_never_locks_out() {
        let f = AuthFailures::new(0, 0);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        for _ in 0..1_000 {
            assert_eq!(f.failed(&ip), None);
        }
        assert!(f.check(&ip).is_ok());
    }
}
