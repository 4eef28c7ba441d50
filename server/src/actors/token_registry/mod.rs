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
//! Request counters are written back every `tokens.usage_flush_interval` in one
//! transaction, and once more at shutdown (`FlushUsage`).

pub mod cache;
pub(crate) mod convert;

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use chrono::{DateTime, Utc};
use entity::{projects, tokens};
use ipnet::IpNet;
use sea_orm::{ActiveValue::Set, DatabaseConnection, IntoActiveModel, SqlErr};

pub use self::cache::{Resolved, TokenCache, TokenCounters};
use self::convert::{json_list, project_state, token_state};
use crate::crypto::KeyCipher;
use crate::error::ManageError;
use crate::ids::{ProjectId, TokenId};
use crate::secret::{Secret, TokenHash, TokenSecret};
use crate::service::mutation::Mutation;
use crate::service::query::Query;

/// The handle the rest of the server holds: the shared cache for reads and the
/// actor's address for writes.
#[derive(Clone)]
pub struct Registry {
    pub cache: Arc<TokenCache>,
    pub addr: Addr<TokenRegistry>,
}

pub struct TokenRegistry {
    db: DatabaseConnection,
    cache: Arc<TokenCache>,
    cipher: Option<KeyCipher>,
    flush_interval: Duration,
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
        for p in Query::all_projects(&db).await? {
            cache.put_project(project_state(&p, cipher.as_ref()));
        }
        for t in Query::all_tokens(&db).await? {
            let (state, hash, prev) = token_state(&t, None);
            if let Some(hash) = hash {
                cache.put_token(state, hash, prev);
            }
        }
        let actor = TokenRegistry {
            db,
            cache: Arc::clone(&cache),
            cipher,
            flush_interval,
        };
        let arbiter = Arbiter::new();
        let addr = TokenRegistry::start_in_arbiter(&arbiter.handle(), move |_| actor);
        Ok(Registry { cache, addr })
    }

    fn flush(&self) -> impl Future<Output = Result<usize, sea_orm::DbErr>> + 'static {
        let dirty = self.cache.take_dirty();
        let db = self.db.clone();
        let cache = Arc::clone(&self.cache);
        self.cache.prune_expired_previous(Utc::now());
        async move {
            let batch: Vec<_> = dirty.iter().map(|(id, n, t)| (id.0, *n, *t)).collect();
            match Mutation::flush_usage(&db, &batch).await {
                Ok(()) => Ok(batch.len()),
                Err(e) => {
                    // Keep them dirty: the next tick retries, nothing is lost.
                    let ids: Vec<TokenId> = dirty.iter().map(|(id, _, _)| *id).collect();
                    cache.mark_dirty(&ids);
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
            let fut = act.flush();
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

fn conflict_or(e: sea_orm::DbErr, what: &str) -> ManageError {
    match e.sql_err() {
        Some(SqlErr::UniqueConstraintViolation(_)) => ManageError::Conflict(what.to_owned()),
        _ => e.into(),
    }
}

/// Wraps an async block as an atomic actor response.
fn atomic<T: 'static>(
    act: &TokenRegistry,
    fut: impl Future<Output = T> + 'static,
) -> AtomicResponse<TokenRegistry, T> {
    AtomicResponse::new(Box::pin(fut.into_actor(act)))
}

// === Projects ===

pub struct NewProject {
    pub name: String,
    pub description: Option<String>,
    pub upstream_api_key: Option<Secret>,
    pub allowed_models: Vec<String>,
    pub allowed_cidrs: Vec<IpNet>,
    pub rate_limit_rpm: Option<i64>,
}

#[derive(Message)]
#[rtype(result = "Result<projects::Model, ManageError>")]
pub struct CreateProject(pub NewProject);

impl Handler<CreateProject> for TokenRegistry {
    type Result = AtomicResponse<Self, Result<projects::Model, ManageError>>;

    fn handle(&mut self, CreateProject(p): CreateProject, _: &mut Context<Self>) -> Self::Result {
        let (db, cache, cipher) = (
            self.db.clone(),
            Arc::clone(&self.cache),
            self.cipher.clone(),
        );
        atomic(self, async move {
            let key = encrypt_key(cipher.as_ref(), p.upstream_api_key.as_ref())?;
            let at = now();
            let row = projects::ActiveModel {
                id: Set(ProjectId::new().0),
                name: Set(p.name),
                description: Set(p.description),
                is_active: Set(true),
                upstream_api_key_enc: Set(key),
                allowed_models: Set(json_list(&p.allowed_models)),
                allowed_cidrs: Set(json_list(&p.allowed_cidrs)),
                rate_limit_rpm: Set(p.rate_limit_rpm),
                created_at: Set(at),
                updated_at: Set(at),
                deleted_at: Set(None),
            };
            let model = Mutation::insert_project(&db, row)
                .await
                .map_err(|e| conflict_or(e, "a project with this name already exists"))?;
            cache.put_project(project_state(&model, cipher.as_ref()));
            Ok(model)
        })
    }
}

fn encrypt_key(
    cipher: Option<&KeyCipher>,
    key: Option<&Secret>,
) -> Result<Option<String>, ManageError> {
    match (key, cipher) {
        (None, _) => Ok(None),
        (Some(k), Some(c)) => Ok(Some(c.encrypt(k))),
        (Some(_), None) => Err(ManageError::field(
            "upstream_api_key",
            "storing upstream keys needs auth.encryption_key (PALISADE_ENCRYPTION_KEY, base64 of 32 bytes); keys are never stored in plaintext",
        )),
    }
}

#[derive(Default)]
pub struct ProjectPatch {
    pub name: Option<String>,
    pub description: Option<Option<String>>,
    pub is_active: Option<bool>,
    pub upstream_api_key: Option<Option<Secret>>,
    pub allowed_models: Option<Vec<String>>,
    pub allowed_cidrs: Option<Vec<IpNet>>,
    pub rate_limit_rpm: Option<Option<i64>>,
}

#[derive(Message)]
#[rtype(result = "Result<projects::Model, ManageError>")]
pub struct UpdateProject(pub ProjectId, pub ProjectPatch);

impl Handler<UpdateProject> for TokenRegistry {
    type Result = AtomicResponse<Self, Result<projects::Model, ManageError>>;

    fn handle(
        &mut self,
        UpdateProject(id, p): UpdateProject,
        _: &mut Context<Self>,
    ) -> Self::Result {
        let (db, cache, cipher) = (
            self.db.clone(),
            Arc::clone(&self.cache),
            self.cipher.clone(),
        );
        atomic(self, async move {
            let current = Query::project(&db, id.0)
                .await?
                .ok_or(ManageError::NotFound("project"))?;
            let mut row = current.into_active_model();
            if let Some(v) = p.name {
                row.name = Set(v);
            }
            if let Some(v) = p.description {
                row.description = Set(v);
            }
            if let Some(v) = p.is_active {
                row.is_active = Set(v);
            }
            if let Some(v) = p.upstream_api_key {
                row.upstream_api_key_enc = Set(encrypt_key(cipher.as_ref(), v.as_ref())?);
            }
            if let Some(v) = p.allowed_models {
                row.allowed_models = Set(json_list(&v));
            }
            if let Some(v) = p.allowed_cidrs {
                row.allowed_cidrs = Set(json_list(&v));
            }
            if let Some(v) = p.rate_limit_rpm {
                row.rate_limit_rpm = Set(v);
            }
            row.updated_at = Set(now());
            let model = Mutation::update_project(&db, row)
                .await
                .map_err(|e| conflict_or(e, "a project with this name already exists"))?;
            cache.put_project(project_state(&model, cipher.as_ref()));
            Ok(model)
        })
    }
}

/// Deletes (soft) a project and revokes its tokens; replies with the revoked count.
#[derive(Message)]
#[rtype(result = "Result<u64, ManageError>")]
pub struct DeleteProject(pub ProjectId);

impl Handler<DeleteProject> for TokenRegistry {
    type Result = AtomicResponse<Self, Result<u64, ManageError>>;

    fn handle(&mut self, DeleteProject(id): DeleteProject, _: &mut Context<Self>) -> Self::Result {
        let (db, cache, cipher) = (
            self.db.clone(),
            Arc::clone(&self.cache),
            self.cipher.clone(),
        );
        atomic(self, async move {
            let current = Query::project(&db, id.0)
                .await?
                .ok_or(ManageError::NotFound("project"))?;
            let at = now();
            let revoked = Mutation::delete_project(&db, id.0, at).await?;
            let mut gone = current;
            gone.deleted_at = Some(at);
            cache.put_project(project_state(&gone, cipher.as_ref()));
            revoke_in_cache(&cache, id);
            Ok(revoked)
        })
    }
}

#[derive(Message)]
#[rtype(result = "Result<u64, ManageError>")]
pub struct RevokeProjectTokens(pub ProjectId);

impl Handler<RevokeProjectTokens> for TokenRegistry {
    type Result = AtomicResponse<Self, Result<u64, ManageError>>;

    fn handle(
        &mut self,
        RevokeProjectTokens(id): RevokeProjectTokens,
        _: &mut Context<Self>,
    ) -> Self::Result {
        let (db, cache) = (self.db.clone(), Arc::clone(&self.cache));
        atomic(self, async move {
            Query::project(&db, id.0)
                .await?
                .ok_or(ManageError::NotFound("project"))?;
            let revoked = Mutation::revoke_project_tokens(&db, id.0, now()).await?;
            revoke_in_cache(&cache, id);
            Ok(revoked)
        })
    }
}

fn revoke_in_cache(cache: &TokenCache, project: ProjectId) {
    for token in cache.tokens_of(project) {
        cache.update_token(token, |t| t.with(|t| t.revoked = true));
    }
}

// === Tokens ===

pub struct NewToken {
    pub project_id: ProjectId,
    pub name: Option<String>,
    pub expires_at: DateTime<Utc>,
    pub max_requests: Option<i64>,
    pub rate_limit_rpm: Option<i64>,
    pub allowed_models: Vec<String>,
    pub allowed_cidrs: Vec<IpNet>,
}

/// A token row plus its secret, shown once.
pub struct IssuedToken {
    pub model: tokens::Model,
    pub secret: TokenSecret,
}

#[derive(Message)]
#[rtype(result = "Result<IssuedToken, ManageError>")]
pub struct CreateToken(pub NewToken);

impl Handler<CreateToken> for TokenRegistry {
    type Result = AtomicResponse<Self, Result<IssuedToken, ManageError>>;

    fn handle(&mut self, CreateToken(t): CreateToken, _: &mut Context<Self>) -> Self::Result {
        let (db, cache) = (self.db.clone(), Arc::clone(&self.cache));
        atomic(self, async move {
            let project = Query::project(&db, t.project_id.0)
                .await?
                .ok_or(ManageError::NotFound("project"))?;
            if !project.is_active {
                return Err(ManageError::ProjectInactive);
            }
            let secret = TokenSecret::generate();
            let at = now();
            let row = tokens::ActiveModel {
                id: Set(TokenId::new().0),
                project_id: Set(project.id),
                name: Set(t.name),
                token_hash: Set(secret.hash().to_hex()),
                token_hint: Set(secret.hint()),
                previous_token_hash: Set(None),
                previous_valid_until: Set(None),
                is_active: Set(true),
                revoked_at: Set(None),
                expires_at: Set(t.expires_at),
                max_requests: Set(t.max_requests),
                request_count: Set(0),
                rate_limit_rpm: Set(t.rate_limit_rpm),
                allowed_models: Set(json_list(&t.allowed_models)),
                allowed_cidrs: Set(json_list(&t.allowed_cidrs)),
                last_used_at: Set(None),
                created_at: Set(at),
                updated_at: Set(at),
            };
            let model = Mutation::insert_token(&db, row).await?;
            let (state, hash, _) = token_state(&model, None);
            if let Some(hash) = hash {
                cache.put_token(state, hash, None);
            }
            Ok(IssuedToken { model, secret })
        })
    }
}

#[derive(Default)]
pub struct TokenPatch {
    pub name: Option<Option<String>>,
    pub is_active: Option<bool>,
    pub expires_at: Option<DateTime<Utc>>,
    pub max_requests: Option<Option<i64>>,
    pub rate_limit_rpm: Option<Option<i64>>,
    pub allowed_models: Option<Vec<String>>,
    pub allowed_cidrs: Option<Vec<IpNet>>,
}

#[derive(Message)]
#[rtype(result = "Result<tokens::Model, ManageError>")]
pub struct UpdateToken(pub TokenId, pub TokenPatch);

impl Handler<UpdateToken> for TokenRegistry {
    type Result = AtomicResponse<Self, Result<tokens::Model, ManageError>>;

    fn handle(&mut self, UpdateToken(id, p): UpdateToken, _: &mut Context<Self>) -> Self::Result {
        let (db, cache) = (self.db.clone(), Arc::clone(&self.cache));
        atomic(self, async move {
            let current = Query::token(&db, id.0)
                .await?
                .ok_or(ManageError::NotFound("token"))?;
            if let Some(at) = p.expires_at
                && at > current.expires_at
            {
                return Err(ManageError::field(
                    "expires_at",
                    "expiry cannot be extended",
                ));
            }
            let mut row = current.into_active_model();
            if let Some(v) = p.name {
                row.name = Set(v);
            }
            if let Some(v) = p.is_active {
                row.is_active = Set(v);
            }
            if let Some(v) = p.expires_at {
                row.expires_at = Set(v);
            }
            if let Some(v) = p.max_requests {
                row.max_requests = Set(v);
            }
            if let Some(v) = p.rate_limit_rpm {
                row.rate_limit_rpm = Set(v);
            }
            if let Some(v) = p.allowed_models {
                row.allowed_models = Set(json_list(&v));
            }
            if let Some(v) = p.allowed_cidrs {
                row.allowed_cidrs = Set(json_list(&v));
            }
            row.updated_at = Set(now());
            let model = Mutation::update_token(&db, row).await?;
            install(&cache, &model);
            Ok(model)
        })
    }
}

/// Puts a token row into the cache with both of its hashes.
fn install(cache: &TokenCache, model: &tokens::Model) {
    let (state, hash, prev) = token_state(model, cache.counters(TokenId(model.id)));
    if let Some(hash) = hash {
        cache.put_token(state, hash, prev);
    }
}

#[derive(Message)]
#[rtype(result = "Result<(), ManageError>")]
pub struct RevokeToken(pub TokenId);

impl Handler<RevokeToken> for TokenRegistry {
    type Result = AtomicResponse<Self, Result<(), ManageError>>;

    fn handle(&mut self, RevokeToken(id): RevokeToken, _: &mut Context<Self>) -> Self::Result {
        let (db, cache) = (self.db.clone(), Arc::clone(&self.cache));
        atomic(self, async move {
            let current = Query::token(&db, id.0)
                .await?
                .ok_or(ManageError::NotFound("token"))?;
            if current.revoked_at.is_some() {
                return Ok(());
            }
            let at = now();
            let mut row = current.into_active_model();
            row.revoked_at = Set(Some(at));
            row.updated_at = Set(at);
            let model = Mutation::update_token(&db, row).await?;
            install(&cache, &model);
            Ok(())
        })
    }
}

#[derive(Message)]
#[rtype(result = "Result<IssuedToken, ManageError>")]
pub struct RotateToken {
    pub id: TokenId,
    pub grace: Duration,
}

impl Handler<RotateToken> for TokenRegistry {
    type Result = AtomicResponse<Self, Result<IssuedToken, ManageError>>;

    fn handle(&mut self, msg: RotateToken, _: &mut Context<Self>) -> Self::Result {
        let (db, cache) = (self.db.clone(), Arc::clone(&self.cache));
        atomic(self, async move {
            let current = Query::token(&db, msg.id.0)
                .await?
                .ok_or(ManageError::NotFound("token"))?;
            let at = now();
            if current.revoked_at.is_some() {
                return Err(ManageError::Conflict(
                    "a revoked token cannot be rotated".into(),
                ));
            }
            if current.expires_at <= at {
                return Err(ManageError::Conflict(
                    "an expired token cannot be rotated".into(),
                ));
            }
            let secret = TokenSecret::generate();
            let grace = chrono::Duration::from_std(msg.grace).unwrap_or_default();
            let previous = (!grace.is_zero()).then(|| (current.token_hash.clone(), at + grace));
            let mut row = current.into_active_model();
            row.token_hash = Set(secret.hash().to_hex());
            row.token_hint = Set(secret.hint());
            row.previous_token_hash = Set(previous.as_ref().map(|(h, _)| h.clone()));
            row.previous_valid_until = Set(previous.map(|(_, t)| t));
            row.updated_at = Set(at);
            let model = Mutation::update_token(&db, row).await?;
            install(&cache, &model);
            Ok(IssuedToken { model, secret })
        })
    }
}

// === Usage counters ===

/// Writes dirty request counters now (used at shutdown); replies with the row count.
#[derive(Message)]
#[rtype(result = "Result<usize, ManageError>")]
pub struct FlushUsage;

impl Handler<FlushUsage> for TokenRegistry {
    type Result = AtomicResponse<Self, Result<usize, ManageError>>;

    fn handle(&mut self, _: FlushUsage, _: &mut Context<Self>) -> Self::Result {
        let fut = self.flush();
        atomic(self, async move { fut.await.map_err(ManageError::from) })
    }
}

/// Hash of a stored hex digest; `None` for a corrupt row (which then matches nothing).
pub(crate) fn parse_hash(hex: &str) -> Option<TokenHash> {
    TokenHash::from_hex(hex)
}
