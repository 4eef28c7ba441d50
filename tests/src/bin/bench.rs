//! `bench`: what Palisade adds to a request, measured side by side with the direct
//! path (and optionally nginx or other gateways) in one interleaved run.
//!
//! `cargo build --release -p palisade && cargo run --release -p palisade-tests --bin bench -- [--nginx] [--quick]`
//!
//! It starts the mock upstream (zero delay) and a release `palisade` with every
//! feature that exists switched on, pins the gateway to CPU 0 and the mock and this
//! client to CPU 1 when `taskset` is available, and writes `target/bench/bench.md`,
//! `bench.json` and `bench.svg` (with `--scale-out` also `scale-out.{md,json}`).

// The report is this program's output.
#![allow(clippy::print_stdout)]

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use palisade_tests::bench::checks::checks;
use palisade_tests::bench::load::{self, Run, Target};
use palisade_tests::bench::report::{self, GatewayResult, ManyStreamsResult, Memory, Report};
use palisade_tests::bench::scale_out::{self, ScaleOut};
use palisade_tests::bench::sides::{parse_compare, quiet_target, setup_token};
use palisade_tests::bench::stats::{added, summarize};
use palisade_tests::bench::{audit_ab, instructions, login_flood, procs, scale_out_report, stream};

#[derive(Parser, Debug)]
#[command(
    name = "bench",
    about = "Latency Palisade adds, measured against the direct path"
)]
struct Args {
    /// c=1 requests per side.
    #[arg(long, default_value_t = 5000)]
    requests: usize,
    /// Closed-loop concurrency.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Closed-loop seconds per side.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Closed-loop slices per side (`--seconds` split among them), the sides'
    /// order reversed every other slice.
    #[arg(long, default_value_t = 2)]
    closed_rounds: usize,
    /// Open-loop rate (requests/s); default: half the slowest side's closed-loop RPS.
    #[arg(long)]
    rate: Option<f64>,
    /// Open-loop seconds per side.
    #[arg(long, default_value_t = 5.0)]
    open_seconds: f64,
    /// Streams measured per side for TTFB and inter-chunk gaps.
    #[arg(long, default_value_t = 60)]
    stream_samples: usize,
    /// Concurrent streams for the stall check (through Palisade).
    #[arg(long, default_value_t = 1000)]
    streams: usize,
    /// Also measure nginx as a one-worker reverse proxy (the floor).
    #[arg(long)]
    nginx: bool,
    /// Also measure a second Palisade with audit and usage recording off, to show
    /// what they cost on the request path.
    #[arg(long)]
    audit_off: bool,
    /// Audit on/off A/B (with `--audit-off`): alternating open-loop rounds.
    #[arg(long, default_value_t = 20)]
    ab_rounds: usize,
    /// Seconds per side per A/B round.
    #[arg(long, default_value_t = 1.0)]
    ab_seconds: f64,
    /// A/B rate (requests/s); default: a quarter of the audit-on side's
    /// closed-loop RPS, well below saturation.
    #[arg(long)]
    ab_rate: Option<f64>,
    /// Also measure a second Palisade with the request queue and every rate limit
    /// off, to show what admission costs on the request path.
    #[arg(long)]
    limits_off: bool,
    /// Another `palisade` binary (a build of an earlier commit) run with the same
    /// config as the side `palisade-before`: a same-run before/after.
    #[arg(long)]
    before: Option<PathBuf>,
    /// Run the measured Palisade (not `--before`'s) with `logging.access_log: false`,
    /// to show what the access line costs (older builds may not know the key).
    #[arg(long)]
    access_log_off: bool,
    /// Another OpenAI-compatible gateway in front of the same mock: NAME=URL[,KEY]
    /// (URL is its `/v1` base). The mock's address is printed at start.
    #[arg(long = "compare")]
    compare: Vec<String>,
    /// Measure an already running Palisade (`/v1` base URL) with this token instead
    /// of starting one.
    #[arg(long, requires = "token")]
    gateway_url: Option<String>,
    #[arg(long)]
    token: Option<String>,
    /// Do not pin processes to CPUs.
    #[arg(long)]
    no_pin: bool,
    /// Only measure `/v1` c=1 latency alone and under a login flood from many
    /// addresses (unknown users), on this build and on `--before` if given.
    #[arg(long)]
    login_flood: bool,
    /// Flooding client addresses (`--login-flood`).
    #[arg(long, default_value_t = 300)]
    login_flood_addresses: usize,
    /// Milliseconds between two logins of one address (`--login-flood`).
    #[arg(long, default_value_t = 1000)]
    login_flood_interval_ms: u64,
    /// Also measure a second Palisade on PostgreSQL + Redis (a database and a key
    /// prefix of the run's own, removed at the end), same token and limits as
    /// the SQLite one, and count its PostgreSQL and Redis round trips per request.
    #[arg(long)]
    scale_out: bool,
    /// PostgreSQL server for `--scale-out` (without a database name).
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432")]
    pg_url: String,
    /// Redis for `--scale-out`.
    #[arg(long, default_value = "redis://127.0.0.1:6379/0")]
    redis_url: String,
    /// Only count the instructions the gateway executes per request under
    /// callgrind (this many requests at c=1, then at `--concurrency`), on this
    /// build and on `--before` if given: a figure the host's noise does not move.
    #[arg(long)]
    instructions: Option<usize>,
    /// A short run for smoke-testing the harness.
    #[arg(long)]
    quick: bool,
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,
}

