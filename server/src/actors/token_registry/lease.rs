//! Crash-safe lifetime quotas: request leases.
//!
//! Request counters live in memory and reach the database every
//! `tokens.usage_flush_interval`, so a SIGKILL forgets up to that window of counts.
//! Left alone, a restarted gateway would admit those requests again and a token
//! could exceed `max_requests`. So a token with a quota is admitted only under a
//! lease: `tokens.request_lease`, a count the gateway may admit up to, written to
//! the database *before* the requests it covers are admitted.
//!
//! * At load, a token's count is `max(request_count, request_lease)`: requests
//!   leased before a crash count as used whether or not they were served. A crash
//!   therefore costs a token at most one lease's worth of unused quota, and never
//!   lets it exceed `max_requests`.
//! * A clean shutdown writes the final counts and clears every lease in one
//!   transaction, so a restart costs nothing.
//! * A lease covers 1 % of the quota, at least 1 and at most 1,000 requests: a
//!   quota of 1,000 takes 100 single-row writes over its life, each on the path of
//!   the one request that crosses the lease (the others keep going on the atomic
//!   counter; requests that also need the lease wait for that one write).
//! * When the lease cannot be written, the request is refused with 503
//!   `service_unavailable` (fail closed): admitting it could not be made durable.
//!
//! With Redis (several instances) no lease is written: Redis holds the count and
//! decides admission (`rate_limit::shared`), so a crash loses no quota there.
//! Leases serve again only while Redis is down with `redis.on_error: local`;
//! each instance then leases from its own view of the count (docs/operations.md,
//! "Redis").
//!
//! Usage rows are a separate matter: a SIGKILL loses the audit writer's unwritten
//! batch (at most `audit.flush_interval` of records; see `docs/operations.md`,
//! "Crashes: what a SIGKILL can lose").

use std::sync::atomic::Ordering;

use chrono::{DateTime, Utc};

use super::Registry;
use super::cache::{Consumed, Denial, TokenState};
use crate::service::mutation::Mutation;

/// Why [`Registry::consume`] did not count a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsumeError {
    /// The quota is used up (429 `quota_exceeded`).
    Denied(Denial),
    /// The lease could not be extended: storage is failing (503
    /// `service_unavailable`, not counted against the client).
    StorageUnavailable,
}

impl From<Denial> for ConsumeError {
    fn from(denial: Denial) -> Self {
        Self::Denied(denial)
    }
}

/// How many requests one lease covers.
fn lease_chunk(max_requests: i64) -> i64 {
    (max_requests / 100).clamp(1, 1000)
}

impl Registry {
    /// Checks the token's lifetime quota and counts the request, extending its
    /// lease first when the current one is used up.
    pub async fn consume(
        &self,
        token: &TokenState,
        now: DateTime<Utc>,
    ) -> Result<(), ConsumeError> {
        if self.cache.try_consume(token, now)? == Consumed::Counted {
            return Ok(());
        }
        let Some(max) = token.max_requests else {
            // Only quota'd tokens consult a lease.
            return Ok(());
        };
        let counters = &token.counters;
        let _one_writer = counters.leasing.lock().await;
        loop {
            // The request that held the lock before may have extended it already.
            if self.cache.try_consume(token, now)? == Consumed::Counted {
                return Ok(());
            }
            let from = counters
                .request_count()
                .max(counters.lease.load(Ordering::Acquire));
            let lease = (from + lease_chunk(max)).min(max);
            if let Err(e) = Mutation::write_request_lease(&self.db, token.id.0, lease).await {
                // The write health logs the outage once; not a line per request.
                tracing::debug!(error = %e, token_id = %token.id, "cannot write a request lease; refusing the request");
                return Err(ConsumeError::StorageUnavailable);
            }
            counters.lease.fetch_max(lease, Ordering::AcqRel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::lease_chunk;

    #[test]
    fn a_lease_is_one_percent_of_the_quota_within_bounds() {
        assert_eq!(lease_chunk(1), 1);
        assert_eq!(lease_chunk(99), 1);
        assert_eq!(lease_chunk(1_000), 10);
        assert_eq!(lease_chunk(50_000), 500);
        assert_eq!(lease_chunk(10_000_000), 1_000);
    }
}
