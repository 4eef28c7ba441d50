//! `/manage/auth/*`: login, refresh, logout for admin users (SPEC §3). The
//! session rules live in [`crate::sessions`]; this is HTTP, limits and audit.

use actix_web::{HttpMessage, HttpRequest, HttpResponse, web};
use serde_json::json;
use uuid::Uuid;

use super::body::{Body, read_limited};
use crate::error::ManageError;
use crate::http::audit::{self, AuditResult, Subject, Who};
use crate::secret::Secret;
use crate::service::sessions::Sessions;
use crate::sessions::{self, Principal, RefreshRefused, Role, passwords};
use crate::state::AppState;

/// Longest username or password accepted in a login body (checked before any
/// bcrypt work).
const FIELD_MAX: usize = 1024;

fn jwt_configured(state: &AppState) -> Result<(), ManageError> {
    if state.config.auth.jwt_secret.is_empty() {
        return Err(ManageError::Unavailable(
            "admin logins need auth.jwt_secret (PALISADE_JWT_SECRET, at least 32 bytes)".into(),
        ));
    }
    Ok(())
}

/// The JSON body of a login or refresh, once sessions are configured.
async fn session_body(state: &AppState, payload: web::Payload) -> Result<Body, ManageError> {
    jwt_configured(state)?;
    let bytes = read_limited(payload, state.config.server.manage_max_body_bytes.0).await?;
    Body::parse(&bytes)
}

/// Every password hashing slot is taken: 503 with `retry-after`.
pub(super) fn busy(b: passwords::Busy) -> ManageError {
    ManageError::Busy {
        retry_after: b.retry_after,
    }
}

fn internal(e: impl std::fmt::Display) -> ManageError {
    ManageError::Internal(e.to_string())
}

/// A session that could not be issued: storage failures answer 503.
fn session_failed(e: sessions::SessionError) -> ManageError {
    match e {
        sessions::SessionError::Database(e) => e.into(),
        sessions::SessionError::Token(m) => ManageError::Internal(m),
    }
}

async fn audit_as(
    state: &AppState,
    req: &HttpRequest,
    actor: String,
    action: &'static str,
    result: AuditResult,
    details: serde_json::Value,
) {
    let mut who = Who::of(req, state);
    who.actor = actor;
    let subject = Subject {
        details,
        ..Default::default()
    };
    audit::record_as(state, &who, action, result, subject).await;
}

/// `POST /manage/auth/login {username, password}`. An unknown user and a wrong
/// password get the same answer after the same bcrypt work.
pub async fn login(
    req: HttpRequest,
    state: web::Data<AppState>,
    payload: web::Payload,
) -> Result<HttpResponse, ManageError> {
    let mut b = session_body(&state, payload).await?;
    let username = b.required_string("username", FIELD_MAX);
    let password = match b.take_raw_string("password", FIELD_MAX) {
        Some(p) => Some(Secret::new(p)),
        None => {
            b.error("password", "is required");
            None
        }
    };
    b.finish()?;
    let (Some(username), Some(password)) = (username, password) else {
        return Err(ManageError::InvalidJson(
            "username and password are required".into(),
        ));
    };
    let username = username.to_lowercase();
    let ip = crate::net::client_ip(&req, &state.trusted_proxies);
    // Cheapest refusals first: the client IP's failures were checked by the auth
    // middleware, the username's are checked here, both before any hashing.
    state.login_failures.check(&username)?;
    // The hashing slot comes before the user lookup: logins never hold more
    // database connections at once than there are slots.
    let permit = state.hasher.admit().await.map_err(busy)?;
    let user = Sessions::user_by_name(&state.db, &username)
        .await
        .map_err(ManageError::from)?;
    let ok = permit
        .verify(password, user.as_ref().map(|u| u.password_hash.clone()))
        .await;
    let user = match (ok, user) {
        (true, Some(u)) => u,
        _ => {
            crate::metrics::global().auth_failure("invalid_credentials");
            audit_as(
                &state,
                &req,
                "anonymous".into(),
                "auth.failure",
                AuditResult::Denied,
                json!({ "reason": "invalid_credentials", "path": req.path() }),
            )
            .await;
            let by_ip = state.auth_failures.failed(&ip);
            let by_name = state.login_failures.failed(&username);
            if let Some(retry_after) = by_ip.or(by_name) {
                return Err(ManageError::RateLimited { retry_after });
            }
            return Err(ManageError::InvalidCredentials);
        }
    };
    let role = Role::parse(&user.role).ok_or_else(|| internal("stored role is invalid"))?;
    let pair = sessions::issue_pair(
        &state.db,
        &state.config.auth,
        user.id,
        role,
        Uuid::now_v7(),
        crate::time::now(),
    )
    .await
    .map_err(session_failed)?;
    audit_as(
        &state,
        &req,
        format!("user:{}", user.username),
        "auth.login",
        AuditResult::Success,
        json!({ "user_id": user.id }),
    )
    .await;
    Ok(HttpResponse::Ok().json(pair))
}

