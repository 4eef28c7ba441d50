//! `config.yaml`: typed, strict (`deny_unknown_fields`), env-expanded and validated
//! once at start-up. Every key listed here does something or is documented in the
//! README as accepted for a feature that is not built yet (SPEC §4 allows that);
//! `Config::unimplemented_settings` names those so start-up can warn when one is set.

mod env;
mod providers;
pub mod units;
mod validate;

use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use url::Url;

pub use self::providers::{
    BreakerConfig, HealthCheckConfig, ProviderConfig, ProviderTimeouts, RetryConfig,
};
pub use self::units::{ByteSize, HumanDuration};
use crate::secret::Secret;

/// Start-up failures: the process prints the message and exits with [`EXIT_INIT`].
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid YAML: {message}")]
    Yaml { path: String, message: String },
    #[error("config file {path}:\n  {}", .errors.join("\n  "))]
    Invalid { path: String, errors: Vec<String> },
    #[error("database: {0}")]
    Database(String),
    #[error("{0}")]
    Other(String),
}

/// Exit code of a failure before serving (EX_USAGE, as linkerd does).
pub const EXIT_INIT: u8 = 64;
/// Exit code of a server that started and then failed (EX_SOFTWARE).
pub const EXIT_RUNTIME: u8 = 70;

/// Why a command failed; the exit code tells a supervisor whether to fix the
/// configuration (64) or to look at a server that broke while running (70), see
/// `docs/operations.md`.
#[derive(Debug, thiserror::Error)]
pub enum ExitError {
    #[error(transparent)]
    Init(#[from] InitError),
    /// The server had started serving and then failed.
    #[error("{0}")]
    Runtime(String),
}

impl ExitError {
    pub fn code(&self) -> u8 {
        match self {
            Self::Init(_) => EXIT_INIT,
            Self::Runtime(_) => EXIT_RUNTIME,
        }
    }
}

// === Defaults ===

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
pub const DEFAULT_MAX_BODY_BYTES: u64 = 10 * 1024 * 1024;
pub const DEFAULT_MANAGE_MAX_BODY_BYTES: u64 = 64 * 1024;
pub const DEFAULT_CLIENT_BODY_TIMEOUT: HumanDuration = HumanDuration::secs(30);
pub const DEFAULT_MAX_CONNECTIONS_PER_IP: u64 = 256;
pub const DEFAULT_SHUTDOWN_GRACE: HumanDuration = HumanDuration::secs(30);
pub const DEFAULT_DATABASE_URL: &str = "sqlite://data/palisade.db?mode=rwc";
pub const DEFAULT_DB_MAX_CONNECTIONS: u64 = 8;
pub const DEFAULT_DB_BUSY_TIMEOUT: HumanDuration = HumanDuration::secs(5);
pub const DEFAULT_DB_STATEMENT_TIMEOUT: HumanDuration = HumanDuration::secs(30);
pub const DEFAULT_TOKEN_TTL: HumanDuration = HumanDuration::secs(30 * 86_400);
pub const DEFAULT_TOKEN_MAX_TTL: HumanDuration = HumanDuration::secs(365 * 86_400);
pub const DEFAULT_USAGE_FLUSH_INTERVAL: HumanDuration = HumanDuration::secs(1);
/// Half the bound SPEC §5 sets on a change reaching the other instances.
pub const DEFAULT_TOKEN_SYNC_INTERVAL: HumanDuration = HumanDuration::millis(500);
pub const DEFAULT_MODELS_REFRESH: HumanDuration = HumanDuration::secs(300);
/// The proxy paths SPEC §2 serves by default (relative to `/v1`).
pub const DEFAULT_ALLOWED_PATHS: &[&str] = &[
    "/chat/completions",
    "/completions",
    "/embeddings",
    "/responses",
    "/moderations",
    "/images/generations",
    "/audio/speech",
    "/audio/transcriptions",
];
pub const MIN_MANAGEMENT_TOKEN_LEN: usize = 32;

// === Structs ===

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub database: DatabaseConfig,
    pub redis: RedisConfig,
    pub auth: AuthConfig,
    pub tokens: TokensConfig,
    pub proxy: ProxyConfig,
    pub queue: QueueConfig,
    pub rate_limits: RateLimitsConfig,
    pub retry: RetryConfig,
    pub audit: AuditConfig,
    pub usage: UsageConfig,
    pub metrics: MetricsConfig,
    pub logging: LoggingConfig,
    pub providers: Vec<ProviderConfig>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub listen: String,
    /// Largest `/v1` request body; exactly this many bytes is allowed.
    pub max_body_bytes: ByteSize,
    /// Largest `/manage` request body.
    pub manage_max_body_bytes: ByteSize,
    pub shutdown_grace: HumanDuration,
    /// actix worker threads; 0 = one per core.
    #[serde(deserialize_with = "units::de_u64")]
    pub workers: u64,
    /// Peers whose `X-Forwarded-For` is believed (right-most untrusted entry wins).
    pub trusted_proxies: Vec<IpNet>,
    /// `Host` headers answered (`api.example.com`, `host:port`, `*.example.com`);
    /// empty = any.
    pub trusted_hosts: Vec<crate::policy::hosts::HostPattern>,
    /// Client IPs allowed on every route but the probes; empty = all.
    pub ip_allowlist: Vec<IpNet>,
    /// Client IPs refused on every route but the probes; wins over the allowlist.
    pub ip_denylist: Vec<IpNet>,
    pub cors: CorsConfig,
    pub tls: Option<TlsConfig>,
    /// Allows a non-loopback listener without TLS (TLS terminates at a load balancer).
    pub allow_plaintext_public: bool,
    /// Longest time a client may take to send a request head, on every request of
    /// a connection: from the connection's start or the head's first byte.
    pub client_header_timeout: HumanDuration,
    /// Longest time a client may take to send a whole request body, from the
    /// handler's first read (a total, not a gap between chunks); 408 after it.
    pub client_body_timeout: HumanDuration,
    /// Open connections per client address (trusted proxies are not counted);
    /// beyond it, new ones are refused at once.
    #[serde(deserialize_with = "units::de_u64")]
    pub max_connections_per_ip: u64,
    /// Idle keep-alive connections are closed after this long; 0 disables keep-alive.
    pub keep_alive: HumanDuration,
    /// Open connections per worker thread; beyond it, new ones wait to be accepted.
    #[serde(deserialize_with = "units::de_u64")]
    pub max_connections: u64,
    /// This instance's name on the audit events and usage records it writes
    /// (`instance`); empty = the host name.
    pub instance_id: String,
}

