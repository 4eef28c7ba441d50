//! `bench --login-flood`: `/v1` latency at c=1 alone, then while logins for
//! unknown users arrive from many addresses (issue 16, row 6: the acceptance is
//! a p99 within 2× of its unloaded value, and no login answered 500).
//!
//! The gateway trusts `X-Forwarded-For` from loopback, so each flooding task is a
//! client address of its own (`198.18.0.0/15`, the benchmarking range). Each
//! address sends one login per `--login-flood-interval` (a distributed guesser,
//! not an HTTP flood from one host: what is measured is what the logins cost, not
//! what any 300 busy connections cost).

// Progress and clean-up lines are part of the bench's output.
#![allow(clippy::print_stdout)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde::Serialize;
use serde_json::json;

use super::load::{self, Target};
use super::procs;
use super::sides::setup_token;
use super::stats::{Summary, summarize};

/// What the gateway needs for logins: a JWT secret, and trust in the client's
/// `X-Forwarded-For` (it is the proxy in front of every flooding address).
pub const LOGIN_CONFIG: &str = "server: { listen: \"127.0.0.1:0\", workers: 1, trusted_proxies: [\"127.0.0.1/32\"] }\n\
     auth: { management_token: \"bench-management-token-0123456789abcdef\", jwt_secret: \"bench-jwt-secret-0123456789abcdef0123456789\" }\n";

/// Longest the loaded measurement runs, however few requests it got through.
const MEASURE_LIMIT: Duration = Duration::from_secs(60);
/// Longest one login is waited for (an unbounded pool can take minutes).
const LOGIN_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug, Serialize)]
pub struct FloodResult {
    pub side: String,
    pub unloaded: Summary,
    pub loaded: Summary,
    pub v1_errors: u64,
    pub logins: BTreeMap<u16, u64>,
}

impl FloodResult {
    pub fn p99_ratio(&self) -> f64 {
        self.loaded.p99 / self.unloaded.p99
    }

    pub fn line(&self) -> String {
        format!(
            "{}: /v1 c=1 p50 {:.0} → {:.0} µs, p99 {:.0} → {:.0} µs (×{:.2}, {} requests under the flood); /v1 errors {}; logins by status {:?}",
            self.side,
            self.unloaded.p50,
            self.loaded.p50,
            self.unloaded.p99,
            self.loaded.p99,
            self.p99_ratio(),
            self.loaded.n,
            self.v1_errors,
            self.logins
        )
    }
}

/// The flood and the measurement.
#[derive(Debug, Clone, Copy)]
pub struct Flood {
    /// Flooding client addresses.
    pub addresses: usize,
    /// Time between two logins of one address.
    pub interval: Duration,
    /// `/v1` requests measured alone, then under the flood.
    pub requests: usize,
}

/// Starts `bin` in `dir` in front of `mock_url` and measures it.
pub async fn measure(
    side: &str,
    bin: &Path,
    cpu: Option<usize>,
    dir: &Path,
    mock_url: &str,
    f: Flood,
) -> Result<FloodResult, String> {
    let Flood {
        addresses,
        interval,
        requests,
    } = f;
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let gw = procs::spawn_palisade(bin, cpu, dir, mock_url, LOGIN_CONFIG, &dir.join("log"))?;
    let client = load::client();
    let token = setup_token(&client, &gw.url, true).await?;
    let target = Target {
        name: side.to_owned(),
        base: format!("{}/v1", gw.url),
        key: Some(token),
    };
    // Warm-up, then alone.
    load::sequential(&client, &target, 300).await;
    let unloaded = load::sequential(&client, &target, requests).await;

    let stop = Arc::new(AtomicBool::new(false));
    let flood = flood(&client, &gw.url, addresses, interval, Arc::clone(&stop));
    let measured = async {
        // Let every address send its first logins before measuring.
        tokio::time::sleep(interval).await;
        let run = load::sequential_within(&client, &target, requests, MEASURE_LIMIT).await;
        stop.store(true, Ordering::Relaxed);
        run
    };
    let (logins, loaded) = tokio::join!(flood, measured);
    Ok(FloodResult {
        side: side.to_owned(),
        unloaded: summarize(&unloaded.latencies),
        loaded: summarize(&loaded.latencies),
        v1_errors: loaded.errors,
        logins,
    })
}

/// One task per address, each sending a login for an unknown user every
/// `interval` until `stop`; the answers by status (0: no answer within
/// [`LOGIN_TIMEOUT`]).
async fn flood(
    client: &reqwest::Client,
    base: &str,
    addresses: usize,
    interval: Duration,
    stop: Arc<AtomicBool>,
) -> BTreeMap<u16, u64> {
    let tasks = (0..addresses).map(|i| {
        let stop = Arc::clone(&stop);
        async move {
            let ip = format!("198.18.{}.{}", i / 250, i % 250 + 1);
            let mut seen: BTreeMap<u16, u64> = BTreeMap::new();
            let mut tick = tokio::time::interval(interval);
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                n += 1;
                let sent = client
                    .post(format!("{base}/manage/auth/login"))
                    .header("x-forwarded-for", &ip)
                    .json(&json!({ "username": format!("ghost-{i}-{n}"), "password": "guessing guessing" }))
                    .timeout(LOGIN_TIMEOUT)
                    .send()
                    .await;
                let status = sent.map_or(0, |r| r.status().as_u16());
                *seen.entry(status).or_default() += 1;
            }
            seen
        }
    });
    let mut total = BTreeMap::new();
    for seen in futures_util::future::join_all(tasks).await {
        for (status, n) in seen {
            *total.entry(status).or_default() += n;
        }
    }
    total
}

/// Where `--login-flood` runs: this build, and `before` if given.
pub struct Sides {
    pub before: Option<PathBuf>,
    pub cpu: Option<usize>,
    pub dir: PathBuf,
    pub mock_url: String,
}

/// `--login-flood`: this build, then `--before` if given, each alone; writes
/// `login-flood.json` under `out`.
pub fn run(flood: Flood, s: &Sides, out: &Path) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let mut sides = vec![("palisade", procs::palisade_bin())];
    if let Some(before) = &s.before {
        sides.push(("palisade-before", before.clone()));
    }
    let mut results = Vec::new();
    for (name, bin) in sides {
        let side_dir = s.dir.join(name);
        let r = rt.block_on(measure(name, &bin, s.cpu, &side_dir, &s.mock_url, flood))?;
        println!("{}", r.line());
        results.push(r);
    }
    let json = serde_json::to_string_pretty(&results).map_err(|e| e.to_string())?;
    std::fs::write(out.join("login-flood.json"), json).map_err(|e| e.to_string())
}
