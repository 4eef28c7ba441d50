//! Audit on/off A/B: does recording every request move the request path's latency?
//!
//! Two Palisades that differ only in `audit`/`usage` take the same open-loop load
//! (a fixed rate well below saturation, latency from the scheduled send) in many
//! short rounds whose order alternates (on-off, off-on, …), so drift on the machine
//! lands on both sides alike. One long pooled p99 is decided by the single worst
//! stall of the run, and on a shared VM those come from the neighbours; so the
//! verdict uses the median of the per-round p99s and a sign test over the rounds
//! (is "on" slower in significantly more rounds than chance allows?).
//!
//! Below saturation the writer's CPU time is not queueing time for requests, so a
//! request path that never waits on the database shows no difference. The CPU the
//! writer does take is reported separately, from `/proc`: it is what audit costs
//! at saturation (the closed-loop throughput), where every cycle is shared.

use std::time::Duration;

use serde::Serialize;

use super::load::{self, Run, Target};
use super::stats::{Summary, summarize};

#[derive(Debug, Serialize, Default, Clone)]
pub struct AbSide {
    pub name: String,
    pub pooled: Summary,
    /// Median over rounds of each round's p99.
    pub round_p99_median_us: f64,
    pub errors: u64,
    /// Whole-process CPU time per request (user + system).
    pub cpu_us_per_request: f64,
    /// The part of it spent on the audit writer's and SQLite's threads.
    pub writer_cpu_us_per_request: f64,
}

#[derive(Debug, Serialize, Default, Clone)]
pub struct AbResult {
    pub rate: f64,
    pub rounds: usize,
    pub round_seconds: f64,
    pub on: AbSide,
    pub off: AbSide,
    /// Rounds in which "on" had the higher p99 (ties count for neither).
    pub on_higher_rounds: usize,
    /// Two-sided sign-test p-value for "on and off are equally likely to be higher".
    pub sign_test_p: f64,
}

/// One side of the comparison: where to send and which process to read CPU from.
pub struct Side<'a> {
    pub target: &'a Target,
    pub pid: Option<u32>,
}

pub async fn run(
    client: &reqwest::Client,
    on: Side<'_>,
    off: Side<'_>,
    rate: f64,
    rounds: usize,
    round: Duration,
) -> AbResult {
    let cpu_before = [cpu(on.pid), cpu(off.pid)];
    let mut runs = [Run::default(), Run::default()];
    let mut round_p99 = [Vec::new(), Vec::new()];
    for r in 0..rounds {
        let order = if r % 2 == 0 { [0, 1] } else { [1, 0] };
        for i in order {
            let target = if i == 0 { on.target } else { off.target };
            let run = load::open_loop(client, target, rate, round).await;
            round_p99[i].push(summarize(&run.latencies).p99);
            runs[i].merge(run);
        }
    }
    // Let the last round's records reach the database before reading CPU time.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let cpu_after = [cpu(on.pid), cpu(off.pid)];

    let on_higher = round_p99[0]
        .iter()
        .zip(&round_p99[1])
        .filter(|(a, b)| a > b)
        .count();
    let off_higher = round_p99[0]
        .iter()
        .zip(&round_p99[1])
        .filter(|(a, b)| a < b)
        .count();
    let side = |i: usize, name: &str| {
        let served = runs[i].latencies.len().max(1) as f64;
        let (total, writer) = match (cpu_before[i], cpu_after[i]) {
            (Some(b), Some(a)) => (
                (a.total_us - b.total_us) / served,
                (a.writer_us - b.writer_us) / served,
            ),
            _ => (f64::NAN, f64::NAN),
        };
        AbSide {
            name: name.to_owned(),
            pooled: summarize(&runs[i].latencies),
            round_p99_median_us: median(&round_p99[i]),
            errors: runs[i].errors,
            cpu_us_per_request: total,
            writer_cpu_us_per_request: writer,
        }
    };
    AbResult {
        rate,
        rounds,
        round_seconds: round.as_secs_f64(),
        on: side(0, &on.target.name),
        off: side(1, &off.target.name),
        on_higher_rounds: on_higher,
        sign_test_p: sign_test(on_higher, off_higher),
    }
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    match s.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

/// Two-sided exact binomial test of `a` successes against `b` failures at p = ½.
pub fn sign_test(a: usize, b: usize) -> f64 {
    let n = a + b;
    if n == 0 {
        return 1.0;
    }
    let k = a.min(b);
    // P(X ≤ k) for X ~ Bin(n, ½), summed in log space so n in the hundreds is fine.
    let ln_half_n = n as f64 * 0.5f64.ln();
    let mut ln_choose = 0.0f64;
    let mut tail = 0.0;
    for i in 0..=k {
        if i > 0 {
            ln_choose += ((n - i + 1) as f64).ln() - (i as f64).ln();
        }
        tail += (ln_choose + ln_half_n).exp();
    }
    (2.0 * tail).min(1.0)
}

#[derive(Clone, Copy)]
struct Cpu {
    total_us: f64,
    writer_us: f64,
}

/// Process CPU time, and that of its `audit-writer` and `sqlx-sqlite-worker`
/// threads, from `/proc` (clock ticks, 100 per second on Linux).
fn cpu(pid: Option<u32>) -> Option<Cpu> {
    let pid = pid?;
    let tick_us = 1e6 / 100.0;
    let total = ticks(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)?;
    let mut writer = 0u64;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .flatten()
    {
        let path = task.path();
        let comm = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        let comm = comm.trim();
        if comm == "audit-writer" || comm.starts_with("sqlx-sqlite-wor") {
            writer += std::fs::read_to_string(path.join("stat"))
                .ok()
                .and_then(|s| ticks(&s))
                .unwrap_or(0);
        }
    }
    Some(Cpu {
        total_us: total as f64 * tick_us,
        writer_us: writer as f64 * tick_us,
    })
}

/// utime + stime from a `/proc/…/stat` line (fields 14 and 15; the command name in
/// field 2 may contain spaces, so count from its closing parenthesis).
fn ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_test_values() {
        // 10 vs 10: no evidence either way.
        assert!((sign_test(10, 10) - 1.0).abs() < 1e-9);
        // 15 of 20 in one direction: p = 2 · P(X ≤ 5) = 0.0414 (exact).
        assert!((sign_test(15, 5) - 0.041_389).abs() < 1e-5);
        assert!((sign_test(5, 15) - 0.041_389).abs() < 1e-5);
        // All 20: p = 2 / 2^20.
        assert!((sign_test(20, 0) - 2.0 / 1_048_576.0).abs() < 1e-12);
        assert_eq!(sign_test(0, 0), 1.0);
    }

    #[test]
    fn stat_fields() {
        let line = "123 (actix-rt|system:0 x) S 1 2 3 4 5 6 7 8 9 10 41 7 0 0 20 0 4";
        assert_eq!(ticks(line), Some(48));
    }

    #[test]
    fn medians() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
    }
}
