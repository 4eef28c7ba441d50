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
use governor::clock::Clock;
use governor::middleware::StateInformationMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};

use crate::actors::token_registry::cache::{ProjectState, TokenState};
use crate::ids::{ProjectId, TokenId};
use crate::limits::RateState;

/// Whose allowance a request draws on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RateKey {
    Token(TokenId),
    Project(ProjectId),
}

/// A token's or project's allowance is spent: the proxy answers 429
/// `rate_limit_exceeded` with `retry-after` and the `x-ratelimit-*` headers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limited {
    /// Whose allowance: the token's or the project's.
    pub key: RateKey,
    pub state: RateState,
    pub retry_after: Duration,
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

/// The buckets' time source: tokio's monotonic clock, read as the time since the
/// clock was made, so tests can pause and advance it (governor's default clock
/// cannot be paused). The same monotonic time as the default, only readable under
/// `tokio::time::pause`.
#[derive(Debug, Clone, Copy)]
pub struct TokioClock {
    epoch: tokio::time::Instant,
}

impl Default for TokioClock {
    fn default() -> Self {
        Self {
            epoch: tokio::time::Instant::now(),
        }
    }
}

impl Clock for TokioClock {
    type Instant = Duration;

    fn now(&self) -> Duration {
        self.epoch.elapsed()
    }
}

type Bucket = RateLimiter<NotKeyed, InMemoryState, TokioClock, StateInformationMiddleware>;

struct Entry {
    rpm: NonZeroU32,
    bucket: Bucket,
    /// Milliseconds since the store's clock started of the last check.
    last_used_ms: AtomicU64,
}

/// In-process buckets; a bucket untouched for a minute is full and is dropped.
#[derive(Default)]
pub struct LocalRateStore {
    buckets: DashMap<RateKey, Entry>,
    clock: TokioClock,
}

impl LocalRateStore {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.clock.now().as_millis()).unwrap_or(u64::MAX)
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
            bucket: RateLimiter::direct_with_clock(Quota::per_minute(rpm), self.clock)
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
    /// This instance's share of every limit: `redis.expected_instances` when
    /// these buckets stand in for shared ones (`redis.on_error: local`), else 1.
    divisor: u32,
}

pub(super) fn rpm_of(v: Option<i64>) -> Option<NonZeroU32> {
    v.and_then(|n| u32::try_from(n).ok())
        .and_then(NonZeroU32::new)
}

impl<S: RateStore> RpmLimits<S> {
    pub fn new(store: S, default_token_rpm: Option<u32>) -> Self {
        Self {
            store,
            default_token_rpm: default_token_rpm.and_then(NonZeroU32::new),
            divisor: 1,
        }
    }

    /// Each limit becomes `max(1, limit / instances)`: N instances limiting on
    /// their own then admit at most about the shared limit together.
    pub fn divided_by(mut self, instances: u64) -> Self {
        self.divisor = u32::try_from(instances).unwrap_or(u32::MAX).max(1);
        self
    }

