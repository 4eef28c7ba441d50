//! Whether a provider is healthy: what health checks and live traffic each prove.
//!
//! The decision, applied by the `ProviderSupervisor` (the only writer of the
//! health flag):
//! - An answered request (any upstream answer that is not a retryable failure)
//!   proves the provider is up. The request path stamps the time lock-free
//!   ([`ProviderStatus::note_success`]); only when the provider is marked
//!   unhealthy does it also tell the supervisor, which marks it healthy at once.
//! - A passing health check marks it healthy and clears the count of failures.
//! - A failing health check is excused (and the count cleared) when a request was
//!   answered within the last `health_check.interval`: a single-slot server
//!   (llama.cpp, a small Ollama) answers `/models` only after its running
//!   generation, and one slow check must not take out a provider that is serving.
//! - Otherwise it counts; `health_check.unhealthy_threshold` consecutive counted
//!   failures mark the provider unhealthy.
//! - While unhealthy, and until the provider has been seen up once, checks come
//!   every [`UNHEALTHY_RECHECK`] (or `interval` if shorter), so a provider that
//!   comes back, at start-up for instance, is back in rotation (and a `*`
//!   provider's models listed) within about a second, not an interval.
//! - A provider starts healthy: the first check runs at once, and its failure
//!   alone (below the threshold) takes nothing out.
//!
//! Unhealthy is not closed off: routing still tries an unhealthy provider when
//! every candidate is unhealthy and none has an open breaker (`routing`).

use std::time::Duration;

use super::status::ProviderStatus;
use crate::config::HealthCheckConfig;

/// Spacing of health checks while a provider is unhealthy.
pub const UNHEALTHY_RECHECK: Duration = Duration::from_secs(1);

/// What one health check's result changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckEffect {
    /// Nothing visible: passed while healthy, or failed below the threshold.
    Unchanged,
    /// Failed, but a request was answered within the interval: not counted.
    Excused,
    /// Unhealthy → healthy.
    Recovered,
    /// Healthy → unhealthy: the threshold was reached.
    TakenOut,
}

/// Applies one health check's result to `status`.
pub fn apply_check(status: &ProviderStatus, cfg: &HealthCheckConfig, passed: bool) -> CheckEffect {
    if passed {
        return mark_up(status);
    }
    if status.succeeded_within(cfg.interval.0) {
        status.set_check_failures(0);
        return CheckEffect::Excused;
    }
    let failures = status.check_failures().saturating_add(1);
    status.set_check_failures(failures);
    if failures >= cfg.unhealthy_threshold && status.healthy() {
        status.set_healthy(false);
        return CheckEffect::TakenOut;
    }
    CheckEffect::Unchanged
}

/// A request was answered: healthy, whatever the checks said.
pub fn apply_answered_request(status: &ProviderStatus) -> CheckEffect {
    mark_up(status)
}

fn mark_up(status: &ProviderStatus) -> CheckEffect {
    status.set_check_failures(0);
    if status.healthy() {
        return CheckEffect::Unchanged;
    }
    status.set_healthy(true);
    CheckEffect::Recovered
}

