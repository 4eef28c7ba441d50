//! `/v1/*`: the OpenAI-compatible proxy (SPEC §2).
//!
//! Pipeline of one request, cheapest rejection first:
//! 1. endpoint allowed (`proxy.allowed_paths`), else 404 `unknown_endpoint`;
//! 2. credential → token + project from the registry cache (no mailbox, no DB);
//! 3. client IP against token, then project CIDR lists;
//! 4. body read with the size limit, `model`/`stream` peeked without a full parse;
//! 5. model allowlists (token ∩ project), then the candidate providers for the
//!    model (breakers and health checks consulted lock-free);
//! 6. the token's and project's requests per minute ([`crate::rate_limit`]);
//! 7. lifetime quota: atomic check-and-increment (plus, once per lease, one
//!    database write: `actors::token_registry::lease`); with Redis, 6 and 7 are
//!    one call shared by every instance ([`limits`]), which also checks the
//!    client IP's `per_ip_rps` fleet-wide;
//! 8. a slot from the request queue ([`crate::actors::request_queue`]), held until
//!    the response body ends;
//! 9. forward to the candidates in order, with retries and failover before the
//!    first byte ([`attempts`], [`upstream`]), and stream the answer back
//!    ([`stream`]).
//!
//! Before all of this, the per-client-IP limit runs as actix-governor middleware
//! on the scope (when `rate_limits.per_ip_rps` is set).

mod attempts;
mod auth;
mod body;
mod errors;
mod limits;
mod models;
mod sse;
mod stream;
mod upstream;

use actix_web::{HttpMessage, HttpRequest, HttpResponse, web};

use crate::actors::audit_writer::UsageRecord;
use crate::actors::token_registry::cache::ip_allowed;
use crate::error::ProxyError;
use crate::http::ip_limit::IpGovernor;
use crate::http::request_id::RequestId;
use crate::state::AppState;

pub fn scope(
    ip_limit: Option<IpGovernor>,
) -> actix_web::Scope<
    impl actix_web::dev::ServiceFactory<
        actix_web::dev::ServiceRequest,
        Config = (),
        Response = actix_web::dev::ServiceResponse<impl actix_web::body::MessageBody>,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    // `Condition` needs a middleware even when it is off; that one is never called.
    let enabled = ip_limit.is_some();
    let governor = actix_governor::Governor::new(
        &ip_limit.unwrap_or_else(crate::http::ip_limit::unused_governor),
    );
    web::scope("/v1")
        .wrap(actix_web::middleware::Condition::new(enabled, governor))
        .route("/models", web::get().to(models::list))
        .route("/models/{id:.+}", web::get().to(models::retrieve))
        .default_service(web::to(forward))
}

