//! `GET /manage/usage`: request, error and token totals per day, model or token.
//! `estimated_requests` counts the requests whose tokens Palisade estimated
//! because the upstream reported none (`docs/usage-accounting.md`).

use std::collections::BTreeMap;

use actix_web::{HttpRequest, HttpResponse, web};
use chrono::{DateTime, Utc};
use serde_json::json;
use uuid::Uuid;

use crate::error::ManageError;
use crate::service::query::{Query, UsageFilter, UsageGroup};
use crate::state::AppState;

pub async fn summary(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ManageError> {
    let mut filter = UsageFilter::default();
    let mut group = UsageGroup::Day;
    let mut errors = BTreeMap::new();
    let time = |v: &str| {
        DateTime::parse_from_rfc3339(v)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    };
    for (k, v) in url::form_urlencoded::parse(req.query_string().as_bytes()) {
        match k.as_ref() {
            "project_id" | "token_id" => match Uuid::try_parse(&v) {
                Ok(id) if k == "project_id" => filter.project_id = Some(id),
                Ok(id) => filter.token_id = Some(id),
                Err(_) => {
                    errors.insert(k.into_owned(), "must be an id".to_owned());
                }
            },
            "since" | "until" => match time(&v) {
                Some(t) if k == "since" => filter.since = Some(t),
                Some(t) => filter.until = Some(t),
                None => {
                    errors.insert(k.into_owned(), "must be an RFC 3339 timestamp".to_owned());
                }
            },
            "group_by" => match v.as_ref() {
                "day" => group = UsageGroup::Day,
                "model" => group = UsageGroup::Model,
                "token" => group = UsageGroup::Token,
                _ => {
                    errors.insert(
                        "group_by".to_owned(),
                        "must be day, model or token".to_owned(),
                    );
                }
            },
            _ => {}
        }
    }
    if !errors.is_empty() {
        return Err(ManageError::Validation(errors));
    }
    let rows = Query::usage(&state.db, &filter, group).await?;
    let data: Vec<_> = rows
        .into_iter()
        .map(|r| {
            let key = match (group, r.key) {
                (UsageGroup::Token, Some(hex)) => Uuid::try_parse(&hex).map(|u| u.to_string()).ok(),
                (_, k) => k,
            };
            json!({
                "key": key,
                "requests": r.requests,
                "errors": r.errors,
                "prompt_tokens": r.prompt_tokens,
                "completion_tokens": r.completion_tokens,
                "estimated_requests": r.estimated_requests,
            })
        })
        .collect();
    Ok(HttpResponse::Ok().json(json!({ "data": data })))
}
