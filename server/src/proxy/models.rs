//! `GET /v1/models`, answered by Palisade: every model the providers serve (explicit
//! names, plus what glob providers listed at the last refresh), filtered by the
//! token's and the project's allowlists.

use std::collections::BTreeMap;

use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::json;

use super::auth;
use crate::actors::token_registry::cache::ip_allowed;
use crate::app::AppState;
use crate::error::ProxyError;

pub async fn list(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ProxyError> {
    let resolved = auth::resolve(&req, &state.registry.cache, crate::time::now())?;
    if !ip_allowed(
        &resolved,
        crate::net::client_ip(&req, &state.trusted_proxies),
    ) {
        return Err(ProxyError::IpNotAllowed);
    }
    let mut models: BTreeMap<String, String> = BTreeMap::new();
    for p in state.providers.all() {
        for m in p.advertised_models() {
            models.entry(m).or_insert_with(|| p.name.clone());
        }
    }
    let data: Vec<_> = models
        .into_iter()
        .filter(|(m, _)| {
            resolved.token.allowed_models.allows(m) && resolved.project.allowed_models.allows(m)
        })
        .map(|(id, owner)| json!({ "id": id, "object": "model", "created": 0, "owned_by": owner }))
        .collect();
    Ok(HttpResponse::Ok().json(json!({ "object": "list", "data": data })))
}