async fn forward(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ProxyError> {
    let mut seen = None;
    let out = admit_and_forward(&req, payload, &state, &mut seen).await;
    // Unauthenticated failures were counted and audited (in aggregate) by
    // `auth::resolve`.
    if let Err(e) = &out
        && e.is_denial()
        && !auth::is_unauthenticated(e)
    {
        audit_denial(&req, &state, e, seen.as_ref()).await;
    }
    out
}

/// `proxy.denied` with the reason code and whatever identity was established.
pub(crate) async fn audit_denial(
    req: &HttpRequest,
    state: &AppState,
    e: &ProxyError,
    seen: Option<&crate::actors::token_registry::Resolved>,
) {
    use crate::http::audit::{AuditResult, Subject, Who, record_as};
    let mut who = Who::of(req, state);
    who.actor = seen.map_or_else(
        || "anonymous".to_owned(),
        |r| format!("token:{}", r.token.id),
    );
    let subject = Subject {
        project_id: seen.map(|r| r.project.id.0),
        token_id: seen.map(|r| r.token.id.0),
        token_hint: seen.map(|r| r.token.hint.clone()),
        details: serde_json::json!({ "reason": e.code(), "path": req.path() }),
    };
    record_as(state, &who, "proxy.denied", AuditResult::Denied, subject).await;
}

fn storage_unavailable(_: crate::actors::audit_writer::StorageFailing) -> ProxyError {
    ProxyError::StorageUnavailable
}

async fn admit_and_forward(
    req: &HttpRequest,
    payload: web::Payload,
    state: &AppState,
    seen: &mut Option<crate::actors::token_registry::Resolved>,
) -> Result<HttpResponse, ProxyError> {
    let path = req.path();
    let tail = path.strip_prefix("/v1").unwrap_or(path);
    if req.method() != actix_web::http::Method::POST
        || !state.allowed_paths.iter().any(|p| p == tail)
    {
        return Err(ProxyError::UnknownEndpoint(format!(
            "{} {}",
            req.method(),
            path
        )));
    }
    let started = tokio::time::Instant::now();
    let now = crate::time::now();
    let resolved = auth::resolve(req, state, now).await.map_err(|refused| {
        // A known token refused (revoked, expired, inactive): the denial is its own.
        *seen = refused.matched;
        refused.error
    })?;
    *seen = Some(resolved.clone());
    crate::http::access_log::note_caller(req, resolved.token.id.0, resolved.project.id.0);
    let ip = crate::net::client_ip(req, &state.trusted_proxies);
    if !ip_allowed(&resolved, ip) {
        return Err(ProxyError::IpNotAllowed);
    }
    let limit = state.config.server.max_body_bytes.0;
    let bytes = body::read_limited(req, payload, limit).await?;
    let peek = body::peek(req, &bytes)?;
    let restricted =
        !resolved.token.allowed_models.is_empty() || !resolved.project.allowed_models.is_empty();
    crate::http::access_log::note_model(req, peek.model.as_deref());
    let model = match (&peek.model, body::requires_model(tail) || restricted) {
        (Some(m), _) => Some(m.as_str()),
        (None, true) => return Err(ProxyError::MissingModel),
        (None, false) => None,
    };
    if let Some(m) = model
        && !(resolved.token.allowed_models.allows(m) && resolved.project.allowed_models.allows(m))
    {
        return Err(ProxyError::ModelNotAllowed(m.to_owned()));
    }
    let candidates = state
        .providers
        .candidates(model, &resolved.project.providers)?;
    // Streamed chat completions are accounted through the usage chunk; ask for it
    // and hide it again when the client did not.
    let (bytes, strip_usage) = match (tail, peek.stream) {
        ("/chat/completions", true) => match sse::request_usage(&bytes)? {
            Some(rewritten) => (rewritten, true),
            None => (bytes, false),
        },
        _ => (bytes, false),
    };
    let project_key = match &resolved.project.upstream_api_key {
        Some(k) if k.is_empty() => {
            return Err(ProxyError::Unavailable(
                "project upstream key cannot be decrypted".into(),
            ));
        }
        other => other.as_ref(),
    };
    let rate = limits::admit(state, ip, &resolved, now).await?;
    let admission = state.admission.enter(resolved.project.id).await?;
    // Admitted: reserve the usage record's place now, so it can always be filed.
    let slot = match state.usage_enabled {
        true => state.audit.reserve().await.map_err(storage_unavailable)?,
        false => None,
    };
    let request_id = req.extensions().get::<RequestId>().cloned();
    let tap = stream::UsageTap::new(
        slot,
        started,
        UsageRecord {
            id: uuid::Uuid::now_v7(),
            timestamp: now,
            request_id: request_id
                .as_ref()
                .map(|r| r.as_str().to_owned())
                .unwrap_or_default(),
            project_id: resolved.project.id.0,
            token_id: resolved.token.id.0,
            model: model.map(str::to_owned),
            provider: String::new(),
            endpoint: tail.to_owned(),
            status: 0,
            streamed: false,
            latency_ms: 0.0,
            ttfb_ms: None,
            client_closed: false,
            body_cut: false,
            request: crate::usage::KeptRequest::of(&bytes),
            response: crate::usage::KeptResponse::default(),
            instance: None,
        },
        admission,
    );
    attempts::forward(
        attempts::Plan {
            req,
            state,
            candidates: &candidates,
            tail,
            project_key,
            request_id: request_id.as_ref(),
            body: bytes,
            strip_usage,
        },
        tap,
    )
    .await
    .map(|mut resp| {
        // Palisade's limit is the one this client lives under: it replaces any
        // the provider sent.
        if let Some(rate) = &rate {
            for (name, value) in crate::limits::headers(rate) {
                resp.headers_mut().insert(name, value);
            }
        }
        resp
    })
    .map_err(|(e, tap)| failed(tap, e))
}

/// An admitted request that got no upstream response still leaves a usage record.
fn failed(mut tap: stream::UsageTap, e: ProxyError) -> ProxyError {
    use actix_web::ResponseError;
    tap.record.status = e.status_code().as_u16();
    tap.finish(true);
    e
}
