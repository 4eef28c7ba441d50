//! `GET /v1/models` and `GET /v1/models/{id}`, answered by Palisade: every model
//! the providers serve (explicit names, plus what `*` providers listed at their
//! last refresh), limited to the project's pinned providers when it pins some, and
//! filtered by the token's and the project's allowlists. One model is found
//! exactly as the list would show it; a model the list would not show is 404
//! `model_not_found` (whether it exists elsewhere or is not allowed is not told).
//! `owned_by` is the first provider, by priority, that advertises the model.

use std::collections::BTreeMap;

use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::{Value, json};

use super::auth;
use crate::actors::token_registry::Resolved;
use crate::actors::token_registry::cache::ip_allowed;
use crate::error::ProxyError;
use crate::state::AppState;

pub async fn list(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ProxyError> {
    let resolved = authorize(&req, &state).await?;
    let mut models: BTreeMap<String, String> = BTreeMap::new();
    for p in visible_providers(&state, &resolved) {
        for m in p.advertised_models() {
            models.entry(m).or_insert_with(|| p.name.clone());
        }
    }
    let data: Vec<_> = models
        .into_iter()
        .filter(|(m, _)| allowed(&resolved, m))
        .map(|(id, owner)| model_object(&id, &owner))
        .collect();
    Ok(HttpResponse::Ok().json(json!({ "object": "list", "data": data })))
}

/// `GET /v1/models/{id}` (ids may contain `/`, as in `org/model`).
pub async fn retrieve(
    req: HttpRequest,
    id: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ProxyError> {
    let resolved = authorize(&req, &state).await?;
    let id = id.into_inner();
    let owner = allowed(&resolved, &id)
        .then(|| visible_providers(&state, &resolved).find(|p| p.advertised_models().contains(&id)))
        .flatten()
        .ok_or_else(|| ProxyError::ModelNotFound(id.clone()))?;
    Ok(HttpResponse::Ok().json(model_object(&id, &owner.name)))
}

/// The same checks as a proxied request, up to the model: credential, then IP.
async fn authorize(req: &HttpRequest, state: &AppState) -> Result<Resolved, ProxyError> {
    let resolved = auth::resolve(req, state, crate::time::now())
        .await
        .map_err(|refused| refused.error)?;
    if !ip_allowed(
        &resolved,
        crate::net::client_ip(req, &state.trusted_proxies),
    ) {
        return Err(ProxyError::IpNotAllowed);
    }
    Ok(resolved)
}

/// The providers this project may use: its pins, else all (by priority).
fn visible_providers<'a>(
    state: &'a AppState,
    resolved: &'a Resolved,
) -> impl Iterator<Item = &'a std::sync::Arc<crate::providers::Provider>> {
    let pins = &resolved.project.providers;
    state
        .providers
        .all()
        .iter()
        .filter(move |p| pins.is_empty() || pins.iter().any(|n| *n == p.name))
}

fn allowed(resolved: &Resolved, model: &str) -> bool {
    resolved.token.allowed_models.allows(model) && resolved.project.allowed_models.allows(model)
}

/// OpenAI's model object. Palisade does not know when a model was created: 0.
fn model_object(id: &str, owner: &str) -> Value {
    json!({ "id": id, "object": "model", "created": 0, "owned_by": owner })
}
