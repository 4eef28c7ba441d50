//! Keeping the cache in step with the database when several instances share it
//! (SPEC §5, "cross-instance coherence").
//!
//! Every management write bumps the registry revision (`registry_revision`) after it
//! commits ([`atomic_write`]). Each instance reloads its whole registry when the
//! revision moved past what it last saw ([`Sync`]). It learns of a move two ways:
//!
//! * **Push** (PostgreSQL): the bump runs `pg_notify` in its transaction;
//!   [`listen_forever`] holds a `LISTEN` connection and asks for a sync on each
//!   notice, and for a forced full reload each time it (re)connects, since notices
//!   sent while it was away are lost.
//! * **Safety net** (any backend): [`poll_forever`] reads the revision every
//!   `tokens.sync_interval`, whether or not the push works; and every
//!   [`FULL_RELOAD_EVERY`] reloads regardless, which covers a write whose bump was
//!   lost (the writer died between its commit and the bump).
//!
//! A reload is a message to the registry actor, so it is ordered with this
//! instance's own writes and can never put back a state older than one the actor
//! just wrote. A token unknown to the cache is looked up in the database before it
//! is refused ([`Registry::find_unknown`]), through the actor for the same reason:
//! a token made on another instance works here on its first request, whatever the
//! push and poll are doing. Misses are remembered (until the next reload, at most
//! [`MISS_TTL`]) and look-ups are capped at [`LOOKUPS_PER_SECOND`], so bogus
//! tokens cannot turn into a database flood; beyond the cap a secret not in the
//! cache is refused as unknown (fail closed).

use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use actix::prelude::*;
use dashmap::DashMap;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use sea_orm::DatabaseConnection;

use super::convert::{project_state, token_state};
use super::{Registry, RegistryError, TokenCache, TokenRegistry};
use crate::crypto::KeyCipher;
use crate::secret::TokenHash;
use crate::service::query::Query;
use crate::service::registry_sync;

/// A full reload however quiet the revision: covers a lost bump.
pub const FULL_RELOAD_EVERY: Duration = Duration::from_secs(60);
/// How long a secret found in no row is refused without asking the database again
/// (any reload forgets it sooner).
pub const MISS_TTL: Duration = Duration::from_secs(30);
/// Database look-ups of secrets unknown to the cache, per second, per instance.
pub const LOOKUPS_PER_SECOND: u32 = 50;
/// Misses remembered at most; beyond it the oldest knowledge is simply dropped.
const MAX_MISSES: usize = 10_000;
/// Wait before reconnecting a lost `LISTEN` connection.
const RELISTEN_AFTER: Duration = Duration::from_secs(1);

/// What the cache last caught up with, and what it knows is not in the database.
pub struct SyncState {
    /// The revision the cache reflects (`-1`: none yet).
    seen: AtomicI64,
    misses: DashMap<TokenHash, tokio::time::Instant>,
    lookups: DefaultDirectRateLimiter,
    /// The last sync failed (for logging transitions only).
    failing: AtomicBool,
}

impl Default for SyncState {
    fn default() -> Self {
        let per_second = NonZeroU32::new(LOOKUPS_PER_SECOND).unwrap_or(NonZeroU32::MIN);
        Self {
            seen: AtomicI64::new(-1),
            misses: DashMap::new(),
            lookups: RateLimiter::direct(Quota::per_second(per_second)),
            failing: AtomicBool::new(false),
        }
    }
}

impl SyncState {
    /// The cache reflects `revision` (loaded at start-up).
    pub(super) fn caught_up(&self, revision: i64) {
        self.seen.store(revision, Ordering::Release);
    }

    fn is_known_miss(&self, hash: &TokenHash) -> bool {
        self.misses
            .get(hash)
            .is_some_and(|until| tokio::time::Instant::now() < *until)
    }

    fn remember_miss(&self, hash: TokenHash) {
        if self.misses.len() >= MAX_MISSES {
            self.misses.clear();
        }
        self.misses
            .insert(hash, tokio::time::Instant::now() + MISS_TTL);
    }
}

/// Reload the registry if the revision moved (or always, with `force`).
#[derive(Message)]
#[rtype(result = "Result<bool, RegistryError>")]
pub struct Sync {
    pub force: bool,
    /// What asked: `push`, `poll`, `reconnect`, `periodic` (logged).
    pub source: &'static str,
}

