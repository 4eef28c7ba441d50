//! What every request meets before routing, and every response on its way out
//! (SPEC §4): the `Host` check ([`hosts`]), the global client-IP allow and deny
//! lists, CORS ([`cors`]), and the security headers ([`headers`]).
//!
//! Health and readiness probes are exempt from the IP lists (orchestrators probe
//! from addresses nobody lists) but not from the `Host` check or the headers.

pub mod conn;
pub mod cors;
pub mod headers;

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{ResponseError, web};

use crate::error::{ManageError, ProxyError, Refusal};
use crate::state::AppState;

use crate::policy::hosts;

pub async fn middleware(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let started = tokio::time::Instant::now();
    let path = req.path();
    let proxy = path == "/v1" || path.starts_with("/v1/");
    let manage = path.starts_with("/manage");
    let probe = path == "/health" || path == "/ready";
    let Some(state) = req.app_data::<web::Data<AppState>>().cloned() else {
        // Without the state there is no policy to apply: refuse (logged by the
        // envelope) rather than let the request past the host check, the IP lists
        // and the headers.
        let detail = "application state missing at the edge".to_owned();
        let refusal = match proxy {
            true => ProxyError::Unavailable(detail).error_response(),
            false => ManageError::Internal(detail).error_response(),
        };
        let mut res = req.into_response(refusal);
        headers::apply(res.headers_mut(), manage, false);
        return Ok(res);
    };
    let edge = &state.edge;
    // Once per request; everything after reads it from the extensions.
    let client_ip = crate::net::remember_client_ip(req.request(), &state.trusted_proxies);
    let host = req
        .headers()
        .get(actix_web::http::header::HOST)
        .map(|h| h.as_bytes());
    let refusal = if !hosts::allowed(&edge.trusted_hosts, host) {
        Some(match proxy {
            true => ProxyError::InvalidHost.error_response(),
            false => ManageError::InvalidHost.error_response(),
        })
    } else if !probe && !edge.ip_allowed(client_ip) {
        Some(match proxy {
            true => ProxyError::IpNotAllowed.error_response(),
            false => ManageError::Forbidden("requests from this IP address are not allowed")
                .error_response(),
        })
    } else {
        None
    };
    let mut res = match refusal {
        Some(r) => req.into_response(r),
        // Everything inside answers refusals with `Ok(response)`; an `Err` would
        // leave without these headers (the request cannot be cloned for it: routing
        // needs it unshared).
        None => cors::envelope_refusal(next.call(req).await?.map_into_boxed_body(), proxy),
    };
    headers::apply(res.headers_mut(), manage, edge.tls);
    // Refusals are counted here, once per response, from what the envelope says.
    let refusal = res.response().extensions().get::<Refusal>().copied();
    if let Some(refusal) = refusal {
        if refusal.auth_failure {
            crate::metrics::global().auth_failure(refusal.code);
        }
        crate::metrics::global().rejected(refusal.code);
    }
    crate::metrics::global().response(
        crate::metrics::route_label(res.request()),
        res.status().as_u16(),
        started.elapsed(),
    );
    Ok(res)
}

#[cfg(test)]
mod tests {
    use actix_web::middleware::from_fn;
    use actix_web::{App, HttpResponse, test};

    /// An app whose state was never registered: the edge must not wave requests
    /// through to a handler that would answer 200.
    #[actix_web::test]
    async fn edge_without_app_state_fails_closed() {
        let app = test::init_service(
            App::new()
                .wrap(from_fn(super::middleware))
                .default_service(actix_web::web::to(HttpResponse::Ok)),
        )
        .await;
        for (path, status, code) in [
            ("/v1/chat/completions", 503, "service_unavailable"),
            ("/manage/projects", 500, "internal_error"),
            ("/health", 500, "internal_error"),
        ] {
            let req = test::TestRequest::post().uri(path).to_request();
            let resp = test::call_service(&app, req).await;
            assert_eq!(resp.status().as_u16(), status, "{path}");
            assert_eq!(
                resp.headers().get("x-frame-options").unwrap(),
                "DENY",
                "{path}"
            );
            let body: serde_json::Value = test::read_body_json(resp).await;
            assert_eq!(body["error"]["code"], code, "{path}: {body}");
        }
    }
}
