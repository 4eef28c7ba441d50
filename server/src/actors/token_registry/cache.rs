//! The read-mostly token and project cache that request handlers consult without a
//! mailbox round trip. Only the `TokenRegistry` actor mutates it (the writer methods
//! are `pub(super)`); handlers get `lookup` and `try_consume`.
//!
//! Request counters live in [`TokenCounters`], shared across policy snapshots, so a
//! PATCH that replaces a token's policy never loses counts. The quota check is one
//! compare-and-swap loop: concurrent requests can never over-admit. For a token with
//! a quota, the loop also stops at the token's durable lease (see `lease`), so a
//! crash can never let it admit more than `max_requests`.
//!
//! With Redis (several instances) the quota is decided there
//! (`rate_limit::shared`); the counters here then only keep this instance's
//! bookkeeping: what it admitted (written back as a delta, so the counts of all
//! instances add up in the database) and the highest count Redis reported.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

use chrono::{DateTime, Utc};
use dashmap::DashMap;

use crate::ids::{ProjectId, TokenId};
use crate::policy::{CidrList, ModelList};
use crate::secret::{Secret, TokenHash};

#[derive(Debug)]
pub struct ProjectState {
    pub id: ProjectId,
    pub is_active: bool,
    pub deleted: bool,
    pub upstream_api_key: Option<Secret>,
    pub allowed_models: ModelList,
    pub allowed_cidrs: CidrList,
    pub rate_limit_rpm: Option<i64>,
    /// Pinned provider names, in order; empty = route by priority.
    pub providers: Arc<[String]>,
}

#[derive(Debug)]
pub struct TokenState {
    pub id: TokenId,
    pub project_id: ProjectId,
    pub hint: String,
    pub is_active: bool,
    pub revoked: bool,
    pub expires_at: DateTime<Utc>,
    pub max_requests: Option<i64>,
    pub rate_limit_rpm: Option<i64>,
    pub allowed_models: ModelList,
    pub allowed_cidrs: CidrList,
    pub counters: Arc<TokenCounters>,
}

#[derive(Debug, Default)]
pub struct TokenCounters {
    /// Requests used as far as this instance knows: the database's count at
    /// load, plus what it admitted, raised to what Redis reported.
    request_count: AtomicI64,
    /// Requests counted here and not yet added to the database's count (the
    /// write-back adds deltas: with several instances, an absolute count would
    /// overwrite the others').
    unflushed: AtomicI64,
    /// Unix milliseconds of the last admitted request; 0 = never.
    last_used_ms: AtomicI64,
    dirty: AtomicBool,
    /// The count up to which admissions are covered by a lease written to the
    /// database (`tokens.request_lease`); only quota'd tokens consult it.
    pub(super) lease: AtomicI64,
    /// Held by the one request that extends the lease; the others wait for it.
    pub(super) leasing: tokio::sync::Mutex<()>,
}

impl TokenCounters {
    /// Counters as loaded: `request_count` is the last flushed count, or the lease
    /// if that is higher (the process stopped without flushing, so everything
    /// leased may have been served). No lease is held until the first request.
    pub fn new(request_count: i64, lease: Option<i64>, last_used: Option<DateTime<Utc>>) -> Self {
        let count = request_count.max(lease.unwrap_or(0));
        Self {
            request_count: AtomicI64::new(count),
            unflushed: AtomicI64::new(count - request_count),
            last_used_ms: AtomicI64::new(last_used.map_or(0, |t| t.timestamp_millis())),
            // Counts taken over from a lease must reach the database.
            dirty: AtomicBool::new(count > request_count),
            lease: AtomicI64::new(count),
            leasing: tokio::sync::Mutex::new(()),
        }
    }

    pub fn request_count(&self) -> i64 {
        self.request_count.load(Ordering::Acquire)
    }

    pub fn last_used(&self) -> Option<DateTime<Utc>> {
        match self.last_used_ms.load(Ordering::Acquire) {
            0 => None,
            ms => DateTime::from_timestamp_millis(ms),
        }
    }