fn main() -> Result<(), String> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut args = Args::parse();
    if args.quick {
        args.requests = 500;
        args.seconds = 2.0;
        args.open_seconds = 2.0;
        args.stream_samples = 10;
        args.streams = 100;
        args.ab_rounds = 6;
        args.ab_seconds = 0.5;
    }
    let pinned = !args.no_pin && procs::have_taskset() && procs::pin_self(1);
    let (gw_cpu, mock_cpu) = if pinned {
        (Some(0), Some(1))
    } else {
        (None, None)
    };
    let placement = if pinned {
        "gateway pinned to CPU 0; mock upstream and client pinned to CPU 1 (taskset)".to_owned()
    } else {
        "no CPU pinning (taskset unavailable or --no-pin)".to_owned()
    };
    println!("{placement}");
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    std::fs::create_dir_all(&args.out).map_err(|e| e.to_string())?;
    let log = |name: &str| args.out.join(format!("{name}.log"));
    let mock = procs::spawn_mock(mock_cpu)?;
    println!("mock upstream at {}/v1", mock.url);
    if args.login_flood {
        let flood = login_flood::Flood {
            addresses: args.login_flood_addresses,
            interval: Duration::from_millis(args.login_flood_interval_ms.max(1)),
            requests: args.requests.min(3000),
        };
        let sides = login_flood::Sides {
            before: args.before.clone(),
            cpu: gw_cpu,
            dir: dir.path().to_owned(),
            mock_url: mock.url.clone(),
        };
        return login_flood::run(flood, &sides, &args.out);
    }
    if let Some(requests) = args.instructions {
        let mut sides = vec![("palisade".to_owned(), procs::palisade_bin())];
        sides.extend(
            args.before
                .clone()
                .map(|b| ("palisade-before".to_owned(), b)),
        );
        let plan = instructions::Plan {
            requests,
            concurrency: args.concurrency,
            sides,
            dir: dir.path(),
            mock_url: &mock.url,
            extra: LIMITS_ON,
        };
        return tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?
            .block_on(instructions::run(&plan, &args.out));
    }
    let measured = match args.access_log_off {
        true => format!("{LIMITS_ON}{ACCESS_LOG_OFF}"),
        false => LIMITS_ON.to_owned(),
    };
    let palisade = match &args.gateway_url {
        Some(_) => None,
        None => Some(procs::spawn_palisade(
            &procs::palisade_bin(),
            gw_cpu,
            dir.path(),
            &mock.url,
            &measured,
            &log("palisade"),
        )?),
    };
    let quiet_dir = dir.path().join("no-audit");
    let quiet = if args.audit_off {
        std::fs::create_dir_all(&quiet_dir).map_err(|e| e.to_string())?;
        let off = format!(
            "{LIMITS_ON}usage: {{ enabled: false }}\naudit: {{ file: \"\", store_in_db: false }}\n"
        );
        Some(procs::spawn_palisade(
            &procs::palisade_bin(),
            gw_cpu,
            &quiet_dir,
            &mock.url,
            &off,
            &log("palisade-audit-off"),
        )?)
    } else {
        None
    };
    let open_dir = dir.path().join("no-limits");
    let unlimited = if args.limits_off {
        std::fs::create_dir_all(&open_dir).map_err(|e| e.to_string())?;
        let off = "queue: { max_in_flight: 0 }\n";
        Some(procs::spawn_palisade(
            &procs::palisade_bin(),
            gw_cpu,
            &open_dir,
            &mock.url,
            off,
            &log("palisade-limits-off"),
        )?)
    } else {
        None
    };
    let before_dir = dir.path().join("before");
    let before = match &args.before {
        Some(bin) => {
            std::fs::create_dir_all(&before_dir).map_err(|e| e.to_string())?;
            let log = log("palisade-before");
            let p = procs::spawn_palisade(bin, gw_cpu, &before_dir, &mock.url, LIMITS_ON, &log)?;
            Some(p)
        }
        None => None,
    };
    let scale = match args.scale_out {
        true => Some(ScaleOut::start(
            &args.pg_url,
            &args.redis_url,
            gw_cpu,
            &dir.path().join("pg-redis"),
            &mock.url,
            LIMITS_ON,
            &log(scale_out::SIDE),
        )?),
        false => None,
    };
    let nginx_dir = dir.path().join("nginx");
    let nginx = if args.nginx {
        std::fs::create_dir_all(&nginx_dir).map_err(|e| e.to_string())?;
        Some(procs::spawn_nginx(gw_cpu, &nginx_dir, &mock.url)?)
    } else {
        None
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(run(
        args,
        placement,
        mock,
        palisade,
        Extra {
            quiet,
            unlimited,
            before,
            nginx,
            scale,
        },
    ))
}

