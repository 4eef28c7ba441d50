//! The HTTP layer: the one route table ([`configure`]), the handlers
//! ([`proxy`] for `/v1`, [`manage`] for `/manage`, [`ops`] for probes,
//! [`metrics`] for `/metrics`), and what every request meets on the way in and
//! out ([`edge`], [`request_id`], [`access_log`], [`RootSpan`]). Domain errors
//! become envelopes here.

pub mod access_log;
pub mod audit;
pub mod edge;
pub mod ip_limit;
pub mod manage;
pub mod metrics;
pub mod ops;
pub mod proxy;
pub mod request_id;

use actix_web::web;

use self::ip_limit::IpLimits;

/// Every route. `ip_limits` are the per-IP limits of `/v1` (`None`: off) and
/// `/manage/auth/*`, shared by all workers.
pub fn configure(cfg: &mut web::ServiceConfig, ip_limits: IpLimits) {
    cfg.service(proxy::scope(ip_limits.proxy))
        .service(manage::scope(ip_limits.auth))
        .route("/health", web::get().to(ops::health))
        .route("/metrics", web::get().to(metrics::handler))
        .route("/ready", web::get().to(ops::ready))
        .default_service(web::to(ops::not_found));
}

/// Root span per request, with one field: the request id, so every line logged
/// while the request's handlers run can be tied to its access line (which has the
/// method, route, status and the rest) and to the client's `x-request-id`.
///
/// Nothing else goes in the span, and nothing is recorded into it afterwards: the
/// JSON formatter formats a span's fields when the span is made, whether or not a
/// line is ever written in it, and a field recorded later (the status, as before)
/// costs a parse and a second formatting. Both cost about 5 % of a proxied
/// request's instructions (callgrind, `docs/performance.md`). Field values come
/// from the request line only; headers (which carry credentials) are never
/// recorded.
pub struct RootSpan;

impl tracing_actix_web::RootSpanBuilder for RootSpan {
    fn on_request_start(request: &actix_web::dev::ServiceRequest) -> tracing::Span {
        use actix_web::HttpMessage;
        let ext = request.extensions();
        let request_id = ext
            .get::<request_id::RequestId>()
            .map_or("", |r| r.as_str());
        tracing::info_span!("http", request_id)
    }

    /// At `debug` only (the access line is the `info` record of a request).
    fn on_request_end<B: actix_web::body::MessageBody>(
        span: tracing::Span,
        outcome: &Result<actix_web::dev::ServiceResponse<B>, actix_web::Error>,
    ) {
        if tracing::enabled!(tracing::Level::DEBUG) {
            let status = match outcome {
                Ok(res) => res.status().as_u16(),
                Err(e) => e.as_response_error().status_code().as_u16(),
            };
            tracing::debug!(parent: &span, status, "request finished");
        }
    }
}
