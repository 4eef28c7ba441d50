//! Limits shared by every instance through Redis (SPEC §5): the client IP's
//! `/v1` requests per second, the token's and the project's requests per minute
//! and the token's lifetime quota, decided by one server-side script in ONE
//! round trip per request (`admit.lua`: EVALSHA, the script loaded again when
//! Redis answers NOSCRIPT, e.g. after a restart).
//!
//! * Same semantics as in-process ([`super::rpm`]): GCRA with a burst of one
//!   minute's allowance, the same `x-ratelimit-*` state and `retry-after`; but
//!   all are taken together or none (in-process, a token's bucket pays for a
//!   request its project refuses). Redis's clock (`TIME`) is the only clock.
//! * Per client IP (`rate_limits.per_ip_rps` / `per_ip_burst`, when on): checked
//!   first, GCRA as the edge's actix-governor limiter (burst 0 = one second's
//!   worth). The edge limiter still runs per instance in front of everything,
//!   so a flood is refused cheaply before it reaches Redis; this bucket makes
//!   the requests that reach admission count against one fleet-wide limit.
//! * Quota: a key per token holding the requests used, never expiring. When it
//!   is absent (first use, or a Redis restarted without persistence) the script
//!   seeds it with the count this instance knows (the database's count at load,
//!   plus what it admitted and what Redis told it since).
//! * Keys: `{prefix}rpm:token:{id}:{rpm}`, `{prefix}rpm:project:{id}:{rpm}`
//!   and `{prefix}ip:{client_ip}:{rps}:{burst}` (each expires once its bucket
//!   is full again), `{prefix}quota:{id}`.
//! * Every call is bounded by `redis.command_timeout`. A failed or late call
//!   marks Redis down ([`health`]): requests then skip Redis at once (no wait per
//!   request) and follow `redis.on_error`, while a probe every
//!   [`PROBE_INTERVAL`] notices when it answers again.
//! * One connection per thread that calls (each actix worker, and the probe's
//!   thread): a multiplexed connection's reader and writer run as a task on the
//!   runtime of the thread that first used it, so one connection shared by every
//!   worker sends each request to another thread and its reply back again (two
//!   cross-thread wake-ups per request). Per thread, the call stays on the
//!   worker's own runtime. An instance holds `workers + 1` connections.

mod health;
mod reply;

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

pub use self::health::Health;
pub use self::reply::Outcome;
use self::reply::{Asked, BadReply};
use super::rpm::{RateKey, rpm_of};
use crate::actors::token_registry::cache::{ProjectState, TokenState};
use crate::config::{RateLimitsConfig, RedisConfig, RedisOnError};

/// How often the probe pings Redis (and so how soon a recovery is noticed).
pub const PROBE_INTERVAL: Duration = Duration::from_millis(500);

const SCRIPT: &str = include_str!("admit.lua");

/// Why a call gave no answer; admission then follows `redis.on_error`.
#[derive(Debug, thiserror::Error)]
pub enum Unreachable {
    #[error("no answer within {0:?} (redis.command_timeout)")]
    Timeout(Duration),
    #[error("{0}")]
    Redis(String),
    #[error(transparent)]
    Reply(#[from] BadReply),
    /// A call failed before and no probe has succeeded since.
    #[error("Redis is down")]
    Down,
}

pub struct SharedLimits {
    /// Each calling thread's own connection ([`Self::conn`]).
    conns: thread_local::ThreadLocal<ConnectionManager>,
    client: redis::Client,
    manager: ConnectionManagerConfig,
    script: redis::Script,
    prefix: String,
    timeout: Duration,
    on_error: RedisOnError,
    expected_instances: u64,
    health: Health,
    default_token_rpm: Option<NonZeroU32>,
    /// `/v1` per client IP: requests per second and burst; `None` when off.
    per_ip: Option<(NonZeroU32, NonZeroU32)>,
    /// Parts of the URL that must never reach a log line (the password).
    secrets: Vec<String>,
}

impl SharedLimits {
    /// A client for `config.url`; it connects on first use and reconnects by
    /// itself, so a Redis that is down at start-up is only reported, not fatal.
    pub fn new(config: &RedisConfig, limits: &RateLimitsConfig) -> Result<Self, String> {
        let url = config.url().ok_or("redis.url is not set")?;
        let secrets: Vec<String> = url::Url::parse(url)
            .ok()
            .and_then(|u| u.password().map(str::to_owned))
            .into_iter()
            .filter(|p| !p.is_empty())
            .collect();
        let client = redis::Client::open(url)
            .map_err(|e| format!("redis.url: {}", scrub(&e.to_string(), &secrets)))?;
        let timeout = config.command_timeout.0;
        // One quick retry per reconnection: the probe and the next request try
        // again anyway, and no request may wait on a backoff.
        let manager = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(20))
            .set_max_delay(Duration::from_millis(200));
        Ok(Self {
            conns: thread_local::ThreadLocal::new(),
            client,
            manager,
            script: redis::Script::new(SCRIPT),
            prefix: config.key_prefix.clone(),
            timeout,
            on_error: config.on_error,
            expected_instances: config.expected_instances,
            health: Health::new(config.on_error, config.expected_instances),
            default_token_rpm: limits.default_token_rpm.and_then(NonZeroU32::new),
            per_ip: per_ip(limits),
            secrets,
        })
    }

