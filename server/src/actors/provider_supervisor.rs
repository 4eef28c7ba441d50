//! `ProviderSupervisor`: owns every provider's circuit breaker and health state
//! (SPEC §1).
//!
//! Messages: [`Outcome`] (fire-and-forget `do_send` from the proxy after each
//! attempt's verdict, skipped when it would change nothing), plus its own timers:
//! `HalfOpen` when a cooldown ends, and each provider's next health check.
//!
//! Request handlers never wait on this actor: they read the state it publishes in
//! each provider's lock-free [`ProviderStatus`](crate::providers::status) and
//! report outcomes afterwards. Breaker:
//! closed → open after `failure_threshold` consecutive retryable failures →
//! half-open after `cooldown` (admits `half_open_max_requests` probes) → closed once
//! they all succeed, or open again on the first probe that fails.
//! Health checks only ever `GET {base_url}{health_check.path}` (default `/models`,
//! no token cost); a check fails on no answer within `health_check.timeout` or a
//! 5xx. What checks and answered requests do to the `healthy` flag, and when the
//! next check runs, is [`crate::providers::health`]. The first check runs at
//! start-up, and the provider is usable until checks say otherwise.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;

use crate::providers::health::{self, CheckEffect};
use crate::providers::status::BreakerState;
use crate::providers::{Provider, Providers};

/// What one attempt against a provider came to.
#[derive(Debug)]
pub enum Verdict {
    /// The provider answered with something other than a retryable failure.
    Success,
    /// A retryable failure: connection error, first-byte timeout, retryable status.
    Failure(String),
}

#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct Outcome {
    pub provider: usize,
    pub verdict: Verdict,
}

#[derive(Message)]
#[rtype(result = "()")]
struct HalfOpen {
    provider: usize,
    generation: u64,
}

pub struct ProviderSupervisor {
    providers: Arc<Providers>,
    /// Bumped each time a breaker opens, so a stale cooldown timer does nothing.
    generation: Vec<u64>,
    /// Successful probes since the breaker went half-open.
    probe_successes: Vec<u64>,
    /// Whether a health check has passed once (see `health::next_check_in`).
    passed_once: Vec<bool>,
    /// Health checks get their own small client: they must not borrow (or keep
    /// alive) the request path's pooled connections.
    health_clients: Vec<Option<reqwest::Client>>,
}

impl ProviderSupervisor {
    /// Starts the actor on its own arbiter thread.
    pub fn start(providers: Arc<Providers>) -> Addr<Self> {
        let actor = Self::new(providers);
        let arbiter = Arbiter::new();
        Self::start_in_arbiter(&arbiter.handle(), move |_| actor)
    }

    /// The actor, not yet started (tests start it on their own runtime, where
    /// time can be paused).
    fn new(providers: Arc<Providers>) -> Self {
        let n = providers.all().len();
        let health_clients = providers
            .all()
            .iter()
            .map(|p| {
                p.health_check.enabled.then(|| {
                    reqwest::Client::builder()
                        .connect_timeout(p.health_check.timeout.0)
                        .pool_max_idle_per_host(1)
                        .redirect(reqwest::redirect::Policy::none())
                        .no_proxy()
                        .build()
                        .ok()
                })?
            })
            .collect();
        Self {
            providers,
            generation: vec![0; n],
            probe_successes: vec![0; n],
            passed_once: vec![false; n],
            health_clients,
        }
    }

    fn open(&mut self, i: usize, ctx: &mut Context<Self>, why: &str) {
        let p = &self.providers.all()[i];
        let cooldown = p.breaker.cooldown.0;
        self.generation[i] += 1;
        p.status.set_state(BreakerState::Open, cooldown, 0);
        tracing::warn!(provider = %p.name, reason = %why, cooldown_ms = cooldown.as_millis() as u64, "circuit breaker opened");
        let generation = self.generation[i];
        ctx.notify_later(
            HalfOpen {
                provider: i,
                generation,
            },
            cooldown,
        );
    }

    fn close(&mut self, i: usize) {
        let p = &self.providers.all()[i];
        p.status.set_state(BreakerState::Closed, Duration::ZERO, 0);
        p.status.set_failures(0);
        tracing::info!(provider = %p.name, "circuit breaker closed");
    }

