//! Steps 6 and 7 of the pipeline: requests per minute (token, then project) and
//! the token's lifetime quota, with room for the usage record checked first;
//! with Redis, the client IP's `/v1` limit too.
//!
//! * Without Redis: the in-process buckets ([`crate::rate_limit::rpm`]), then
//!   the quota on the token's counter under a database lease
//!   (`actors::token_registry::lease`).
//! * With Redis: one call decides all three for every instance
//!   ([`crate::rate_limit::shared`]); the Redis verdict is the authority (no
//!   database lease), the registry only counts the request for its write-back.
//!   The same call checks the client IP's `rate_limits.per_ip_rps` first, so
//!   one client's admitted requests are limited fleet-wide (refused as the
//!   edge's per-instance limiter refuses: 429 with `retry-after`), still at one
//!   round trip. While Redis is down, `redis.on_error`: `fail_closed` answers
//!   503 `service_unavailable` with `retry-after`; `local` uses the in-process
//!   path with this instance's share of each limit, and the per-IP limit is
//!   the edge's alone (per instance).

use std::net::IpAddr;

use chrono::{DateTime, Utc};

use crate::actors::token_registry::Resolved;
use crate::config::RedisOnError;
use crate::error::ProxyError;
use crate::limits::RateState;
use crate::rate_limit::shared::Outcome;
use crate::state::AppState;

/// Counts the request against every limit that applies, or says which refused
/// it. `Ok(Some(state))`: the tighter rpm state, for the response's headers.
pub(super) async fn admit(
    state: &AppState,
    ip: IpAddr,
    resolved: &Resolved,
    now: DateTime<Utc>,
) -> Result<Option<RateState>, ProxyError> {
    let (token, project) = (&resolved.token, &resolved.project);
    let Some(shared) = &state.shared_limits else {
        let rate = state.rpm.check(token, project).await?;
        records_room(state)?;
        state.registry.consume(token, now).await?;
        return Ok(rate);
    };
    // Before Redis takes anything: a request whose record cannot be kept is
    // refused without spending the client's allowance.
    records_room(state)?;
    let known = token.counters.request_count();
    match shared.admit(ip, token, project, known).await {
        Ok(Outcome::Admitted { rate, used }) => {
            state.registry.cache.count_shared(token, used, now);
            Ok(rate)
        }
        Ok(Outcome::Limited(limited)) => Err(limited.into()),
        Ok(Outcome::QuotaExceeded { max, used }) => {
            state.registry.cache.observe_used(token, used);
            Err(ProxyError::QuotaExceeded(max))
        }
        Ok(Outcome::IpLimited { retry_after }) => Err(ProxyError::IpRateLimited {
            retry_after: crate::limits::retry_after_secs(retry_after),
        }),
        // Logged once per outage by the limiter's health, not per request.
        Err(_) => match shared.on_error() {
            RedisOnError::FailClosed => Err(ProxyError::LimitsUnavailable),
            RedisOnError::Local => {
                let rate = state.rpm.check(token, project).await?;
                state.registry.consume(token, now).await?;
                Ok(rate)
            }
        },
    }
}

/// Records cannot be kept (storage failing, buffer full): refuse before the
/// quota or a queue slot is spent.
fn records_room(state: &AppState) -> Result<(), ProxyError> {
    if state.usage_enabled {
        state
            .audit
            .check_room()
            .map_err(|_| ProxyError::StorageUnavailable)?;
    }
    Ok(())
}
