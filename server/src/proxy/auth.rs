//! Client credentials: `Authorization: Bearer tok-…` or `x-api-key: tok-…`.

use actix_web::HttpRequest;
use actix_web::http::header::AUTHORIZATION;
use chrono::{DateTime, Utc};

use crate::actors::token_registry::{Resolved, TokenCache};
use crate::error::ProxyError;
use crate::secret::TokenHash;

pub fn presented_key(req: &HttpRequest) -> Option<&str> {
    let bearer = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .filter(|v| !v.is_empty());
    bearer.or_else(|| {
        req.headers()
            .get("x-api-key")
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty())
    })
}

pub fn resolve(
    req: &HttpRequest,
    cache: &TokenCache,
    now: DateTime<Utc>,
) -> Result<Resolved, ProxyError> {
    let key = presented_key(req).ok_or(ProxyError::MissingApiKey)?;
    cache.lookup(&TokenHash::of(key), now)
}
