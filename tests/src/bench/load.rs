//! Request generators: sequential (c=1), closed loop (c=N), and open loop at a fixed
//! rate with latency measured from the scheduled send time (no coordinated omission).

use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::time::Instant;

/// Where requests go: the mock itself (`direct`) or a gateway in front of it.
#[derive(Clone, Debug)]
pub struct Target {
    pub name: String,
    /// Base URL ending in `/v1`.
    pub base: String,
    pub key: Option<String>,
}

pub const CHAT_BODY: &str =
    r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hello"}]}"#;

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(4096)
        .pool_idle_timeout(Duration::from_secs(90))
        .build()
        .unwrap_or_default()
}

/// One non-streaming chat completion; its latency in microseconds.
pub async fn chat(client: &reqwest::Client, t: &Target) -> Result<f64, String> {
    let start = Instant::now();
    let mut req = client
        .post(format!("{}/chat/completions", t.base))
        .header("content-type", "application/json")
        .body(CHAT_BODY);
    if let Some(k) = &t.key {
        req = req.bearer_auth(k);
    }
    let resp = req.send().await.map_err(|e| e.to_string())?;
    let status = resp.status();
    let body = resp.bytes().await.map_err(|e| e.to_string())?;
    if !status.is_success() {
        return Err(format!(
            "status {status}: {}",
            String::from_utf8_lossy(&body)
        ));
    }
    Ok(start.elapsed().as_secs_f64() * 1e6)
}

#[derive(Default, Debug)]
pub struct Run {
    pub latencies: Vec<f64>,
    pub errors: u64,
    pub first_error: Option<String>,
    pub elapsed: Duration,
}

impl Run {
    fn record(&mut self, r: Result<f64, String>) {
        match r {
            Ok(us) => self.latencies.push(us),
            Err(e) => {
                self.errors += 1;
                self.first_error.get_or_insert(e);
            }
        }
    }

    pub fn rps(&self) -> f64 {
        self.latencies.len() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    pub fn merge(&mut self, other: Run) {
        self.latencies.extend(other.latencies);
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
        self.elapsed += other.elapsed;
    }
}

pub async fn sequential(client: &reqwest::Client, t: &Target, n: usize) -> Run {
    let mut run = Run::default();
    let start = Instant::now();
    for _ in 0..n {
        run.record(chat(client, t).await);
    }
    run.elapsed = start.elapsed();
    run
}

/// As [`sequential`], stopping early once `limit` has passed (a side that slows
/// to a crawl still ends; fewer samples say so).
pub async fn sequential_within(
    client: &reqwest::Client,
    t: &Target,
    n: usize,
    limit: Duration,
) -> Run {
    let mut run = Run::default();
    let start = Instant::now();
    for _ in 0..n {
        if start.elapsed() >= limit {
            break;
        }
        run.record(chat(client, t).await);
    }
    run.elapsed = start.elapsed();
    run
}

pub async fn closed_loop(
    client: &reqwest::Client,
    t: &Target,
    concurrency: usize,
    duration: Duration,
) -> Run {
    let start = Instant::now();
    let deadline = start + duration;
    let workers = (0..concurrency).map(|_| async move {
        let mut run = Run::default();
        while Instant::now() < deadline {
            run.record(chat(client, t).await);
        }
        run
    });
    let mut total = Run::default();
    for run in futures_util::future::join_all(workers).await {
        total.merge(run);
    }
    total.elapsed = start.elapsed();
    total
}

/// At most this many requests in flight (connections), as wrk2 uses a fixed set of
/// connections. A send that has to wait for a free connection still measures from
/// its scheduled time, so queueing shows up in the latencies instead of vanishing.
pub const OPEN_LOOP_CONNECTIONS: usize = 256;

pub async fn open_loop(client: &reqwest::Client, t: &Target, rate: f64, duration: Duration) -> Run {
    let interval = Duration::from_secs_f64(1.0 / rate.max(1.0));
    let total_sends = (duration.as_secs_f64() * rate).ceil() as u64;
    let start = Instant::now();
    let mut in_flight = FuturesUnordered::new();
    let mut run = Run::default();
    let mut sent = 0u64;
    while sent < total_sends || !in_flight.is_empty() {
        let next_at = start + interval.mul_f64(sent as f64);
        tokio::select! {
            _ = tokio::time::sleep_until(next_at), if sent < total_sends && in_flight.len() < OPEN_LOOP_CONNECTIONS => {
                in_flight.push(async move {
                    chat(client, t).await.map(|_| next_at.elapsed().as_secs_f64() * 1e6)
                });
                sent += 1;
            }
            Some(r) = in_flight.next(), if !in_flight.is_empty() => run.record(r),
        }
    }
    run.elapsed = start.elapsed();
    run
}
