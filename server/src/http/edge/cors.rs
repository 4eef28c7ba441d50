//! CORS with actix-cors. Closed by default: with no `server.cors.allowed_origins`
//! the middleware is not mounted, no response carries `Access-Control-Allow-*`,
//! and browsers refuse cross-origin calls. Listed origins (exact `scheme://host[:port]`)
//! get the methods and headers the OpenAI SDKs send, named one by one; credentials
//! (cookies) are never allowed, since Palisade authenticates with bearer tokens. A
//! preflight from a listed origin is answered by the middleware, before any auth.
//! A refused preflight gets the route's JSON envelope ([`envelope_refusal`]).

use actix_cors::{Cors, CorsError};
use actix_web::HttpResponse;
use actix_web::body::BoxBody;
use actix_web::dev::ServiceResponse;
use actix_web::http::header::{self, HeaderValue};
use serde_json::json;

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

/// The middleware for `origins` (already validated); `None` keeps CORS closed.
pub fn middleware(origins: &[crate::policy::Origin]) -> Option<Cors> {
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
        cors = cors.allowed_origin(o.as_str());
    }
    Some(cors)
}

/// actix-cors answers the requests it refuses (an unlisted origin's preflight, a
/// method or header not allowed) itself, in plain text. The edge hands every
/// response through here: a CORS refusal becomes the route's JSON envelope with
/// the same status and the code `cors_refused`; anything else passes untouched.
pub fn envelope_refusal(res: ServiceResponse<BoxBody>, proxy: bool) -> ServiceResponse<BoxBody> {
    let Some(why) = res
        .response()
        .error()
        .and_then(|e| e.as_error::<CorsError>())
        .map(ToString::to_string)
    else {
        return res;
    };
    let status = res.status();
    let (req, refused) = res.into_parts();
    let mut out = if proxy {
        HttpResponse::build(status)
            .insert_header((
                crate::error::SHOULD_RETRY,
                HeaderValue::from_static("false"),
            ))
            .json(json!({ "error": {
                "message": why,
                "type": "invalid_request_error",
                "param": null,
                "code": "cors_refused",
            } }))
    } else {
        HttpResponse::build(status)
            .json(json!({ "error": { "message": why, "code": "cors_refused" } }))
    };
    // Keep what actix-cors added (`Vary: Origin, ...`).
    for (name, value) in refused.headers() {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            out.headers_mut().append(name.clone(), value.clone());
        }
    }
    ServiceResponse::new(req, out)
}
