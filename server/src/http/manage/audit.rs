//! `GET /manage/audit`: the audit trail, filtered and paged.

use std::collections::BTreeMap;

use actix_web::{HttpRequest, HttpResponse, web};
use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use uuid::Uuid;

use super::list::ListParams;
use crate::error::ManageError;
use crate::service::query::{AuditFilter, Query};
use crate::state::AppState;

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
                "details": e.details, "instance": e.instance,
            })
        })
        .collect();
    Ok(HttpResponse::Ok()
        .json(json!({ "data": data, "next_cursor": page.next.map(|id| id.to_string()) })))
}
