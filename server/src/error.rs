//! The two HTTP error envelopes, each mapped exactly once.
//!
//! * [`ProxyError`]: `/v1/*`, the OpenAI envelope
//!   `{"error":{"message","type","code","param":null}}` so SDKs raise the right
//!   exception class from the status.
//! * [`ManageError`]: `/manage/*` and operational routes, `{"error":{"message","code"}}`
//!   plus `fields` on 422.
//!
//! Messages never contain secrets: they are built from static text and ids only.
//! Errors are logged once, here, at the boundary.

use std::collections::BTreeMap;

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpResponse, ResponseError};
use serde_json::json;

// === ProxyError ===

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("Missing API key: send `Authorization: Bearer tok-…` or `x-api-key: tok-…`.")]
    MissingApiKey,
    #[error("Invalid API key.")]
    InvalidApiKey,
    #[error("This API key has expired.")]
    TokenExpired,
    #[error("This API key has been revoked.")]
    TokenRevoked,
    #[error("This API key is inactive.")]
    TokenInactive,
    #[error("The project of this API key is inactive.")]
    ProjectInactive,
    #[error("The model `{0}` is not allowed for this API key.")]
    ModelNotAllowed(String),
    #[error("Requests from this IP address are not allowed for this API key.")]
    IpNotAllowed,
    #[error("The request body is not valid JSON: {0}")]
    InvalidJson(String),
    #[error("The request body must name a `model`.")]
    MissingModel,
    #[error("Unknown endpoint: {0}")]
    UnknownEndpoint(String),
    #[error("This host name is not served here.")]
    InvalidHost,
    #[error("No provider serves the model `{0}`.")]
    ModelNotFound(String),
    #[error("The request body exceeds the limit of {0} bytes.")]
    PayloadTooLarge(u64),
    /// `server.client_body_timeout` passed before the whole body arrived.
    #[error("The request body was not received in time.")]
    RequestTimeout,
    #[error("This API key has used all of its {0} allowed requests.")]
    QuotaExceeded(i64),
    /// No answer came: connection refused or reset, TLS failure, a body that broke
    /// before its first byte. The detail (for the log) names the provider.
    #[error("The upstream provider could not be reached.")]
    UpstreamError(String),
    /// The attempts ended on an upstream HTTP answer that is retryable (5xx, 408):
    /// the client learns the status, never that the provider "could not be reached".
    #[error("The upstream provider answered {status}{}.", reason_phrase(*status))]
    UpstreamStatus {
        status: u16,
        /// The upstream's `Retry-After`, in whole seconds, when it sent one.
        retry_after: Option<u64>,
    },
    /// The attempts ended on an upstream 429.
    #[error("The upstream provider is rate limiting requests; retry later.")]
    UpstreamRateLimited { retry_after: Option<u64> },
    #[error("The upstream provider did not answer in time.")]
    UpstreamTimeout,
    #[error("The gateway is not ready to serve requests.")]
    Unavailable(String),
    /// Storage is failing and the audit buffer is full: the request's usage record
    /// could not be kept, so the request is not run (logged once by the writer,
    /// not per request).
    #[error("Storage is failing and the gateway cannot record more requests; retry shortly.")]
    StorageUnavailable,
    /// Redis (shared limits) cannot be reached and `redis.on_error` is
    /// `fail_closed`: nothing is admitted that the shared limits did not see
    /// (logged once per outage by the limiter, not per request).
    #[error("Rate limits cannot be checked right now; retry shortly.")]
    LimitsUnavailable,
    /// Every provider serving the model has its circuit breaker open or fails its
    /// health check; `retry_after` is when the first one is worth trying again.
    #[error("No healthy provider serves the model `{model}` right now.")]
    NoHealthyProvider { model: String, retry_after: u64 },
    /// A token's or project's requests-per-minute allowance is spent.
    #[error("Rate limit of {} requests per minute reached for this {scope}; retry in {}.", state.limit, crate::limits::format_reset(*retry_after))]
    RateLimited {
        scope: &'static str,
        state: crate::limits::RateState,
        retry_after: std::time::Duration,
    },
    /// The per-client-IP limit (`rate_limits.per_ip_rps`).
    #[error("Too many requests from this IP address; retry in {retry_after}s.")]
    IpRateLimited { retry_after: u64 },
    #[error("The gateway is at capacity and its waiting line is full; retry shortly.")]
    QueueFull { retry_after: u64 },
    #[error("The request waited {}ms for capacity without getting it; retry shortly.", waited.as_millis())]
    QueueTimeout {
        waited: std::time::Duration,
        retry_after: u64,
    },
}

