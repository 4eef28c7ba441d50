//! Rate limits (SPEC §2), in the order a `/v1` request meets them:
//!
//! 1. per client IP, before anything else (actix-governor middleware on the
//!    `/v1` scope, in the HTTP layer: `http::ip_limit`);
//! 2. after authentication and the IP/model checks: the token's, then the
//!    project's requests per minute ([`rpm`]), each a GCRA bucket;
//! 3. then the lifetime quota, then the request queue.
//!
//! With `redis.url` set, 2 and 3 are one call to Redis shared by every instance
//! ([`shared`]); while Redis is down, `redis.on_error` decides (refuse, or the
//! in-process limits above divided by `redis.expected_instances`).
//!
//! Failed management authentication has its own, stricter per-IP limit
//! ([`ip::AuthFailures`]); so do unauthenticated `/v1` requests
//! ([`unauthenticated`], which also audits them in aggregate).

#[cfg(test)]
mod fixtures;
pub mod ip;
pub mod rpm;
pub mod shared;
pub mod unauthenticated;

pub use self::rpm::{RateStore, RpmLimits};
