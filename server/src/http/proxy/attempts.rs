//! Attempts, retries and failover, all before the first byte reaches the client.
//!
//! The candidates come ordered from routing. Attempt *n* goes to candidate
//! *n mod len*: the very first retryable failure moves on to the next provider at
//! once (no waiting, no breaker needed); only a provider tried again within the same
//! request is waited for: exponential backoff with full jitter (capped at
//! `retry.max_delay`), or that provider's own `Retry-After` (`retry-after-ms`). A
//! provider asking for longer than `retry.max_delay` is not tried again in this
//! request: once no other candidate is left, its answer goes back to the client
//! at once, with its `retry-after`. At most `retry.max_attempts` upstream calls in
//! all; the body is replayed byte for byte.
//!
//! Retryable: connection errors, the first-byte timeout (for SSE: until the first
//! chunk), and statuses in `retry.retry_on`. Anything else, 4xx included, is the
//! answer and is passed through. When the attempts ran out, the last one decides
//! what the client hears: 429 `upstream_rate_limited` for an upstream 429, 502
//! `upstream_error` naming the status for a 5xx, 504 `upstream_timeout` for a
//! first-byte timeout, and "could not be reached" only when no answer came. Each
//! verdict goes to the `ProviderSupervisor` with a fire-and-forget message.

use std::sync::Arc;
use std::time::Duration;

use actix_web::web::Bytes;
use actix_web::{HttpRequest, HttpResponse};
use rand::Rng;

use super::stream::{self, UsageTap};
use super::upstream;
use crate::actors::provider_supervisor::{Outcome, Verdict};
use crate::config::RetryConfig;
use crate::error::ProxyError;
use crate::http::request_id::RequestId;
use crate::providers::Provider;
use crate::providers::status::{BreakerState, InFlight};
use crate::secret::Secret;
use crate::state::AppState;

/// Everything an attempt needs besides the usage tap.
pub struct Plan<'a> {
    pub req: &'a HttpRequest,
    pub state: &'a AppState,
    pub candidates: &'a [Arc<Provider>],
    pub tail: &'a str,
    /// The project's own upstream key, which replaces every provider's key.
    pub project_key: Option<&'a Secret>,
    pub request_id: Option<&'a RequestId>,
    pub body: Bytes,
    pub strip_usage: bool,
}

pub async fn forward(
    plan: Plan<'_>,
    mut tap: UsageTap,
) -> Result<HttpResponse, (ProxyError, UsageTap)> {
    let retry = &plan.state.config.retry;
    let max_attempts = usize::try_from(retry.max_attempts).unwrap_or(1).max(1);
    let n = plan.candidates.len();
    let mut tried = vec![false; n];
    // A provider that asked for a longer wait than `retry.max_delay` is not tried
    // again in this request; its answer goes back to the client at once.
    let mut resting = vec![false; n];
    let mut hints: Vec<Option<Duration>> = vec![None; n];
    let mut backoffs = 0u32;
    let mut turn = 0;
    // Only left standing if every candidate was half-open with its probes taken.
    let mut last = ProxyError::NoHealthyProvider {
        model: tap.record.model.clone().unwrap_or_default(),
        retry_after: 1,
    };
    for _ in 0..max_attempts {
        let Some(i) = (0..n).map(|k| (turn + k) % n).find(|&i| !resting[i]) else {
            break;
        };
        turn = i + 1;
        let provider = &plan.candidates[i];
        if std::mem::replace(&mut tried[i], true) {
            let wait = hints[i]
                .take()
                .unwrap_or_else(|| full_jitter(retry, backoffs));
            backoffs += 1;
            tokio::time::sleep(wait).await;
        }
        let Some(verdict) = Attempt::start(plan.state, provider) else {
            // Half-open and its probes are taken: let another request probe it.
            continue;
        };
        tap.record.provider.clone_from(&provider.name);
        tap.hold(InFlight::new(provider));
        let key = plan.project_key.unwrap_or(&provider.api_key);
        let sent = upstream::send(
            plan.req,
            provider,
            plan.tail,
            key,
            plan.request_id,
            plan.body.clone(),
        )
        .await;
        let answered = sent.as_ref().ok().map(|r| r.status().as_u16());
        crate::http::access_log::note_attempt(plan.req, &provider.name, answered);
        let resp = match sent {
            Ok(resp) => resp,
            Err(e) => {
                verdict.failure(e.detail());
                last = e;
                continue;
            }
        };
        let status = resp.status().as_u16();
        if retry.retry_on.contains(&status) {
            let asked = retry_after(resp.headers(), retry.max_delay.0);
            verdict.failure(format!("status {status}"));
            last = upstream_status(status, asked);
            match asked {
                Some(RetryAfter::Longer(_)) => resting[i] = true,
                Some(RetryAfter::Wait(w)) => hints[i] = Some(w),
                None => hints[i] = None,
            }
            continue;
        }
        match stream::relay(resp, provider, tap, plan.strip_usage).await {
            Ok(response) => {
                verdict.success();
                return Ok(response);
            }
            Err((e, back)) => {
                tap = back;
                verdict.failure(e.detail());
                last = e;
            }
        }
    }
    Err((last, tap))
}

