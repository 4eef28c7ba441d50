//! Client credentials: `Authorization: Bearer tok-…` or `x-api-key: tok-…`.

use actix_web::HttpRequest;
use chrono::{DateTime, Utc};

use crate::actors::token_registry::{Resolved, TokenCache};
use crate::error::ProxyError;
use crate::secret::TokenHash;

pub fn presented_key(req: &HttpRequest) -> Option<&str> {
    crate::secret::bearer(req.headers()).or_else(|| {
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
