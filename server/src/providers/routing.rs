//! Which providers a request tries, in which order.
//!
//! Candidates are the providers whose `models` serve the model, skipping those whose
//! breaker is open or that are unhealthy; by `priority` (lower first), and among
//! equal priorities in a weighted random order (each provider's chance of going
//! first is its share of the group's weight). A project that pins providers gets
//! exactly those, in its order. Reads only the lock-free [`super::status`]: no
//! mailbox, no lock.
//!
//! Fail open on health, closed on breakers: when every provider serving the model
//! is unhealthy but some have a breaker that is not open, those are tried anyway
//! (a health check is indirect evidence, an open breaker is what requests saw),
//! best first: the one that answered a request most recently, then the one with
//! the fewest failed health checks, then the usual order. Only when every breaker
//! is open is the answer 503 `no_healthy_provider`, with nothing tried.

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;

use super::status::BreakerState;
use super::{Provider, Providers};

/// Why no provider can take a request; the proxy answers 404 `model_not_found`
/// or 503 `no_healthy_provider` (with `retry-after`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoutingError {
    /// No configured (or pinned) provider serves the model.
    ModelNotFound(String),
    /// Every provider serving the model has its breaker open; `retry_after` is
    /// the seconds until the first one turns half-open.
    NoHealthyProvider { model: String, retry_after: u64 },
}

impl Providers {
    /// The ordered candidates for `model` (`None`: endpoints without a model);
    /// `pinned` is the project's provider list (empty: all, by priority).
    pub fn candidates(
        &self,
        model: Option<&str>,
        pinned: &[String],
    ) -> Result<Vec<Arc<Provider>>, RoutingError> {
        let mut healthy: Vec<&Arc<Provider>> = Vec::new();
        // Allocates only when a provider is unhealthy.
        let mut unhealthy: Vec<&Arc<Provider>> = Vec::new();
        let mut serving = 0usize;
        for p in self.serving(model, pinned) {
            serving += 1;
            if p.status.state() == BreakerState::Open {
                continue;
            }
            match p.status.healthy() {
                true => healthy.push(p),
                false => unhealthy.push(p),
            }
        }
        if !healthy.is_empty() {
            return Ok(in_order(&healthy, pinned));
        }
        if !unhealthy.is_empty() {
            let mut order = in_order(&unhealthy, pinned);
            best_first(&mut order);
            tracing::debug!(
                model = model.unwrap_or_default(),
                provider = %order[0].name,
                "every provider for the model is unhealthy; trying the best one anyway"
            );
            return Ok(order);
        }
        // The error path alone looks again, for when to retry.
        let open: Vec<&Arc<Provider>> = self.serving(model, pinned).collect();
        let model = model.unwrap_or_default().to_owned();
        Err(match serving {
            0 => RoutingError::ModelNotFound(model),
            _ => RoutingError::NoHealthyProvider {
                model,
                retry_after: retry_after(&open),
            },
        })
    }

    /// The providers that serve `model`: the pinned ones in pin order, else all
    /// (sorted by priority).
    fn serving<'a>(
        &'a self,
        model: Option<&'a str>,
        pinned: &'a [String],
    ) -> impl Iterator<Item = &'a Arc<Provider>> {
        let all = pinned.is_empty().then(|| self.all().iter());
        let pins = pinned
            .iter()
            .filter_map(|name| self.all().iter().find(|p| &p.name == name));
        all.into_iter()
            .flatten()
            .chain(pins)
            .filter(move |p| model.is_none_or(|m| p.serves(m)))
    }

    /// `/ready` (SPEC §4): at least one provider has a breaker that is not open,
    /// so some request would be tried (health alone never refuses one).
    pub fn any_usable(&self) -> bool {
        self.all()
            .iter()
            .any(|p| p.status.state() != BreakerState::Open)
    }
}

/// Pin order when pinned, else priority groups in weighted random order.
fn in_order(list: &[&Arc<Provider>], pinned: &[String]) -> Vec<Arc<Provider>> {
    match pinned.is_empty() {
        true => weighted_order(list, &mut rand::rng()),
        false => list.iter().map(|p| Arc::clone(p)).collect(),
    }
}

/// Unhealthy providers, most promising first: answered a request most recently
/// (never: last), then fewest failed health checks; ties keep their order.
fn best_first(list: &mut [Arc<Provider>]) {
    list.sort_by_key(|p| {
        (
            p.status.since_last_success().unwrap_or(Duration::MAX),
            p.status.check_failures(),
        )
    });
}

/// Seconds until the first of these (open) breakers turns half-open; at least 1.
fn retry_after(providers: &[&Arc<Provider>]) -> u64 {
    providers
        .iter()
        .map(|p| match p.status.state() {
            BreakerState::Open => u64::try_from(p.status.half_open_in().as_millis())
                .unwrap_or(u64::MAX)
                .div_ceil(1000),
            // It left the open state since we looked: worth trying at once.
            BreakerState::Closed | BreakerState::HalfOpen => 0,
        })
        .min()
        .unwrap_or(1)
        .max(1)
}

