//! `TokenRegistry`: the only writer of project and token state (SPEC §1).
//!
//! Messages (each a management write; all `AtomicResponse`, so writes apply one at a
//! time and the cache can never disagree with the row just written):
//! `CreateProject`, `UpdateProject`, `DeleteProject`, `RevokeProjectTokens`,
//! `CreateToken`, `UpdateToken`, `RevokeToken`, `RotateToken`, `FlushUsage`.
//!
//! Every write goes to the database first and to the cache second, and the reply is
//! sent only after both, so a revoke is effective before its HTTP response leaves.
//! Request handlers never message this actor: they read [`TokenCache`] directly.
//! Request counters are added to the database's (as deltas) every
//! `tokens.usage_flush_interval` in one transaction, and once more at shutdown
//! (`FlushUsage`). Quota'd tokens are also
//! admitted under a request lease written ahead of time (`lease`), so a crash
//! between flushes cannot let a token exceed `max_requests`.

pub mod cache;
pub(crate) mod convert;
mod error;
mod lease;
mod project_writes;
pub mod sync;
mod token_writes;

pub use self::project_writes::{
    CreateProject, DeleteProject, NewProject, ProjectPatch, RevokeProjectTokens, UpdateProject,
};
pub use self::token_writes::{
    CreateToken, FlushUsage, IssuedToken, NewToken, RevokeToken, RotateToken, TokenPatch,
    UpdateToken,
};

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use chrono::{DateTime, Utc};
use sea_orm::DatabaseConnection;

pub use self::cache::{Denial, Refused, Resolved, TokenCache, TokenCounters};
pub use self::error::RegistryError;
use self::error::conflict_or;
pub use self::lease::ConsumeError;
use self::sync::SyncState;
use crate::crypto::KeyCipher;
use crate::secret::TokenHash;
use crate::service::mutation::Mutation;

/// The handle the rest of the server holds: the shared cache for reads and the
/// actor's address for writes.
#[derive(Clone)]
pub struct Registry {
    pub cache: Arc<TokenCache>,
    pub addr: Addr<TokenRegistry>,
    /// Where request leases are written (`lease`): from the request that needs
    /// one, not through the actor's mailbox.
    db: DatabaseConnection,
    sync: Arc<SyncState>,
}

pub struct TokenRegistry {
    db: DatabaseConnection,
    cache: Arc<TokenCache>,
    cipher: Option<KeyCipher>,
    flush_interval: Duration,
    sync: Arc<SyncState>,
}

impl TokenRegistry {
    /// Loads every project and token into a fresh cache and starts the actor on its
    /// own arbiter thread.
    pub async fn start(
        db: DatabaseConnection,
        cipher: Option<KeyCipher>,
        flush_interval: Duration,
    ) -> Result<Registry, sea_orm::DbErr> {
        let cache = Arc::new(TokenCache::default());
        let sync = Arc::new(SyncState::default());
        // The revision first: a change made while loading is then seen as new.
        let revision = crate::service::registry_sync::revision(&db).await?;
        self::sync::reload(&db, &cache, cipher.as_ref()).await?;
        sync.caught_up(revision);
        let actor = TokenRegistry {
            db: db.clone(),
            cache: Arc::clone(&cache),
            cipher,
            flush_interval,
            sync: Arc::clone(&sync),
        };
        let arbiter = Arbiter::new();
        let addr = TokenRegistry::start_in_arbiter(&arbiter.handle(), move |_| actor);
        Ok(Registry {
            cache,
            addr,
            db,
            sync,
        })
    }

    /// Adds what was counted since the last flush to the database's counts
    /// (deltas, so several instances' counts add up); `release_leases` at
    /// shutdown (see `lease`).
    fn flush(
        &self,
        release_leases: bool,
    ) -> impl Future<Output = Result<usize, sea_orm::DbErr>> + 'static {
        let dirty = self.cache.take_dirty();
        let db = self.db.clone();
        let cache = Arc::clone(&self.cache);
        self.cache.prune_expired_previous(Utc::now());
        async move {
            let batch: Vec<_> = dirty.iter().map(|(id, n, t)| (id.0, *n, *t)).collect();
            match Mutation::flush_usage(&db, &batch, release_leases).await {
                Ok(()) => Ok(batch.len()),
                Err(e) => {
                    // Owed again: the next tick adds them with its own, nothing
                    // is lost.
                    cache.give_back(&dirty);
                    Err(e)
                }
            }
        }
    }
}

impl Actor for TokenRegistry {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(self.flush_interval, |act, ctx| {
            let fut = act.flush(false);
            ctx.wait(fut.into_actor(act).map(|res, _, _| {
                if let Err(e) = res {
                    tracing::error!(error = %e, "writing token usage counters failed; will retry");
                }
            }));
        });
    }
}

fn now() -> DateTime<Utc> {
    crate::time::now()
}

/// Wraps an async block as an atomic actor response.
fn atomic<T: 'static>(
    act: &TokenRegistry,
    fut: impl Future<Output = T> + 'static,
) -> AtomicResponse<TokenRegistry, T> {
    AtomicResponse::new(Box::pin(fut.into_actor(act)))
}

/// As [`atomic`], for a write to projects or tokens: once it succeeded, the
/// registry revision is bumped so other instances reload (see `sync`). A failed
/// bump is logged, not returned: the write itself stands, and the other
/// instances' periodic full reload picks it up.
fn atomic_write<T: 'static, E: 'static>(
    act: &TokenRegistry,
    fut: impl Future<Output = Result<T, E>> + 'static,
) -> AtomicResponse<TokenRegistry, Result<T, E>> {
    let (db, sync) = (act.db.clone(), Arc::clone(&act.sync));
    atomic(act, async move {
        let out = fut.await;
        if out.is_ok() {
            match crate::service::registry_sync::bump_revision(&db).await {
                Ok(revision) => self::sync::saw_own_write(&sync, revision),
                Err(e) => tracing::warn!(
                    error = %e,
                    "cannot count a registry change; other instances see it at their next full reload"
                ),
            }
        }
        out
    })
}

/// Hash of a stored hex digest; `None` for a corrupt row (which then matches nothing).
pub(crate) fn parse_hash(hex: &str) -> Option<TokenHash> {
    TokenHash::from_hex(hex)
}

impl Registry {
    /// Sends a management write and waits for it to be applied.
    pub async fn ask<M, T>(&self, msg: M) -> Result<T, RegistryError>
    where
        M: actix::Message<Result = Result<T, RegistryError>> + Send + 'static,
        T: Send + 'static,
        TokenRegistry: actix::Handler<M>,
    {
        self.addr
            .send(msg)
            .await
            .map_err(|e| RegistryError::Unavailable(format!("token registry: {e}")))?
    }
}
#[cfg(test)]
mod tests;