impl ServerConfig {
    /// `instance_id`, or the host name when it is empty (`palisade` if even that
    /// cannot be read).
    pub fn instance(&self) -> String {
        if !self.instance_id.is_empty() {
            return self.instance_id.clone();
        }
        let host = rustix::system::uname();
        match host.nodename().to_str() {
            Ok(name) if !name.is_empty() => name.to_owned(),
            _ => "palisade".to_owned(),
        }
    }

    /// Palisade terminates TLS itself.
    pub fn tls_enabled(&self) -> bool {
        self.tls
            .as_ref()
            .is_some_and(|t| t.cert_file.is_some() && t.key_file.is_some())
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: DEFAULT_LISTEN.to_owned(),
            max_body_bytes: ByteSize(DEFAULT_MAX_BODY_BYTES),
            manage_max_body_bytes: ByteSize(DEFAULT_MANAGE_MAX_BODY_BYTES),
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            workers: 0,
            trusted_proxies: Vec::new(),
            trusted_hosts: Vec::new(),
            ip_allowlist: Vec::new(),
            ip_denylist: Vec::new(),
            cors: CorsConfig::default(),
            tls: None,
            allow_plaintext_public: false,
            client_header_timeout: HumanDuration::secs(5),
            client_body_timeout: DEFAULT_CLIENT_BODY_TIMEOUT,
            max_connections_per_ip: DEFAULT_MAX_CONNECTIONS_PER_IP,
            keep_alive: HumanDuration::secs(60),
            max_connections: 10_000,
            instance_id: String::new(),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CorsConfig {
    pub allowed_origins: Vec<crate::policy::Origin>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub min_version: Option<units::TlsVersion>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// May hold a password (PostgreSQL): printed with the password redacted.
    #[serde(serialize_with = "serialize_db_url")]
    pub url: Secret,
    #[serde(deserialize_with = "units::de_u64")]
    pub max_connections: u64,
    /// SQLite only: how long a write waits for another connection's write lock.
    pub busy_timeout: HumanDuration,
    /// PostgreSQL only: `SET statement_timeout` on every connection; 0 = none.
    pub statement_timeout: HumanDuration,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: Secret::new(DEFAULT_DATABASE_URL),
            max_connections: DEFAULT_DB_MAX_CONNECTIONS,
            busy_timeout: DEFAULT_DB_BUSY_TIMEOUT,
            statement_timeout: DEFAULT_DB_STATEMENT_TIMEOUT,
        }
    }
}

