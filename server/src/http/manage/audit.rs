//! Auditing management actions (who did what to which project or token, with what
//! result) and `GET /manage/audit`.

use std::collections::BTreeMap;

use actix_web::{HttpMessage, HttpRequest, HttpResponse, web};
use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use uuid::Uuid;

use super::list::ListParams;
pub use crate::actors::audit_writer::AuditResult;
use crate::actors::audit_writer::{AuditEvent, Record};
use crate::error::ManageError;
use crate::http::request_id::RequestId;
use crate::service::query::{AuditFilter, Query};
use crate::state::AppState;

/// Who is acting, from where, in which request.
pub struct Who {
    pub actor: String,
    pub client_ip: Option<String>,
    pub request_id: Option<String>,
}

impl Who {
    pub fn of(req: &HttpRequest, state: &AppState) -> Self {
        Self {
            // Set by the auth middleware; absent on unauthenticated requests.
            actor: req
                .extensions()
                .get::<crate::sessions::Principal>()
                .map_or_else(|| "anonymous".to_owned(), crate::sessions::Principal::actor),
            client_ip: Some(crate::net::client_ip(req, &state.trusted_proxies).to_string()),
            request_id: req
                .extensions()
                .get::<RequestId>()
                .map(|r| r.as_str().to_owned()),
        }
    }
}

/// What an event is about.
#[derive(Default)]
pub struct Subject {
    pub project_id: Option<Uuid>,
    pub token_id: Option<Uuid>,
    pub token_hint: Option<String>,
    pub details: Value,
}

/// Files one event for a management action, whatever its outcome.
pub async fn record<T>(
    state: &AppState,
    who: &Who,
    action: &'static str,
    outcome: &Result<T, ManageError>,
    on_error: Subject,
    on_success: impl FnOnce(&T) -> Subject,
) {
    let (result, subject) = match outcome {
        Ok(v) => (AuditResult::Success, on_success(v)),
        Err(e) => {
            let result = match e {
                ManageError::Internal(_)
                | ManageError::Unavailable(_)
                | ManageError::Busy { .. }
                | ManageError::Storage(_) => AuditResult::Error,
                _ => AuditResult::Failure,
            };
            let mut s = on_error;
            s.details = json!({ "error": e.code() });
            (result, s)
        }
    };
    record_as(state, who, action, result, subject).await;
}

/// Files one event with an explicit result (denials).
pub async fn record_as(
    state: &AppState,
    who: &Who,
    action: &'static str,
    result: AuditResult,
    subject: Subject,
) {
    let event = AuditEvent {
        id: Uuid::now_v7(),
        timestamp: crate::time::now(),
        action,
        actor: who.actor.clone(),
        client_ip: who.client_ip.clone(),
        project_id: subject.project_id,
        token_id: subject.token_id,
        token_hint: subject.token_hint,
        request_id: who.request_id.clone(),
        result,
        details: if subject.details.is_null() {
            json!({})
        } else {
            subject.details
        },
    };
    state.audit.record(Record::Audit(Box::new(event))).await;
}

const ACTIONS: &[&str] = &[
    "project.create",
    "project.update",
    "project.delete",
    "project.tokens_revoke",
    "token.create",
    "token.update",
    "token.revoke",
    "token.rotate",
    "auth.login",
    "auth.refresh",
    "auth.logout",
    "auth.failure",
    "user.create",
    "user.delete",
    "proxy.denied",
];

fn parse_time(v: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(v)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// `GET /manage/audit`: newest first; filters `action, actor, project_id, token_id,
/// result, since, until`; `limit`/`cursor` as every list.
pub async fn list(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ManageError> {
    let params = ListParams::parse(req.query_string())?;
    let mut filter = AuditFilter {
        project_id: params.project_id,
        ..Default::default()
    };
    let mut errors = BTreeMap::new();
    for (k, v) in url::form_urlencoded::parse(req.query_string().as_bytes()) {
        match k.as_ref() {
            "action" if ACTIONS.contains(&v.as_ref()) => filter.action = Some(v.into_owned()),
            "action" => {
                errors.insert(
                    "action".to_owned(),
                    format!("unknown action; one of {}", ACTIONS.join(", ")),
                );
            }
            "actor" => filter.actor = Some(v.into_owned()),
            "result" if ["success", "failure", "denied", "error"].contains(&v.as_ref()) => {
                filter.result = Some(v.into_owned());
            }
            "result" => {
                errors.insert(
                    "result".to_owned(),
                    "must be success, failure, denied or error".to_owned(),
                );
            }
            "token_id" => match Uuid::try_parse(&v) {
                Ok(id) => filter.token_id = Some(id),
                Err(_) => {
                    errors.insert("token_id".to_owned(), "must be a token id".to_owned());
                }
            },
            "since" | "until" => match parse_time(&v) {
                Some(t) if k == "since" => filter.since = Some(t),
                Some(t) => filter.until = Some(t),
                None => {
                    errors.insert(k.into_owned(), "must be an RFC 3339 timestamp".to_owned());
                }
            },
            _ => {}
        }
    }
    if !errors.is_empty() {
        return Err(ManageError::Validation(errors));
    }
    let page = Query::audit_events(&state.db, &filter, params.page).await?;
    let data: Vec<Value> = page
        .rows
        .iter()
        .map(|e| {
            json!({
                "id": e.id, "timestamp": e.timestamp, "action": e.action, "actor": e.actor,
                "client_ip": e.client_ip, "project_id": e.project_id, "token_id": e.token_id,
                "token_hint": e.token_hint, "request_id": e.request_id, "result": e.result,
                "details": e.details,
            })
        })
        .collect();
    Ok(HttpResponse::Ok()
        .json(json!({ "data": data, "next_cursor": page.next.map(|id| id.to_string()) })))
}
