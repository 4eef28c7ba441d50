//! Provider entries and the retry policy: what the `ProviderSupervisor` and the
//! proxy's attempt loop run on.

use serde::{Deserialize, Serialize};

use super::units::{self, HumanDuration};
use crate::secret::Secret;

pub const DEFAULT_CONNECT_TIMEOUT: HumanDuration = HumanDuration::secs(5);
pub const DEFAULT_FIRST_BYTE_TIMEOUT: HumanDuration = HumanDuration::secs(60);
pub const DEFAULT_IDLE_TIMEOUT: HumanDuration = HumanDuration::secs(120);
pub const DEFAULT_HEALTH_INTERVAL: HumanDuration = HumanDuration::secs(30);
pub const DEFAULT_HEALTH_TIMEOUT: HumanDuration = HumanDuration::secs(5);
/// `GET /models` costs no tokens at any OpenAI-compatible provider.
pub const DEFAULT_HEALTH_PATH: &str = "/models";
/// Consecutive failed health checks before a provider is taken out (SPEC §4).
pub const DEFAULT_UNHEALTHY_THRESHOLD: u64 = 2;
pub const DEFAULT_FAILURE_THRESHOLD: u64 = 5;
pub const DEFAULT_BREAKER_COOLDOWN: HumanDuration = HumanDuration::secs(30);
pub const DEFAULT_HALF_OPEN_MAX_REQUESTS: u64 = 1;
/// Upstream statuses worth another attempt: timeouts, rate limits, server errors.
pub const DEFAULT_RETRY_ON: &[u16] = &[408, 429, 500, 502, 503, 504];

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    pub name: String,
    pub base_url: String,
    #[serde(default)]
    pub api_key: Secret,
    /// Exact model names and `*` globs this provider serves.
    #[serde(default = "default_models")]
    pub models: Vec<String>,
    /// Lower is preferred; equal priorities share traffic by `weight`.
    #[serde(default)]
    pub priority: i64,
    #[serde(default = "default_weight", deserialize_with = "units::de_u64")]
    pub weight: u64,
    #[serde(default)]
    pub timeouts: ProviderTimeouts,
    #[serde(default)]
    pub health_check: HealthCheckConfig,
    #[serde(default)]
    pub circuit_breaker: BreakerConfig,
}

fn default_models() -> Vec<String> {
    vec!["*".to_owned()]
}

fn default_weight() -> u64 {
    1
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProviderTimeouts {
    pub connect: HumanDuration,
    /// Until the upstream's response headers arrive.
    pub first_byte: HumanDuration,
    /// Longest silence between two body chunks (streams have no total timeout).
    pub idle: HumanDuration,
}

impl Default for ProviderTimeouts {
    fn default() -> Self {
        Self {
            connect: DEFAULT_CONNECT_TIMEOUT,
            first_byte: DEFAULT_FIRST_BYTE_TIMEOUT,
            idle: DEFAULT_IDLE_TIMEOUT,
        }
    }
}

/// A periodic `GET {base_url}{path}`; never a completion, so it costs no tokens.
/// How its results and live traffic decide health: `providers::health`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthCheckConfig {
    pub enabled: bool,
    pub interval: HumanDuration,
    pub timeout: HumanDuration,
    /// Relative to `base_url`, e.g. `/models`.
    pub path: String,
    /// Consecutive failed checks that take the provider out (at least 1); one
    /// passing check, or one answered request, brings it back.
    #[serde(deserialize_with = "units::de_u64")]
    pub unhealthy_threshold: u64,
}

impl Default for HealthCheckConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            interval: DEFAULT_HEALTH_INTERVAL,
            timeout: DEFAULT_HEALTH_TIMEOUT,
            path: DEFAULT_HEALTH_PATH.to_owned(),
            unhealthy_threshold: DEFAULT_UNHEALTHY_THRESHOLD,
        }
    }
}

/// closed → open after `failure_threshold` consecutive retryable failures →
/// half-open after `cooldown` → closed once `half_open_max_requests` probes succeed.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerConfig {
    #[serde(deserialize_with = "units::de_u64")]
    pub failure_threshold: u64,
    pub cooldown: HumanDuration,
    #[serde(deserialize_with = "units::de_u64")]
    pub half_open_max_requests: u64,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            failure_threshold: DEFAULT_FAILURE_THRESHOLD,
            cooldown: DEFAULT_BREAKER_COOLDOWN,
            half_open_max_requests: DEFAULT_HALF_OPEN_MAX_REQUESTS,
        }
    }
}

/// Attempts per request, across providers: exponential backoff with full jitter
/// when a provider is tried again, none when moving on to a fresh candidate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// Total attempts, the first included (1 = no retries).
    #[serde(deserialize_with = "units::de_u64")]
    pub max_attempts: u64,
    pub initial_delay: HumanDuration,
    /// Also caps how long an upstream `Retry-After` is honoured.
    pub max_delay: HumanDuration,
    pub multiplier: f64,
    /// Upstream statuses that count as retryable failures (connection errors and
    /// first-byte timeouts always do). Only 408, 429 and 5xx are allowed.
    pub retry_on: Vec<u16>,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            initial_delay: HumanDuration::millis(100),
            max_delay: HumanDuration::secs(5),
            multiplier: 2.0,
            retry_on: DEFAULT_RETRY_ON.to_vec(),
        }
    }
}
