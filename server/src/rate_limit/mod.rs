//! Rate limits (SPEC §2), in the order a `/v1` request meets them:
//!
//! 1. per client IP, before anything else ([`ip`], actix-governor middleware on
//!    the `/v1` scope);
//! 2. after authentication and the IP/model checks: the token's, then the
//!    project's requests per minute ([`rpm`]), each a GCRA bucket;
//! 3. then the lifetime quota, then the request queue.
//!
//! Failed management authentication has its own, stricter per-IP limit
//! ([`ip::AuthFailures`]); so do unauthenticated `/v1` requests
//! ([`unauthenticated`], which also audits them in aggregate).

pub mod ip;
pub mod rpm;
pub mod unauthenticated;

use actix_web::http::header::{HeaderName, HeaderValue};

pub use self::rpm::{
    LocalRateStore, RateKey, RateState, RateStore, RpmLimits, Verdict, format_reset,
    retry_after_secs,
};

/// The OpenAI-style `x-ratelimit-*-requests` headers for `state`.
pub fn headers(state: &RateState) -> [(HeaderName, HeaderValue); 3] {
    [
        (
            HeaderName::from_static("x-ratelimit-limit-requests"),
            HeaderValue::from(state.limit),
        ),
        (
            HeaderName::from_static("x-ratelimit-remaining-requests"),
            HeaderValue::from(state.remaining),
        ),
        (
            HeaderName::from_static("x-ratelimit-reset-requests"),
            HeaderValue::from_str(&format_reset(state.reset))
                .unwrap_or(HeaderValue::from_static("0s")),
        ),
    ]
}
