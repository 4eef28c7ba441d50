//! `/manage/users`: admin users (SPEC §3). Passwords are bcrypt-hashed off the
//! worker threads and never returned; usernames are unique, case-insensitively.

use actix_web::{HttpRequest, HttpResponse, web};
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::json;
use uuid::Uuid;

use super::body::{Body, read_limited};
use super::list::ListParams;
use crate::error::ManageError;
use crate::http::audit::{self, Subject, Who};
use crate::secret::Secret;
use crate::service::sessions::Sessions;
use crate::sessions::users::{create_user, username_ok};
use crate::sessions::{Role, passwords};
use crate::state::AppState;

#[derive(Serialize)]
struct UserView {
    id: Uuid,
    username: String,
    role: String,
    created_at: DateTime<Utc>,
}

impl From<&entity::users::Model> for UserView {
    fn from(u: &entity::users::Model) -> Self {
        Self {
            id: u.id,
            username: u.username.clone(),
            role: u.role.clone(),
            created_at: u.created_at,
        }
    }
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
        let username = b.required_name("username", 64);
        if username.as_deref().is_some_and(|u| !username_ok(u)) {
            b.error("username", "1-64 letters, digits and . _ - @");
        }
        let password = b.take_raw_string("password", 1024);
        match &password {
            None => b.error("password", "is required"),
            Some(p) => {
                if let Err(why) = passwords::check_policy(p) {
                    b.error("password", why);
                }
            }
        }
        let role = b.required_string("role", 16);
        let parsed = role.as_deref().and_then(Role::parse);
        if role.is_some() && parsed.is_none() {
            b.error("role", "must be admin or viewer");
        }
        b.finish()?;
        let (Some(username), Some(password), Some(role)) = (username, password, parsed) else {
            return Err(ManageError::InvalidJson(
                "username, password and role are required".into(),
            ));
        };
        create_user(
            &state.db,
            &username,
            Secret::new(password),
            role,
            &state.hasher,
        )
        .await
        .map_err(ManageError::from)
    }
    .await;
    audit::record(&state, &who, "user.create", &out, Subject::default(), |u| {
        Subject {
            details: json!({ "after": UserView::from(u) }),
            ..Default::default()
        }
    })
    .await;
    Ok(HttpResponse::Created().json(UserView::from(&out?)))
}

pub async fn list(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ManageError> {
    let p = ListParams::parse(req.query_string())?;
    let page = Sessions::list_users(&state.db, p.page).await?;
    let data: Vec<UserView> = page.rows.iter().map(UserView::from).collect();
    Ok(HttpResponse::Ok().json(json!({ "data": data, "next_cursor": page.next })))
}

/// Deletes a user: their access tokens stop working on the next request and
/// their refresh families are revoked.
pub async fn delete(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ManageError> {
    let who = Who::of(&req, &state);
    let out = async {
        let id = Uuid::try_parse(&path).map_err(|_| ManageError::NotFound("user"))?;
        Sessions::delete_user(&state.db, id, crate::time::now())
            .await?
            .ok_or(ManageError::NotFound("user"))
    }
    .await;
    audit::record(&state, &who, "user.delete", &out, Subject::default(), |u| {
        Subject {
            details: json!({ "before": UserView::from(u) }),
            ..Default::default()
        }
    })
    .await;
    out.map(|_| HttpResponse::NoContent().finish())
}
