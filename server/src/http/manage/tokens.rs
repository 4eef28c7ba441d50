//! `/manage/tokens` handlers. The secret appears in exactly two responses: create
//! and rotate.

use std::future::Future;
use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::json;

use super::body::{Body, Field, read_limited};
use super::list::ListParams;
use super::projects::{NAME_MAX, RPM_MAX, nullable_list};
use super::views::{ListView, TokenView};
use crate::actors::token_registry::{
    CreateToken, IssuedToken, NewToken, RevokeToken, RotateToken, TokenPatch, UpdateToken,
};
use crate::error::ManageError;
use crate::http::audit::{self, Subject, Who};
use crate::ids::{ProjectId, TokenId};
use crate::service::query::Query;
use crate::state::AppState;

pub const MAX_REQUESTS_MAX: i64 = 1_000_000_000_000;
pub const MAX_GRACE_SECONDS: i64 = 86_400;

fn token_id(raw: &str) -> Result<TokenId, ManageError> {
    TokenId::parse(raw).ok_or(ManageError::NotFound("token"))
}

/// A token view plus its one-time secret.
#[derive(Serialize)]
struct WithSecret<'a> {
    #[serde(flatten)]
    view: TokenView,
    token: &'a str,
}

fn with_secret(
    state: &AppState,
    issued: &IssuedToken,
) -> Result<serde_json::Value, serde_json::Error> {
    let live = state.registry.cache.counters(TokenId(issued.model.id));
    let view = TokenView::new(&issued.model, live.as_deref(), crate::time::now());
    serde_json::to_value(WithSecret {
        view,
        token: issued.secret.expose(),
    })
}

/// Answers `status` with the body that carries the one-time secret. The secret is
/// shown nowhere else, so a body that could not be built must not become a 2xx
/// (it used to be `null`): `withdraw` runs first (create revokes the new token, so
/// no usable token is left whose secret nobody has), then a 500. The serializer's
/// message names types, never values, so the log cannot hold the secret.
async fn answer_with_secret<F: Future<Output = ()>>(
    status: StatusCode,
    body: Result<serde_json::Value, serde_json::Error>,
    withdraw: impl FnOnce() -> F,
) -> Result<HttpResponse, ManageError> {
    match body {
        Ok(body) => Ok(HttpResponse::build(status).json(body)),
        Err(e) => {
            withdraw().await;
            Err(ManageError::Internal(format!(
                "the response holding the token's secret could not be built: {e}"
            )))
        }
    }
}

/// Revokes a token just created whose secret could not be sent back, and audits it.
async fn withdraw_created(state: &AppState, who: &Who, model: &entity::tokens::Model) {
    let out = super::registry_write(state, RevokeToken(TokenId(model.id))).await;
    if let Err(e) = &out {
        tracing::error!(token_id = %model.id, error = %e, "a token whose secret was never sent back could not be revoked; revoke it by hand");
    }
    let subject = || token_subject(model, json!({ "reason": "secret_not_delivered" }));
    audit::record(state, who, "token.revoke", &out, subject(), |()| subject()).await;
}

fn view(state: &AppState, model: &entity::tokens::Model) -> TokenView {
    let live = state.registry.cache.counters(TokenId(model.id));
    TokenView::new(model, live.as_deref(), crate::time::now())
}

