//! Requests per minute per token and per project: GCRA buckets (the `governor`
//! crate) with a burst of one minute's allowance, refilled evenly (a 60 rpm token
//! may send 60 at once, then one per second).
//!
//! The bucket state sits behind [`RateStore`], the narrow interface a shared
//! (Redis) store implements for several instances; [`LocalRateStore`] keeps it in
//! this process. A changed limit (PATCH) takes effect on the next request: the
//! bucket is rebuilt for the new rate, starting full.

use std::future::Future;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use dashmap::DashMap;
use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};

use crate::actors::token_registry::cache::{ProjectState, TokenState};
use crate::error::ProxyError;
use crate::ids::{ProjectId, TokenId};
use crate::limits::RateState;

/// Whose allowance a request draws on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RateKey {
    Token(TokenId),
    Project(ProjectId),
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Verdict {
    Allowed(RateState),
    Limited {
        state: RateState,
        retry_after: Duration,
    },
}

/// Where bucket state lives. One call per limit per request; it must not block.
pub trait RateStore: Send + Sync + 'static {
    /// Takes one request from `key`'s bucket at `rpm` requests per minute.
    fn check(&self, key: RateKey, rpm: NonZeroU32) -> impl Future<Output = Verdict> + Send;
    /// Forgets buckets idle long enough to be full again (lossless).
    fn prune(&self);
}

type Bucket = RateLimiter<NotKeyed, InMemoryState, DefaultClock, StateInformationMiddleware>;

struct Entry {
    rpm: NonZeroU32,
    bucket: Bucket,
    /// Milliseconds since `LocalRateStore::epoch` of the last check.
    last_used_ms: AtomicU64,
}

/// In-process buckets; a bucket untouched for a minute is full and is dropped.
pub struct LocalRateStore {
    buckets: DashMap<RateKey, Entry>,
    clock: DefaultClock,
    epoch: tokio::time::Instant,
}

impl Default for LocalRateStore {
    fn default() -> Self {
        Self {
            buckets: DashMap::new(),
            clock: DefaultClock::default(),
            epoch: tokio::time::Instant::now(),
        }
    }
}

impl LocalRateStore {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn take(&self, entry: &Entry) -> Verdict {
        entry.last_used_ms.store(self.now_ms(), Relaxed);
        let limit = entry.rpm.get();
        let per_request = Duration::from_secs(60) / limit;
        match entry.bucket.check() {
            Ok(snapshot) => {
                let remaining = snapshot.remaining_burst_capacity();
                Verdict::Allowed(RateState {
                    limit,
                    remaining,
                    reset: per_request * (limit - remaining),
                })
            }
            Err(not_until) => {
                let wait = not_until.wait_time_from(self.clock.now());
                Verdict::Limited {
                    state: RateState {
                        limit,
                        remaining: 0,
                        reset: wait + per_request * (limit - 1),
                    },
                    retry_after: wait,
                }
            }
        }
    }
}

impl RateStore for LocalRateStore {
    async fn check(&self, key: RateKey, rpm: NonZeroU32) -> Verdict {
        if let Some(entry) = self.buckets.get(&key)
            && entry.rpm == rpm
        {
            return self.take(&entry);
        }
        let entry = Entry {
            rpm,
            bucket: RateLimiter::direct(Quota::per_minute(rpm))
                .with_middleware::<StateInformationMiddleware>(),
            last_used_ms: AtomicU64::new(0),
        };
        let verdict = self.take(&entry);
        self.buckets.insert(key, entry);
        verdict
    }

    fn prune(&self) {
        let now = self.now_ms();
        self.buckets
            .retain(|_, e| now.saturating_sub(e.last_used_ms.load(Relaxed)) < 60_000);
    }
}

/// Token and project limits, checked in that order after authentication.
pub struct RpmLimits<S: RateStore = LocalRateStore> {
    store: S,
    /// `rate_limits.default_token_rpm`: for tokens without their own limit.
    default_token_rpm: Option<NonZeroU32>,
}

fn rpm_of(v: Option<i64>) -> Option<NonZeroU32> {
    v.and_then(|n| u32::try_from(n).ok())
        .and_then(NonZeroU32::new)
}

impl<S: RateStore> RpmLimits<S> {
    pub fn new(store: S, default_token_rpm: Option<u32>) -> Self {
        Self {
            store,
            default_token_rpm: default_token_rpm.and_then(NonZeroU32::new),
        }
    }

    pub fn store(&self) -> &S {
        &self.store
    }

    /// `Ok(Some(state))` of the tighter limit that applies (for the headers),
    /// `Ok(None)` when none does, 429 `rate_limit_exceeded` when one is spent.
    pub async fn check(
        &self,
        token: &TokenState,
        project: &ProjectState,
    ) -> Result<Option<RateState>, ProxyError> {
        let mut tightest: Option<RateState> = None;
        let limits = [
            rpm_of(token.rate_limit_rpm)
                .or(self.default_token_rpm)
                .map(|r| (RateKey::Token(token.id), r)),
            rpm_of(project.rate_limit_rpm).map(|r| (RateKey::Project(project.id), r)),
        ];
        for (key, rpm) in limits.into_iter().flatten() {
            match self.store.check(key, rpm).await {
                Verdict::Allowed(s) => {
                    if tightest.is_none_or(|t| s.remaining < t.remaining) {
                        tightest = Some(s);
                    }
                }
                Verdict::Limited { state, retry_after } => {
                    return Err(ProxyError::RateLimited {
                        scope: match key {
                            RateKey::Token(_) => "API key",
                            RateKey::Project(_) => "project",
                        },
                        state,
                        retry_after,
                    });
                }
            }
        }
        Ok(tightest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[actix_rt::test]
    async fn burst_then_limited_then_changed_limit_applies() {
        let store = LocalRateStore::default();
        let key = RateKey::Token(TokenId::new());
        let five = NonZeroU32::new(5).unwrap();
        for i in 0..5 {
            match store.check(key, five).await {
                Verdict::Allowed(s) => assert_eq!(s.remaining, 4 - i),
                v => panic!("request {i}: {v:?}"),
            }
        }
        match store.check(key, five).await {
            Verdict::Limited { state, retry_after } => {
                assert_eq!(state.remaining, 0);
                assert!(retry_after <= Duration::from_secs(12));
                assert!(retry_after > Duration::from_secs(11));
            }
            v => panic!("{v:?}"),
        }
        // A new limit is a new, full bucket.
        let ten = NonZeroU32::new(10).unwrap();
        assert!(matches!(store.check(key, ten).await, Verdict::Allowed(s) if s.remaining == 9));
    }
}