impl Handler<Sync> for TokenRegistry {
    type Result = AtomicResponse<Self, Result<bool, RegistryError>>;

    fn handle(&mut self, msg: Sync, _: &mut Context<Self>) -> Self::Result {
        let (db, cache, cipher, sync) = (
            self.db.clone(),
            Arc::clone(&self.cache),
            self.cipher.clone(),
            Arc::clone(&self.sync),
        );
        super::atomic(self, async move {
            let revision = registry_sync::revision(&db).await?;
            if !msg.force && revision == sync.seen.load(Ordering::Acquire) {
                return Ok(false);
            }
            let (projects, tokens) = reload(&db, &cache, cipher.as_ref()).await?;
            sync.misses.clear();
            let before = sync.seen.swap(revision, Ordering::AcqRel);
            if before != revision {
                tracing::info!(
                    revision,
                    source = msg.source,
                    projects,
                    tokens,
                    "registry changed elsewhere; reloaded"
                );
            }
            Ok(true)
        })
    }
}

/// Loads every project and token into `cache` (tokens it already holds keep
/// their live counters); returns how many of each.
pub(super) async fn reload(
    db: &DatabaseConnection,
    cache: &TokenCache,
    cipher: Option<&KeyCipher>,
) -> Result<(usize, usize), sea_orm::DbErr> {
    let projects = Query::all_projects(db).await?;
    let tokens = Query::all_tokens(db).await?;
    for p in &projects {
        cache.put_project(project_state(p, cipher));
    }
    for t in &tokens {
        let (state, hash, prev) = token_state(t, None);
        if let Some(hash) = hash {
            cache.put_token(state, hash, prev);
        }
    }
    Ok((projects.len(), tokens.len()))
}

/// Look a secret's hash up in the database; `true` when it named a token (now
/// in the cache).
#[derive(Message)]
#[rtype(result = "Result<bool, RegistryError>")]
pub struct FindToken(pub TokenHash);

impl Handler<FindToken> for TokenRegistry {
    type Result = AtomicResponse<Self, Result<bool, RegistryError>>;

    fn handle(&mut self, FindToken(hash): FindToken, _: &mut Context<Self>) -> Self::Result {
        let (db, cache, cipher) = (
            self.db.clone(),
            Arc::clone(&self.cache),
            self.cipher.clone(),
        );
        super::atomic(self, async move {
            let hex = hash.to_hex();
            let Some(row) = registry_sync::token_by_hash(&db, &hex).await? else {
                return Ok(false);
            };
            // A pre-rotation secret past its grace names nothing: a miss, so it is
            // not looked up again on every request.
            let in_grace = row
                .previous_valid_until
                .is_some_and(|until| crate::time::now() < until);
            if row.token_hash != hex && !in_grace {
                return Ok(false);
            }
            let Some(project) = Query::project(&db, row.project_id).await? else {
                return Ok(false);
            };
            cache.put_project(project_state(&project, cipher.as_ref()));
            let (state, current, prev) = token_state(&row, None);
            if let Some(current) = current {
                cache.put_token(state, current, prev);
            }
            tracing::debug!(token_id = %row.id, "token made elsewhere found in the database");
            Ok(true)
        })
    }
}

impl Registry {
    /// A secret the cache does not know: `true` when the database has it (it is in
    /// the cache now; look it up again). `false` for a remembered miss, past the
    /// look-up cap, or when the database cannot be asked: the secret is refused.
    pub async fn find_unknown(&self, hash: &TokenHash) -> bool {
        if self.sync.is_known_miss(hash) || self.sync.lookups.check().is_err() {
            return false;
        }
        match self.addr.send(FindToken(*hash)).await {
            Ok(Ok(true)) => true,
            Ok(Ok(false)) => {
                self.sync.remember_miss(*hash);
                false
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot look a token up in the database; refusing it");
                false
            }
            Err(e) => {
                tracing::warn!(error = %e, "token registry unavailable; refusing an unknown token");
                false
            }
        }
    }

    /// One sync; a failure is logged when syncs start failing and when they
    /// work again, not every `tokens.sync_interval` in between.
    async fn sync(&self, force: bool, source: &'static str) {
        let error = match self.addr.send(Sync { force, source }).await {
            Ok(Ok(_)) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(e) => Some(format!("token registry: {e}")),
        };
        let was_failing = self.sync.failing.swap(error.is_some(), Ordering::AcqRel);
        match error {
            Some(e) if !was_failing => {
                tracing::warn!(error = %e, source, "registry sync failed; changes made on other instances wait until it works again");
            }
            None if was_failing => tracing::info!(source, "registry sync works again"),
            _ => {}
        }
    }
}