impl ProxyError {
    pub fn code(&self) -> &'static str {
        match self {
            Self::MissingApiKey => "missing_api_key",
            Self::InvalidApiKey => "invalid_api_key",
            Self::TokenExpired => "token_expired",
            Self::TokenRevoked => "token_revoked",
            Self::TokenInactive => "token_inactive",
            Self::ProjectInactive => "project_inactive",
            Self::ModelNotAllowed(_) => "model_not_allowed",
            Self::IpNotAllowed => "ip_not_allowed",
            Self::InvalidJson(_) => "invalid_json",
            Self::MissingModel => "missing_model",
            Self::UnknownEndpoint(_) => "unknown_endpoint",
            Self::InvalidHost => "invalid_host",
            Self::ModelNotFound(_) => "model_not_found",
            Self::PayloadTooLarge(_) => "payload_too_large",
            Self::RequestTimeout => "request_timeout",
            Self::QuotaExceeded(_) => "quota_exceeded",
            Self::UpstreamError(_) | Self::UpstreamStatus { .. } => "upstream_error",
            Self::UpstreamRateLimited { .. } => "upstream_rate_limited",
            Self::UpstreamTimeout => "upstream_timeout",
            Self::Unavailable(_) | Self::StorageUnavailable | Self::LimitsUnavailable => {
                "service_unavailable"
            }
            Self::NoHealthyProvider { .. } => "no_healthy_provider",
            Self::RateLimited { .. } | Self::IpRateLimited { .. } => "rate_limit_exceeded",
            Self::QueueFull { .. } => "queue_full",
            Self::QueueTimeout { .. } => "queue_timeout",
        }
    }

    /// What an operator should read about a failed upstream attempt.
    pub fn detail(&self) -> String {
        match self {
            Self::UpstreamError(d) | Self::Unavailable(d) => d.clone(),
            Self::UpstreamTimeout => "first-byte timeout".to_owned(),
            Self::UpstreamStatus { status, .. } => format!("status {status}"),
            Self::UpstreamRateLimited { .. } => "status 429".to_owned(),
            other => other.code().to_owned(),
        }
    }

    /// Policy refusals, audited as `proxy.denied` (malformed requests and upstream
    /// failures are not denials).
    pub fn is_denial(&self) -> bool {
        matches!(
            self,
            Self::MissingApiKey
                | Self::InvalidApiKey
                | Self::TokenExpired
                | Self::TokenRevoked
                | Self::TokenInactive
                | Self::ProjectInactive
                | Self::ModelNotAllowed(_)
                | Self::IpNotAllowed
                | Self::QuotaExceeded(_)
                | Self::RateLimited { .. }
        )
    }

    /// `x-should-retry`, which the official SDKs obey before their own rules.
    /// Palisade owns retries towards the upstream: once it made upstream calls it
    /// has spent `retry.max_attempts` (or learned that waiting is needed), so an
    /// SDK retry on top would multiply the calls. Permanent refusals never change
    /// on a retry; capacity refusals do (they carry `retry-after`).
    pub fn should_retry(&self) -> bool {
        match self {
            Self::MissingApiKey
            | Self::InvalidApiKey
            | Self::TokenExpired
            | Self::TokenRevoked
            | Self::TokenInactive
            | Self::ProjectInactive
            | Self::ModelNotAllowed(_)
            | Self::IpNotAllowed
            | Self::InvalidJson(_)
            | Self::MissingModel
            | Self::UnknownEndpoint(_)
            | Self::InvalidHost
            | Self::ModelNotFound(_)
            | Self::PayloadTooLarge(_)
            | Self::RequestTimeout
            | Self::QuotaExceeded(_)
            | Self::UpstreamError(_)
            | Self::UpstreamStatus { .. }
            | Self::UpstreamRateLimited { .. }
            | Self::UpstreamTimeout => false,
            Self::Unavailable(_)
            | Self::StorageUnavailable
            | Self::LimitsUnavailable
            | Self::NoHealthyProvider { .. }
            | Self::RateLimited { .. }
            | Self::IpRateLimited { .. }
            | Self::QueueFull { .. }
            | Self::QueueTimeout { .. } => true,
        }
    }

    fn error_type(&self) -> &'static str {
        match self.status_code().as_u16() {
            401 => "authentication_error",
            403 => "permission_error",
            429 if matches!(self, Self::QuotaExceeded(_)) => "insufficient_quota",
            429 => "rate_limit_error",
            500..=599 => "api_error",
            _ => "invalid_request_error",
        }
    }
}