    pub fn on_error(&self) -> RedisOnError {
        self.on_error
    }

    pub fn expected_instances(&self) -> u64 {
        self.expected_instances
    }

    /// This thread's connection, made (lazily: it connects on first use, on this
    /// thread's runtime) the first time this thread calls.
    pub(crate) fn conn(&self) -> Result<ConnectionManager, Unreachable> {
        self.conns
            .get_or_try(|| {
                ConnectionManager::new_lazy_with_config(self.client.clone(), self.manager.clone())
            })
            .cloned()
            .map_err(|e| Unreachable::Redis(scrub(&e.to_string(), &self.secrets)))
    }

    /// False once a call failed, until one succeeds again.
    pub fn is_up(&self) -> bool {
        !self.health.is_down()
    }

    /// Checks and takes the client IP's rate, the token's and project's rpm and
    /// the token's quota. `ip`: the client as the edge sees it
    /// ([`crate::net::client_ip`]); `known_count`: what this instance knows the
    /// token has used (seeds an absent quota key).
    pub async fn admit(
        &self,
        ip: IpAddr,
        token: &TokenState,
        project: &ProjectState,
        known_count: i64,
    ) -> Result<Outcome, Unreachable> {
        if self.health.is_down() {
            return Err(Unreachable::Down);
        }
        let asked = Asked {
            token: rpm_of(token.rate_limit_rpm)
                .or(self.default_token_rpm)
                .map(|r| (RateKey::Token(token.id), r)),
            project: rpm_of(project.rate_limit_rpm).map(|r| (RateKey::Project(project.id), r)),
            max_requests: token.max_requests,
            per_ip: self.per_ip.is_some(),
        };
        let (rps, burst) = self.per_ip.map_or((0, 0), |(r, b)| (r.get(), b.get()));
        let rpm = |l: Option<(RateKey, NonZeroU32)>| l.map_or(0, |(_, r)| r.get());
        let mut conn = match self.conn() {
            Ok(conn) => conn,
            Err(e) => {
                let result = Err(e);
                self.note(&result);
                return result;
            }
        };
        let mut call = self.script.prepare_invoke();
        call.key(format!(
            "{}rpm:token:{}:{}",
            self.prefix,
            token.id,
            rpm(asked.token)
        ))
        .key(format!(
            "{}rpm:project:{}:{}",
            self.prefix,
            project.id,
            rpm(asked.project)
        ))
        .key(format!("{}quota:{}", self.prefix, token.id))
        .key(format!("{}ip:{ip}:{rps}:{burst}", self.prefix))
        .arg(rpm(asked.token))
        .arg(rpm(asked.project))
        .arg(token.max_requests.unwrap_or(-1))
        .arg(known_count.max(0))
        .arg(rps)
        .arg(burst);
        let result = match self.bounded(call.invoke_async::<Vec<i64>>(&mut conn)).await {
            Ok(reply) => reply::parse(&asked, &reply).map_err(Unreachable::from),
            Err(e) => Err(e),
        };
        self.note(&result);
        result
    }

    /// `PING`, bounded like every call; updates the health either way.
    pub async fn ping(&self) -> Result<(), Unreachable> {
        let result = match self.conn() {
            Ok(mut conn) => self
                .bounded(redis::cmd("PING").query_async::<String>(&mut conn))
                .await
                .map(drop),
            Err(e) => Err(e),
        };
        self.note(&result);
        result
    }

    /// Pings every [`PROBE_INTERVAL`], forever: notices an outage without
    /// traffic, and the recovery that requests (which skip a down Redis) cannot.
    pub async fn probe_forever(&self) {
        let mut tick = tokio::time::interval(PROBE_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let _ = self.ping().await;
        }
    }

    async fn bounded<T>(
        &self,
        call: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, Unreachable> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(Unreachable::Redis(scrub(&e.to_string(), &self.secrets))),
            Err(_) => Err(Unreachable::Timeout(self.timeout)),
        }
    }

    fn note<T>(&self, result: &Result<T, Unreachable>) {
        match result {
            Ok(_) => self.health.mark(true, &""),
            Err(e) => self.health.mark(false, e),
        };
    }
}

/// The `/v1` per-IP limit as the edge's limiter reads it (`http::ip_limit`):
/// off at 0 rps, a burst of 0 meaning one second's worth.
fn per_ip(limits: &RateLimitsConfig) -> Option<(NonZeroU32, NonZeroU32)> {
    let rps = NonZeroU32::new(limits.per_ip_rps)?;
    Some((rps, NonZeroU32::new(limits.per_ip_burst).unwrap_or(rps)))
}

/// An error's text without the URL's password (redis errors do not normally
/// quote the URL; this holds even if one ever does).
fn scrub(message: &str, secrets: &[String]) -> String {
    secrets.iter().fold(message.to_owned(), |m, s| {
        m.replace(s.as_str(), "[redacted]")
    })
}

#[cfg(test)]
mod tests;