/// The main Palisade's admission settings: queue at its default size, a per-IP
/// limit, and (in `setup_token`) token and project limits, all far above what the
/// bench sends so they are checked on every request and never refuse one.
const LIMITS_ON: &str = "rate_limits: { per_ip_rps: 1000000 }\n";
/// `--access-log-off`: the measured side's logging without the access line.
const ACCESS_LOG_OFF: &str = "logging: { level: info, format: json, access_log: false }\n";

/// Sides besides the main Palisade.
struct Extra {
    quiet: Option<procs::Proc>,
    unlimited: Option<procs::Proc>,
    before: Option<procs::Proc>,
    nginx: Option<procs::Proc>,
    scale: Option<ScaleOut>,
}

async fn run(
    args: Args,
    placement: String,
    mock: procs::Proc,
    palisade: Option<procs::Proc>,
    extra: Extra,
) -> Result<(), String> {
    let Extra {
        quiet,
        unlimited,
        before,
        nginx,
        scale,
    } = extra;
    let client = load::client();
    let direct = Target {
        name: "direct".into(),
        base: format!("{}/v1", mock.url),
        key: None,
    };
    let mut gateways = Vec::new();
    let palisade_pid = palisade.as_ref().map(procs::Proc::pid);
    match (&palisade, &args.gateway_url) {
        (Some(p), _) => {
            let token = setup_token(&client, &p.url, true).await?;
            gateways.push(Target {
                name: "palisade".into(),
                base: format!("{}/v1", p.url),
                key: Some(token),
            });
        }
        (None, Some(url)) => gateways.push(Target {
            name: "palisade".into(),
            base: url.clone(),
            key: args.token.clone(),
        }),
        (None, None) => {}
    }
    if let Some(q) = &quiet {
        let token = setup_token(&client, &q.url, true).await?;
        gateways.push(Target {
            name: "palisade-audit-off".into(),
            base: format!("{}/v1", q.url),
            key: Some(token),
        });
    }
    if let Some(u) = &unlimited {
        let token = setup_token(&client, &u.url, false).await?;
        gateways.push(Target {
            name: "palisade-limits-off".into(),
            base: format!("{}/v1", u.url),
            key: Some(token),
        });
    }
    if let Some(b) = &before {
        let token = setup_token(&client, &b.url, true).await?;
        gateways.push(Target {
            name: "palisade-before".into(),
            base: format!("{}/v1", b.url),
            key: Some(token),
        });
    }
    if let Some(s) = &scale {
        let token = setup_token(&client, &s.proc.url, true).await?;
        gateways.push(Target {
            name: scale_out::SIDE.into(),
            base: format!("{}/v1", s.proc.url),
            key: Some(token),
        });
    }
    if let Some(n) = &nginx {
        gateways.push(Target {
            name: "nginx".into(),
            base: format!("{}/v1", n.url),
            key: Some("bench-nginx-key".into()),
        });
    }
    for spec in &args.compare {
        gateways.push(parse_compare(spec)?);
    }
    let mut all = vec![direct.clone()];
    all.extend(gateways.iter().cloned());

    // Warm-up, and a check that every side answers.
    for t in &all {
        let run = load::sequential(&client, t, 300).await;
        if run.errors > 0 {
            return Err(format!(
                "{} fails: {}",
                t.name,
                run.first_error.unwrap_or_default()
            ));
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let window = match &scale {
        Some(s) => Some(s.begin().await?),
        None => None,
    };
    let idle_kib = palisade_pid.and_then(procs::rss_kib).map_or(0, |r| r.0);

    // c=1, interleaved in rounds so drift hits every side alike, the order
    // reversed every other round so no side always follows the same one.
    let rounds = 10;
    let mut c1: Vec<Run> = all.iter().map(|_| Run::default()).collect();
    for round in 0..rounds {
        for i in round_order(round, all.len()) {
            let n = args.requests.div_ceil(rounds);
            c1[i].merge(load::sequential(&client, &all[i], n).await);
        }
    }
    println!("c=1 done");

    // Closed loop, `--closed-rounds` interleaved slices per side, in the same
    // alternating order: a side measured right after another pays for what
    // that one left behind on the shared core (its writers catching up).
    let slice = Duration::from_secs_f64(args.seconds / args.closed_rounds.max(1) as f64);
    let mut closed: Vec<Run> = all.iter().map(|_| Run::default()).collect();
    for round in 0..args.closed_rounds {
        for i in round_order(round, all.len()) {
            closed[i].merge(load::closed_loop(&client, &all[i], args.concurrency, slice).await);
        }
    }
    println!("c={} done", args.concurrency);
    let counts = match (&scale, window) {
        (Some(s), Some(w)) => Some(
            s.count(&client, w, &all, (&c1, &closed), args.concurrency)
                .await?,
        ),
        _ => None,
    };

    let rate = args
        .rate
        .unwrap_or_else(|| closed.iter().map(Run::rps).fold(f64::MAX, f64::min) * 0.5);
    // Open loop at one fixed rate, interleaved in rounds like c=1: at equal offered
    // load, latency differences are the gateway's and not a throughput artefact.
    let open_rounds = 4;
    let slice = Duration::from_secs_f64(args.open_seconds / f64::from(open_rounds));
    let mut open: Vec<Run> = all.iter().map(|_| Run::default()).collect();
    for _ in 0..open_rounds {
        for (i, t) in all.iter().enumerate() {
            open[i].merge(load::open_loop(&client, t, rate, slice).await);
        }
    }
    for (t, r) in all.iter().zip(&open) {
        if let Some(e) = &r.first_error {
            println!("open loop: {} had {} errors, first: {e}", t.name, r.errors);
        }
    }
    println!("open loop at {rate:.0}/s done");

    let audit_ab = match (gateways.first(), quiet_target(&gateways)) {
        (Some(on), Some(off)) if palisade.is_some() => {
            let ab_rate = args.ab_rate.unwrap_or(closed[1].rps() * 0.25);
            let r = audit_ab::run(
                &client,
                audit_ab::Side {
                    target: on,
                    pid: palisade_pid,
                },
                audit_ab::Side {
                    target: off,
                    pid: quiet.as_ref().map(procs::Proc::pid),
                },
                ab_rate,
                args.ab_rounds,
                Duration::from_secs_f64(args.ab_seconds),
            )
            .await;
            println!("audit on/off A/B at {ab_rate:.0}/s done");
            Some(r)
        }
        _ => None,
    };

    // Streaming: TTFB and gaps, batches of 10 concurrent streams, interleaved.
    let mut ttfb: Vec<Vec<f64>> = all.iter().map(|_| Vec::new()).collect();
    let mut gaps: Vec<Vec<f64>> = all.iter().map(|_| Vec::new()).collect();
    for _ in 0..args.stream_samples.div_ceil(10) {
        for (i, t) in all.iter().enumerate() {
            let batch = futures_util::future::join_all(
                (0..10).map(|_| stream::stream_once(&client, t, 64, 20)),
            )
            .await;
            for s in batch.into_iter().flatten() {
                ttfb[i].push(s.ttfb_us);
                gaps[i].extend(s.gaps_us);
            }
        }
    }
    println!("streaming samples done");

    let mut many_result = None;
    let mut memory = None;
    if let (Some(pid), Some(p)) = (palisade_pid, gateways.first()) {
        let sampler_done = std::cell::Cell::new(false);
        let sampler = async {
            let mut peak = 0;
            while !sampler_done.get() {
                peak = peak.max(procs::rss_kib(pid).map_or(0, |r| r.0));
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            peak
        };
        let streams = async {
            let r = stream::many(&client, p, args.streams, 64, 20).await;
            sampler_done.set(true);
            r
        };
        let (peak, many) = tokio::join!(sampler, streams);
        // The same load straight to the mock: stalls here belong to the client and
        // mock sharing CPU 1, not to the gateway.
        let direct_many = stream::many(&client, &direct, args.streams, 64, 20).await;
        println!("{} concurrent streams done", args.streams);
        tokio::time::sleep(Duration::from_secs(2)).await;
        let after = procs::rss_kib(pid).map_or(0, |r| r.0);
        many_result = Some(ManyStreamsResult {
            streams: many.streams,
            errors: many.errors,
            stalled: many.stalled,
            max_gap_ms: many.max_gap_us / 1000.0,
            seconds: many.elapsed.as_secs_f64(),
            direct_stalled: direct_many.stalled,
            direct_max_gap_ms: direct_many.max_gap_us / 1000.0,
        });
        memory = Some(Memory {
            idle_kib,
            peak_kib: peak,
            after_kib: after,
        });
    }

    let direct_c1 = summarize(&c1[0].latencies);
    let direct_closed = summarize(&closed[0].latencies);
    let direct_open = summarize(&open[0].latencies);
    let direct_ttfb = summarize(&ttfb[0]);
    let direct_gap = summarize(&gaps[0]);
    let mut results = Vec::new();
    for (i, g) in gateways.iter().enumerate() {
        let k = i + 1;
        let c1s = summarize(&c1[k].latencies);
        let cl = summarize(&closed[k].latencies);
        let op = summarize(&open[k].latencies);
        let tt = summarize(&ttfb[k]);
        let gp = summarize(&gaps[k]);
        results.push(GatewayResult {
            name: g.name.clone(),
            c1: c1s,
            c1_added: added(&c1s, &direct_c1),
            closed_rps: closed[k].rps(),
            closed_p99_us: cl.p99,
            closed_added_p99_us: cl.p99 - direct_closed.p99,
            closed_errors: closed[k].errors + c1[k].errors,
            open_rate: rate,
            open: op,
            open_added_p99_us: op.p99 - direct_open.p99,
            open_errors: open[k].errors,
            stream_ttfb: tt,
            stream_ttfb_added: added(&tt, &direct_ttfb),
            stream_gap: gp,
            stream_gap_added_p99_us: gp.p99 - direct_gap.p99,
        });
    }
    let checks = checks(
        &results,
        audit_ab.as_ref(),
        many_result.as_ref(),
        memory.as_ref(),
    );
    let report = Report {
        date: chrono::Utc::now().format("%Y-%m-%d %H:%M UTC").to_string(),
        placement,
        features_on: vec![
            "token auth (SHA-256, registry cache)".into(),
            "project + token model allowlists".into(),
            "project + token CIDR allowlists".into(),
            "lifetime quota (atomic)".into(),
            "request ids".into(),
            "header hygiene".into(),
            "per-request tracing span (info)".into(),
            "per-IP limit (actix-governor), token and project RPM limits (GCRA)".into(),
            "request queue (512 slots)".into(),
            "audit trail and usage records".into(),
        ],
        c1_requests_per_side: args.requests,
        closed_concurrency: args.concurrency,
        closed_seconds: args.seconds,
        direct_c1,
        direct_closed_rps: closed[0].rps(),
        direct_closed_p99_us: direct_closed.p99,
        direct_open,
        direct_stream_ttfb: direct_ttfb,
        direct_stream_gap: direct_gap,
        gateways: results,
        audit_ab,
        many_streams: many_result,
        memory,
        checks,
    };
    let md = report::markdown(&report);
    println!("\n{md}");
    std::fs::write(args.out.join("bench.md"), &md).map_err(|e| e.to_string())?;
    let json = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
    std::fs::write(args.out.join("bench.json"), json).map_err(|e| e.to_string())?;
    std::fs::write(args.out.join("bench.svg"), report::svg(&report)).map_err(|e| e.to_string())?;
    println!("written to {}/bench.{{md,json,svg}}", args.out.display());
    if let Some(counts) = counts {
        let sizes = (args.requests, args.concurrency, args.seconds);
        let r = scale_out_report::build(
            &report.gateways,
            counts,
            report.date.clone(),
            report.placement.clone(),
            sizes,
        )
        .ok_or("scale-out: a side is missing")?;
        let md = scale_out_report::markdown(&r);
        println!("\n{md}");
        std::fs::write(args.out.join("scale-out.md"), &md).map_err(|e| e.to_string())?;
        let json = serde_json::to_string_pretty(&r).map_err(|e| e.to_string())?;
        std::fs::write(args.out.join("scale-out.json"), json).map_err(|e| e.to_string())?;
    }
    drop((mock, palisade, quiet, unlimited, before, nginx, scale));
    Ok(())
}

/// The order sides are measured in, round `round`: as listed in even rounds,
/// reversed in odd ones.
fn round_order(round: usize, sides: usize) -> Vec<usize> {
    match round % 2 {
        0 => (0..sides).collect(),
        _ => (0..sides).rev().collect(),
    }
}
