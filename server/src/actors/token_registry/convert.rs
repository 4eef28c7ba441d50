//! Rows → cache snapshots. Malformed stored lists are logged and read as the most
//! restrictive value we can express without locking the operator out of fixing them.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use entity::{projects, tokens};
use ipnet::IpNet;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::cache::{ProjectState, TokenCounters, TokenState};
use super::parse_hash;
use crate::crypto::KeyCipher;
use crate::ids::{ProjectId, TokenId};
use crate::policy::{CidrList, ModelList};
use crate::secret::TokenHash;

pub fn json_list<T: Serialize>(items: &[T]) -> serde_json::Value {
    serde_json::to_value(items).unwrap_or_else(|_| serde_json::Value::Array(Vec::new()))
}

pub fn read_list<T: DeserializeOwned>(value: &serde_json::Value, what: &str) -> Vec<T> {
    match serde_json::from_value(value.clone()) {
        Ok(v) => v,
        Err(e) => {
            tracing::error!(field = what, error = %e, "stored list is malformed; treating it as empty");
            Vec::new()
        }
    }
}

pub fn project_state(p: &projects::Model, cipher: Option<&KeyCipher>) -> ProjectState {
    let upstream_api_key = match (&p.upstream_api_key_enc, cipher) {
        (None, _) => None,
        (Some(enc), Some(c)) => match c.decrypt(enc) {
            Ok(k) => Some(k),
            Err(e) => {
                tracing::error!(project_id = %p.id, error = %e, "cannot decrypt the project's upstream key; its requests will fail until it is set again");
                Some(crate::secret::Secret::default())
            }
        },
        (Some(_), None) => {
            tracing::error!(project_id = %p.id, "the project has an upstream key but auth.encryption_key is not set; its requests will fail");
            Some(crate::secret::Secret::default())
        }
    };
    ProjectState {
        id: ProjectId(p.id),
        is_active: p.is_active,
        deleted: p.deleted_at.is_some(),
        upstream_api_key,
        allowed_models: ModelList::new(read_list(&p.allowed_models, "allowed_models")),
        allowed_cidrs: CidrList::new(read_list::<IpNet>(&p.allowed_cidrs, "allowed_cidrs")),
        rate_limit_rpm: p.rate_limit_rpm,
        providers: read_list::<String>(&p.providers, "providers").into(),
    }
}

/// The pre-rotation hash and the end of its grace.
pub type PreviousHash = (TokenHash, DateTime<Utc>);

/// A token snapshot, its current hash and its pre-rotation hash (if still in grace).
pub fn token_state(
    t: &tokens::Model,
    counters: Option<Arc<TokenCounters>>,
) -> (TokenState, Option<TokenHash>, Option<PreviousHash>) {
    let counters = counters.unwrap_or_else(|| {
        Arc::new(TokenCounters::new(
            t.request_count,
            t.request_lease,
            t.last_used_at,
        ))
    });
    let previous = t
        .previous_token_hash
        .as_deref()
        .and_then(parse_hash)
        .zip(t.previous_valid_until);
    let state = TokenState {
        id: TokenId(t.id),
        project_id: ProjectId(t.project_id),
        hint: t.token_hint.clone(),
        is_active: t.is_active,
        revoked: t.revoked_at.is_some(),
        expires_at: t.expires_at,
        max_requests: t.max_requests,
        rate_limit_rpm: t.rate_limit_rpm,
        allowed_models: ModelList::new(read_list(&t.allowed_models, "allowed_models")),
        allowed_cidrs: CidrList::new(read_list::<IpNet>(&t.allowed_cidrs, "allowed_cidrs")),
        counters,
    };
    (state, parse_hash(&t.token_hash), previous)
}