    /// Clears the dirty flag, returning whether there was anything to write.
    pub(super) fn take_dirty(&self) -> bool {
        self.dirty.swap(false, Ordering::AcqRel)
    }

    /// Requests admitted here and not yet added to the database's count.
    pub fn unflushed(&self) -> i64 {
        self.unflushed.load(Ordering::Acquire)
    }

    /// The requests to add to the database's count; they are no longer
    /// unflushed (a failed write gives them back with [`Self::give_back`]).
    pub(super) fn take_unflushed(&self) -> i64 {
        self.unflushed.swap(0, Ordering::AcqRel)
    }

    /// A write-back failed: its delta is owed again, with the next one.
    pub(super) fn give_back(&self, delta: i64) {
        self.unflushed.fetch_add(delta, Ordering::AcqRel);
        self.mark_dirty();
    }

    /// One request admitted: counted here, written back later.
    fn admitted(&self, now: DateTime<Utc>) {
        self.unflushed.fetch_add(1, Ordering::AcqRel);
        self.last_used_ms
            .store(now.timestamp_millis(), Ordering::Release);
        self.mark_dirty();
    }

    pub(super) fn mark_dirty(&self) {
        self.dirty.store(true, Ordering::Release);
    }
}

/// Where a secret hash points: the current secret, or the pre-rotation one that is
/// honoured until `valid_until`.
#[derive(Debug, Clone, Copy)]
struct HashSlot {
    token: TokenId,
    valid_until: Option<DateTime<Utc>>,
}

/// What [`TokenCache::try_consume`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consumed {
    Counted,
    /// The quota has room but the lease is used up: extend it, then try again.
    NeedsLease,
}

/// A token that passed every identity check, with its project.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub token: Arc<TokenState>,
    pub project: Arc<ProjectState>,
}

/// Why the cache refuses a request's token; the proxy answers each with its own
/// code (401 `invalid_api_key`, `token_expired`, `token_revoked`,
/// `token_inactive`; 403 `project_inactive`; 429 `quota_exceeded`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denial {
    /// No token has this secret (or its rotation grace is over).
    InvalidApiKey,
    /// Revoked, or its project deleted.
    TokenRevoked,
    TokenExpired,
    TokenInactive,
    ProjectInactive,
    /// The lifetime quota (`max_requests`) is used up.
    QuotaExceeded(i64),
}

/// Why [`TokenCache::lookup`] refused a secret. `matched` is the token (and
/// project) the secret named when it named one that may not be used now
/// (revoked, expired, inactive, its project inactive or deleted): the refusal is
/// that token's, and its audit event must say whose. The HTTP layer keeps the
/// `matched` token and swaps the [`Denial`] for its answer ([`Refused::map`]).
#[derive(Debug)]
pub struct Refused<E = Denial> {
    pub error: E,
    pub matched: Option<Resolved>,
}

impl<E> Refused<E> {
    /// The same refusal with `error` turned into another type.
    pub fn map<F>(self, f: impl FnOnce(E) -> F) -> Refused<F> {
        Refused {
            error: f(self.error),
            matched: self.matched,
        }
    }
}

impl From<Denial> for Refused {
    /// A refusal that matched no token.
    fn from(error: Denial) -> Self {
        Self {
            error,
            matched: None,
        }
    }
}

#[derive(Debug, Default)]
pub struct TokenCache {
    by_hash: DashMap<TokenHash, HashSlot>,
    /// Reverse index so a rotation can drop a token's old hashes without a scan.
    hashes_of: DashMap<TokenId, Vec<TokenHash>>,
    tokens: DashMap<TokenId, Arc<TokenState>>,
    projects: DashMap<ProjectId, Arc<ProjectState>>,
}

// === impl TokenCache: the request path ===

