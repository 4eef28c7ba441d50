//! CORS with actix-cors. Closed by default: with no `server.cors.allowed_origins`
//! the middleware is not mounted, no response carries `Access-Control-Allow-*`,
//! and browsers refuse cross-origin calls. Listed origins (exact `scheme://host[:port]`)
//! get the methods and headers the OpenAI SDKs send, named one by one; credentials
//! (cookies) are never allowed, since Palisade authenticates with bearer tokens. A
//! preflight from a listed origin is answered by the middleware, before any auth.

use actix_cors::Cors;
use actix_web::http::header;

/// Request headers a browser client may send: credentials, content type, request
/// ids, and the OpenAI SDKs' own (`openai-*`, `x-stainless-*`).
const ALLOWED_HEADERS: &[&str] = &[
    "authorization",
    "content-type",
    "accept",
    "x-api-key",
    "x-request-id",
    "openai-organization",
    "openai-project",
    "openai-beta",
    "x-stainless-arch",
    "x-stainless-async",
    "x-stainless-lang",
    "x-stainless-os",
    "x-stainless-package-version",
    "x-stainless-retry-count",
    "x-stainless-runtime",
    "x-stainless-runtime-version",
    "x-stainless-timeout",
    "x-stainless-helper-method",
    "x-stainless-poll-helper",
];

/// Response headers scripts may read.
const EXPOSED_HEADERS: &[&str] = &[
    "x-request-id",
    "retry-after",
    "x-ratelimit-limit-requests",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-reset-requests",
];

/// Checks one configured origin: `scheme://host[:port]`, nothing more.
pub fn validate_origin(origin: &str) -> Result<(), String> {
    let url = url::Url::parse(origin).map_err(|e| format!("{origin:?}: {e}"))?;
    let exact = url.origin().ascii_serialization() == origin;
    if !matches!(url.scheme(), "http" | "https") || !exact {
        return Err(format!(
            "{origin:?} is not an origin like https://app.example.com (scheme, host and optional port; no path or trailing slash)"
        ));
    }
    Ok(())
}

/// The middleware for `origins` (already validated); `None` keeps CORS closed.
pub fn middleware(origins: &[String]) -> Option<Cors> {
    if origins.is_empty() {
        return None;
    }
    let mut cors = Cors::default()
        .allowed_methods(["GET", "POST", "PATCH", "DELETE", "OPTIONS"])
        .allowed_headers(ALLOWED_HEADERS.iter().copied())
        .expose_headers(EXPOSED_HEADERS.iter().copied())
        .allowed_header(header::CONTENT_TYPE)
        .max_age(600);
    for o in origins {
        cors = cors.allowed_origin(o);
    }
    Some(cors)
}
