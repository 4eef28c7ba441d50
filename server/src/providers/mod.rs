//! Configured upstream providers: clients, live status and model routing.
//!
//! Each provider gets its own pooled reqwest client (one HTTP stack, rustls with
//! ring) because the connect timeout is a per-client setting in reqwest; the
//! first-byte and idle timeouts are applied per request by the proxy (see
//! `docs/upstreams.md#timeouts`). Which provider a request tries, in which order,
//! is [`routing`]; breaker and health state live in [`status`] and are moved by the
//! `ProviderSupervisor` actor, health by the rules in [`health`].
//!
//! Providers configured with a `*` glob learn their model list from the
//! upstream's `GET /models` (for `GET /v1/models`): at every health check when the
//! check is that call, else every `proxy.models_refresh_interval`. A failed
//! refresh keeps the last list; it is logged at WARN when refreshes start failing
//! and at INFO when they work again (once per change, not per refresh), shown in
//! `/manage/providers` (`last_error`, `models_error`) and counted in
//! `palisade_models_refresh_failures_total{provider}`.

pub mod health;
pub mod routing;
pub mod status;

use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::config::{BreakerConfig, HealthCheckConfig, ProviderConfig, ProviderTimeouts};
use crate::policy::glob_match;
use crate::secret::Secret;

pub struct Provider {
    /// Position in [`Providers::all`]; the supervisor's messages name providers by it.
    pub index: usize,
    pub name: String,
    /// Without a trailing slash; the proxy appends the path after `/v1`.
    pub base_url: String,
    /// `base_url` parsed once: a request's URL is this with its path extended
    /// ([`Provider::url_for`]), not a string parsed again per request (parsing the
    /// host part, IDNA included, was about 2.5 % of a proxied request's
    /// instructions).
    base: reqwest::Url,
    pub api_key: Secret,
    pub patterns: Vec<String>,
    pub priority: i64,
    pub weight: u64,
    pub first_byte_timeout: Duration,
    /// The longest silence allowed between two body chunks (`timeouts.idle`).
    pub idle_timeout: Duration,
    pub health_check: HealthCheckConfig,
    pub breaker: BreakerConfig,
    pub client: reqwest::Client,
    pub status: status::ProviderStatus,
    /// For providers with a glob: the ids their `GET /models` last returned.
    discovered: RwLock<Arc<Vec<String>>>,
}