    /// Runs one health check; when it ends, schedules the next (checks of one
    /// provider never overlap).
    fn check(&mut self, i: usize, ctx: &mut Context<Self>) {
        let Some(client) = self.health_clients[i].clone() else {
            return;
        };
        let p = Arc::clone(&self.providers.all()[i]);
        let started = tokio::time::Instant::now();
        let probe = async move {
            let answer = p
                .get(&client, &p.health_check.path, p.health_check.timeout.0)
                .await;
            (p, answer)
        };
        ctx.spawn(probe.into_actor(self).map(move |(p, answer), act, ctx| {
            act.passed_once[i] |= record_check(&p, answer);
            let next = health::next_check_in(&p.status, &p.health_check, act.passed_once[i])
                .saturating_sub(started.elapsed());
            ctx.run_later(next, move |act, ctx| act.check(i, ctx));
        }));
    }
}

type CheckAnswer = Result<(reqwest::StatusCode, bytes::Bytes), String>;

/// Applies a health check's answer: the health flag, the diagnostics and, when
/// the check is a `*` provider's `GET /models`, its model list. True if it passed.
fn record_check(p: &Provider, answer: CheckAnswer) -> bool {
    // Any answer below 500 proves the provider is up: a 404 from one that lacks
    // `/models` or a 401 for a bad key must not take it out of rotation (requests
    // would show those errors as they are).
    let verdict = match &answer {
        Ok((status, _)) if status.is_server_error() => Err(format!("status {}", status.as_u16())),
        Ok(_) => Ok(()),
        Err(e) => Err(e.clone()),
    };
    let effect = health::apply_check(&p.status, &p.health_check, verdict.is_ok());
    let failures = p.status.check_failures();
    match (&verdict, effect) {
        (_, CheckEffect::Recovered) => {
            tracing::info!(provider = %p.name, "health check passes again");
        }
        (Err(e), CheckEffect::TakenOut) => tracing::warn!(
            provider = %p.name, error = %e, failures,
            "health check failed {failures} time(s) in a row: provider marked unhealthy"
        ),
        (Err(e), CheckEffect::Excused) => tracing::debug!(
            provider = %p.name, error = %e,
            "health check failed, not counted: the provider answered a request within the interval"
        ),
        // Below the threshold: worth an info line; already unhealthy (checked
        // every second): only at debug.
        (Err(e), CheckEffect::Unchanged) if p.status.healthy() => {
            tracing::info!(provider = %p.name, error = %e, failures, "health check failed");
        }
        (Err(e), CheckEffect::Unchanged) => {
            tracing::debug!(provider = %p.name, error = %e, failures, "health check still failing");
        }
        (Ok(()), _) => {}
    }
    let now = crate::time::now();
    p.status.note(|d| {
        d.last_check_at = Some(now);
        if let Err(e) = &verdict {
            d.last_error = Some(format!("health check: {e}"));
        }
    });
    if p.has_glob() && p.health_check_lists_models() {
        let listed = match answer {
            Ok((status, body)) if status.is_success() => p
                .learn_models(&body)
                .ok_or_else(|| "not a model list".to_owned()),
            Ok((status, _)) => Err(format!("status {}", status.as_u16())),
            Err(e) => Err(e),
        };
        p.note_models_refresh(listed);
    }
    verdict.is_ok()
}

impl Actor for ProviderSupervisor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // Each enabled check runs now, then reschedules itself (`check`).
        for i in 0..self.providers.all().len() {
            self.check(i, ctx);
        }
    }
}

impl Handler<Outcome> for ProviderSupervisor {
    type Result = ();

    fn handle(&mut self, msg: Outcome, ctx: &mut Self::Context) {
        let i = msg.provider;
        let Some(p) = self.providers.all().get(i).cloned() else {
            return;
        };
        let status = &p.status;
        match msg.verdict {
            Verdict::Success => {
                status.set_failures(0);
                if health::apply_answered_request(status) == CheckEffect::Recovered {
                    tracing::info!(provider = %p.name, "provider answered a request: marked healthy again");
                }
                if status.state() == BreakerState::HalfOpen {
                    self.probe_successes[i] += 1;
                    if self.probe_successes[i] >= p.breaker.half_open_max_requests {
                        self.close(i);
                    }
                }
            }
            Verdict::Failure(error) => {
                let failures = status.consecutive_failures() + 1;
                status.set_failures(failures);
                match status.state() {
                    BreakerState::Closed if failures >= p.breaker.failure_threshold => {
                        self.open(i, ctx, &error);
                    }
                    BreakerState::HalfOpen => self.open(i, ctx, &error),
                    _ => {}
                }
                status.note(|d| d.last_error = Some(error));
            }
        }
    }
}

