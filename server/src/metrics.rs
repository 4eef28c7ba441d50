//! `/metrics`: Prometheus (OpenMetrics text) with prometheus-client. Counters and
//! histograms are updated where things happen (atomics and a read-locked map per
//! family); gauges (queue, providers, tokens, audit backlog) are read from the
//! live state at scrape time, so they can never drift.
//!
//! Access: `Authorization: Bearer` with the management token or `metrics.token`;
//! failures count against the same per-IP lock-out as the management API.

use std::borrow::Cow;
use std::sync::OnceLock;
use std::time::Duration;

use actix_web::HttpRequest;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

mod connections;

type Label = Cow<'static, str>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpLabels {
    route: Label,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabel {
    route: Label,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProviderLabel {
    provider: Label,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: Label,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: Label,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TokenLabels {
    kind: &'static str,
    /// `"true"` when Palisade counted them (the upstream reported none).
    estimated: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EstimatedLabel {
    estimated: &'static str,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// 0.5 ms to ~16 s, doubling.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

pub struct Metrics {
    registry: Registry,
    http_requests: Family<HttpLabels, Counter>,
    request_duration: Histograms<RouteLabel>,
    upstream_ttfb: Histograms<ProviderLabel>,
    rejected: Family<ReasonLabel, Counter>,
    auth_failures: Family<ReasonLabel, Counter>,
    unauthenticated: Family<ReasonLabel, Counter>,
    password_hashes_in_flight: Gauge,
    password_hashes_in_flight_max: Gauge,
    password_hashes_refused: Counter,
    tokens: Family<KindLabel, Gauge>,
    provider_state: Family<ProviderLabel, Gauge>,
    queue_in_flight: Gauge,
    queue_waiting: Gauge,
    audit_backlog: Gauge,
    audit_waits: Counter,
    audit_waiting: Gauge,
    audit_oldest: Gauge<f64, std::sync::atomic::AtomicU64>,
    audit_dropped: Counter,
    db_write_errors: Counter,
    storage_failing: Gauge,
    redis_failing: Gauge,
    database_up: Gauge,
    usage_tokens: Family<TokenLabels, Counter>,
    usage_records: Family<EstimatedLabel, Counter>,
    models_refresh_failures: Family<ProviderLabel, Counter>,
    connections: connections::Connections,
}

/// The process's metrics (one registry per process, as Prometheus expects).
pub fn global() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::with_prefix("palisade");
        let m = Self {
            http_requests: Family::default(),
            request_duration: Family::new_with_constructor(latency_histogram),
            upstream_ttfb: Family::new_with_constructor(latency_histogram),
            rejected: Family::default(),
            auth_failures: Family::default(),
            unauthenticated: Family::default(),
            password_hashes_in_flight: Gauge::default(),
            password_hashes_in_flight_max: Gauge::default(),
            password_hashes_refused: Counter::default(),
            tokens: Family::default(),
            provider_state: Family::default(),
            queue_in_flight: Gauge::default(),
            queue_waiting: Gauge::default(),
            audit_backlog: Gauge::default(),
            audit_waits: Counter::default(),
            audit_waiting: Gauge::default(),
            audit_oldest: Gauge::default(),
            audit_dropped: Counter::default(),
            db_write_errors: Counter::default(),
            storage_failing: Gauge::default(),
            redis_failing: Gauge::default(),
            database_up: Gauge::default(),
            usage_tokens: Family::default(),
            usage_records: Family::default(),
            models_refresh_failures: Family::default(),
            connections: connections::Connections::register(&mut registry),
            registry: Registry::default(),
        };
        registry.register(
            "http_requests",
            "Responses by route and status",
            m.http_requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time from request to response head, by route",
            m.request_duration.clone(),
        );
        registry.register(
            "upstream_ttfb_seconds",
            "Time from admission to the upstream's first byte, by provider",
            m.upstream_ttfb.clone(),
        );
        registry.register(
            "rejected",
            "Requests Palisade refused, by error code",
            m.rejected.clone(),
        );
        registry.register(
            "auth_failures",
            "Failed authentications: management, or the proxy's 401 code",
            m.auth_failures.clone(),
        );
        registry.register(
            "unauthenticated_requests",
            "`/v1` requests with no credential or an unknown one, by reason (every one, whatever was answered)",
            m.unauthenticated.clone(),
        );
        registry.register(
            "password_hashes_in_flight",
            "bcrypt hashes running now (bounded by auth.bcrypt_concurrency)",
            m.password_hashes_in_flight.clone(),
        );
        registry.register(
            "password_hashes_in_flight_max",
            "Most bcrypt hashes seen running at once since start",
            m.password_hashes_in_flight_max.clone(),
        );
        registry.register(
            "password_hashes_refused",
            "Logins and user creations refused with 503 because every hashing slot was taken",
            m.password_hashes_refused.clone(),
        );
        // A gauge, named as operators look for it (the state can change both ways).
        registry.register(
            "tokens_total",
            "Tokens by state (active, inactive, expired, revoked)",
            m.tokens.clone(),
        );
        registry.register(
            "provider_state",
            "Circuit breaker per provider: 0 closed, 1 half-open, 2 open",
            m.provider_state.clone(),
        );
        registry.register(
            "queue_in_flight",
            "Requests holding a queue slot",
            m.queue_in_flight.clone(),
        );
        registry.register(
            "queue_waiting",
            "Requests waiting for a queue slot",
            m.queue_waiting.clone(),
        );
        registry.register(
            "audit_backlog",
            "Audit and usage records queued or reserved, not yet written",
            m.audit_backlog.clone(),
        );
        registry.register(
            "audit_waits",
            "Times a request or management action waited for room in the audit buffer",
            m.audit_waits.clone(),
        );
        registry.register(
            "audit_waiting",
            "Audit and usage records handed to the writer and not yet written",
            m.audit_waiting.clone(),
        );
        registry.register(
            "audit_oldest_record_seconds",
            "How long the oldest record in the audit writer's hands has waited (0: none)",
            m.audit_oldest.clone(),
        );
        registry.register(
            "audit_dropped",
            "Audit events given up on because storage was failing and the audit buffer was full",
            m.audit_dropped.clone(),
        );
        registry.register(
            "db_write_errors",
            "Database writes (or commits) that failed on storage: disk full, I/O, read-only, locked",
            m.db_write_errors.clone(),
        );
        registry.register(
            "storage_failing",
            "1 while writes fail (the database's last write, or the audit writer's batch, file included)",
            m.storage_failing.clone(),
        );
        registry.register(
            "redis_failing",
            "1 while Redis (redis.url) does not answer within redis.command_timeout; 0 when it does or is not configured",
            m.redis_failing.clone(),
        );
        registry.register(
            "database_up",
            "1 while the database answers a ping (checked every second), 0 while it does not",
            m.database_up.clone(),
        );
        registry.register(
            "usage_tokens",
            "Tokens in usage records, by kind (prompt, completion) and whether Palisade estimated them",
            m.usage_tokens.clone(),
        );
        registry.register(
            "usage_records_with_tokens",
            "Usage records with token counts, by whether Palisade estimated them",
            m.usage_records.clone(),
        );
        registry.register(
            "models_refresh_failures",
            "Failed refreshes of a `*` provider's model list (GET /models), by provider",
            m.models_refresh_failures.clone(),
        );
        Self { registry, ..m }
    }

    pub fn models_refresh_failed(&self, provider: &str) {
        self.models_refresh_failures
            .get_or_create(&ProviderLabel {
                provider: Cow::Owned(provider.to_owned()),
            })
            .inc();
    }

    pub fn response(&self, route: Label, status: u16, took: Duration) {
        self.request_duration
            .get_or_create(&RouteLabel {
                route: route.clone(),
            })
            .observe(took.as_secs_f64());
        self.http_requests
            .get_or_create(&HttpLabels { route, status })
            .inc();
    }

    pub fn upstream_ttfb(&self, provider: &str, ttfb: Duration) {
        self.upstream_ttfb
            .get_or_create(&ProviderLabel {
                provider: Cow::Owned(provider.to_owned()),
            })
            .observe(ttfb.as_secs_f64());
    }

    pub fn rejected(&self, reason: &'static str) {
        self.rejected
            .get_or_create(&ReasonLabel {
                reason: Cow::Borrowed(reason),
            })
            .inc();
    }

    pub fn rejected_count(&self, reason: &'static str) -> u64 {
        self.rejected
            .get(&ReasonLabel {
                reason: Cow::Borrowed(reason),
            })
            .map_or(0, |c| c.get())
    }

    pub fn auth_failure(&self, reason: &'static str) {
        self.auth_failures
            .get_or_create(&ReasonLabel {
                reason: Cow::Borrowed(reason),
            })
            .inc();
    }

    /// One unauthenticated `/v1` request (see `rate_limit::unauthenticated`).
    pub fn unauthenticated(&self, reason: &'static str) {
        self.unauthenticated
            .get_or_create(&ReasonLabel {
                reason: Cow::Borrowed(reason),
            })
            .inc();
    }

    /// One usage record's tokens (counted on the audit writer's thread).
    pub fn usage_tokens(&self, prompt: Option<i64>, completion: Option<i64>, estimated: bool) {
        let estimated = if estimated { "true" } else { "false" };
        for (kind, n) in [("prompt", prompt), ("completion", completion)] {
            if let Some(n) = n.and_then(|n| u64::try_from(n).ok()) {
                self.usage_tokens
                    .get_or_create(&TokenLabels { kind, estimated })
                    .inc_by(n);
            }
        }
        self.usage_records
            .get_or_create(&EstimatedLabel { estimated })
            .inc();
    }

    /// Sets the live gauges from `live` and renders everything.
    pub fn render(&self, live: &Live) -> Result<String, std::fmt::Error> {
        let gauge = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        self.queue_in_flight.set(gauge(live.queue_in_flight));
        self.queue_waiting.set(gauge(live.queue_waiting));
        self.audit_backlog.set(gauge(live.audit_backlog));
        // The counters' sources count; each counter catches up at a scrape.
        self.audit_waits
            .inc_by(live.audit_waited.saturating_sub(self.audit_waits.get()));
        self.password_hashes_in_flight.set(live.hashes_in_flight);
        self.password_hashes_in_flight_max.set(live.hashes_peak);
        self.password_hashes_refused.inc_by(
            live.hashes_refused
                .saturating_sub(self.password_hashes_refused.get()),
        );
        self.audit_waiting.set(gauge(live.audit_waiting));
        self.audit_oldest.set(live.audit_oldest.as_secs_f64());
        self.audit_dropped
            .inc_by(live.audit_dropped.saturating_sub(self.audit_dropped.get()));
        self.db_write_errors.inc_by(
            live.db_write_errors
                .saturating_sub(self.db_write_errors.get()),
        );
        self.storage_failing.set(i64::from(live.storage_failing));
        self.redis_failing.set(i64::from(live.redis_failing));
        self.database_up.set(i64::from(live.database_up));
        for (kind, n) in &live.tokens {
            self.tokens
                .get_or_create(&KindLabel {
                    kind: Cow::Borrowed(kind),
                })
                .set(*n);
        }
        for (provider, state) in &live.providers {
            let value = match *state {
                "open" => 2,
                "half_open" => 1,
                _ => 0,
            };
            self.provider_state
                .get_or_create(&ProviderLabel {
                    provider: Cow::Owned(provider.clone()),
                })
                .set(value);
        }
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

/// What the gauges read at a scrape, gathered by the `/metrics` handler from the
/// actors and pools that own the numbers.
#[derive(Debug, Default)]
pub struct Live {
    pub queue_in_flight: u64,
    pub queue_waiting: u64,
    pub audit_backlog: u64,
    pub audit_waited: u64,
    pub audit_waiting: u64,
    pub audit_oldest: Duration,
    pub audit_dropped: u64,
    pub hashes_in_flight: i64,
    pub hashes_peak: i64,
    pub hashes_refused: u64,
    pub db_write_errors: u64,
    pub storage_failing: bool,
    /// Redis is configured and does not answer.
    pub redis_failing: bool,
    pub database_up: bool,
    /// Tokens per kind (active, expired, revoked, inactive).
    pub tokens: Vec<(&'static str, i64)>,
    /// Each provider's breaker state (`closed`, `half_open`, `open`).
    pub providers: Vec<(String, &'static str)>,
}

// The SPEC paths (`config::DEFAULT_ALLOWED_PATHS`) spelt out with their `/v1`,
// so a label is a borrowed `&'static str` and costs no allocation per request;
// a test keeps the two lists in step.
pub const KNOWN_ROUTES: &[&str] = &[
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/responses",
    "/v1/moderations",
    "/v1/images/generations",
    "/v1/audio/speech",
    "/v1/audio/transcriptions",
    "/v1/models",
    "/health",
    "/ready",
    "/metrics",
];

/// The `route` label: the route pattern, never the raw path (ids would make one
/// series per token).
pub fn route_label(req: &HttpRequest) -> Label {
    let path = req.path();
    if let Some(known) = KNOWN_ROUTES.iter().find(|k| **k == path) {
        return Cow::Borrowed(known);
    }
    match req.match_pattern() {
        Some(p) if p.starts_with("/manage") => Cow::Owned(p),
        Some(p) if p.starts_with("/v1/models/") => Cow::Borrowed("/v1/models/{id}"),
        _ if path.starts_with("/v1/") => Cow::Borrowed("/v1/other"),
        _ => Cow::Borrowed("other"),
    }
}
