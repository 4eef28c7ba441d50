//! `--scale-out`'s table: one instance on SQLite against one on PostgreSQL +
//! Redis, same run, and the round trips counted per admitted request.

use std::fmt::Write as _;

use serde::Serialize;

use super::report::GatewayResult;
use super::scale_out::{Count, PathCounts, SIDE};

#[derive(Debug, Serialize)]
pub struct Row {
    pub name: String,
    pub c1_added_p50_us: f64,
    pub c1_added_p99_us: f64,
    pub closed_rps: f64,
    pub closed_p99_us: f64,
    pub errors: u64,
}

#[derive(Debug, Serialize)]
pub struct ScaleOutReport {
    pub date: String,
    pub placement: String,
    pub c1_requests_per_side: usize,
    pub concurrency: usize,
    pub closed_seconds: f64,
    pub sqlite: Row,
    pub pg_redis: Row,
    /// PostgreSQL + Redis added p50 at c=1 over SQLite's (target ≤ 1.5).
    pub added_p50_ratio: f64,
    pub added_p99_ratio: f64,
    pub rps_ratio: f64,
    pub counts: PathCounts,
}

fn row(g: &GatewayResult, label: &str) -> Row {
    Row {
        name: label.to_owned(),
        c1_added_p50_us: g.c1_added.p50,
        c1_added_p99_us: g.c1_added.p99,
        closed_rps: g.closed_rps,
        closed_p99_us: g.closed_p99_us,
        errors: g.closed_errors + g.open_errors,
    }
}

/// `None` unless both sides ran.
pub fn build(
    results: &[GatewayResult],
    counts: PathCounts,
    date: String,
    placement: String,
    (requests, concurrency, seconds): (usize, usize, f64),
) -> Option<ScaleOutReport> {
    let sqlite = results.iter().find(|g| g.name == "palisade")?;
    let pg = results.iter().find(|g| g.name == SIDE)?;
    Some(ScaleOutReport {
        date,
        placement,
        c1_requests_per_side: requests,
        concurrency,
        closed_seconds: seconds,
        added_p50_ratio: pg.c1_added.p50 / sqlite.c1_added.p50,
        added_p99_ratio: pg.c1_added.p99 / sqlite.c1_added.p99,
        rps_ratio: pg.closed_rps / sqlite.closed_rps,
        sqlite: row(sqlite, "SQLite"),
        pg_redis: row(pg, "PostgreSQL + Redis"),
        counts,
    })
}

fn us(v: f64) -> String {
    if v.abs() >= 1000.0 {
        format!("{:.2} ms", v / 1000.0)
    } else {
        format!("{v:.0} µs")
    }
}

pub fn markdown(r: &ScaleOutReport) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "Scale-out benchmark {} — {}\n\n\
         | one instance, same run | c=1 added p50 | c=1 added p99 | c={} RPS | c={} p99 | errors |\n\
         |---|---|---|---|---|---|",
        r.date, r.placement, r.concurrency, r.concurrency
    );
    for x in [&r.sqlite, &r.pg_redis] {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {:.0} | {} | {} |",
            x.name,
            us(x.c1_added_p50_us),
            us(x.c1_added_p99_us),
            x.closed_rps,
            us(x.closed_p99_us),
            x.errors
        );
    }
    let verdict = match r.added_p50_ratio <= 1.5 {
        true => "met",
        false => "MISSED",
    };
    let _ = writeln!(
        s,
        "\nPostgreSQL + Redis / SQLite: c=1 added p50 ×{:.2} (target ≤ 1.5: {verdict}), \
         added p99 ×{:.2}, c={} RPS {:.0} % ({} c=1 requests per side, c={} for {:.0} s per side).\n",
        r.added_p50_ratio,
        r.added_p99_ratio,
        r.concurrency,
        100.0 * r.rps_ratio,
        r.c1_requests_per_side,
        r.concurrency,
        r.closed_seconds
    );
    let c = &r.counts;
    let _ = writeln!(
        s,
        "Per admitted request on PostgreSQL + Redis, measured window (c=1 and c={} phases, \
         {} requests served by this side over {:.1} s) net of the rate seen in an idle \
         window of {:.1} s:\n\n\
         | counted | in window | idle rate | per request |\n|---|---|---|---|",
        r.concurrency, c.served, c.window_seconds, c.idle_seconds
    );
    let line = |s: &mut String, what: &str, x: &Count| {
        let _ = writeln!(
            s,
            "| {what} | {:.0} | {:.2}/s | {:.4} |",
            x.window, x.idle_rate_per_s, x.per_request
        );
    };
    line(
        &mut s,
        "PostgreSQL transactions (pg_stat_database)",
        &c.pg_transactions,
    );
    line(&mut s, "PostgreSQL rows read", &c.pg_rows_read);
    line(
        &mut s,
        "PostgreSQL rows written (batched)",
        &c.pg_rows_written,
    );
    for (cmd, x) in &c.redis_commandstats {
        line(
            &mut s,
            &format!(
                "Redis `{cmd}` (commandstats, server-wide{})",
                match cmd.as_str() {
                    "evalsha" | "eval" | "ping" => "",
                    _ => "; run inside the script, not a round trip",
                }
            ),
            x,
        );
    }
    if let Some(m) = &c.monitor {
        let cmds: Vec<String> = m.commands.iter().map(|(k, v)| format!("{k} {v}")).collect();
        let _ = writeln!(
            s,
            "\nMONITOR window ({} admitted, {} errors, {:.1} s; {} gateway connections to Redis): \
             top-level commands from the gateway: {}; scripts per admitted request: {:.4}.",
            m.admitted,
            m.errors,
            m.seconds,
            m.gateway_connections,
            if cmds.is_empty() {
                "none".to_owned()
            } else {
                cmds.join(", ")
            },
            m.scripts_per_request
        );
    }
    s
}