impl TokenCache {
    /// Resolves a presented secret to an active token of an active project.
    /// Unknown and past-grace secrets are indistinguishable (`invalid_api_key`).
    pub fn lookup(&self, hash: &TokenHash, now: DateTime<Utc>) -> Result<Resolved, Refused> {
        let slot = *self.by_hash.get(hash).ok_or(Denial::InvalidApiKey)?;
        if slot.valid_until.is_some_and(|until| now >= until) {
            return Err(Denial::InvalidApiKey.into());
        }
        let token = self
            .tokens
            .get(&slot.token)
            .map(|t| Arc::clone(&t))
            .ok_or(Denial::InvalidApiKey)?;
        let project = self
            .projects
            .get(&token.project_id)
            .map(|p| Arc::clone(&p))
            .ok_or(Denial::InvalidApiKey)?;
        let unusable = match () {
            () if token.revoked || project.deleted => Some(Denial::TokenRevoked),
            () if now >= token.expires_at => Some(Denial::TokenExpired),
            () if !token.is_active => Some(Denial::TokenInactive),
            () if !project.is_active => Some(Denial::ProjectInactive),
            () => None,
        };
        let resolved = Resolved { token, project };
        match unusable {
            None => Ok(resolved),
            Some(error) => Err(Refused {
                error,
                matched: Some(resolved),
            }),
        }
    }

    /// Atomically checks the lifetime quota and counts the request, unless the
    /// token's lease is used up ([`Consumed::NeedsLease`]: nothing was counted).
    pub fn try_consume(&self, token: &TokenState, now: DateTime<Utc>) -> Result<Consumed, Denial> {
        let c = &token.counters;
        match token.max_requests {
            Some(max) => {
                let lease = c.lease.load(Ordering::Acquire).min(max);
                let counted =
                    c.request_count
                        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                            (n < lease).then_some(n + 1)
                        });
                match counted {
                    Ok(_) => {}
                    Err(n) if n >= max => return Err(Denial::QuotaExceeded(max)),
                    Err(_) => return Ok(Consumed::NeedsLease),
                }
            }
            None => {
                c.request_count.fetch_add(1, Ordering::AcqRel);
            }
        }
        c.admitted(now);
        Ok(Consumed::Counted)
    }

    /// Counts a request that Redis admitted (it decided the quota): `used` is
    /// the token's count there after it, when the token has a quota.
    pub fn count_shared(&self, token: &TokenState, used: Option<i64>, now: DateTime<Utc>) {
        let c = &token.counters;
        let floor = used.unwrap_or(0);
        let _ = c
            .request_count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                Some((n + 1).max(floor))
            });
        c.admitted(now);
    }

    /// What Redis reported a token has used (a refusal): known from now on, so
    /// it seeds the quota key if Redis ever loses it, and bounds the fallback.
    pub fn observe_used(&self, token: &TokenState, used: i64) {
        token
            .counters
            .request_count
            .fetch_max(used, Ordering::AcqRel);
    }

    /// Live counters for a token, which may be ahead of the last database flush.
    pub fn counters(&self, id: TokenId) -> Option<Arc<TokenCounters>> {
        self.tokens.get(&id).map(|t| Arc::clone(&t.counters))
    }

    /// Tokens by state, for `palisade_tokens_total` (a scan; scrape time only).
    pub fn census(&self, now: DateTime<Utc>) -> [(&'static str, i64); 4] {
        let (mut active, mut inactive, mut expired, mut revoked) = (0, 0, 0, 0);
        for t in &self.tokens {
            let deleted = self.projects.get(&t.project_id).is_none_or(|p| p.deleted);
            match () {
                () if t.revoked || deleted => revoked += 1,
                () if now >= t.expires_at => expired += 1,
                () if !t.is_active => inactive += 1,
                () => active += 1,
            }
        }
        [
            ("active", active),
            ("inactive", inactive),
            ("expired", expired),
            ("revoked", revoked),
        ]
    }
}