/// Shared limits and quotas for several instances (SPEC §5, docs/operations.md
/// "Redis"). Without `url`, every limit is kept in this process.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    /// `redis://` or `rediss://` (TLS); may hold a password, so it is a secret.
    pub url: Option<Secret>,
    /// Put in front of every key, so several deployments (or tests) can share
    /// one Redis.
    pub key_prefix: String,
    /// Bounds every Redis call on the request path (connecting included).
    pub command_timeout: HumanDuration,
    /// What admission does while Redis cannot be reached.
    pub on_error: RedisOnError,
    /// How many instances share the limits: in `local` mode each one enforces
    /// its share (limit / this, at least 1).
    #[serde(deserialize_with = "units::de_u64")]
    pub expected_instances: u64,
}

pub const DEFAULT_REDIS_KEY_PREFIX: &str = "palisade:";
pub const DEFAULT_REDIS_COMMAND_TIMEOUT: HumanDuration = HumanDuration::millis(250);

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: None,
            key_prefix: DEFAULT_REDIS_KEY_PREFIX.to_owned(),
            command_timeout: DEFAULT_REDIS_COMMAND_TIMEOUT,
            on_error: RedisOnError::FailClosed,
            expected_instances: 1,
        }
    }
}

impl RedisConfig {
    /// The URL when Redis is in use (set and not empty).
    pub fn url(&self) -> Option<&str> {
        self.url
            .as_ref()
            .map(Secret::expose)
            .filter(|u| !u.is_empty())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RedisOnError {
    /// 503 `service_unavailable` with `retry-after`: nothing is admitted that
    /// the shared limits did not see.
    #[default]
    FailClosed,
    /// In-process limits, each divided by `expected_instances`; quotas through
    /// the database's request leases.
    Local,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    pub management_token: Secret,
    /// Signs admin users' access tokens (HS256); at least 32 bytes. Required once
    /// admin users exist.
    pub jwt_secret: Secret,
    /// Base64 of 32 bytes; encrypts project upstream keys at rest (AES-256-GCM).
    pub encryption_key: Secret,
    /// Lifetime of an access token (JWT).
    pub access_token_ttl: HumanDuration,
    /// Lifetime of a refresh token; each use replaces it with a new one.
    pub refresh_token_ttl: HumanDuration,
    /// bcrypt cost for admin passwords (4–31; each step doubles the work).
    #[serde(deserialize_with = "units::de_u64")]
    pub bcrypt_cost: u64,
    /// Password hashes computed at once (login, user creation); 0 = half the
    /// cores, at least one. Callers beyond it wait briefly, then get 503.
    #[serde(deserialize_with = "units::de_u64")]
    pub bcrypt_concurrency: u64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            management_token: Secret::default(),
            jwt_secret: Secret::default(),
            encryption_key: Secret::default(),
            access_token_ttl: HumanDuration::secs(15 * 60),
            refresh_token_ttl: HumanDuration::secs(30 * 86_400),
            bcrypt_cost: 12,
            bcrypt_concurrency: 0,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TokensConfig {
    pub default_ttl: HumanDuration,
    pub max_ttl: HumanDuration,
    /// How often `request_count` / `last_used_at` are written back in one batch.
    pub usage_flush_interval: HumanDuration,
    /// How often the registry revision is read, to pick up changes other
    /// instances sharing the database made (`actors::token_registry::sync`).
    pub sync_interval: HumanDuration,
}

impl Default for TokensConfig {
    fn default() -> Self {
        Self {
            default_ttl: DEFAULT_TOKEN_TTL,
            max_ttl: DEFAULT_TOKEN_MAX_TTL,
            usage_flush_interval: DEFAULT_USAGE_FLUSH_INTERVAL,
            sync_interval: DEFAULT_TOKEN_SYNC_INTERVAL,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyConfig {
    /// Paths under `/v1` that are forwarded; anything else is 404 `unknown_endpoint`.
    pub allowed_paths: Vec<String>,
    /// How often `GET /models` is asked of providers configured with a `*` glob.
    pub models_refresh_interval: HumanDuration,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            allowed_paths: DEFAULT_ALLOWED_PATHS
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
            models_refresh_interval: DEFAULT_MODELS_REFRESH,
        }
    }
}

/// Admission to the upstream (the `RequestQueue` actor).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueueConfig {
    /// Requests forwarded at once; 0 turns the queue off (no limit, no waiting).
    #[serde(deserialize_with = "units::de_u64")]
    pub max_in_flight: u64,
    /// Requests allowed to wait for a slot; beyond it, 503 `queue_full`.
    #[serde(deserialize_with = "units::de_u64")]
    pub max_waiting: u64,
    /// Longest wait for a slot; then 503 `queue_timeout`.
    pub max_wait: HumanDuration,
}

/// Per-IP, per-token and per-project limits; see `rate_limit`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitsConfig {
    /// Requests per minute for tokens without their own `rate_limit_rpm`; null = none.
    pub default_token_rpm: Option<u32>,
    /// `/v1` requests per second per client IP; 0 = off.
    pub per_ip_rps: u32,
    /// Burst for `per_ip_rps`; 0 = one second's worth.
    pub per_ip_burst: u32,
    /// Failed management authentications per minute per client IP; 0 = off.
    pub auth_failures_per_minute: u32,
    /// Failed attempts allowed at once before the per-minute rate applies (per
    /// client IP, and per username for logins).
    pub auth_failures_burst: u32,
    /// Requests to `/manage/auth/*` per minute per client IP (actix-governor).
    pub auth_per_ip_rpm: u32,
    /// `/v1` requests per minute per client IP that present no credential or an
    /// unknown one, before they get 429 instead of 401; 0 = off.
    pub unauthenticated_per_minute: u32,
    /// Such failures allowed at once before `unauthenticated_per_minute` applies.
    pub unauthenticated_burst: u32,
}

impl Default for RateLimitsConfig {
    fn default() -> Self {
        Self {
            default_token_rpm: None,
            per_ip_rps: 0,
            per_ip_burst: 0,
            auth_failures_per_minute: 10,
            auth_failures_burst: 10,
            auth_per_ip_rpm: 60,
            unauthenticated_per_minute: 60,
            unauthenticated_burst: 100,
        }
    }
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            max_in_flight: 512,
            max_waiting: 2048,
            max_wait: HumanDuration::secs(30),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// JSON-lines copy of every audit event (`0600`); `""` disables it.
    pub file: String,
    /// Keep audit events in the database (for `/manage/audit`).
    pub store_in_db: bool,
    /// Records written per transaction at most.
    #[serde(deserialize_with = "units::de_u64")]
    pub batch_size: u64,
    /// Longest a record waits before its batch is written.
    pub flush_interval: HumanDuration,
    /// Records queued before producers have to wait (never dropped).
    #[serde(deserialize_with = "units::de_u64")]
    pub buffer: u64,
    /// Audit events older than this many days are deleted; 0 keeps them forever.
    #[serde(deserialize_with = "units::de_u64")]
    pub retention_days: u64,
    /// Unauthenticated `/v1` failures are audited as one event per client IP and
    /// reason per window, with a count (the first one at once).
    pub unauthenticated_window: HumanDuration,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UsageConfig {
    /// Record one usage row per proxied request.
    pub enabled: bool,
    /// Usage rows older than this many days are deleted; 0 keeps them forever.
    #[serde(deserialize_with = "units::de_u64")]
    pub retention_days: u64,
}

impl Default for UsageConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            retention_days: 0,
        }
    }
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            file: "data/audit.jsonl".to_owned(),
            store_in_db: true,
            batch_size: 500,
            flush_interval: HumanDuration::millis(200),
            buffer: 8192,
            retention_days: 0,
            unauthenticated_window: HumanDuration::secs(60),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    pub token: Option<Secret>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoggingConfig {
    /// A tracing `EnvFilter` directive; `RUST_LOG` overrides it.
    pub level: String,
    pub format: LogFormat,
    /// One `info` line per request (target `palisade::access`); `false` silences it.
    pub access_log: bool,
}

impl Default for LoggingConfig {
    fn default() -> Self {
        Self {
            level: "info".to_owned(),
            format: LogFormat::Json,
            access_log: true,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Json,
    Pretty,
}

fn serialize_db_url<S: serde::Serializer>(url: &Secret, s: S) -> Result<S::Ok, S::Error> {
    match Url::parse(url.expose()) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("[redacted]"));
            s.serialize_str(u.as_str())
        }
        _ => s.serialize_str(url.expose()),
    }
}