impl Handler<HalfOpen> for ProviderSupervisor {
    type Result = ();

    fn handle(&mut self, msg: HalfOpen, _: &mut Self::Context) {
        let i = msg.provider;
        let p = &self.providers.all()[i];
        if msg.generation != self.generation[i] || p.status.state() != BreakerState::Open {
            return;
        }
        self.probe_successes[i] = 0;
        p.status.set_state(
            BreakerState::HalfOpen,
            Duration::ZERO,
            p.breaker.half_open_max_requests,
        );
        tracing::info!(provider = %p.name, "circuit breaker half-open: probing");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{BreakerConfig, HealthCheckConfig, HumanDuration, ProviderConfig};
    use crate::providers::routing::RoutingError;
    use crate::providers::status::ProviderStatus;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// How late a tokio timer may fire: deadlines are rounded to whole
    /// milliseconds, so the cooldown's timer fires within two of its end.
    const TIMER_SLACK: Duration = Duration::from_millis(2);

    /// One provider's breaker under a supervisor started on the test's own
    /// runtime (time paused), with health checks off.
    struct Breaker {
        addr: Addr<ProviderSupervisor>,
        providers: Arc<Providers>,
    }

    impl Breaker {
        async fn start(failure_threshold: u64, cooldown_secs: u64, probes: u64) -> Self {
            tokio::time::pause();
            let _ = rustls::crypto::ring::default_provider().install_default();
            let config = ProviderConfig {
                name: "p".to_owned(),
                base_url: "http://h/v1".to_owned(),
                api_key: Default::default(),
                models: vec!["*".to_owned()],
                priority: 0,
                weight: 1,
                timeouts: Default::default(),
                health_check: HealthCheckConfig {
                    enabled: false,
                    ..Default::default()
                },
                circuit_breaker: BreakerConfig {
                    failure_threshold,
                    cooldown: HumanDuration::secs(cooldown_secs),
                    half_open_max_requests: probes,
                },
            };
            let providers = Arc::new(Providers::from_config(&[config]).unwrap());
            let addr = ProviderSupervisor::new(Arc::clone(&providers)).start();
            Self { addr, providers }
        }

        fn status(&self) -> &ProviderStatus {
            &self.providers.all()[0].status
        }

        async fn report(&self, provider: usize, verdict: Verdict) {
            self.addr.send(Outcome { provider, verdict }).await.unwrap();
        }

        async fn fail(&self) {
            self.report(0, Verdict::Failure("status 503".to_owned()))
                .await;
        }

        async fn succeed(&self) {
            self.report(0, Verdict::Success).await;
        }

        /// Advances paused time by `by`, then makes a round trip through the
        /// mailbox: the actor handles its mailbox and its fired timers in the same
        /// poll, so whatever fell due has been applied when this returns.
        async fn advance(&self, by: Duration) {
            tokio::time::advance(by).await;
            self.report(usize::MAX, Verdict::Success).await;
        }

        /// `retry_after` of the 503 a request gets now, or `None` if it is routed.
        fn retry_after(&self) -> Option<u64> {
            match self.providers.candidates(Some("m"), &[]) {
                Ok(_) => None,
                Err(RoutingError::NoHealthyProvider { retry_after, .. }) => Some(retry_after),
                Err(e) => panic!("{e:?}"),
            }
        }
    }

    #[actix_rt::test]
    async fn breaker_opens_after_the_threshold_half_opens_after_the_cooldown_and_closes_on_probes()
    {
        let b = Breaker::start(3, 10, 2).await;
        let s = b.status();
        b.fail().await;
        b.fail().await;
        assert_eq!(s.state(), BreakerState::Closed);
        assert_eq!(s.consecutive_failures(), 2);
        // Failures must be consecutive: a success starts the count again.
        b.succeed().await;
        assert_eq!(s.consecutive_failures(), 0);
        b.fail().await;
        b.fail().await;
        assert_eq!(s.state(), BreakerState::Closed);
        b.fail().await;
        assert_eq!(s.state(), BreakerState::Open);
        assert!(!(s.healthy() && s.state() != BreakerState::Open));
        assert!(!s.try_admit());
        b.advance(ms(9_999)).await;
        assert_eq!(s.state(), BreakerState::Open, "before the cooldown ends");
        b.advance(ms(1) + TIMER_SLACK).await;
        assert_eq!(s.state(), BreakerState::HalfOpen);
        // `half_open_max_requests` probes at once, no more; one that ended
        // without a verdict gives its permit back.
        assert!(s.try_admit());
        assert!(s.try_admit());
        assert!(!s.try_admit());
        s.return_probe();
        assert!(s.try_admit());
        b.succeed().await;
        assert_eq!(s.state(), BreakerState::HalfOpen, "one probe of two");
        b.succeed().await;
        assert_eq!(s.state(), BreakerState::Closed);
        assert_eq!(s.consecutive_failures(), 0);
        assert!(s.try_admit());
        assert!(s.try_admit(), "closed: no permits to count");
    }

    #[actix_rt::test]
    async fn a_failed_probe_opens_the_breaker_again_for_a_whole_cooldown() {
        let b = Breaker::start(1, 10, 2).await;
        let s = b.status();
        b.fail().await;
        b.advance(ms(10_000) + TIMER_SLACK).await;
        assert_eq!(s.state(), BreakerState::HalfOpen);
        b.advance(ms(3_000)).await;
        // One success, then a failure: open at once, whatever came before.
        b.succeed().await;
        b.fail().await;
        assert_eq!(s.state(), BreakerState::Open);
        assert!(!s.try_admit());
        b.advance(ms(9_999)).await;
        assert_eq!(s.state(), BreakerState::Open);
        b.advance(ms(1) + TIMER_SLACK).await;
        assert_eq!(s.state(), BreakerState::HalfOpen);
        // The successful probe before the reopening does not count now.
        b.succeed().await;
        assert_eq!(s.state(), BreakerState::HalfOpen);
        b.succeed().await;
        assert_eq!(s.state(), BreakerState::Closed);
    }

    #[actix_rt::test]
    async fn failures_reported_while_open_do_not_extend_the_cooldown() {
        let b = Breaker::start(2, 10, 1).await;
        let s = b.status();
        b.fail().await;
        b.fail().await;
        assert_eq!(s.state(), BreakerState::Open);
        // An attempt that was in flight when the breaker opened reports late.
        b.advance(ms(5_000)).await;
        b.fail().await;
        assert_eq!(s.consecutive_failures(), 3);
        b.advance(ms(5_000) + TIMER_SLACK).await;
        assert_eq!(s.state(), BreakerState::HalfOpen);
    }

    #[actix_rt::test]
    async fn an_open_breaker_answers_503_with_the_seconds_left_of_its_cooldown() {
        let b = Breaker::start(1, 10, 1).await;
        assert_eq!(b.retry_after(), None);
        b.fail().await;
        assert_eq!(b.retry_after(), Some(10));
        b.advance(ms(2_500)).await;
        assert_eq!(b.retry_after(), Some(8), "7.5 s left, rounded up");
        b.advance(ms(7_499)).await;
        assert_eq!(b.retry_after(), Some(1), "never 0");
        b.advance(ms(1) + TIMER_SLACK).await;
        assert_eq!(b.retry_after(), None, "half-open: tried");
        assert_eq!(b.status().half_open_in(), Duration::ZERO);
    }

    #[actix_rt::test]
    async fn an_answered_request_marks_an_unhealthy_provider_healthy() {
        let b = Breaker::start(3, 10, 1).await;
        let s = b.status();
        s.set_healthy(false);
        s.set_check_failures(4);
        b.fail().await;
        assert!(!s.healthy(), "a failure proves nothing");
        b.succeed().await;
        assert!(s.healthy());
        assert_eq!(s.check_failures(), 0);
        assert_eq!(s.consecutive_failures(), 0);
    }
}