    fn share(&self, rpm: NonZeroU32) -> NonZeroU32 {
        NonZeroU32::new(rpm.get() / self.divisor).unwrap_or(NonZeroU32::MIN)
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
    ) -> Result<Option<RateState>, Limited> {
        let mut tightest: Option<RateState> = None;
        let limits = [
            rpm_of(token.rate_limit_rpm)
                .or(self.default_token_rpm)
                .map(|r| (RateKey::Token(token.id), r)),
            rpm_of(project.rate_limit_rpm).map(|r| (RateKey::Project(project.id), r)),
        ];
        for (key, rpm) in limits.into_iter().flatten() {
            match self.store.check(key, self.share(rpm)).await {
                Verdict::Allowed(s) => {
                    if tightest.is_none_or(|t| s.remaining < t.remaining) {
                        tightest = Some(s);
                    }
                }
                Verdict::Limited { state, retry_after } => {
                    return Err(Limited {
                        key,
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
    use super::super::fixtures::{project, token};
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

    fn rpm(n: u32) -> NonZeroU32 {
        NonZeroU32::new(n).unwrap()
    }

    async fn retry_after(store: &LocalRateStore, key: RateKey, limit: NonZeroU32) -> Duration {
        match store.check(key, limit).await {
            Verdict::Limited { state, retry_after } => {
                assert_eq!(state.remaining, 0);
                retry_after
            }
            v => panic!("expected a denial: {v:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn gcra_admits_the_burst_then_one_per_emission_interval_not_before() {
        let store = LocalRateStore::default();
        let key = RateKey::Token(TokenId::new());
        // 60 rpm: a burst of 60, then one a second.
        for i in 0..60 {
            match store.check(key, rpm(60)).await {
                Verdict::Allowed(s) => {
                    assert_eq!(s.remaining, 59 - i);
                    assert_eq!(s.reset, Duration::from_secs(u64::from(i) + 1));
                }
                v => panic!("request {i}: {v:?}"),
            }
        }
        assert_eq!(
            retry_after(&store, key, rpm(60)).await,
            Duration::from_secs(1)
        );
        match store.check(key, rpm(60)).await {
            Verdict::Limited { state, .. } => assert_eq!(state.reset, Duration::from_secs(60)),
            v => panic!("{v:?}"),
        }
        // A denial takes nothing: one millisecond early is still too early ...
        tokio::time::advance(Duration::from_millis(999)).await;
        assert_eq!(
            retry_after(&store, key, rpm(60)).await,
            Duration::from_millis(1)
        );
        // ... and exactly one emission interval after the burst, one more goes.
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(matches!(store.check(key, rpm(60)).await, Verdict::Allowed(s) if s.remaining == 0));
        assert_eq!(
            retry_after(&store, key, rpm(60)).await,
            Duration::from_secs(1)
        );
        // A minute idle refills the whole burst.
        tokio::time::advance(Duration::from_secs(60)).await;
        assert!(
            matches!(store.check(key, rpm(60)).await, Verdict::Allowed(s) if s.remaining == 59)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn gcra_retry_after_is_one_emission_interval_at_low_rates() {
        let store = LocalRateStore::default();
        let key = RateKey::Project(ProjectId::new());
        // 4 rpm: one every 15 s.
        for _ in 0..4 {
            assert!(matches!(
                store.check(key, rpm(4)).await,
                Verdict::Allowed(_)
            ));
        }
        assert_eq!(
            retry_after(&store, key, rpm(4)).await,
            Duration::from_secs(15)
        );
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(
            retry_after(&store, key, rpm(4)).await,
            Duration::from_secs(5)
        );
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(matches!(
            store.check(key, rpm(4)).await,
            Verdict::Allowed(_)
        ));
        // Other keys have their own buckets.
        let other = RateKey::Project(ProjectId::new());
        assert!(matches!(
            store.check(other, rpm(4)).await,
            Verdict::Allowed(s) if s.remaining == 3
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn prune_forgets_buckets_only_once_they_are_full_again() {
        let store = LocalRateStore::default();
        let key = RateKey::Token(TokenId::new());
        for _ in 0..2 {
            store.check(key, rpm(2)).await;
        }
        tokio::time::advance(Duration::from_millis(59_999)).await;
        store.prune();
        assert_eq!(store.buckets.len(), 1, "not yet full: kept");
        // Still the same (spent) bucket: half a minute per request at 2 rpm.
        assert!(matches!(
            store.check(key, rpm(2)).await,
            Verdict::Allowed(s) if s.remaining == 0
        ));
        tokio::time::advance(Duration::from_secs(60)).await;
        store.prune();
        assert_eq!(store.buckets.len(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn limits_check_the_token_then_the_project_and_name_the_one_spent() {
        let limits = RpmLimits::new(LocalRateStore::default(), Some(3));
        // No own limit: the default of 3 rpm; the project allows 2.
        let t = token(None);
        let p = project(t.project_id, Some(2));
        let first = limits.check(&t, &p).await.unwrap().unwrap();
        assert_eq!((first.limit, first.remaining), (2, 1), "the tighter one");
        limits.check(&t, &p).await.unwrap();
        let denied = async || match limits.check(&t, &p).await {
            Err(Limited {
                key, retry_after, ..
            }) => (key, retry_after),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            denied().await,
            (RateKey::Project(p.id), Duration::from_secs(30))
        );
        // The token's bucket paid for the refused request too (it is checked
        // first): 3 taken, the next is refused by the token's limit.
        assert_eq!(
            denied().await,
            (RateKey::Token(t.id), Duration::from_secs(20))
        );
        // Neither limit set, no default: nothing applies.
        let free = RpmLimits::new(LocalRateStore::default(), None);
        let t = token(None);
        assert_eq!(
            free.check(&t, &project(t.project_id, None)).await.unwrap(),
            None
        );
    }

    #[tokio::test(start_paused = true)]
    async fn divided_limits_are_this_instances_share_at_least_one() {
        // 10 rpm over 3 instances: 3 each; 2 rpm over 3: still 1.
        let limits = RpmLimits::new(LocalRateStore::default(), None).divided_by(3);
        let t = token(Some(10));
        let p = project(t.project_id, Some(2));
        let first = limits.check(&t, &p).await.unwrap().unwrap();
        assert_eq!(
            (first.limit, first.remaining),
            (1, 0),
            "the project's share"
        );
        match limits.check(&t, &p).await {
            Err(Limited { key, state, .. }) => {
                assert_eq!(key, RateKey::Project(p.id));
                assert_eq!(state.limit, 1);
            }
            other => panic!("{other:?}"),
        }
        let t = token(Some(10));
        let p = project(t.project_id, None);
        for left in [2, 1, 0] {
            let s = limits.check(&t, &p).await.unwrap().unwrap();
            assert_eq!((s.limit, s.remaining), (3, left));
        }
        assert!(limits.check(&t, &p).await.is_err());
        // 0 instances is treated as 1 (validation refuses it anyway).
        let whole = RpmLimits::new(LocalRateStore::default(), Some(5)).divided_by(0);
        let t = token(None);
        let s = whole
            .check(&t, &project(t.project_id, None))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(s.limit, 5);
    }
}
