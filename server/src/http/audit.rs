//! Filing audit events from handlers: who did what to which project or token,
//! with what result. Management actions and `/v1` denials both use it.

use actix_web::{HttpMessage, HttpRequest};
use serde_json::{Value, json};
use uuid::Uuid;

pub use crate::actors::audit_writer::AuditResult;
use crate::actors::audit_writer::{AuditEvent, Record};
use crate::error::ManageError;
use crate::http::request_id::RequestId;
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
        instance: None,
    };
    state.audit.record(Record::Audit(Box::new(event))).await;
}