impl ResponseError for ProxyError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::MissingApiKey
            | Self::InvalidApiKey
            | Self::TokenExpired
            | Self::TokenRevoked
            | Self::TokenInactive => StatusCode::UNAUTHORIZED,
            Self::ProjectInactive | Self::ModelNotAllowed(_) | Self::IpNotAllowed => {
                StatusCode::FORBIDDEN
            }
            Self::InvalidJson(_) | Self::MissingModel | Self::InvalidHost => {
                StatusCode::BAD_REQUEST
            }
            Self::UnknownEndpoint(_) | Self::ModelNotFound(_) => StatusCode::NOT_FOUND,
            Self::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::QuotaExceeded(_) | Self::RateLimited { .. } | Self::IpRateLimited { .. } => {
                StatusCode::TOO_MANY_REQUESTS
            }
            Self::UpstreamError(_) | Self::UpstreamStatus { .. } => StatusCode::BAD_GATEWAY,
            Self::UpstreamRateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            Self::Unavailable(_)
            | Self::StorageUnavailable
            | Self::LimitsUnavailable
            | Self::NoHealthyProvider { .. }
            | Self::QueueFull { .. }
            | Self::QueueTimeout { .. } => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let status = self.status_code();
        let counted = match self {
            Self::UpstreamError(_)
            | Self::UpstreamStatus { .. }
            | Self::UpstreamRateLimited { .. }
            | Self::UpstreamTimeout => None,
            Self::MissingApiKey
            | Self::InvalidApiKey
            | Self::TokenExpired
            | Self::TokenRevoked
            | Self::TokenInactive => Some(Refusal {
                code: self.code(),
                auth_failure: true,
            }),
            _ => Some(Refusal {
                code: self.code(),
                auth_failure: false,
            }),
        };
        match self {
            Self::UpstreamError(detail) | Self::Unavailable(detail) => {
                tracing::warn!(code = self.code(), detail = %detail, "proxy request failed");
            }
            Self::UpstreamStatus { status, .. } => {
                tracing::warn!(
                    code = self.code(),
                    upstream_status = status,
                    "proxy request failed"
                );
            }
            _ => tracing::debug!(
                code = self.code(),
                status = status.as_u16(),
                "proxy request rejected"
            ),
        }
        let mut resp = HttpResponse::build(status);
        resp.insert_header((
            SHOULD_RETRY,
            HeaderValue::from_static(if self.should_retry() { "true" } else { "false" }),
        ));
        match self {
            Self::UpstreamStatus {
                retry_after: Some(secs),
                ..
            }
            | Self::UpstreamRateLimited {
                retry_after: Some(secs),
            } => {
                resp.insert_header((header::RETRY_AFTER, secs.to_string()));
            }
            Self::Unavailable(_) | Self::StorageUnavailable | Self::LimitsUnavailable => {
                resp.insert_header((header::RETRY_AFTER, HeaderValue::from_static("1")));
            }
            Self::NoHealthyProvider { retry_after, .. }
            | Self::IpRateLimited { retry_after }
            | Self::QueueFull { retry_after }
            | Self::QueueTimeout { retry_after, .. } => {
                resp.insert_header((header::RETRY_AFTER, retry_after.max(&1).to_string()));
            }
            Self::RateLimited {
                state, retry_after, ..
            } => {
                let secs = crate::limits::retry_after_secs(*retry_after);
                resp.insert_header((header::RETRY_AFTER, secs.to_string()));
                for h in crate::limits::headers(state) {
                    resp.insert_header(h);
                }
            }
            // The rest of the body may still be on its way: close, don't drain.
            Self::RequestTimeout => {
                resp.force_close();
            }
            _ => {}
        }
        let mut resp = resp.json(openai_envelope(
            &self.to_string(),
            self.error_type(),
            self.code(),
        ));
        if let Some(refusal) = counted {
            resp.extensions_mut().insert(refusal);
        }
        resp
    }
}

/// A refusal as the metrics count it, carried on the response: building an
/// envelope has no side effects, and the edge middleware counts each response's
/// refusal once (`palisade_rejected_requests_total`, and the auth-failure counter
/// for credential errors).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    pub code: &'static str,
    pub auth_failure: bool,
}

/// The header the official OpenAI SDKs read before deciding to retry.
pub const SHOULD_RETRY: &str = "x-should-retry";

