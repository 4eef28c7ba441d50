//! Per-client-IP limits, with actix-governor.
//!
//! * `/v1`: `rate_limits.per_ip_rps` / `per_ip_burst`, as actix-governor
//!   middleware on the proxy scope (health endpoints are outside it).
//! * Management authentication: `rate_limits.auth_failures_per_minute` /
//!   `auth_failures_burst`. Each failed attempt takes a cell from the client IP's
//!   bucket; once it is empty, that IP is refused with 429 *before* its
//!   credentials are checked, until a cell is back, so guessing cannot go on at
//!   full speed.
//!
//! The key is the client IP as [`crate::net::client_ip`] sees it: the peer, or,
//! behind a peer listed in `server.trusted_proxies`, the right-most untrusted
//! `X-Forwarded-For` hop. A spoofed header from anyone else changes nothing.

use std::net::IpAddr;
use std::time::Duration;

use tokio::time::Instant;

use actix_governor::{
    GovernorConfig, GovernorConfigBuilder, KeyExtractor, SimpleKeyExtractionError,
};
use actix_web::dev::ServiceRequest;
use actix_web::{HttpResponse, HttpResponseBuilder, ResponseError};
use dashmap::DashMap;
use governor::clock::{Clock, DefaultClock, QuantaInstant};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DashMapStateStore;
use governor::{NotUntil, RateLimiter};

use super::rpm::TokioClock;
use crate::error::{ManageError, ProxyError};
use crate::policy::CidrList;

/// actix-governor key: the trusted-proxy-aware client IP.
#[derive(Clone)]
pub struct ClientIpKey {
    trusted: CidrList,
}

impl ClientIpKey {
    pub fn new(trusted: CidrList) -> Self {
        Self { trusted }
    }
}

impl KeyExtractor for ClientIpKey {
    type Key = IpAddr;
    type KeyExtractionError = SimpleKeyExtractionError<&'static str>;

    fn extract(&self, req: &ServiceRequest) -> Result<IpAddr, Self::KeyExtractionError> {
        Ok(crate::net::client_ip(req.request(), &self.trusted))
    }

    fn exceed_rate_limit_response(
        &self,
        negative: &NotUntil<QuantaInstant>,
        _response: HttpResponseBuilder,
    ) -> HttpResponse {
        let wait = negative.wait_time_from(DefaultClock::default().now());
        // A fresh response in the OpenAI envelope instead of actix-governor's
        // plain-text one (and its non-standard `x-ratelimit-after`).
        ProxyError::IpRateLimited {
            retry_after: crate::limits::retry_after_secs(wait),
        }
        .error_response()
    }
}

pub type IpGovernor = GovernorConfig<ClientIpKey, NoOpMiddleware<QuantaInstant>>;

/// The `/v1` per-IP limit; `None` when `per_ip_rps` is 0 (off). Built once and
/// shared by every worker's middleware.
pub fn proxy_governor(rps: u32, burst: u32, key: ClientIpKey) -> Option<IpGovernor> {
    if rps == 0 {
        return None;
    }
    GovernorConfigBuilder::default()
        .period(Duration::from_secs(1) / rps)
        .burst_size(if burst == 0 { rps } else { burst })
        .key_extractor(key)
        .finish()
}

/// `/manage/auth/*` per client IP: `rpm` requests per minute, a burst of a fifth
/// of that (at least 1). Stricter than the proxy's limit: these routes verify
/// passwords.
pub fn auth_governor(rpm: u32, key: ClientIpKey) -> IpGovernor {
    let rpm = rpm.max(1);
    GovernorConfigBuilder::default()
        .period(Duration::from_secs(60) / rpm)
        .burst_size((rpm / 5).max(1))
        .key_extractor(key)
        .finish()
        .unwrap_or_else(unused_governor)
}

/// A placeholder for `Condition` when the per-IP limit is off; never consulted.
pub fn unused_governor() -> IpGovernor {
    let key = ClientIpKey::new(CidrList::default());
    GovernorConfigBuilder::default()
        .key_extractor(key)
        .finish()
        .unwrap_or_else(|| unreachable!("the default quota is valid"))
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

    /// 429 `rate_limit_exceeded` while `key` is locked out.
    pub fn check(&self, key: &K) -> Result<(), ManageError> {
        match self.locked_for(key) {
            Some(retry_after) => Err(ManageError::RateLimited { retry_after }),
            None => Ok(()),
        }
    }

    /// Records a failure: 429 if it used up the allowance, else `otherwise`.
    pub fn refuse(&self, key: &K, otherwise: ManageError) -> ManageError {
        match self.failed(key) {
            Some(retry_after) => ManageError::RateLimited { retry_after },
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

/// Forgets keys whose buckets have refilled, so limiter memory follows the number
/// of recently active clients rather than every client ever seen.
pub fn prune_governor(g: &IpGovernor) {
    let limiter = g.limiter();
    limiter.retain_recent();
    limiter.shrink_to_fit();
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