/// Priority groups in order; inside a group, weighted sampling without replacement
/// (Efraimidis–Spirakis: sort by `-ln(u) / weight`).
fn weighted_order(list: &[&Arc<Provider>], rng: &mut impl Rng) -> Vec<Arc<Provider>> {
    let mut keyed: Vec<(i64, f64, &Arc<Provider>)> = list
        .iter()
        .map(|p| {
            let u: f64 = rng.random_range(f64::MIN_POSITIVE..1.0);
            // Weights are at least 1 (validated), so the key is finite.
            (p.priority, -u.ln() / p.weight as f64, *p)
        })
        .collect();
    keyed.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)));
    keyed.into_iter().map(|(_, _, p)| Arc::clone(p)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ProviderConfig, ProviderTimeouts};
    use crate::secret::Secret;

    fn provider(name: &str, models: &[&str], priority: i64, weight: u64) -> ProviderConfig {
        ProviderConfig {
            name: name.to_owned(),
            base_url: "http://h/v1".to_owned(),
            api_key: Secret::default(),
            models: models.iter().map(|m| (*m).to_owned()).collect(),
            priority,
            weight,
            timeouts: ProviderTimeouts::default(),
            health_check: Default::default(),
            circuit_breaker: Default::default(),
        }
    }

    fn providers(configs: &[ProviderConfig]) -> Providers {
        let _ = rustls::crypto::ring::default_provider().install_default();
        Providers::from_config(configs).unwrap()
    }

    fn names(ps: &[Arc<Provider>]) -> Vec<&str> {
        ps.iter().map(|p| p.name.as_str()).collect()
    }

    #[test]
    fn routing_orders_by_priority_and_pattern() {
        let ps = providers(&[provider("b", &["*"], 5, 1), provider("a", &["gpt-*"], 1, 1)]);
        assert_eq!(
            names(&ps.candidates(Some("gpt-4o"), &[]).unwrap()),
            ["a", "b"]
        );
        assert_eq!(names(&ps.candidates(Some("claude"), &[]).unwrap()), ["b"]);
        assert_eq!(names(&ps.candidates(None, &[]).unwrap()), ["a", "b"]);
        // A pin overrides priority, and only pinned providers are tried.
        let pin = ["b".to_owned(), "a".to_owned()];
        assert_eq!(
            names(&ps.candidates(Some("gpt-4o"), &pin).unwrap()),
            ["b", "a"]
        );
        assert!(matches!(
            ps.candidates(Some("claude"), &pin[1..]),
            Err(RoutingError::ModelNotFound(_))
        ));
        let only_gpt = providers(&[provider("a", &["gpt-*"], 1, 1)]);
        assert!(matches!(
            only_gpt.candidates(Some("claude"), &[]),
            Err(RoutingError::ModelNotFound(_))
        ));
    }

    #[test]
    fn routing_skips_open_and_unhealthy_then_reports_when_to_retry() {
        let ps = providers(&[
            provider("a", &["*"], 0, 1),
            provider("b", &["*"], 1, 1),
            provider("c", &["*"], 2, 1),
        ]);
        let ms = Duration::from_millis;
        ps.all()[0]
            .status
            .set_state(BreakerState::Open, ms(4_500), 0);
        ps.all()[1].status.set_healthy(false);
        // Unhealthy is skipped while a healthy provider is left.
        assert_eq!(names(&ps.candidates(Some("m"), &[]).unwrap()), ["c"]);
        ps.all()[2]
            .status
            .set_state(BreakerState::Open, ms(9_000), 0);
        // Fail open on health: the unhealthy one is still tried ...
        assert_eq!(names(&ps.candidates(Some("m"), &[]).unwrap()), ["b"]);
        assert!(ps.any_usable());
        // ... closed on breakers.
        ps.all()[1]
            .status
            .set_state(BreakerState::Open, ms(7_000), 0);
        match ps.candidates(Some("m"), &[]) {
            Err(RoutingError::NoHealthyProvider { retry_after, .. }) => assert_eq!(retry_after, 5),
            other => panic!("{other:?}"),
        }
        assert!(!ps.any_usable());
    }

    #[tokio::test(start_paused = true)]
    async fn routing_all_unhealthy_tries_the_best_first() {
        let ps = providers(&[
            provider("a", &["*"], 0, 1),
            provider("b", &["*"], 1, 1),
            provider("c", &["*"], 2, 1),
        ]);
        let [a, b, c] = [0, 1, 2].map(|i| &ps.all()[i].status);
        for s in [a, b, c] {
            s.set_healthy(false);
        }
        // No request answered anywhere: fewest failed checks first, then priority.
        a.set_check_failures(5);
        b.set_check_failures(2);
        c.set_check_failures(2);
        assert_eq!(
            names(&ps.candidates(Some("m"), &[]).unwrap()),
            ["b", "c", "a"]
        );
        // The most recent answered request wins over everything else.
        c.note_success();
        tokio::time::advance(Duration::from_secs(5)).await;
        a.note_success();
        assert_eq!(
            names(&ps.candidates(Some("m"), &[]).unwrap()),
            ["a", "c", "b"]
        );
        // A pinned project gets only its pins, ranked the same way.
        let pin = ["b".to_owned(), "c".to_owned()];
        assert_eq!(names(&ps.candidates(Some("m"), &pin).unwrap()), ["c", "b"]);
    }

    #[test]
    fn routing_weights_share_first_place() {
        let ps = providers(&[provider("a", &["*"], 0, 3), provider("b", &["*"], 0, 1)]);
        let list: Vec<&Arc<Provider>> = ps.all().iter().collect();
        let mut rng = rand::rng();
        let firsts = (0..20_000)
            .filter(|_| weighted_order(&list, &mut rng)[0].name == "a")
            .count();
        assert!((14_000..16_000).contains(&firsts), "{firsts}");
    }
}