/// `" Service Unavailable"` for 503; empty for statuses without a known phrase.
fn reason_phrase(status: u16) -> String {
    StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .map(|r| format!(" {r}"))
        .unwrap_or_default()
}

// === ManageError ===

#[derive(Debug, thiserror::Error)]
pub enum ManageError {
    #[error("{0}")]
    InvalidJson(String),
    #[error("missing or invalid management credentials")]
    Unauthorized,
    /// Login: unknown user and wrong password alike.
    #[error("invalid username or password")]
    InvalidCredentials,
    #[error("this host name is not served here")]
    InvalidHost,
    #[error("{0}")]
    Forbidden(&'static str),
    #[error("the project is inactive")]
    ProjectInactive,
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("{0}")]
    Conflict(String),
    #[error("the request body exceeds the limit of {0} bytes")]
    PayloadTooLarge(u64),
    /// `server.client_body_timeout` passed before the whole body arrived.
    #[error("the request body was not received in time")]
    RequestTimeout,
    #[error("validation failed")]
    Validation(BTreeMap<String, String>),
    #[error("service unavailable: {0}")]
    Unavailable(String),
    /// The database cannot take the write now (disk full, I/O error, locked):
    /// nothing was changed. The detail is for the log only.
    #[error("service unavailable: storage is failing; retry shortly")]
    Storage(String),
    #[error("too many failed authentication attempts; retry in {retry_after}s")]
    RateLimited { retry_after: u64 },
    /// At capacity for expensive work (password hashing): 503 with `retry-after`,
    /// logged quietly (a flood would fill the error log).
    #[error("the server is busy; retry in {retry_after}s")]
    Busy { retry_after: u64 },
    #[error("internal error")]
    Internal(String),
}

impl ManageError {
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidJson(_) => "invalid_json",
            Self::Unauthorized => "unauthorized",
            Self::InvalidCredentials => "invalid_credentials",
            Self::InvalidHost => "invalid_host",
            Self::Forbidden(_) => "forbidden",
            Self::ProjectInactive => "project_inactive",
            Self::NotFound(_) => "not_found",
            Self::Conflict(_) => "conflict",
            Self::PayloadTooLarge(_) => "payload_too_large",
            Self::RequestTimeout => "request_timeout",
            Self::Validation(_) => "validation_failed",
            Self::Unavailable(_) | Self::Busy { .. } | Self::Storage(_) => "service_unavailable",
            Self::RateLimited { .. } => "rate_limit_exceeded",
            Self::Internal(_) => "internal_error",
        }
    }

    pub fn field(name: &str, why: impl Into<String>) -> Self {
        Self::Validation(BTreeMap::from([(name.to_owned(), why.into())]))
    }
}

impl From<sea_orm::DbErr> for ManageError {
    fn from(e: sea_orm::DbErr) -> Self {
        if crate::storage::is_storage_failure(&e) {
            Self::Storage(format!("database: {e}"))
        } else {
            Self::Internal(format!("database: {e}"))
        }
    }
}

impl ResponseError for ManageError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::InvalidJson(_) | Self::InvalidHost => StatusCode::BAD_REQUEST,
            Self::Unauthorized | Self::InvalidCredentials => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) | Self::ProjectInactive => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::Validation(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Unavailable(_) | Self::Busy { .. } | Self::Storage(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut envelope = manage_envelope(&self.to_string(), self.code());
        match self {
            Self::Validation(fields) => envelope["error"]["fields"] = json!(fields),
            Self::Internal(detail) | Self::Unavailable(detail) | Self::Storage(detail) => {
                tracing::error!(code = self.code(), detail = %detail, "management request failed");
            }
            _ => {}
        }
        let mut resp = HttpResponse::build(self.status_code());
        match self {
            Self::Unavailable(_) | Self::Storage(_) => {
                resp.insert_header((header::RETRY_AFTER, HeaderValue::from_static("1")));
            }
            Self::RateLimited { retry_after } | Self::Busy { retry_after } => {
                resp.insert_header((header::RETRY_AFTER, retry_after.max(&1).to_string()));
            }
            // The rest of the body may still be on its way: close, don't drain.
            Self::RequestTimeout => {
                resp.force_close();
            }
            _ => {}
        }
        let counted = matches!(self, Self::RateLimited { .. } | Self::Busy { .. });
        let mut resp = resp.json(envelope);
        if counted {
            resp.extensions_mut().insert(Refusal {
                code: self.code(),
                auth_failure: false,
            });
        }
        resp
    }
}

// === Envelopes answered outside the two enums ===

