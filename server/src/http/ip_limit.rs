//! Per-client-IP request limits, as actix-governor middleware:
//!
//! * `/v1`: `rate_limits.per_ip_rps` / `per_ip_burst` on the proxy scope (health
//!   endpoints are outside it);
//! * `/manage/auth/*`: `rate_limits.auth_per_ip_rpm`.
//!
//! These run per instance, in front of everything. With Redis set, the `/v1`
//! figure is also enforced fleet-wide for admitted requests, inside the one
//! admission script (`rate_limit::shared`); this edge copy keeps floods of
//! requests refused before admission cheap.
//!
//! The key is the client IP as [`crate::net::client_ip`] sees it: the peer, or,
//! behind a peer listed in `server.trusted_proxies`, the right-most untrusted
//! `X-Forwarded-For` hop. A spoofed header from anyone else changes nothing.

use std::net::IpAddr;
use std::time::Duration;

use actix_governor::{
    GovernorConfig, GovernorConfigBuilder, KeyExtractor, SimpleKeyExtractionError,
};
use actix_web::dev::ServiceRequest;
use actix_web::{HttpResponse, HttpResponseBuilder, ResponseError};
use governor::NotUntil;
use governor::clock::{Clock, DefaultClock, QuantaInstant};
use governor::middleware::NoOpMiddleware;

use crate::config::RateLimitsConfig;
use crate::error::ProxyError;
use crate::policy::CidrList;

/// actix-governor key: the trusted-proxy-aware client IP.
#[derive(Clone)]
pub struct ClientIpKey {
    trusted: CidrList,
}

impl ClientIpKey {
    pub fn new(trusted: CidrList) -> Self {
        Self { trusted }
    }
}

impl KeyExtractor for ClientIpKey {
    type Key = IpAddr;
    type KeyExtractionError = SimpleKeyExtractionError<&'static str>;

    fn extract(&self, req: &ServiceRequest) -> Result<IpAddr, Self::KeyExtractionError> {
        Ok(crate::net::client_ip(req.request(), &self.trusted))
    }

    fn exceed_rate_limit_response(
        &self,
        negative: &NotUntil<QuantaInstant>,
        _response: HttpResponseBuilder,
    ) -> HttpResponse {
        let wait = negative.wait_time_from(DefaultClock::default().now());
        // A fresh response in the OpenAI envelope instead of actix-governor's
        // plain-text one (and its non-standard `x-ratelimit-after`).
        ProxyError::IpRateLimited {
            retry_after: crate::limits::retry_after_secs(wait),
        }
        .error_response()
    }
}

pub type IpGovernor = GovernorConfig<ClientIpKey, NoOpMiddleware<QuantaInstant>>;

/// The two per-IP limits, built once and shared by every worker's middleware.
#[derive(Clone)]
pub struct IpLimits {
    /// `/v1`; `None` when `per_ip_rps` is 0 (off).
    pub proxy: Option<IpGovernor>,
    /// `/manage/auth/*`.
    pub auth: IpGovernor,
}

impl IpLimits {
    pub fn new(limits: &RateLimitsConfig, trusted: &CidrList) -> Self {
        let key = ClientIpKey::new(trusted.clone());
        Self {
            proxy: proxy_governor(limits.per_ip_rps, limits.per_ip_burst, key.clone()),
            auth: auth_governor(limits.auth_per_ip_rpm, key),
        }
    }

    /// Forgets clients whose buckets have refilled.
    pub fn prune(&self) {
        prune_governor(&self.auth);
        if let Some(g) = &self.proxy {
            prune_governor(g);
        }
    }
}

/// The `/v1` per-IP limit; `None` when `per_ip_rps` is 0 (off).
fn proxy_governor(rps: u32, burst: u32, key: ClientIpKey) -> Option<IpGovernor> {
    if rps == 0 {
        return None;
    }
    GovernorConfigBuilder::default()
        .period(Duration::from_secs(1) / rps)
        .burst_size(if burst == 0 { rps } else { burst })
        .key_extractor(key)
        .finish()
}

/// `/manage/auth/*` per client IP: `rpm` requests per minute, a burst of a fifth
/// of that (at least 1). Stricter than the proxy's limit: these routes verify
/// passwords.
fn auth_governor(rpm: u32, key: ClientIpKey) -> IpGovernor {
    let rpm = rpm.max(1);
    GovernorConfigBuilder::default()
        .period(Duration::from_secs(60) / rpm)
        .burst_size((rpm / 5).max(1))
        .key_extractor(key)
        .finish()
        .unwrap_or_else(unused_governor)
}

/// A placeholder for `Condition` when the per-IP limit is off; never consulted.
pub fn unused_governor() -> IpGovernor {
    let key = ClientIpKey::new(CidrList::default());
    GovernorConfigBuilder::default()
        .key_extractor(key)
        .finish()
        .unwrap_or_else(|| unreachable!("the default quota is valid"))
}

/// Forgets keys whose buckets have refilled, so limiter memory follows the number
/// of recently active clients rather than every client ever seen.
fn prune_governor(g: &IpGovernor) {
    let limiter = g.limiter();
    limiter.retain_recent();
    limiter.shrink_to_fit();
}
