//! Security headers on every response of every route, errors and proxied answers
//! included. Palisade serves JSON and SSE to programs, never pages, so the
//! browser-facing policy is the strictest one: nothing may be framed, sniffed,
//! loaded or referred.

use actix_web::http::header::{self, HeaderMap, HeaderName, HeaderValue};

const FIXED: [(HeaderName, HeaderValue); 5] = [
    (
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    ),
    (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
    (
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'"),
    ),
    (
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    ),
    (
        HeaderName::from_static("cross-origin-opener-policy"),
        HeaderValue::from_static("same-origin"),
    ),
];

/// Two years, subdomains included: only sent when Palisade itself serves TLS (over
/// plaintext the header is meaningless and browsers ignore it).
const HSTS: HeaderValue = HeaderValue::from_static("max-age=63072000; includeSubDomains");

/// Applies the policy to one response. `manage`: the operator API's answers hold
/// tokens and configuration and must never be cached anywhere.
pub fn apply(headers: &mut HeaderMap, manage: bool, tls: bool) {
    for (name, value) in FIXED {
        headers.insert(name, value);
    }
    if manage {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    if tls {
        headers.insert(header::STRICT_TRANSPORT_SECURITY, HSTS);
    }
    // No banner: neither ours nor the provider's.
    headers.remove(header::SERVER);
}