// === Loading ===

/// Where the config comes from: `--config`, else `PALISADE_CONFIG`, else `./config.yaml`.
pub fn resolve_path(flag: Option<&Path>) -> PathBuf {
    flag.map(Path::to_path_buf)
        .or_else(|| std::env::var_os("PALISADE_CONFIG").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("config.yaml"))
}

/// The documented default configuration (the repository's `config.yaml`), built in
/// for `serve --dev` started where there is no configuration file.
pub const BUILT_IN_YAML: &str = include_str!("../../../config.yaml");

/// What `serve --dev` calls the built-in configuration in messages.
pub const BUILT_IN_NAME: &str = "built-in defaults";

/// `serve --dev` uses the built-in configuration only when nothing names a file
/// (`--config`, `PALISADE_CONFIG`) and `./config.yaml` does not exist: a file that
/// was asked for and is missing stays an error, with or without `--dev`.
pub fn use_built_in(flag: Option<&Path>, dev: bool) -> bool {
    dev && flag.is_none()
        && std::env::var_os("PALISADE_CONFIG").is_none()
        && !resolve_path(None).exists()
}

impl Config {
    /// [`BUILT_IN_YAML`], expanded from the environment like a file would be.
    pub fn load_built_in(dev: bool) -> Result<Self, InitError> {
        Self::from_yaml(
            BUILT_IN_YAML,
            BUILT_IN_NAME,
            &|k| std::env::var(k).ok(),
            dev,
        )
    }

