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

use crate::error::{ManageError, ProxyError};
use crate::state::AppState;

use crate::policy::hosts;

pub async fn middleware(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let Some(state) = req.app_data::<web::Data<AppState>>().cloned() else {
        return next
            .call(req)
            .await
            .map(ServiceResponse::map_into_boxed_body);
    };
    let started = tokio::time::Instant::now();
    let edge = &state.edge;
    let path = req.path();
    let proxy = path == "/v1" || path.starts_with("/v1/");
    let manage = path.starts_with("/manage");
    let probe = path == "/health" || path == "/ready";
    let host = req
        .headers()
        .get(actix_web::http::header::HOST)
        .map(|h| h.as_bytes());
    let refusal = if !hosts::allowed(&edge.trusted_hosts, host) {
        Some(match proxy {
            true => ProxyError::InvalidHost.error_response(),
            false => ManageError::InvalidHost.error_response(),
        })
    } else if !probe
        && !edge.ip_allowed(|| crate::net::client_ip(req.request(), &state.trusted_proxies))
    {
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
    crate::metrics::global().response(
        crate::metrics::route_label(res.request()),
        res.status().as_u16(),
        started.elapsed(),
    );
    Ok(res)
}