/// The safety net: the revision every `every`, a full reload every
/// [`FULL_RELOAD_EVERY`].
pub async fn poll_forever(registry: Registry, every: Duration) {
    let mut full = tokio::time::interval(FULL_RELOAD_EVERY);
    full.tick().await;
    let mut poll = tokio::time::interval(every);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = poll.tick() => registry.sync(false, "poll").await,
            _ = full.tick() => registry.sync(true, "periodic").await,
        }
    }
}

/// The push path on PostgreSQL: `LISTEN` on [`registry_sync::CHANNEL`] with a
/// connection of its own (named `palisade-sync-<instance>` in
/// `pg_stat_activity`), a sync per notice, a forced reload per (re)connection.
pub async fn listen_forever(registry: Registry, url: crate::secret::Secret, instance: String) {
    use sea_orm::sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
    let mut failing = false;
    loop {
        let listened = async {
            let options: PgConnectOptions = url
                .expose()
                .parse::<PgConnectOptions>()?
                .application_name(&format!("palisade-sync-{instance}"));
            let pool = PgPoolOptions::new()
                .max_connections(1)
                .connect_lazy_with(options);
            let mut listener = PgListener::connect_with(&pool).await?;
            // Notices do not queue while nobody listens: reload once listening.
            listener.listen(registry_sync::CHANNEL).await?;
            Ok::<_, sea_orm::sqlx::Error>(listener)
        }
        .await;
        let mut listener = match listened {
            Ok(l) => l,
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %e, "cannot listen for registry changes; relying on the revision poll");
                    failing = true;
                }
                tokio::time::sleep(RELISTEN_AFTER).await;
                continue;
            }
        };
        if failing {
            tracing::info!("listening for registry changes again");
        }
        registry.sync(true, "reconnect").await;
        // `try_recv` ends with `None` when the connection is lost (instead of
        // reconnecting silently, as `recv` would, losing notices unnoticed).
        while let Ok(Some(_)) = listener.try_recv().await {
            registry.sync(false, "push").await;
        }
        tracing::warn!(
            "lost the registry change listener; reconnecting (the revision poll covers the gap)"
        );
        failing = true;
        tokio::time::sleep(RELISTEN_AFTER).await;
    }
}

/// The revision this instance's own write produced: the cache already has the
/// write, so when nobody else wrote in between there is nothing to reload.
pub(super) fn saw_own_write(sync: &SyncState, revision: i64) {
    let _ = sync
        .seen
        .compare_exchange(revision - 1, revision, Ordering::AcqRel, Ordering::Acquire);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_miss_is_remembered_for_its_ttl_only() {
        let sync = SyncState::default();
        let hash = TokenHash::of("tok-bogus");
        assert!(!sync.is_known_miss(&hash));
        sync.remember_miss(hash);
        assert!(sync.is_known_miss(&hash));
        tokio::time::advance(MISS_TTL - Duration::from_millis(1)).await;
        assert!(sync.is_known_miss(&hash));
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(!sync.is_known_miss(&hash), "remembered past its TTL");
    }

    #[test]
    fn misses_are_bounded() {
        let sync = SyncState::default();
        for i in 0..=MAX_MISSES {
            sync.remember_miss(TokenHash::of(&format!("tok-{i}")));
        }
        assert!(sync.misses.len() <= MAX_MISSES);
    }

    #[test]
    fn an_own_write_counts_as_seen_only_when_nobody_wrote_in_between() {
        let sync = SyncState::default();
        sync.caught_up(7);
        saw_own_write(&sync, 8);
        assert_eq!(sync.seen.load(Ordering::Acquire), 8);
        // Another instance wrote revision 9: our write is 10, and 9 is unseen.
        saw_own_write(&sync, 10);
        assert_eq!(
            sync.seen.load(Ordering::Acquire),
            8,
            "a reload is still due"
        );
    }

    #[test]
    fn look_ups_are_capped_per_second() {
        let sync = SyncState::default();
        let allowed = (0..LOOKUPS_PER_SECOND * 2)
            .filter(|_| sync.lookups.check().is_ok())
            .count();
        assert_eq!(allowed, LOOKUPS_PER_SECOND as usize);
    }
}