/// How long after a check starts the next one should: `interval` while healthy,
/// at most [`UNHEALTHY_RECHECK`] while not, and until the provider has been seen
/// up once (`seen_up`: a passing check or an answered request), so that an
/// upstream started a moment after Palisade is checked, and a `*` provider
/// listed, a second after it comes up.
pub fn next_check_in(status: &ProviderStatus, cfg: &HealthCheckConfig, seen_up: bool) -> Duration {
    let seen_up = seen_up || status.since_last_success().is_some();
    match status.healthy() && seen_up {
        true => cfg.interval.0,
        false => cfg.interval.0.min(UNHEALTHY_RECHECK),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::HumanDuration;

    fn cfg(threshold: u64) -> HealthCheckConfig {
        HealthCheckConfig {
            interval: HumanDuration::secs(30),
            unhealthy_threshold: threshold,
            ..HealthCheckConfig::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn health_threshold_counts_consecutive_failed_checks_and_one_pass_recovers() {
        let s = ProviderStatus::default();
        let c = cfg(3);
        assert!(s.healthy(), "usable from the start");
        assert_eq!(apply_check(&s, &c, false), CheckEffect::Unchanged);
        assert_eq!(apply_check(&s, &c, false), CheckEffect::Unchanged);
        assert!(s.healthy());
        assert_eq!(s.check_failures(), 2);
        assert_eq!(apply_check(&s, &c, false), CheckEffect::TakenOut);
        assert!(!s.healthy());
        assert_eq!(apply_check(&s, &c, false), CheckEffect::Unchanged);
        assert_eq!(s.check_failures(), 4);
        assert_eq!(apply_check(&s, &c, true), CheckEffect::Recovered);
        assert!(s.healthy());
        assert_eq!(s.check_failures(), 0);
        // A pass in between starts the count again.
        apply_check(&s, &c, false);
        apply_check(&s, &c, false);
        apply_check(&s, &c, true);
        apply_check(&s, &c, false);
        apply_check(&s, &c, false);
        assert!(s.healthy());
    }

    #[tokio::test(start_paused = true)]
    async fn health_threshold_of_one_takes_out_at_the_first_failure() {
        let s = ProviderStatus::default();
        assert_eq!(apply_check(&s, &cfg(1), false), CheckEffect::TakenOut);
        assert!(!s.healthy());
    }

    #[tokio::test(start_paused = true)]
    async fn health_recent_answered_request_excuses_failed_checks_until_it_is_older_than_the_interval()
     {
        let s = ProviderStatus::default();
        let c = cfg(2);
        assert_eq!(s.since_last_success(), None);
        s.note_success();
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(s.since_last_success(), Some(Duration::from_secs(10)));
        // Slow checks while the provider is serving: excused, however many.
        for _ in 0..5 {
            assert_eq!(apply_check(&s, &c, false), CheckEffect::Excused);
        }
        tokio::time::advance(Duration::from_secs(20)).await;
        assert_eq!(
            apply_check(&s, &c, false),
            CheckEffect::Excused,
            "30 s: still recent"
        );
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(apply_check(&s, &c, false), CheckEffect::Unchanged);
        assert_eq!(apply_check(&s, &c, false), CheckEffect::TakenOut);
        // An answered request brings it back at once.
        s.note_success();
        assert_eq!(apply_answered_request(&s), CheckEffect::Recovered);
        assert!(s.healthy());
        assert_eq!(s.check_failures(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn health_excused_failure_clears_the_count() {
        let s = ProviderStatus::default();
        let c = cfg(2);
        assert_eq!(apply_check(&s, &c, false), CheckEffect::Unchanged);
        s.note_success();
        tokio::time::advance(Duration::from_secs(29)).await;
        assert_eq!(apply_check(&s, &c, false), CheckEffect::Excused);
        tokio::time::advance(Duration::from_secs(30)).await;
        // The failure before the answered request no longer counts.
        assert_eq!(apply_check(&s, &c, false), CheckEffect::Unchanged);
        assert!(s.healthy());
    }

    #[tokio::test(start_paused = true)]
    async fn health_unhealthy_or_never_seen_up_provider_is_checked_again_within_a_second() {
        let s = ProviderStatus::default();
        let c = cfg(1);
        // Never seen up (start-up): soon.
        assert_eq!(next_check_in(&s, &c, false), UNHEALTHY_RECHECK);
        assert_eq!(next_check_in(&s, &c, true), Duration::from_secs(30));
        s.note_success();
        assert_eq!(next_check_in(&s, &c, false), Duration::from_secs(30));
        apply_check(&s, &c, false);
        tokio::time::advance(Duration::from_secs(31)).await;
        apply_check(&s, &c, false);
        assert!(!s.healthy());
        assert_eq!(next_check_in(&s, &c, true), UNHEALTHY_RECHECK);
        let short = HealthCheckConfig {
            interval: HumanDuration::millis(200),
            ..c
        };
        assert_eq!(next_check_in(&s, &short, true), Duration::from_millis(200));
    }
}