pub async fn list(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ManageError> {
    let params = ListParams::parse(req.query_string())?;
    let page = Query::tokens(&state.db, params.project_id, params.active, params.page).await?;
    Ok(HttpResponse::Ok().json(ListView::from_page(page, |t| view(&state, t))))
}

pub async fn get(
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ManageError> {
    let id = token_id(&path)?;
    let token = Query::token(&state.db, id.0)
        .await?
        .ok_or(ManageError::NotFound("token"))?;
    Ok(HttpResponse::Ok().json(view(&state, &token)))
}

pub async fn create(
    req: HttpRequest,
    state: web::Data<AppState>,
    payload: web::Payload,
) -> Result<HttpResponse, ManageError> {
    let who = Who::of(&req, &state);
    let out = create_token(&state, payload).await;
    audit::record(
        &state,
        &who,
        "token.create",
        &out,
        Subject::default(),
        |t| token_subject(&t.model, json!({ "after": view(&state, &t.model) })),
    )
    .await;
    let issued = out?;
    answer_with_secret(StatusCode::CREATED, with_secret(&state, &issued), || {
        withdraw_created(&state, &who, &issued.model)
    })
    .await
}

fn token_subject(t: &entity::tokens::Model, details: serde_json::Value) -> Subject {
    Subject {
        project_id: Some(t.project_id),
        token_id: Some(t.id),
        token_hint: Some(t.token_hint.clone()),
        details,
    }
}

async fn create_token(state: &AppState, payload: web::Payload) -> Result<IssuedToken, ManageError> {
    let bytes = read_limited(payload, state.config.server.manage_max_body_bytes.0).await?;
    let mut b = Body::parse(&bytes)?;
    let project_id = match b.string("project_id", 64) {
        Field::Value(s) => match ProjectId::parse(&s) {
            Some(id) => Some(id),
            None => {
                b.error("project_id", "must be a project id");
                None
            }
        },
        Field::Null | Field::Absent => {
            if !b.has_error("project_id") {
                b.error("project_id", "is required");
            }
            None
        }
    };
    let now = crate::time::now();
    let expires_at = expiry(&mut b, state, now);
    let new = NewToken {
        project_id: project_id.unwrap_or_default(),
        name: b.name("name", NAME_MAX).value(),
        expires_at,
        max_requests: b.int("max_requests", 1, MAX_REQUESTS_MAX).value(),
        rate_limit_rpm: b.int("rate_limit_rpm", 1, RPM_MAX).value(),
        allowed_models: b.models("allowed_models").value().unwrap_or_default(),
        allowed_cidrs: b.cidrs("allowed_cidrs").value().unwrap_or_default(),
    };
    b.finish()?;
    super::registry_write(state, CreateToken(new)).await
}

/// `expires_in_seconds` or `expires_at` (not both), default `tokens.default_ttl`,
/// never beyond `tokens.max_ttl`.
fn expiry(b: &mut Body, state: &AppState, now: DateTime<Utc>) -> DateTime<Utc> {
    let max_ttl = state.config.tokens.max_ttl;
    let max = max_ttl.0;
    let max_secs = i64::try_from(max.as_secs()).unwrap_or(i64::MAX);
    let ttl_secs = b.int("expires_in_seconds", 1, i64::MAX).value();
    let at = b.timestamp("expires_at").value();
    let limit = now + chrono::Duration::seconds(max_secs);
    let too_long = format!("the lifetime must not exceed tokens.max_ttl ({max_ttl})");
    match (ttl_secs, at) {
        (Some(_), Some(_)) => {
            b.error(
                "expires_at",
                "give expires_in_seconds or expires_at, not both",
            );
            now
        }
        (Some(secs), None) => {
            if secs > max_secs {
                b.error("expires_in_seconds", too_long);
            }
            now + chrono::Duration::seconds(secs.min(max_secs))
        }
        (None, Some(at)) => {
            if at <= now {
                b.error("expires_at", "must be in the future");
            } else if at > limit {
                b.error("expires_at", too_long);
            }
            at
        }
        (None, None) => {
            now + chrono::Duration::from_std(state.config.tokens.default_ttl.0).unwrap_or_default()
        }
    }
}

pub async fn update(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
    payload: web::Payload,
) -> Result<HttpResponse, ManageError> {
    let who = Who::of(&req, &state);
    let id = token_id(&path)?;
    let before = Query::token(&state.db, id.0).await?;
    let out = async {
        let bytes = read_limited(payload, state.config.server.manage_max_body_bytes.0).await?;
        let mut b = Body::parse(&bytes)?;
        let is_active = b.bool("is_active");
        if is_active == Field::Null {
            b.error("is_active", "cannot be null");
        }
        let expires_at = b.timestamp("expires_at");
        if expires_at == Field::Null {
            b.error("expires_at", "cannot be null; tokens always expire");
        }
        let patch = TokenPatch {
            name: b.name("name", NAME_MAX).patch(),
            is_active: is_active.value(),
            expires_at: expires_at.value(),
            max_requests: b.int("max_requests", 1, MAX_REQUESTS_MAX).patch(),
            rate_limit_rpm: b.int("rate_limit_rpm", 1, RPM_MAX).patch(),
            allowed_models: nullable_list(b.models("allowed_models")),
            allowed_cidrs: nullable_list(b.cidrs("allowed_cidrs")),
        };
        b.finish()?;
        super::registry_write(&state, UpdateToken(id, patch)).await
    }
    .await;
    let on_error = before.as_ref().map_or_else(
        || Subject {
            token_id: Some(id.0),
            ..Default::default()
        },
        |t| token_subject(t, json!({})),
    );
    let before_view = before.as_ref().map(|t| view(&state, t));
    audit::record(&state, &who, "token.update", &out, on_error, |t| {
        token_subject(
            t,
            json!({ "before": before_view, "after": view(&state, t) }),
        )
    })
    .await;
    Ok(HttpResponse::Ok().json(view(&state, &out?)))
}

pub async fn revoke(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ManageError> {
    let who = Who::of(&req, &state);
    let id = token_id(&path)?;
    let out = super::registry_write(&state, RevokeToken(id)).await;
    let current = Query::token(&state.db, id.0).await.ok().flatten();
    let subject = || {
        current.as_ref().map_or_else(
            || Subject {
                token_id: Some(id.0),
                ..Default::default()
            },
            |t| token_subject(t, json!({})),
        )
    };
    audit::record(&state, &who, "token.revoke", &out, subject(), |()| {
        subject()
    })
    .await;
    out?;
    Ok(HttpResponse::NoContent().finish())
}

pub async fn rotate(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
    payload: web::Payload,
) -> Result<HttpResponse, ManageError> {
    let who = Who::of(&req, &state);
    let id = token_id(&path)?;
    let out = async {
        let bytes = read_limited(payload, state.config.server.manage_max_body_bytes.0).await?;
        let mut b = Body::parse(&bytes)?;
        let grace = b
            .int("grace_seconds", 0, MAX_GRACE_SECONDS)
            .value()
            .unwrap_or(0);
        b.finish()?;
        let grace = Duration::from_secs(u64::try_from(grace).unwrap_or(0));
        super::registry_write(&state, RotateToken { id, grace }).await
    }
    .await;
    let on_error = Subject {
        token_id: Some(id.0),
        ..Default::default()
    };
    audit::record(&state, &who, "token.rotate", &out, on_error, |t| {
        token_subject(
            &t.model,
            json!({ "previous_valid_until": t.model.previous_valid_until }),
        )
    })
    .await;
    let issued = out?;
    // Nothing to withdraw: the previous secret keeps its grace, if any, and
    // rotating again issues a secret that does reach the caller.
    answer_with_secret(StatusCode::OK, with_secret(&state, &issued), || async {}).await
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use serde::ser::Error as _;

    use super::*;

    #[actix_web::test]
    async fn answer_with_secret_sends_the_body_and_withdraws_nothing() {
        let withdrawn = Cell::new(false);
        let resp = answer_with_secret(
            StatusCode::CREATED,
            Ok(json!({"token": "pal_x"})),
            || async { withdrawn.set(true) },
        )
        .await
        .unwrap();
        assert_eq!(resp.status(), StatusCode::CREATED);
        assert!(!withdrawn.get());
    }

    #[actix_web::test]
    async fn answer_with_secret_unserializable_is_500_after_withdrawing() {
        let withdrawn = Cell::new(false);
        let out = answer_with_secret(
            StatusCode::CREATED,
            Err(serde_json::Error::custom("cannot serialize")),
            || async { withdrawn.set(true) },
        )
        .await;
        let err = out.expect_err("a body without the secret is no success");
        assert!(matches!(err, ManageError::Internal(_)), "{err:?}");
        assert_eq!(
            actix_web::ResponseError::status_code(&err),
            StatusCode::INTERNAL_SERVER_ERROR
        );
        assert!(withdrawn.get(), "the unreachable token is withdrawn");
    }
}
