//! `AppState`: the handles every handler shares (configuration, database, actor
//! addresses, caches, limiters). Handles only: what they do lives in the modules
//! below this one.

use std::sync::Arc;

use sea_orm::DatabaseConnection;

use crate::actors::audit_writer::AuditSink;
use crate::actors::provider_supervisor::ProviderSupervisor;
use crate::actors::request_queue::Admission;
use crate::actors::token_registry::Registry;
use crate::config::{Config, ServerConfig};
use crate::policy::CidrList;
use crate::policy::hosts::HostPattern;
use crate::providers::Providers;
use crate::rate_limit::RpmLimits;
use crate::rate_limit::ip::AuthFailures;
use crate::rate_limit::shared::SharedLimits;
use crate::rate_limit::unauthenticated::Unauthenticated;
use crate::sessions::passwords::Hasher;

/// Shared, read-only state handed to every handler.
pub struct AppState {
    pub config: Arc<Config>,
    pub audit: AuditSink,
    pub db: DatabaseConnection,
    pub registry: Registry,
    pub providers: Arc<Providers>,
    /// Receives attempt outcomes (fire-and-forget); routing reads provider status
    /// directly.
    pub supervisor: actix::Addr<ProviderSupervisor>,
    pub allowed_paths: Vec<String>,
    pub trusted_proxies: CidrList,
    /// `usage.enabled`: whether proxied requests leave usage records.
    pub usage_enabled: bool,
    /// The `RequestQueue`: slots for forwarded requests.
    pub admission: Admission,
    /// Per-token and per-project requests per minute, in this process: the
    /// limits themselves without Redis; with Redis, this instance's share
    /// (`redis.expected_instances`), used while Redis is down and
    /// `redis.on_error` is `local`.
    pub rpm: RpmLimits,
    /// Token and project rpm and quotas shared by every instance (`redis.url`).
    pub shared_limits: Option<SharedLimits>,
    /// Failed management authentication per client IP.
    pub auth_failures: AuthFailures,
    /// Failed logins per username (whatever the client IP).
    pub login_failures: AuthFailures<String>,
    /// `/v1` requests without a valid credential: counted, limited per client
    /// IP, audited in aggregate.
    pub unauthenticated: Unauthenticated,
    /// bcrypt, on a bounded pool of low-priority threads.
    pub hasher: Hasher,
    /// Host, global IP lists, security headers.
    pub edge: EdgePolicy,
}

/// The edge settings, parsed once.
#[derive(Debug, Clone, Default)]
pub struct EdgePolicy {
    pub trusted_hosts: Vec<HostPattern>,
    pub ip_allowlist: CidrList,
    pub ip_denylist: CidrList,
    /// Palisade terminates TLS itself (HSTS is sent).
    pub tls: bool,
}

impl EdgePolicy {
    pub fn from_config(server: &ServerConfig) -> Self {
        Self {
            trusted_hosts: server.trusted_hosts.clone(),
            ip_allowlist: CidrList::new(server.ip_allowlist.clone()),
            ip_denylist: CidrList::new(server.ip_denylist.clone()),
            tls: server.tls_enabled(),
        }
    }

    /// Deny wins; an empty allowlist allows everyone not denied.
    pub fn ip_allowed(&self, ip: std::net::IpAddr) -> bool {
        !self.ip_denylist.contains(ip) && self.ip_allowlist.allows(ip)
    }
}