    /// Reads, expands, parses and validates. `dev` relaxes only what `--dev` documents.
    pub fn load(path: &Path, dev: bool) -> Result<Self, InitError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| InitError::Read {
            path: shown.clone(),
            source,
        })?;
        Self::from_yaml(&text, &shown, &|k| std::env::var(k).ok(), dev)
    }

    pub fn from_yaml(
        text: &str,
        shown: &str,
        lookup: &dyn Fn(&str) -> Option<String>,
        dev: bool,
    ) -> Result<Self, InitError> {
        let mut tree: yaml_serde::Value =
            yaml_serde::from_str(text).map_err(|e| InitError::Yaml {
                path: shown.to_owned(),
                message: e.to_string(),
            })?;
        if tree.is_null() {
            tree = yaml_serde::Value::Mapping(Default::default());
        }
        env::fill_secret_defaults(&mut tree);
        let mut missing = Vec::new();
        env::expand_tree(&mut tree, "", lookup, &mut missing);
        if !missing.is_empty() {
            return Err(InitError::Invalid {
                path: shown.to_owned(),
                errors: missing,
            });
        }
        let mut config: Config = serde_path_to_error::deserialize(tree).map_err(|e| {
            let at = e.path().to_string();
            InitError::Invalid {
                path: shown.to_owned(),
                errors: vec![format!("{at}: {}", e.inner())],
            }
        })?;
        if let Some(listen) = lookup("PALISADE_LISTEN").filter(|v| !v.is_empty()) {
            config.server.listen = listen;
        }
        if let Some(url) = lookup("PALISADE_DATABASE_URL").filter(|v| !v.is_empty()) {
            config.database.url = Secret::new(url);
        }
        if let Some(url) = lookup("PALISADE_REDIS_URL").filter(|v| !v.is_empty()) {
            config.redis.url = Some(Secret::new(url));
        }
        // For container images, where TLS terminates at the ingress: `1` or `true`.
        if let Some(v) = lookup("PALISADE_ALLOW_PLAINTEXT_PUBLIC") {
            config.server.allow_plaintext_public |= matches!(v.as_str(), "1" | "true");
        }
        let errors = config.validate(dev);
        if errors.is_empty() {
            Ok(config)
        } else {
            Err(InitError::Invalid {
                path: shown.to_owned(),
                errors,
            })
        }
    }
}

#[cfg(test)]
mod tests;
