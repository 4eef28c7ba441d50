//! `/manage/projects` handlers.

use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::json;

use super::body::{Body, read_limited};
use super::list::ListParams;
use super::views::{ListView, ProjectView};
use crate::actors::token_registry::{
    CreateProject, DeleteProject, NewProject, ProjectPatch, RevokeProjectTokens, UpdateProject,
};
use crate::error::ManageError;
use crate::http::audit::{self, Subject, Who};
use crate::ids::ProjectId;
use crate::secret::Secret;
use crate::service::query::Query;
use crate::state::AppState;

pub const NAME_MAX: usize = 100;
pub const DESCRIPTION_MAX: usize = 2000;
pub const UPSTREAM_KEY_MAX: usize = 1024;
pub const RPM_MAX: i64 = 10_000_000;

fn project_id(raw: &str) -> Result<ProjectId, ManageError> {
    ProjectId::parse(raw).ok_or(ManageError::NotFound("project"))
}

pub async fn list(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ManageError> {
    let params = ListParams::parse(req.query_string())?;
    let page = Query::projects(&state.db, params.active, params.page).await?;
    Ok(HttpResponse::Ok().json(ListView::from_page(page, |p| ProjectView::from(p))))
}

pub async fn get(
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ManageError> {
    let id = project_id(&path)?;
    let project = Query::project(&state.db, id.0)
        .await?
        .ok_or(ManageError::NotFound("project"))?;
    Ok(HttpResponse::Ok().json(ProjectView::from(&project)))
}

pub async fn create(
    req: HttpRequest,
    state: web::Data<AppState>,
    payload: web::Payload,
) -> Result<HttpResponse, ManageError> {
    let who = Who::of(&req, &state);
    let out = async {
        let bytes = read_limited(payload, state.config.server.manage_max_body_bytes.0).await?;
        let mut b = Body::parse(&bytes)?;
        let name = b.required_name("name", NAME_MAX);
        let new = NewProject {
            name: name.unwrap_or_default(),
            description: b.string("description", DESCRIPTION_MAX).value(),
            upstream_api_key: b
                .string("upstream_api_key", UPSTREAM_KEY_MAX)
                .value()
                .map(Secret::new),
            allowed_models: b.models("allowed_models").value().unwrap_or_default(),
            allowed_cidrs: b.cidrs("allowed_cidrs").value().unwrap_or_default(),
            rate_limit_rpm: b.int("rate_limit_rpm", 1, RPM_MAX).value(),
            providers: b
                .providers("providers", &state.providers.names())
                .value()
                .unwrap_or_default(),
        };
        b.finish()?;
        super::registry_write(&state, CreateProject(new)).await
    }
    .await;
    audit::record(
        &state,
        &who,
        "project.create",
        &out,
        Subject::default(),
        |p| Subject {
            project_id: Some(p.id),
            details: json!({ "after": ProjectView::from(p) }),
            ..Default::default()
        },
    )
    .await;
    Ok(HttpResponse::Created().json(ProjectView::from(&out?)))
}

pub async fn update(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
    payload: web::Payload,
) -> Result<HttpResponse, ManageError> {
    let who = Who::of(&req, &state);
    let id = project_id(&path)?;
    let before = Query::project(&state.db, id.0)
        .await?
        .map(|p| ProjectView::from(&p));
    let out = async {
        let bytes = read_limited(payload, state.config.server.manage_max_body_bytes.0).await?;
        let mut b = Body::parse(&bytes)?;
        let name = b.name("name", NAME_MAX);
        if name == super::body::Field::Null {
            b.error("name", "cannot be null");
        }
        let is_active = b.bool("is_active");
        if is_active == super::body::Field::Null {
            b.error("is_active", "cannot be null");
        }
        let patch = ProjectPatch {
            name: name.value(),
            description: b.string("description", DESCRIPTION_MAX).patch(),
            is_active: is_active.value(),
            upstream_api_key: b
                .string("upstream_api_key", UPSTREAM_KEY_MAX)
                .patch()
                .map(|k| k.map(Secret::new)),
            allowed_models: nullable_list(b.models("allowed_models")),
            allowed_cidrs: nullable_list(b.cidrs("allowed_cidrs")),
            rate_limit_rpm: b.int("rate_limit_rpm", 1, RPM_MAX).patch(),
            providers: nullable_list(b.providers("providers", &state.providers.names())),
        };
        b.finish()?;
        super::registry_write(&state, UpdateProject(id, patch)).await
    }
    .await;
    let on_error = Subject {
        project_id: Some(id.0),
        ..Default::default()
    };
    audit::record(&state, &who, "project.update", &out, on_error, |p| {
        Subject {
            project_id: Some(p.id),
            details: json!({ "before": before, "after": ProjectView::from(p) }),
            ..Default::default()
        }
    })
    .await;
    Ok(HttpResponse::Ok().json(ProjectView::from(&out?)))
}

/// `null` on a list resets it to "no restriction" (`[]`).
pub fn nullable_list<T>(f: super::body::Field<Vec<T>>) -> Option<Vec<T>> {
    f.patch().map(Option::unwrap_or_default)
}

pub async fn delete(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ManageError> {
    let who = Who::of(&req, &state);
    let id = project_id(&path)?;
    let out = super::registry_write(&state, DeleteProject(id)).await;
    let subject = || Subject {
        project_id: Some(id.0),
        ..Default::default()
    };
    audit::record(&state, &who, "project.delete", &out, subject(), |n| {
        Subject {
            details: json!({ "revoked_tokens": n }),
            ..subject()
        }
    })
    .await;
    out?;
    Ok(HttpResponse::NoContent().finish())
}

pub async fn revoke_tokens(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ManageError> {
    let who = Who::of(&req, &state);
    let id = project_id(&path)?;
    let out = super::registry_write(&state, RevokeProjectTokens(id)).await;
    let subject = || Subject {
        project_id: Some(id.0),
        ..Default::default()
    };
    audit::record(
        &state,
        &who,
        "project.tokens_revoke",
        &out,
        subject(),
        |n| Subject {
            details: json!({ "revoked": n }),
            ..subject()
        },
    )
    .await;
    Ok(HttpResponse::Ok().json(json!({ "revoked": out? })))
}