/// Client-IP policy: token list first, then project list; both must allow.
pub fn ip_allowed(resolved: &Resolved, ip: IpAddr) -> bool {
    resolved.token.allowed_cidrs.allows(ip) && resolved.project.allowed_cidrs.allows(ip)
}

// === impl TokenCache: the writer side, used by the actor only ===

impl TokenCache {
    pub(super) fn put_project(&self, state: ProjectState) {
        self.projects.insert(state.id, Arc::new(state));
    }

    /// Installs a token snapshot, keeping the live counters if it is already known.
    pub(super) fn put_token(
        &self,
        mut state: TokenState,
        hash: TokenHash,
        previous: Option<(TokenHash, DateTime<Utc>)>,
    ) {
        if let Some(existing) = self.tokens.get(&state.id) {
            state.counters = Arc::clone(&existing.counters);
        }
        let id = state.id;
        let keep = |h: &TokenHash| *h == hash || previous.is_some_and(|(p, _)| p == *h);
        // Drop hashes that no longer belong to this token (rotation).
        if let Some(old) = self.hashes_of.get(&id).map(|v| v.clone()) {
            for h in old.iter().filter(|h| !keep(h)) {
                self.by_hash.remove(h);
            }
        }
        self.hashes_of.insert(
            id,
            std::iter::once(hash)
                .chain(previous.map(|(p, _)| p))
                .collect(),
        );
        self.by_hash.insert(
            hash,
            HashSlot {
                token: id,
                valid_until: None,
            },
        );
        if let Some((prev, until)) = previous {
            self.by_hash.insert(
                prev,
                HashSlot {
                    token: id,
                    valid_until: Some(until),
                },
            );
        }
        self.tokens.insert(id, Arc::new(state));
    }

    /// Replaces a token's policy snapshot through `f`, keeping its hashes.
    pub(super) fn update_token(&self, id: TokenId, f: impl FnOnce(&TokenState) -> TokenState) {
        if let Some(mut entry) = self.tokens.get_mut(&id) {
            let next = f(&entry);
            *entry = Arc::new(next);
        }
    }

    pub(super) fn tokens_of(&self, project: ProjectId) -> Vec<TokenId> {
        self.tokens
            .iter()
            .filter(|t| t.project_id == project)
            .map(|t| t.id)
            .collect()
    }

    /// Dirty counters to write back: `(id, requests to add, last_used)`.
    pub(super) fn take_dirty(&self) -> Vec<(TokenId, i64, Option<DateTime<Utc>>)> {
        self.tokens
            .iter()
            .filter(|t| t.counters.take_dirty())
            .map(|t| (t.id, t.counters.take_unflushed(), t.counters.last_used()))
            .collect()
    }

    /// A write-back of `taken` failed: everything in it is owed again.
    pub(super) fn give_back(&self, taken: &[(TokenId, i64, Option<DateTime<Utc>>)]) {
        for (id, delta, _) in taken {
            if let Some(t) = self.tokens.get(id) {
                t.counters.give_back(*delta);
            }
        }
    }

    /// Forgets pre-rotation secrets whose grace has ended.
    pub(super) fn prune_expired_previous(&self, now: DateTime<Utc>) {
        self.by_hash
            .retain(|_, slot| slot.valid_until.is_none_or(|until| now < until));
    }
}

impl TokenState {
    /// A copy with new policy fields and the same counters.
    pub fn with(&self, f: impl FnOnce(&mut TokenState)) -> TokenState {
        let mut next = TokenState {
            id: self.id,
            project_id: self.project_id,
            hint: self.hint.clone(),
            is_active: self.is_active,
            revoked: self.revoked,
            expires_at: self.expires_at,
            max_requests: self.max_requests,
            rate_limit_rpm: self.rate_limit_rpm,
            allowed_models: self.allowed_models.clone(),
            allowed_cidrs: self.allowed_cidrs.clone(),
            counters: Arc::clone(&self.counters),
        };
        f(&mut next);
        next
    }
}

#[cfg(test)]
mod tests;
