//! Project writes: create, update, delete (soft, revoking its tokens), revoke all tokens.

use std::sync::Arc;

use actix::prelude::*;
use sea_orm::{ActiveValue::Set, IntoActiveModel};

use super::cache::TokenCache;
use super::convert::{json_list, project_state};
use super::{RegistryError, TokenRegistry, atomic_write, conflict_or, now};
use crate::crypto::KeyCipher;
use crate::ids::ProjectId;
use crate::secret::Secret;
use crate::service::mutation::Mutation;
use crate::service::query::Query;
use entity::projects;
use ipnet::IpNet;

pub struct NewProject {
    pub name: String,
    pub description: Option<String>,
    pub upstream_api_key: Option<Secret>,
    pub allowed_models: Vec<String>,
    pub allowed_cidrs: Vec<IpNet>,
    pub rate_limit_rpm: Option<i64>,
    pub providers: Vec<String>,
}

#[derive(Message)]
#[rtype(result = "Result<projects::Model, RegistryError>")]
pub struct CreateProject(pub NewProject);

impl Handler<CreateProject> for TokenRegistry {
    type Result = AtomicResponse<Self, Result<projects::Model, RegistryError>>;

    fn handle(&mut self, CreateProject(p): CreateProject, _: &mut Context<Self>) -> Self::Result {
        let (db, cache, cipher) = (
            self.db.clone(),
            Arc::clone(&self.cache),
            self.cipher.clone(),
        );
        atomic_write(self, async move {
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
                providers: Set(json_list(&p.providers)),
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
) -> Result<Option<String>, RegistryError> {
    match (key, cipher) {
        (None, _) => Ok(None),
        (Some(k), Some(c)) => Ok(Some(c.encrypt(k))),
        (Some(_), None) => Err(RegistryError::field(
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
    /// `Some([])` unpins.
    pub providers: Option<Vec<String>>,
}

#[derive(Message)]
#[rtype(result = "Result<projects::Model, RegistryError>")]
pub struct UpdateProject(pub ProjectId, pub ProjectPatch);

impl Handler<UpdateProject> for TokenRegistry {
    type Result = AtomicResponse<Self, Result<projects::Model, RegistryError>>;

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
        atomic_write(self, async move {
            let current = Query::project(&db, id.0)
                .await?
                .ok_or(RegistryError::NotFound("project"))?;
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
            if let Some(v) = p.providers {
                row.providers = Set(json_list(&v));
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
#[rtype(result = "Result<u64, RegistryError>")]
pub struct DeleteProject(pub ProjectId);

impl Handler<DeleteProject> for TokenRegistry {
    type Result = AtomicResponse<Self, Result<u64, RegistryError>>;

    fn handle(&mut self, DeleteProject(id): DeleteProject, _: &mut Context<Self>) -> Self::Result {
        let (db, cache, cipher) = (
            self.db.clone(),
            Arc::clone(&self.cache),
            self.cipher.clone(),
        );
        atomic_write(self, async move {
            let current = Query::project(&db, id.0)
                .await?
                .ok_or(RegistryError::NotFound("project"))?;
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
#[rtype(result = "Result<u64, RegistryError>")]
pub struct RevokeProjectTokens(pub ProjectId);

impl Handler<RevokeProjectTokens> for TokenRegistry {
    type Result = AtomicResponse<Self, Result<u64, RegistryError>>;

    fn handle(
        &mut self,
        RevokeProjectTokens(id): RevokeProjectTokens,
        _: &mut Context<Self>,
    ) -> Self::Result {
        let (db, cache) = (self.db.clone(), Arc::clone(&self.cache));
        atomic_write(self, async move {
            Query::project(&db, id.0)
                .await?
                .ok_or(RegistryError::NotFound("project"))?;
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
