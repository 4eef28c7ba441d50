//! `/manage/*`: the operator API (SPEC §3). Every route sits behind [`require_auth`];
//! writes go to the `TokenRegistry` actor, reads straight to the database.

mod audit;
mod body;
mod errors;
mod list;
mod projects;
mod providers;
mod queue;
mod session;
mod tokens;
mod usage;
mod users;
mod views;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::{Next, from_fn};
use actix_web::{HttpResponse, ResponseError, web};

use actix_web::HttpMessage;
use actix_web::http::Method;

use crate::error::ManageError;
use crate::secret::constant_time_eq;
use crate::sessions::{Principal, Role};
use crate::state::AppState;

/// Mounts the management scope; `auth_limit` is the per-IP limit for
/// `/manage/auth/*`, shared by all workers.
/// A management write sent to the token registry, its error as the envelope says it.
async fn registry_write<M, T>(state: &AppState, msg: M) -> Result<T, ManageError>
where
    M: actix::Message<Result = Result<T, crate::actors::token_registry::RegistryError>>
        + Send
        + 'static,
    T: Send + 'static,
    crate::actors::token_registry::TokenRegistry: actix::Handler<M>,
{
    state.registry.ask(msg).await.map_err(ManageError::from)
}

pub fn scope(
    auth_limit: crate::http::ip_limit::IpGovernor,
) -> actix_web::Scope<
    impl actix_web::dev::ServiceFactory<
        ServiceRequest,
        Config = (),
        Response = ServiceResponse<impl MessageBody>,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    web::scope("/manage")
        // Auth runs before routing inside the scope, so an unauthenticated caller
        // learns nothing about which ids or routes exist.
        .wrap(from_fn(require_auth))
        .service(
            web::resource("/projects")
                .get(projects::list)
                .post(projects::create)
                .default_service(web::to(method_not_allowed)),
        )
        .service(
            web::resource("/projects/{id}")
                .get(projects::get)
                .patch(projects::update)
                .delete(projects::delete)
                .default_service(web::to(method_not_allowed)),
        )
        .service(
            web::resource("/projects/{id}/tokens/revoke")
                .post(projects::revoke_tokens)
                .default_service(web::to(method_not_allowed)),
        )
        .service(
            web::resource("/tokens")
                .get(tokens::list)
                .post(tokens::create)
                .default_service(web::to(method_not_allowed)),
        )
        .service(
            web::resource("/tokens/{id}")
                .get(tokens::get)
                .patch(tokens::update)
                .delete(tokens::revoke)
                .default_service(web::to(method_not_allowed)),
        )
        .service(
            web::resource("/tokens/{id}/rotate")
                .post(tokens::rotate)
                .default_service(web::to(method_not_allowed)),
        )
        .service(
            web::resource("/audit")
                .get(audit::list)
                .default_service(web::to(method_not_allowed)),
        )
        .service(
            web::resource("/usage")
                .get(usage::summary)
                .default_service(web::to(method_not_allowed)),
        )
        .service(
            web::resource("/providers")
                .get(providers::list)
                .default_service(web::to(method_not_allowed)),
        )
        .service(
            web::scope("/auth")
                // Password guessing is slow work for us: a strict per-IP limit.
                .wrap(actix_governor::Governor::new(&auth_limit))
                .service(web::resource("/login").post(session::login))
                .service(web::resource("/refresh").post(session::refresh))
                .service(web::resource("/logout").post(session::logout))
                .default_service(web::to(not_found)),
        )
        .service(
            web::resource("/users")
                .get(users::list)
                .post(users::create)
                .default_service(web::to(method_not_allowed)),
        )
        .service(
            web::resource("/users/{id}")
                .delete(users::delete)
                .default_service(web::to(method_not_allowed)),
        )
        .service(
            web::resource("/queue")
                .get(queue::show)
                .default_service(web::to(method_not_allowed)),
        )
        .default_service(web::to(not_found))
}

/// Who may call `/manage`: `Authorization: Bearer` with the management token
/// (compared in constant time; acts as admin) or an admin user's access token
/// (JWT). A viewer may only read, and log itself out. A client IP that keeps failing is refused with
/// 429 before its credentials are even looked at
/// ([`crate::rate_limit::ip::AuthFailures`]). Login and refresh carry their own
/// credentials in the body and pass through.
async fn require_auth(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let Some(state) = req.app_data::<web::Data<AppState>>().cloned() else {
        let err = ManageError::Internal("application state missing".into());
        return Ok(req
            .into_response(err.error_response())
            .map_into_right_body());
    };
    let ip = crate::net::client_ip(req.request(), &state.trusted_proxies);
    if let Err(locked) = state.auth_failures.check(&ip) {
        return Ok(req
            .into_response(ManageError::from(locked).error_response())
            .map_into_right_body());
    }
    if matches!(req.path(), "/manage/auth/login" | "/manage/auth/refresh") {
        return Ok(next.call(req).await?.map_into_left_body());
    }
    let principal = match crate::secret::bearer(req.headers()) {
        Some(p) if constant_time_eq(p, state.config.auth.management_token.expose()) => {
            Some(Principal::management_token())
        }
        Some(p) if crate::sessions::jwt::looks_like_jwt(p) => {
            match crate::sessions::authenticate(&state.db, &state.config.auth, p).await {
                Ok(principal) => principal,
                // The credentials could not be checked: a storage 503 (retry-after),
                // neither an `auth.failure` nor a strike towards the IP's lock-out.
                Err(e) => {
                    return Ok(req
                        .into_response(ManageError::from(e).error_response())
                        .map_into_right_body());
                }
            }
        }
        _ => None,
    };
    let Some(principal) = principal else {
        crate::metrics::global().auth_failure("management");
        tracing::info!(
            path = req.path(),
            "management request rejected: bad credentials"
        );
        let who = crate::http::audit::Who::of(req.request(), &state);
        let subject = crate::http::audit::Subject {
            details: serde_json::json!({ "method": req.method().as_str(), "path": req.path() }),
            ..Default::default()
        };
        crate::http::audit::record_as(
            &state,
            &who,
            "auth.failure",
            crate::http::audit::AuditResult::Denied,
            subject,
        )
        .await;
        // A failure beyond the allowance is answered 429 and locks the IP out.
        let err = state.auth_failures.refuse(&ip, ManageError::Unauthorized);
        return Ok(req
            .into_response(err.error_response())
            .map_into_right_body());
    };
    // Every role may end its own session; otherwise a viewer only reads.
    let own_logout = req.path() == "/manage/auth/logout";
    if principal.role == Role::Viewer
        && !own_logout
        && !matches!(*req.method(), Method::GET | Method::HEAD)
    {
        return Ok(req
            .into_response(ManageError::Forbidden("viewers may only read (GET)").error_response())
            .map_into_right_body());
    }
    // A write files an audit event: while storage fails and the audit buffer is
    // full it could not be kept, so the write is refused before it is made.
    if !matches!(*req.method(), Method::GET | Method::HEAD) && state.audit.check_room().is_err() {
        let err = ManageError::Storage("audit buffer full while storage is failing".into());
        return Ok(req
            .into_response(err.error_response())
            .map_into_right_body());
    }
    req.extensions_mut().insert(principal);
    Ok(next.call(req).await?.map_into_left_body())
}

async fn not_found() -> Result<HttpResponse, ManageError> {
    Err(ManageError::NotFound("route"))
}

async fn method_not_allowed() -> HttpResponse {
    crate::error::method_not_allowed()
}
