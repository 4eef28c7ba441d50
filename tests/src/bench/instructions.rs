//! `bench --instructions N`: instructions the gateway executes per `/v1` request,
//! counted by callgrind, on this build and on `--before` if given.
//!
//! Wall-clock figures move with whatever else the host does (on a shared VM, by
//! more than the differences a change makes); an instruction count does not: the
//! same binary, config and requests give the same count whatever the machine is
//! doing. So a before/after within a few per cent is read here, and the timed
//! tables say what the instructions cost in time. What it cannot see: time in the
//! kernel (syscalls, wake-ups), cache misses, and `rep`-string instructions,
//! which valgrind counts one per element (a 4 KiB `memset` counts ~4,096).
//!
//! Each side runs alone under `valgrind --tool=callgrind --instr-atstart=no`
//! (start-up is not counted): token set up, 200 warm-up requests, counters zeroed,
//! then `N` requests at c=1, a dump, counters zeroed, `N` requests at c=`C`
//! (`--concurrency`), a dump. Every thread of the gateway is counted (the audit
//! writer's and access log's work per request included), after a pause of two
//! flush intervals so the records of the measured requests are written inside it.

// Progress lines are part of the bench's output.
#![allow(clippy::print_stdout)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde::Serialize;

use super::load::{self, Target};
use super::procs;
use super::sides::setup_token;

#[derive(Debug, Serialize)]
pub struct Counted {
    pub side: String,
    pub c1: f64,
    pub concurrent: f64,
}

pub struct Plan<'a> {
    pub requests: usize,
    pub concurrency: usize,
    pub sides: Vec<(String, PathBuf)>,
    pub dir: &'a Path,
    pub mock_url: &'a str,
    pub extra: &'a str,
}

/// Lets the audit writer (`audit.flush_interval`, 1 s by default) write the
/// measured requests' records before the dump; valgrind slows it ~50×.
const SETTLE: Duration = Duration::from_secs(3);

pub async fn run(plan: &Plan<'_>, out: &Path) -> Result<(), String> {
    let mut counted = Vec::new();
    for (side, bin) in &plan.sides {
        println!("{side}: under callgrind");
        counted.push(count(plan, side, bin).await?);
    }
    let mut md = format!(
        "| instructions per request (callgrind, all threads) | c=1 | c={} |\n|---|---|---|\n",
        plan.concurrency
    );
    for c in &counted {
        md.push_str(&format!(
            "| {} | {:.0} | {:.0} |\n",
            c.side, c.c1, c.concurrent
        ));
    }
    if let [now, before, ..] = counted.as_slice() {
        md.push_str(&format!(
            "| change | {:+.1} % | {:+.1} % |\n",
            (now.c1 / before.c1 - 1.0) * 100.0,
            (now.concurrent / before.concurrent - 1.0) * 100.0
        ));
    }
    println!("\n{md}");
    std::fs::write(out.join("instructions.md"), &md).map_err(|e| e.to_string())?;
    let json = serde_json::to_string_pretty(&counted).map_err(|e| e.to_string())?;
    std::fs::write(out.join("instructions.json"), json).map_err(|e| e.to_string())
}

async fn count(plan: &Plan<'_>, side: &str, bin: &Path) -> Result<Counted, String> {
    let dir = plan.dir.join(side);
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let dumps = dir.join("callgrind.out");
    let wrapper = [
        "valgrind".to_owned(),
        "--tool=callgrind".to_owned(),
        "--instr-atstart=no".to_owned(),
        format!("--callgrind-out-file={}", dumps.display()),
    ];
    let gateway = procs::spawn_palisade_under(
        &wrapper,
        bin,
        &dir,
        plan.mock_url,
        plan.extra,
        &dir.join("palisade.log"),
    )?;
    let pid = gateway.pid().to_string();
    let client = load::client();
    let token = setup_token(&client, &gateway.url, true).await?;
    let target = Target {
        name: side.to_owned(),
        base: format!("{}/v1", gateway.url),
        key: Some(token),
    };
    control(&["-i", "on", &pid])?;
    expect_ok(load::sequential(&client, &target, 200).await)?;
    tokio::time::sleep(SETTLE).await;
    control(&["-z", &pid])?;
    expect_ok(load::sequential(&client, &target, plan.requests).await)?;
    tokio::time::sleep(SETTLE).await;
    control(&["-d", &pid])?;
    let c1 = dumped(&dumps, 1)? / plan.requests as f64;
    control(&["-z", &pid])?;
    let each = plan.requests.div_ceil(plan.concurrency);
    let runs = futures_util::future::join_all(
        (0..plan.concurrency).map(|_| load::sequential(&client, &target, each)),
    )
    .await;
    for run in runs {
        expect_ok(run)?;
    }
    tokio::time::sleep(SETTLE).await;
    control(&["-d", &pid])?;
    let concurrent = dumped(&dumps, 2)? / (each * plan.concurrency) as f64;
    drop(gateway);
    Ok(Counted {
        side: side.to_owned(),
        c1,
        concurrent,
    })
}

fn expect_ok(run: load::Run) -> Result<(), String> {
    match run.first_error {
        Some(e) => Err(format!("{} requests failed, first: {e}", run.errors)),
        None => Ok(()),
    }
}

fn control(args: &[&str]) -> Result<(), String> {
    let status = Command::new("callgrind_control")
        .args(args)
        .stdout(std::process::Stdio::null())
        .status()
        .map_err(|e| format!("callgrind_control (valgrind installed?): {e}"))?;
    match status.success() {
        true => Ok(()),
        false => Err(format!("callgrind_control {args:?}: {status}")),
    }
}

/// The instruction total of dump number `n` (`callgrind.out.<n>`).
fn dumped(dumps: &Path, n: usize) -> Result<f64, String> {
    let path = PathBuf::from(format!("{}.{n}", dumps.display()));
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    text.lines()
        .find_map(|l| {
            l.strip_prefix("summary:")
                .or_else(|| l.strip_prefix("totals:"))
        })
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<f64>().ok())
        .ok_or_else(|| format!("{}: no summary line", path.display()))
}
