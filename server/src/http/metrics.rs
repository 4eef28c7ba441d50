//! `GET /metrics`: the Prometheus text of [`crate::metrics`], for the management
//! token or `metrics.token`; the live gauges are read here, at the scrape.

use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, ResponseError, web};

use crate::error::ManageError;
use crate::metrics::{Live, global};
use crate::secret::constant_time_eq;
use crate::state::AppState;

/// `GET /metrics`.
pub async fn handler(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let ip = crate::net::client_ip(&req, &state.trusted_proxies);
    if let Err(locked) = state.auth_failures.check(&ip) {
        return ManageError::from(locked).error_response();
    }
    let presented = crate::secret::bearer(req.headers());
    let management = state.config.auth.management_token.expose();
    let scrape = state.config.metrics.token.as_ref().map(|t| t.expose());
    let ok = presented.is_some_and(|p| {
        constant_time_eq(p, management)
            | scrape.is_some_and(|t| !t.is_empty() && constant_time_eq(p, t))
    });
    if !ok {
        global().auth_failure("metrics");
        return state
            .auth_failures
            .refuse(&ip, ManageError::Unauthorized)
            .error_response();
    }
    match global().render(&live(&state)) {
        Ok(body) => HttpResponse::Ok()
            .insert_header((
                header::CONTENT_TYPE,
                HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            ))
            .insert_header((header::CACHE_CONTROL, HeaderValue::from_static("no-store")))
            .body(body),
        Err(_) => ManageError::Internal("metrics encoding failed".into()).error_response(),
    }
}

fn live(state: &AppState) -> Live {
    let queue = state.admission.stats().snapshot();
    let hashes = state.hasher.stats();
    let db = crate::db::health();
    Live {
        queue_in_flight: queue.in_flight,
        queue_waiting: queue.waiting,
        audit_backlog: u64::try_from(state.audit.backlog()).unwrap_or(u64::MAX),
        audit_waited: state.audit.waited(),
        audit_waiting: state.audit.waiting(),
        audit_oldest: state.audit.oldest_age(),
        audit_dropped: state.audit.dropped(),
        hashes_in_flight: hashes.in_flight(),
        hashes_peak: hashes.peak(),
        hashes_refused: hashes.refused(),
        db_write_errors: db.errors_total(),
        storage_failing: db.is_failing() || state.audit.is_failing(),
        redis_failing: state.shared_limits.as_ref().is_some_and(|s| !s.is_up()),
        database_up: crate::db::reach::reach().is_up(),
        tokens: state.registry.cache.census(crate::time::now()).to_vec(),
        providers: state
            .providers
            .all()
            .iter()
            .map(|p| (p.name.clone(), p.status.state().as_str()))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use crate::metrics::KNOWN_ROUTES;

    #[test]
    fn every_default_proxy_path_has_its_own_route_label() {
        for path in crate::config::DEFAULT_ALLOWED_PATHS {
            let route = format!("/v1{path}");
            assert!(KNOWN_ROUTES.contains(&route.as_str()), "{route}");
        }
    }
}