/// The client's error when the attempts ended on a retryable upstream answer.
fn upstream_status(status: u16, asked: Option<RetryAfter>) -> ProxyError {
    let retry_after = asked.map(RetryAfter::client_secs);
    match status {
        429 => ProxyError::UpstreamRateLimited { retry_after },
        _ => ProxyError::UpstreamStatus {
            status,
            retry_after,
        },
    }
}

/// One attempt's verdict, owed to the supervisor. Dropped without one (the client
/// left while we waited), it only gives back a half-open probe permit.
struct Attempt<'a> {
    state: &'a AppState,
    provider: &'a Arc<Provider>,
    probe: bool,
    done: bool,
}

impl<'a> Attempt<'a> {
    fn start(state: &'a AppState, provider: &'a Arc<Provider>) -> Option<Self> {
        let probe = provider.status.state() == BreakerState::HalfOpen;
        provider.status.try_admit().then_some(Self {
            state,
            provider,
            probe,
            done: false,
        })
    }

    fn success(mut self) {
        let status = &self.provider.status;
        // Live proof of health, stamped lock-free (`providers::health`).
        status.note_success();
        if status.state() == BreakerState::Closed
            && status.consecutive_failures() == 0
            && status.healthy()
        {
            // Nothing for the supervisor to change: no message, so the common case
            // costs the request path no cross-thread wake-up.
            self.done = true;
            return;
        }
        self.report(Verdict::Success);
    }

    fn failure(mut self, why: String) {
        self.report(Verdict::Failure(why));
    }

    fn report(&mut self, verdict: Verdict) {
        self.done = true;
        self.state.supervisor.do_send(Outcome {
            provider: self.provider.index,
            verdict,
        });
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        if !self.done && self.probe {
            self.provider.status.return_probe();
        }
    }
}

/// A random wait in `[0, min(max_delay, initial · multiplier^n)]`.
fn full_jitter(retry: &RetryConfig, n: u32) -> Duration {
    let exp = i32::try_from(n).unwrap_or(i32::MAX);
    let cap = (retry.initial_delay.0.as_secs_f64() * retry.multiplier.powi(exp))
        .min(retry.max_delay.0.as_secs_f64());
    Duration::from_secs_f64(rand::rng().random_range(0.0..=cap.max(0.0)))
}

/// What a provider's `retry-after` asked for, judged against `retry.max_delay`.
#[derive(Debug, Clone, Copy, PartialEq)]
enum RetryAfter {
    /// At most `retry.max_delay`: waited out before calling that provider again.
    Wait(Duration),
    /// Longer (up to absurd: the header is the upstream's word): not waited out,
    /// only passed on to the client, in whole seconds rounded up, saturating.
    Longer(u64),
}

impl RetryAfter {
    /// Whole seconds, rounded up: `Retry-After: 0.5` must not become "now".
    fn client_secs(self) -> u64 {
        match self {
            Self::Wait(d) => d.as_secs().saturating_add(u64::from(d.subsec_nanos() > 0)),
            Self::Longer(secs) => secs,
        }
    }
}