impl std::fmt::Debug for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Provider")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Provider {
    pub fn serves(&self, model: &str) -> bool {
        self.patterns.iter().any(|p| glob_match(p, model))
    }

    pub fn has_glob(&self) -> bool {
        self.patterns.iter().any(|p| p.contains('*'))
    }

    /// Whether the periodic health check is the `GET /models` listing itself.
    pub fn health_check_lists_models(&self) -> bool {
        self.health_check.enabled && self.health_check.path == "/models"
    }

    /// Remembers the ids of a `GET /models` answer and returns how many there
    /// are; `None` if it is not one.
    pub(crate) fn learn_models(&self, body: &[u8]) -> Option<usize> {
        #[derive(serde::Deserialize)]
        struct List {
            data: Vec<Item>,
        }
        #[derive(serde::Deserialize)]
        struct Item {
            id: String,
        }
        let list = serde_json::from_slice::<List>(body).ok()?;
        let n = list.data.len();
        self.set_discovered(list.data.into_iter().map(|i| i.id).collect());
        Some(n)
    }

    /// `{base_url}{tail}?{query}` (no `?` when `query` is empty): `tail` is the
    /// client's path after `/v1`, as it arrived (percent-encoded).
    pub fn url_for(&self, tail: &str, query: &str) -> reqwest::Url {
        join(&self.base, tail, query)
    }

    /// `GET {base_url}{path}` with the provider's key, the whole answer within
    /// `timeout`: the model listing and the health check, never a completion.
    pub async fn get(
        &self,
        client: &reqwest::Client,
        path: &str,
        timeout: Duration,
    ) -> Result<(reqwest::StatusCode, bytes::Bytes), String> {
        let mut req = client.get(format!("{}{path}", self.base_url));
        if !self.api_key.is_empty() {
            req = req.bearer_auth(self.api_key.expose());
        }
        let call = async {
            let resp = req.send().await.map_err(|e| without_url(&e))?;
            let status = resp.status();
            let body = resp.bytes().await.map_err(|e| without_url(&e))?;
            Ok((status, body))
        };
        tokio::time::timeout(timeout, call)
            .await
            .unwrap_or_else(|_| Err("timed out".to_owned()))
    }

    /// Records how a refresh of the model list went (see the module doc).
    pub(crate) fn note_models_refresh(&self, outcome: Result<usize, String>) {
        match outcome {
            Ok(n) => match self.status.note(|d| d.models_error.take()).flatten() {
                Some(_) => {
                    tracing::info!(provider = %self.name, models = n, "model list refreshed again");
                }
                None => tracing::debug!(provider = %self.name, models = n, "refreshed model list"),
            },
            Err(e) => {
                crate::metrics::global().models_refresh_failed(&self.name);
                let started_failing = self
                    .status
                    .note(|d| {
                        d.last_error = Some(format!("models: {e}"));
                        d.models_error.replace(e.clone()).is_none()
                    })
                    .unwrap_or(true);
                if started_failing {
                    tracing::warn!(provider = %self.name, error = %e,
                        "cannot refresh the model list from GET /models; GET /v1/models keeps the last one");
                } else {
                    tracing::debug!(provider = %self.name, error = %e, "model list refresh still failing");
                }
            }
        }
    }

    /// Model ids to advertise in `GET /v1/models`.
    pub fn advertised_models(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .patterns
            .iter()
            .filter(|p| !p.contains('*'))
            .cloned()
            .collect();
        if let Ok(d) = self.discovered.read() {
            out.extend(d.iter().filter(|m| self.serves(m)).cloned());
        }
        out
    }

    fn set_discovered(&self, models: Vec<String>) {
        if let Ok(mut d) = self.discovered.write() {
            *d = Arc::new(models);
        }
    }

    /// Asks the provider for its model list (no token cost) and remembers it.
    pub async fn discover_models(&self) -> Result<usize, String> {
        let (status, body) = self
            .get(&self.client, "/models", self.first_byte_timeout)
            .await?;
        if !status.is_success() {
            return Err(format!("status {}", status.as_u16()));
        }
        self.learn_models(&body)
            .ok_or_else(|| "not a model list".to_owned())
    }
}

/// reqwest errors print the URL, which is harmless here (keys travel in headers),
/// but keep messages short and uniform.
pub fn without_url(e: &reqwest::Error) -> String {
    let mut msg = e.to_string();
    if let Some(url) = e.url() {
        msg = msg.replace(url.as_str(), "<upstream>");
    }
    if let Some(src) = std::error::Error::source(e) {
        msg.push_str(": ");
        msg.push_str(&src.to_string());
    }
    msg
}

#[derive(Debug)]
pub struct Providers {
    list: Vec<Arc<Provider>>,
}

