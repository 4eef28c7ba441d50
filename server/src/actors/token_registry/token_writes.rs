//! Token writes: create, update, revoke, rotate; and the usage write-back.

use std::time::Duration;

use std::sync::Arc;

use actix::prelude::*;
use sea_orm::{ActiveValue::Set, IntoActiveModel};

use super::{RegistryError, TokenRegistry, atomic, atomic_write, now};
use chrono::{DateTime, Utc};
use entity::tokens;
use ipnet::IpNet;

use super::cache::TokenCache;
use super::convert::{json_list, token_state};
use crate::ids::{ProjectId, TokenId};
use crate::secret::TokenSecret;
use crate::service::mutation::Mutation;
use crate::service::query::Query;

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
#[rtype(result = "Result<IssuedToken, RegistryError>")]
pub struct CreateToken(pub NewToken);

impl Handler<CreateToken> for TokenRegistry {
    type Result = AtomicResponse<Self, Result<IssuedToken, RegistryError>>;

    fn handle(&mut self, CreateToken(t): CreateToken, _: &mut Context<Self>) -> Self::Result {
        let (db, cache) = (self.db.clone(), Arc::clone(&self.cache));
        atomic_write(self, async move {
            let project = Query::project(&db, t.project_id.0)
                .await?
                .ok_or(RegistryError::NotFound("project"))?;
            if !project.is_active {
                return Err(RegistryError::ProjectInactive);
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
                request_lease: Set(None),
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
#[rtype(result = "Result<tokens::Model, RegistryError>")]
pub struct UpdateToken(pub TokenId, pub TokenPatch);

impl Handler<UpdateToken> for TokenRegistry {
    type Result = AtomicResponse<Self, Result<tokens::Model, RegistryError>>;

    fn handle(&mut self, UpdateToken(id, p): UpdateToken, _: &mut Context<Self>) -> Self::Result {
        let (db, cache) = (self.db.clone(), Arc::clone(&self.cache));
        atomic_write(self, async move {
            let current = Query::token(&db, id.0)
                .await?
                .ok_or(RegistryError::NotFound("token"))?;
            if let Some(at) = p.expires_at
                && at > current.expires_at
            {
                return Err(RegistryError::field(
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
#[rtype(result = "Result<(), RegistryError>")]
pub struct RevokeToken(pub TokenId);

impl Handler<RevokeToken> for TokenRegistry {
    type Result = AtomicResponse<Self, Result<(), RegistryError>>;

    fn handle(&mut self, RevokeToken(id): RevokeToken, _: &mut Context<Self>) -> Self::Result {
        let (db, cache) = (self.db.clone(), Arc::clone(&self.cache));
        atomic_write(self, async move {
            let current = Query::token(&db, id.0)
                .await?
                .ok_or(RegistryError::NotFound("token"))?;
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
#[rtype(result = "Result<IssuedToken, RegistryError>")]
pub struct RotateToken {
    pub id: TokenId,
    pub grace: Duration,
}

impl Handler<RotateToken> for TokenRegistry {
    type Result = AtomicResponse<Self, Result<IssuedToken, RegistryError>>;

    fn handle(&mut self, msg: RotateToken, _: &mut Context<Self>) -> Self::Result {
        let (db, cache) = (self.db.clone(), Arc::clone(&self.cache));
        atomic_write(self, async move {
            let current = Query::token(&db, msg.id.0)
                .await?
                .ok_or(RegistryError::NotFound("token"))?;
            let at = now();
            if current.revoked_at.is_some() {
                return Err(RegistryError::Conflict(
                    "a revoked token cannot be rotated".into(),
                ));
            }
            if current.expires_at <= at {
                return Err(RegistryError::Conflict(
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

/// Writes dirty request counters now and releases every request lease (the
/// counts are final: sent at shutdown, after the HTTP server has drained);
/// replies with the row count.
#[derive(Message)]
#[rtype(result = "Result<usize, RegistryError>")]
pub struct FlushUsage;

impl Handler<FlushUsage> for TokenRegistry {
    type Result = AtomicResponse<Self, Result<usize, RegistryError>>;

    fn handle(&mut self, _: FlushUsage, _: &mut Context<Self>) -> Self::Result {
        let fut = self.flush(true);
        atomic(self, async move { fut.await.map_err(RegistryError::from) })
    }
}
