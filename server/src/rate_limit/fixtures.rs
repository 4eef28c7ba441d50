//! Token and project states for the limiters' unit tests.

use crate::actors::token_registry::cache::{ProjectState, TokenState};
use crate::ids::{ProjectId, TokenId};

pub fn token(rpm: Option<i64>) -> TokenState {
    TokenState {
        id: TokenId::new(),
        project_id: ProjectId::new(),
        hint: "tok-abcd****wxyz".into(),
        is_active: true,
        revoked: false,
        expires_at: crate::time::now(),
        max_requests: None,
        rate_limit_rpm: rpm,
        allowed_models: Default::default(),
        allowed_cidrs: Default::default(),
        counters: Default::default(),
    }
}

pub fn project(id: ProjectId, rpm: Option<i64>) -> ProjectState {
    ProjectState {
        id,
        is_active: true,
        deleted: false,
        upstream_api_key: None,
        allowed_models: Default::default(),
        allowed_cidrs: Default::default(),
        rate_limit_rpm: rpm,
        providers: std::sync::Arc::from([]),
    }
}