/// `{"error":{"message","type","code","param":null}}`, the `/v1` shape.
fn openai_envelope(message: &str, error_type: &str, code: &str) -> serde_json::Value {
    json!({
        "error": {
            "message": message,
            "type": error_type,
            "code": code,
            "param": null,
        }
    })
}

/// `{"error":{"message","code"}}`, the `/manage` and operational shape.
fn manage_envelope(message: &str, code: &str) -> serde_json::Value {
    json!({ "error": { "message": message, "code": code } })
}

/// The JSON 404 for a path that no route serves (outside `/v1` and `/manage`,
/// which answer their own).
pub fn route_not_found() -> HttpResponse {
    HttpResponse::NotFound().json(manage_envelope("no such route", "not_found"))
}

/// 405 on a management route that exists but not with this method.
pub fn method_not_allowed() -> HttpResponse {
    HttpResponse::MethodNotAllowed().json(manage_envelope(
        "method not allowed on this route",
        "method_not_allowed",
    ))
}

/// The end of a stream the upstream broke after the 200 was sent: the `/v1`
/// envelope as one SSE event, then `[DONE]`, so SDKs stop reading and raise.
/// `code` is that of the matching [`ProxyError`] (`upstream_error`, `upstream_timeout`).
pub fn sse_error_event(code: &str) -> actix_web::web::Bytes {
    let event = openai_envelope(
        "The upstream provider failed while streaming the response.",
        "api_error",
        code,
    );
    actix_web::web::Bytes::from(format!("data: {event}\n\ndata: [DONE]\n\n"))
}

#[cfg(test)]
mod tests {

    #[test]
    fn envelopes_carry_their_refusal_for_the_edge_to_count() {
        let refusal = |r: actix_web::HttpResponse| r.extensions().get::<Refusal>().copied();
        assert_eq!(
            refusal(ProxyError::InvalidApiKey.error_response()),
            Some(Refusal {
                code: "invalid_api_key",
                auth_failure: true
            })
        );
        assert_eq!(
            refusal(ProxyError::ModelNotAllowed("gpt-x".into()).error_response())
                .map(|r| r.auth_failure),
            Some(false)
        );
        // Upstream failures are not refusals of the client's request.
        assert_eq!(refusal(ProxyError::UpstreamTimeout.error_response()), None);
        assert_eq!(
            refusal(ManageError::RateLimited { retry_after: 3 }.error_response()),
            Some(Refusal {
                code: "rate_limit_exceeded",
                auth_failure: false
            })
        );
        assert_eq!(refusal(ManageError::Unauthorized.error_response()), None);
    }
    use super::*;

    async fn body_of(resp: HttpResponse) -> String {
        let bytes = actix_web::body::to_bytes(resp.into_body()).await.unwrap();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[actix_web::test]
    async fn route_envelopes_are_the_manage_shape() {
        for (resp, status, body) in [
            (
                route_not_found(),
                StatusCode::NOT_FOUND,
                r#"{"error":{"code":"not_found","message":"no such route"}}"#,
            ),
            (
                method_not_allowed(),
                StatusCode::METHOD_NOT_ALLOWED,
                r#"{"error":{"code":"method_not_allowed","message":"method not allowed on this route"}}"#,
            ),
        ] {
            assert_eq!(resp.status(), status);
            assert_eq!(body_of(resp).await, body);
        }
    }

    #[test]
    fn sse_error_event_is_the_openai_envelope_then_done() {
        assert_eq!(
            sse_error_event("upstream_timeout"),
            concat!(
                r#"data: {"error":{"code":"upstream_timeout","message":"The upstream provider failed while streaming the response.","param":null,"type":"api_error"}}"#,
                "\n\ndata: [DONE]\n\n"
            )
        );
    }

    /// The enums' bodies come from the same two shape builders.
    #[actix_web::test]
    async fn enum_envelopes_keep_their_shapes() {
        assert_eq!(
            body_of(ProxyError::TokenRevoked.error_response()).await,
            r#"{"error":{"code":"token_revoked","message":"This API key has been revoked.","param":null,"type":"authentication_error"}}"#
        );
        assert_eq!(
            body_of(ManageError::NotFound("project").error_response()).await,
            r#"{"error":{"code":"not_found","message":"project not found"}}"#
        );
        assert_eq!(
            body_of(ManageError::field("name", "must not be empty").error_response()).await,
            r#"{"error":{"code":"validation_failed","fields":{"name":"must not be empty"},"message":"validation failed"}}"#
        );
    }
}