/// `POST /manage/auth/refresh {refresh_token}`: the old one is spent; a spent one
/// presented again revokes its whole family.
pub async fn refresh(
    req: HttpRequest,
    state: web::Data<AppState>,
    payload: web::Payload,
) -> Result<HttpResponse, ManageError> {
    let mut b = session_body(&state, payload).await?;
    let presented = b
        .required_string("refresh_token", FIELD_MAX)
        .map(Secret::new);
    b.finish()?;
    let Some(presented) = presented else {
        return Err(ManageError::InvalidJson("refresh_token is required".into()));
    };
    let ip = crate::net::client_ip(&req, &state.trusted_proxies);
    match sessions::refresh(
        &state.db,
        &state.config.auth,
        presented.expose(),
        crate::time::now(),
    )
    .await
    .map_err(session_failed)?
    {
        Ok((pair, user)) => {
            audit_as(
                &state,
                &req,
                format!("user-id:{user}"),
                "auth.refresh",
                AuditResult::Success,
                json!({}),
            )
            .await;
            Ok(HttpResponse::Ok().json(pair))
        }
        Err(why) => {
            let (reason, actor) = match why {
                RefreshRefused::Unknown => ("unknown_refresh_token", "anonymous".to_owned()),
                RefreshRefused::Expired => ("expired_refresh_token", "anonymous".to_owned()),
                RefreshRefused::Reused { user, family } => {
                    tracing::warn!(%user, %family, "a spent refresh token was presented again; its family is revoked");
                    ("refresh_token_reused", format!("user-id:{user}"))
                }
            };
            crate::metrics::global().auth_failure("invalid_refresh_token");
            audit_as(
                &state,
                &req,
                actor,
                "auth.refresh",
                AuditResult::Denied,
                json!({ "reason": reason }),
            )
            .await;
            Err(state.auth_failures.refuse(&ip, ManageError::Unauthorized))
        }
    }
}

/// `POST /manage/auth/logout`: revokes the calling access token's `jti` and its
/// refresh family. With the management token there is no session: 204.
pub async fn logout(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ManageError> {
    let principal = req.extensions().get::<Principal>().cloned();
    let Some(user) = principal.as_ref().and_then(|p| p.user.clone()) else {
        return Ok(HttpResponse::NoContent().finish());
    };
    let now = crate::time::now();
    Sessions::revoke_jti(&state.db, user.jti, user.expires_at)
        .await
        .map_err(ManageError::from)?;
    Sessions::revoke_family(&state.db, user.family, now)
        .await
        .map_err(ManageError::from)?;
    audit_as(
        &state,
        &req,
        format!("user:{}", user.username),
        "auth.logout",
        AuditResult::Success,
        json!({}),
    )
    .await;
    Ok(HttpResponse::NoContent().finish())
}
