//! The JSON shapes of SPEC §3. Secrets never appear: the upstream key is only
//! `has_upstream_api_key`, the token only its hint (the one-time `token` field is
//! added by the create/rotate handlers).

use chrono::{DateTime, Utc};
use entity::{projects, tokens};
use serde::Serialize;
use uuid::Uuid;

use crate::actors::token_registry::TokenCounters;
use crate::actors::token_registry::convert::read_list;
use crate::service::Paged;

#[derive(Serialize)]
pub struct ProjectView {
    pub id: Uuid,
    pub name: String,
    pub description: Option<String>,
    pub is_active: bool,
    pub has_upstream_api_key: bool,
    pub allowed_models: Vec<String>,
    pub allowed_cidrs: Vec<String>,
    pub rate_limit_rpm: Option<i64>,
    /// Provider names tried in this order; `[]` routes by priority and weight.
    pub providers: Vec<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<&projects::Model> for ProjectView {
    fn from(p: &projects::Model) -> Self {
        Self {
            id: p.id,
            name: p.name.clone(),
            description: p.description.clone(),
            is_active: p.is_active,
            has_upstream_api_key: p.upstream_api_key_enc.is_some(),
            allowed_models: read_list(&p.allowed_models, "allowed_models"),
            allowed_cidrs: read_list(&p.allowed_cidrs, "allowed_cidrs"),
            rate_limit_rpm: p.rate_limit_rpm,
            providers: read_list(&p.providers, "providers"),
            created_at: p.created_at,
            updated_at: p.updated_at,
        }
    }
}

#[derive(Serialize)]
pub struct TokenView {
    pub id: Uuid,
    pub project_id: Uuid,
    pub name: Option<String>,
    pub token_hint: String,
    pub is_active: bool,
    pub revoked_at: Option<DateTime<Utc>>,
    pub expires_at: DateTime<Utc>,
    pub max_requests: Option<i64>,
    pub request_count: i64,
    pub rate_limit_rpm: Option<i64>,
    pub allowed_models: Vec<String>,
    pub allowed_cidrs: Vec<String>,
    pub last_used_at: Option<DateTime<Utc>>,
    /// Until when the pre-rotation secret still works; `null` when it does not.
    pub previous_valid_until: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl TokenView {
    /// `live` carries the in-memory counters, which run ahead of the last flush.
    pub fn new(t: &tokens::Model, live: Option<&TokenCounters>, now: DateTime<Utc>) -> Self {
        Self {
            id: t.id,
            project_id: t.project_id,
            name: t.name.clone(),
            token_hint: t.token_hint.clone(),
            is_active: t.is_active,
            revoked_at: t.revoked_at,
            expires_at: t.expires_at,
            max_requests: t.max_requests,
            // Both are lower bounds of the fleet's count: the row has every
            // instance's flushed requests, this instance's counter its own
            // (including those it has not flushed yet, or is flushing now).
            request_count: live.map_or(t.request_count, |c| {
                c.request_count().max(t.request_count + c.unflushed())
            }),
            rate_limit_rpm: t.rate_limit_rpm,
            allowed_models: read_list(&t.allowed_models, "allowed_models"),
            allowed_cidrs: read_list(&t.allowed_cidrs, "allowed_cidrs"),
            last_used_at: live.and_then(TokenCounters::last_used).or(t.last_used_at),
            previous_valid_until: t.previous_valid_until.filter(|until| *until > now),
            created_at: t.created_at,
            updated_at: t.updated_at,
        }
    }
}

#[derive(Serialize)]
pub struct ListView<T> {
    pub data: Vec<T>,
    pub next_cursor: Option<String>,
}

impl<T> ListView<T> {
    pub fn from_page<R>(page: Paged<R>, f: impl Fn(&R) -> T) -> Self {
        Self {
            data: page.rows.iter().map(f).collect(),
            next_cursor: page.next.map(|id| id.to_string()),
        }
    }
}
