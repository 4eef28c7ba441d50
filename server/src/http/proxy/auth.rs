//! Client credentials: `Authorization: Bearer tok-…` or `x-api-key: tok-…`.

use actix_web::HttpRequest;
use chrono::{DateTime, Utc};

use crate::actors::token_registry::{Denial, Refused, Resolved};
use crate::error::ProxyError;
use crate::rate_limit::unauthenticated::Failure;
use crate::secret::TokenHash;
use crate::state::AppState;

pub fn presented_key(req: &HttpRequest) -> Option<&str> {
    crate::secret::bearer(req.headers()).or_else(|| {
        req.headers()
            .get("x-api-key")
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty())
    })
}

/// Whether an error is an unauthenticated failure: counted, limited and audited
/// in aggregate by [`crate::rate_limit::unauthenticated`], not one event each.
pub fn is_unauthenticated(e: &ProxyError) -> bool {
    matches!(e, ProxyError::MissingApiKey | ProxyError::InvalidApiKey)
}

/// The caller's token and project. A request with no credential or an unknown
/// one goes through [`crate::rate_limit::unauthenticated`]: counted, limited per
/// client IP, and audited in aggregate (the first of its kind at once, here). A
/// refusal of a known token carries it, for the caller's audit event.
pub async fn resolve(
    req: &HttpRequest,
    state: &AppState,
    now: DateTime<Utc>,
) -> Result<Resolved, Refused<ProxyError>> {
    let failure = match presented_key(req) {
        None => Failure::MissingApiKey,
        Some(key) => {
            let hash = TokenHash::of(key);
            let mut looked_up = false;
            loop {
                match state.registry.cache.lookup(&hash, now) {
                    Ok(resolved) => return Ok(resolved),
                    Err(refused) if refused.matched.is_some() => {
                        return Err(refused.map(ProxyError::from));
                    }
                    // Perhaps made on another instance a moment ago: the
                    // database decides (bounded; see token_registry::sync), unless
                    // this client is locked out for failures already, so a flood
                    // from one address cannot spend every instance's look-ups.
                    Err(Refused {
                        error: Denial::InvalidApiKey,
                        ..
                    }) if !looked_up
                        && !state
                            .unauthenticated
                            .is_locked_out(crate::net::client_ip(req, &state.trusted_proxies))
                        && state.registry.find_unknown(&hash).await =>
                    {
                        looked_up = true;
                    }
                    Err(Refused {
                        error: Denial::InvalidApiKey,
                        ..
                    }) => break Failure::InvalidApiKey,
                    Err(refused) => return Err(refused.map(ProxyError::from)),
                }
            }
        }
    };
    let ip = crate::net::client_ip(req, &state.trusted_proxies);
    let refusal = state.unauthenticated.refuse(ip, failure);
    if refusal.file_now {
        file_first(req, state, failure.reason()).await;
    }
    let error = match refusal.locked_out {
        Some(locked_out) => ProxyError::from(locked_out),
        None => ProxyError::from(failure),
    };
    Err(Refused {
        error,
        matched: None,
    })
}

/// The first unauthenticated failure of its (client IP, reason) in a window, as
/// a `proxy.denied` event of its own (`count: 1`).
async fn file_first(req: &HttpRequest, state: &AppState, reason: &'static str) {
    use crate::http::audit::{AuditResult, Subject, Who, record_as};
    let who = Who::of(req, state);
    let subject = Subject {
        details: serde_json::json!({ "reason": reason, "path": req.path(), "count": 1 }),
        ..Default::default()
    };
    record_as(state, &who, "proxy.denied", AuditResult::Denied, subject).await;
}