impl Providers {
    pub fn from_config(configs: &[ProviderConfig]) -> Result<Self, String> {
        let mut list = configs
            .iter()
            .map(|c| {
                let base_url = c.base_url.trim_end_matches('/').to_owned();
                let base = reqwest::Url::parse(&base_url)
                    .map_err(|e| format!("providers.{}.base_url: {e}", c.name))?;
                Ok(Provider {
                    index: 0,
                    name: c.name.clone(),
                    base_url,
                    base,
                    api_key: c.api_key.clone(),
                    patterns: c.models.clone(),
                    priority: c.priority,
                    weight: c.weight.max(1),
                    first_byte_timeout: c.timeouts.first_byte.0,
                    idle_timeout: c.timeouts.idle.0,
                    health_check: c.health_check.clone(),
                    breaker: c.circuit_breaker.clone(),
                    status: status::ProviderStatus::default(),
                    client: build_client(&c.timeouts).map_err(|e| {
                        format!("providers.{}: cannot build HTTP client: {e}", c.name)
                    })?,
                    discovered: RwLock::new(Arc::new(Vec::new())),
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        // Stable: equal priorities keep their configured order.
        list.sort_by_key(|p| p.priority);
        let list = list
            .into_iter()
            .enumerate()
            .map(|(index, p)| Arc::new(Provider { index, ..p }))
            .collect();
        Ok(Self { list })
    }

    pub fn all(&self) -> &[Arc<Provider>] {
        &self.list
    }

    pub fn names(&self) -> Vec<&str> {
        self.list.iter().map(|p| p.name.as_str()).collect()
    }
}

fn build_client(t: &ProviderTimeouts) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .connect_timeout(t.connect.0)
        // No `read_timeout`: reqwest's would also cut the wait for the response head,
        // so `idle` would bound `first_byte` too. The head is timed per request
        // (`first_byte`), the gaps between body chunks by the relay (`idle`).
        .tcp_nodelay(true)
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(1024)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .build()
}

/// How soon a failed model-list refresh is tried again (when `interval` is longer),
/// so an upstream that was not up yet at start-up is listed seconds later.
pub const MODELS_RETRY: Duration = Duration::from_secs(5);

/// Refreshes glob providers' model lists now and then every `interval`, for those
/// whose health check does not already ask `GET /models`; one that failed is
/// asked again after [`MODELS_RETRY`].
pub async fn refresh_models_forever(providers: Arc<Providers>, interval: Duration) {
    let listed: Vec<&Arc<Provider>> = providers
        .all()
        .iter()
        .filter(|p| p.has_glob() && !p.health_check_lists_models())
        .collect();
    if listed.is_empty() {
        return;
    }
    let mut due = vec![tokio::time::Instant::now(); listed.len()];
    loop {
        let next = due
            .iter()
            .min()
            .copied()
            .unwrap_or_else(tokio::time::Instant::now);
        tokio::time::sleep_until(next).await;
        let now = tokio::time::Instant::now();
        for (p, due) in listed
            .iter()
            .zip(due.iter_mut())
            .filter(|(_, d)| **d <= now)
        {
            let outcome = p.discover_models().await;
            let wait = match outcome.is_ok() {
                true => interval,
                false => interval.min(MODELS_RETRY),
            };
            p.note_models_refresh(outcome);
            *due = now + wait;
        }
    }
}

/// `base` with `tail` appended to its path and `query` as its query: the URL
/// that parsing `{base}{tail}?{query}` gives, without parsing the host again.
fn join(base: &reqwest::Url, tail: &str, query: &str) -> reqwest::Url {
    let mut url = base.clone();
    let mut path = String::with_capacity(base.path().len() + tail.len());
    path.push_str(base.path().trim_end_matches('/'));
    path.push_str(tail);
    url.set_path(&path);
    url.set_query((!query.is_empty()).then_some(query));
    url
}

#[cfg(test)]
mod tests {
    use super::join;

    #[test]
    fn join_gives_the_url_the_concatenated_string_parses_to() {
        for base in [
            "http://127.0.0.1:8080/v1",
            "https://api.example.com",
            "https://Example.COM:443/openai/v1",
            "http://[::1]:9000/a%20b/v1",
            "https://bücher.example/v1",
        ] {
            let parsed = reqwest::Url::parse(base).unwrap();
            for (tail, query) in [
                ("/chat/completions", ""),
                ("/embeddings", "api-version=2024-10-21"),
                ("/files/file-abc%2Fdef/content", "a=1&b=%20"),
                ("/models/ft:gpt-4o:org:x", ""),
            ] {
                let mut text = format!("{base}{tail}");
                if !query.is_empty() {
                    text.push('?');
                    text.push_str(query);
                }
                assert_eq!(
                    join(&parsed, tail, query),
                    reqwest::Url::parse(&text).unwrap(),
                    "{base} + {tail}?{query}"
                );
            }
        }
    }
}