/// `retry-after-ms` (OpenAI) or `retry-after` in seconds; HTTP dates are ignored.
/// The value is compared with `max_delay` while still a float: only a wait within
/// it becomes a `Duration` (`Duration::from_secs_f64` panics beyond `u64::MAX`
/// seconds, and `1e20` is one header away), so no header value can panic.
fn retry_after(headers: &reqwest::header::HeaderMap, max_delay: Duration) -> Option<RetryAfter> {
    let get = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|v| v.is_finite() && *v >= 0.0)
    };
    let secs = get("retry-after-ms")
        .map(|ms| ms / 1000.0)
        .or_else(|| get("retry-after"))?;
    Some(if secs > max_delay.as_secs_f64() {
        // `as` saturates a float at `u64::MAX`; it cannot panic.
        RetryAfter::Longer(secs.ceil() as u64)
    } else {
        RetryAfter::Wait(
            Duration::try_from_secs_f64(secs)
                .unwrap_or(max_delay)
                .min(max_delay),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::HumanDuration;

    #[test]
    fn backoff_is_capped_full_jitter() {
        let retry = RetryConfig {
            initial_delay: HumanDuration::millis(100),
            max_delay: HumanDuration::millis(300),
            ..RetryConfig::default()
        };
        for n in 0..6 {
            let cap = (0.1 * 2f64.powi(n)).min(0.3);
            for _ in 0..200 {
                let d = full_jitter(&retry, u32::try_from(n).unwrap()).as_secs_f64();
                assert!((0.0..=cap + 1e-9).contains(&d), "n={n} d={d}");
            }
        }
    }

    const MAX: Duration = Duration::from_secs(5);

    #[test]
    fn retry_after_reads_seconds_and_milliseconds() {
        let mut h = reqwest::header::HeaderMap::new();
        assert_eq!(retry_after(&h, MAX), None);
        h.insert("retry-after", "2".parse().unwrap());
        assert_eq!(
            retry_after(&h, MAX),
            Some(RetryAfter::Wait(Duration::from_secs(2)))
        );
        h.insert("retry-after-ms", "250".parse().unwrap());
        assert_eq!(
            retry_after(&h, MAX),
            Some(RetryAfter::Wait(Duration::from_millis(250)))
        );
        h.insert("retry-after-ms", "soon".parse().unwrap());
        h.insert(
            "retry-after",
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&h, MAX), None);
    }

    #[test]
    fn retry_after_beyond_max_delay_is_longer_in_whole_seconds() {
        let mut h = reqwest::header::HeaderMap::new();
        h.insert("retry-after", "5".parse().unwrap());
        assert_eq!(retry_after(&h, MAX), Some(RetryAfter::Wait(MAX)));
        h.insert("retry-after", "5.2".parse().unwrap());
        assert_eq!(retry_after(&h, MAX), Some(RetryAfter::Longer(6)));
        h.insert("retry-after-ms", "120000".parse().unwrap());
        assert_eq!(retry_after(&h, MAX), Some(RetryAfter::Longer(120)));
    }

    #[test]
    fn retry_after_absurd_values_neither_panic_nor_wait() {
        for (name, value) in [
            ("retry-after", "1e20"),
            ("retry-after", "1e308"),
            ("retry-after", "18446744073709551616"),
            ("retry-after-ms", "1e25"),
            ("retry-after-ms", "1.8e308"),
            ("retry-after", "inf"),
            ("retry-after", "NaN"),
            ("retry-after", "-1"),
            ("retry-after-ms", "-0.5"),
        ] {
            let mut h = reqwest::header::HeaderMap::new();
            h.insert(name, value.parse().unwrap());
            let asked = retry_after(&h, MAX);
            match asked {
                None | Some(RetryAfter::Longer(_)) => {}
                Some(RetryAfter::Wait(w)) => assert!(w <= MAX, "{name}: {value} → {w:?}"),
            }
            // The client's error is built from it without overflowing either.
            let _ = upstream_status(429, asked);
        }
        let mut h = reqwest::header::HeaderMap::new();
        h.insert("retry-after", "1e20".parse().unwrap());
        assert_eq!(retry_after(&h, MAX), Some(RetryAfter::Longer(u64::MAX)));
        // `u64::MAX` as a float rounds up to 2^64, one past what a `Duration` holds,
        // yet is within the largest `max_delay` a configuration can hold.
        h.insert("retry-after", "18446744073709551615".parse().unwrap());
        assert_eq!(
            retry_after(&h, Duration::MAX),
            Some(RetryAfter::Wait(Duration::MAX))
        );
    }

    #[test]
    fn upstream_status_rounds_the_client_retry_after_up() {
        let e = upstream_status(429, Some(RetryAfter::Wait(Duration::from_millis(500))));
        assert!(
            matches!(
                e,
                ProxyError::UpstreamRateLimited {
                    retry_after: Some(1)
                }
            ),
            "{e:?}"
        );
    }
}
