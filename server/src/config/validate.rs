//! `Config::validate`: every problem at once, each named by its key path.

use std::net::SocketAddr;

use url::Url;

use super::{Config, DEFAULT_ALLOWED_PATHS, MIN_MANAGEMENT_TOKEN_LEN, RedisConfig};

impl Config {
    /// Every problem, each prefixed with its key path.
    pub fn validate(&self, dev: bool) -> Vec<String> {
        let mut errors = Vec::new();
        if self.server.listen.parse::<SocketAddr>().is_err() {
            errors.push(format!(
                "server.listen: {:?} is not an address like 127.0.0.1:8080",
                self.server.listen
            ));
        }
        if self.server.client_header_timeout.0.is_zero() {
            errors.push("server.client_header_timeout: must be positive".to_owned());
        }
        if self.server.client_body_timeout.0.is_zero() {
            errors.push("server.client_body_timeout: must be positive".to_owned());
        }
        if self.server.max_connections_per_ip == 0 {
            errors.push("server.max_connections_per_ip: must be at least 1".to_owned());
        }
        let id = &self.server.instance_id;
        if id.len() > 64
            || !id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        {
            errors.push(format!(
                "server.instance_id: {id:?} must be at most 64 letters, digits, '.', '_' or '-'"
            ));
        }
        if self.server.max_connections == 0 {
            errors.push("server.max_connections: must be at least 1".to_owned());
        }
        if self.server.max_body_bytes.0 == 0 {
            errors.push("server.max_body_bytes: must be at least 1".to_owned());
        }
        if self.server.manage_max_body_bytes.0 == 0 {
            errors.push("server.manage_max_body_bytes: must be at least 1".to_owned());
        }
        if let Some(tls) = &self.server.tls {
            // Half a TLS configuration would silently serve plaintext.
            if tls.cert_file.is_some() != tls.key_file.is_some() {
                errors.push("server.tls: cert_file and key_file must be set together".to_owned());
            }
        }
        let db = self.database.url.expose();
        if !["sqlite:", "postgres://", "postgresql://"]
            .iter()
            .any(|scheme| db.starts_with(scheme))
        {
            errors.push("database.url: must be a sqlite: or postgres:// URL".to_owned());
        }
        if self.database.max_connections == 0 {
            errors.push("database.max_connections: must be at least 1".to_owned());
        }
        self.redis.validate(&mut errors);
        // PostgreSQL counts it in whole milliseconds; 0 turns it off.
        let st = self.database.statement_timeout.0;
        if !st.is_zero() && st < std::time::Duration::from_millis(1) {
            errors.push("database.statement_timeout: must be 0 (none) or at least 1ms".to_owned());
        }
        let token = self.auth.management_token.expose();
        if !dev && token.len() < MIN_MANAGEMENT_TOKEN_LEN {
            errors.push(format!(
                "auth.management_token: must be at least {MIN_MANAGEMENT_TOKEN_LEN} characters (set PALISADE_MANAGEMENT_TOKEN, or run with --dev)"
            ));
        }
        let jwt = self.auth.jwt_secret.expose();
        if !jwt.is_empty() && jwt.len() < 32 {
            errors.push(
                "auth.jwt_secret: must be at least 32 bytes (or empty: no admin users)".to_owned(),
            );
        }
        if !(4..=31).contains(&self.auth.bcrypt_cost) {
            errors.push("auth.bcrypt_cost: must be 4 to 31".to_owned());
        }
        if self.auth.bcrypt_concurrency > 256 {
            errors.push("auth.bcrypt_concurrency: must be 0 (half the cores) to 256".to_owned());
        }
        if self.auth.access_token_ttl.0.is_zero() || self.auth.refresh_token_ttl.0.is_zero() {
            errors.push(
                "auth.access_token_ttl and auth.refresh_token_ttl: must be positive".to_owned(),
            );
        }
        if !self.auth.encryption_key.is_empty()
            && crate::crypto::KeyCipher::from_base64(self.auth.encryption_key.expose()).is_err()
        {
            errors.push("auth.encryption_key: must be base64 of exactly 32 bytes".to_owned());
        }
        if self.tokens.default_ttl.0.is_zero() {
            errors.push("tokens.default_ttl: must be positive".to_owned());
        }
        if self.tokens.default_ttl > self.tokens.max_ttl {
            errors.push("tokens.default_ttl: must not exceed tokens.max_ttl".to_owned());
        }
        if self.tokens.sync_interval.0.is_zero() {
            errors.push("tokens.sync_interval: must be positive".to_owned());
        }
        if self.tokens.usage_flush_interval.0.is_zero() {
            errors.push("tokens.usage_flush_interval: must be positive".to_owned());
        }
        for (i, p) in self.proxy.allowed_paths.iter().enumerate() {
            if !DEFAULT_ALLOWED_PATHS.contains(&p.as_str()) {
                errors.push(format!(
                    "proxy.allowed_paths[{i}]: {p:?} is not a known OpenAI path (known: {})",
                    DEFAULT_ALLOWED_PATHS.join(", ")
                ));
            }
        }
        if self.audit.batch_size == 0 || self.audit.buffer == 0 {
            errors.push("audit.batch_size and audit.buffer: must be at least 1".to_owned());
        }
        if self.audit.flush_interval.0.is_zero() {
            errors.push("audit.flush_interval: must be positive".to_owned());
        }
        if self.audit.unauthenticated_window.0 < std::time::Duration::from_secs(1) {
            errors.push("audit.unauthenticated_window: must be at least 1s".to_owned());
        }
        if self.queue.max_in_flight > 0 && self.queue.max_wait.0.is_zero() {
            errors.push(
                "queue.max_wait: must be positive (set queue.max_waiting: 0 to never wait)"
                    .to_owned(),
            );
        }
        let rl = &self.rate_limits;
        if let Some(rpm) = rl.default_token_rpm
            && !(1..=10_000_000).contains(&rpm)
        {
            errors.push("rate_limits.default_token_rpm: must be 1 to 10000000, or null".to_owned());
        }
        if rl.auth_failures_per_minute > 0 && rl.auth_failures_burst == 0 {
            errors.push("rate_limits.auth_failures_burst: must be at least 1".to_owned());
        }
        if rl.unauthenticated_per_minute > 0 && rl.unauthenticated_burst == 0 {
            errors.push("rate_limits.unauthenticated_burst: must be at least 1".to_owned());
        }
        if self.proxy.models_refresh_interval.0.is_zero() {
            errors.push("proxy.models_refresh_interval: must be positive".to_owned());
        }
        if self
            .logging
            .level
            .parse::<tracing_subscriber::EnvFilter>()
            .is_err()
        {
            errors.push(format!(
                "logging.level: {:?} is not a valid filter",
                self.logging.level
            ));
        }
        if self.providers.is_empty() {
            errors.push("providers: at least one provider is required".to_owned());
        }
        let mut names = std::collections::HashSet::new();
        for (i, p) in self.providers.iter().enumerate() {
            let at = format!("providers[{i}]");
            if p.name.trim().is_empty() {
                errors.push(format!("{at}.name: must not be empty"));
            } else if !names.insert(p.name.as_str()) {
                errors.push(format!("{at}.name: duplicate provider name {:?}", p.name));
            }
            match Url::parse(&p.base_url) {
                Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {}
                _ => errors.push(format!(
                    "{at}.base_url: {:?} is not an http(s) URL",
                    p.base_url
                )),
            }
            if p.models.is_empty() {
                errors.push(format!("{at}.models: list at least one model or \"*\""));
            }
            if p.weight == 0 {
                errors.push(format!("{at}.weight: must be at least 1"));
            }
            for (name, d) in [
                ("connect", p.timeouts.connect),
                ("first_byte", p.timeouts.first_byte),
                ("idle", p.timeouts.idle),
            ] {
                if d.0.is_zero() {
                    errors.push(format!("{at}.timeouts.{name}: must be positive"));
                }
            }
            let h = &p.health_check;
            if h.interval.0.is_zero() || h.timeout.0.is_zero() {
                errors.push(format!(
                    "{at}.health_check: interval and timeout must be positive"
                ));
            }
            if h.unhealthy_threshold == 0 {
                errors.push(format!(
                    "{at}.health_check.unhealthy_threshold: must be at least 1"
                ));
            }
            if !h.path.starts_with('/') {
                errors.push(format!(
                    "{at}.health_check.path: must start with / (it is appended to base_url)"
                ));
            }
            let b = &p.circuit_breaker;
            if b.failure_threshold == 0 || b.half_open_max_requests == 0 {
                errors.push(format!(
                    "{at}.circuit_breaker: failure_threshold and half_open_max_requests must be at least 1"
                ));
            }
            if b.cooldown.0.is_zero() {
                errors.push(format!("{at}.circuit_breaker.cooldown: must be positive"));
            }
        }
        let r = &self.retry;
        if r.max_attempts == 0 || r.max_attempts > 10 {
            errors.push("retry.max_attempts: must be 1 to 10".to_owned());
        }
        if !(r.multiplier.is_finite() && r.multiplier >= 1.0) {
            errors.push("retry.multiplier: must be at least 1.0".to_owned());
        }
        if r.initial_delay > r.max_delay {
            errors.push("retry.initial_delay: must not exceed retry.max_delay".to_owned());
        }
        for (i, s) in r.retry_on.iter().enumerate() {
            if !(*s == 408 || *s == 429 || (500..=599).contains(s)) {
                errors.push(format!(
                    "retry.retry_on[{i}]: {s} is not retryable (only 408, 429 and 5xx are)"
                ));
            }
        }
        errors
    }
}

impl RedisConfig {
    /// The URL's text is never quoted back: it may hold a password.
    fn validate(&self, errors: &mut Vec<String>) {
        if let Some(url) = self.url() {
            match Url::parse(url) {
                Ok(u) if matches!(u.scheme(), "redis" | "rediss") && u.host().is_some() => {}
                _ => errors
                    .push("redis.url: must be a redis:// or rediss:// URL with a host".to_owned()),
            }
        }
        let p = &self.key_prefix;
        if p.is_empty() || p.len() > 64 || !p.bytes().all(|b| b.is_ascii_graphic()) {
            errors.push(format!(
                "redis.key_prefix: {p:?} must be 1 to 64 printable characters without spaces"
            ));
        }
        let t = self.command_timeout.0;
        if t.is_zero() || t > std::time::Duration::from_secs(10) {
            errors.push("redis.command_timeout: must be positive and at most 10s".to_owned());
        }
        if !(1..=1000).contains(&self.expected_instances) {
            errors.push("redis.expected_instances: must be 1 to 1000".to_owned());
        }
    }
}
