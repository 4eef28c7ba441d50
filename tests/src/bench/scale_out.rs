//! `--scale-out`: a second release Palisade on PostgreSQL + Redis beside the usual
//! SQLite one, measured in the same interleaved run, and the evidence for issue
//! 18's round-trip targets:
//!
//! * PostgreSQL: `pg_stat_database` deltas of the side's own database (created
//!   for the run, dropped at the end) over the measured window, less the
//!   background rate seen over an idle window of the same run (the registry's
//!   revision poll, the audit writer's batches, the usage write-back).
//! * Redis: `INFO commandstats` deltas over the same window (the Redis is
//!   shared, so less its idle rate too), and an exact count from a `MONITOR`
//!   window afterwards: every top-level command sent from the gateway's own
//!   sockets (found in `/proc`), per admitted request.
//!
//! Keys live under a prefix of the run's own and are deleted at the end.

// Progress and clean-up lines are part of the bench's output.
#![allow(clippy::print_stdout)]

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

use super::load::{self, Run, Target};
use super::procs::{self, Proc};
use super::resp::{self, Conn};

pub const SIDE: &str = "palisade-pg-redis";

/// PostgreSQL's statistics reach `pg_stat_database` when a backend goes idle,
/// at most once a second, and from a backend that stays idle only after 10 s
/// (`PGSTAT_IDLE_INTERVAL`): a snapshot taken this long after the last activity
/// holds all of it.
const STATS_SETTLE: Duration = Duration::from_secs(11);

/// A database of the run's own, dropped (with its connections) when this is.
pub struct PgDatabase {
    server: String,
    pub name: String,
}

fn psql(url: &str, sql: &str) -> Result<String, String> {
    let out = Command::new("psql")
        .args([url, "-v", "ON_ERROR_STOP=1", "-XAtqc", sql])
        .output()
        .map_err(|e| format!("cannot run psql (apt-get install postgresql-client): {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "psql: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

impl PgDatabase {
    pub fn create(server: &str) -> Result<PgDatabase, String> {
        let server = server.trim_end_matches('/').to_owned();
        let name = format!("palisade_bench_{}", std::process::id());
        psql(
            &format!("{server}/postgres"),
            &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
        )?;
        psql(
            &format!("{server}/postgres"),
            &format!("CREATE DATABASE {name}"),
        )?;
        Ok(PgDatabase { server, name })
    }

    pub fn url(&self) -> String {
        format!("{}/{}", self.server, self.name)
    }

    /// Read from the `postgres` database, so the query is not counted in ours.
    fn stats(&self) -> Result<PgStats, String> {
        let row = psql(
            &format!("{}/postgres", self.server),
            &format!(
                "SELECT xact_commit + xact_rollback, tup_returned, tup_fetched, tup_inserted, \
                 tup_updated, tup_deleted FROM pg_stat_database WHERE datname = '{}'",
                self.name
            ),
        )?;
        let v: Vec<f64> = row.split('|').filter_map(|x| x.parse().ok()).collect();
        match v[..] {
            [xacts, returned, fetched, inserted, updated, deleted] => Ok(PgStats {
                xacts,
                returned,
                fetched,
                inserted,
                updated,
                deleted,
            }),
            _ => Err(format!("pg_stat_database: unexpected row {row:?}")),
        }
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        if let Err(e) = psql(&format!("{}/postgres", self.server), &sql) {
            println!("could not drop database {}: {e}", self.name);
        }
    }
}

/// The run's Redis keys, deleted when this is dropped.
pub struct RedisKeys {
    addr: String,
    pub url: String,
    pub prefix: String,
}

impl Drop for RedisKeys {
    fn drop(&mut self) {
        match Conn::connect(&self.addr).and_then(|mut c| c.delete_prefix(&self.prefix)) {
            Ok(n) => println!("deleted {n} Redis keys under {}", self.prefix),
            Err(e) => println!("could not delete Redis keys under {}: {e}", self.prefix),
        }
    }
}

/// The PostgreSQL + Redis Palisade and what it uses. Fields drop in order: the
/// gateway stops before its database and keys go.
pub struct ScaleOut {
    pub proc: Proc,
    pub db: PgDatabase,
    pub redis: RedisKeys,
}

impl ScaleOut {
    /// `limits` is the admission config both Palisades share.
    pub fn start(
        pg_server: &str,
        redis_url: &str,
        cpu: Option<usize>,
        dir: &Path,
        mock_url: &str,
        limits: &str,
        log: &Path,
    ) -> Result<ScaleOut, String> {
        let addr = resp::address(redis_url)?;
        Conn::connect(&addr)?.call(&["PING"])?;
        let db = PgDatabase::create(pg_server)?;
        let redis = RedisKeys {
            addr,
            url: redis_url.to_owned(),
            prefix: format!("palisade-bench-{}:", std::process::id()),
        };
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        let extra = format!(
            "{limits}database: {{ url: \"{}\" }}\nredis: {{ url: \"{}\", key_prefix: \"{}\" }}\n",
            db.url(),
            redis.url,
            redis.prefix
        );
        let proc = procs::spawn_palisade(&procs::palisade_bin(), cpu, dir, mock_url, &extra, log)?;
        Ok(ScaleOut { proc, db, redis })
    }

    fn snapshot(&self) -> Result<Snapshot, String> {
        Ok(Snapshot {
            at: Instant::now(),
            pg: self.db.stats()?,
            redis: Conn::connect(&self.redis.addr)?
                .command_calls()?
                .into_iter()
                .collect(),
        })
    }

    /// Before the measured phases: an idle window (background rates), ending
    /// where the measured window starts.
    pub async fn begin(&self) -> Result<Window, String> {
        tokio::time::sleep(STATS_SETTLE).await;
        let s0 = self.snapshot()?;
        tokio::time::sleep(STATS_SETTLE).await;
        let s1 = self.snapshot()?;
        Ok(Window { idle: (s0, s1) })
    }

    /// After the measured phases, in which this side served `served` requests
    /// (all admitted: its limits never bind).
    async fn finish(&self, w: Window, served: usize) -> Result<PathCounts, String> {
        tokio::time::sleep(STATS_SETTLE).await;
        let s2 = self.snapshot()?;
        let (s0, s1) = w.idle;
        let idle_s = s1.at.duration_since(s0.at).as_secs_f64();
        let load_s = s2.at.duration_since(s1.at).as_secs_f64();
        let n = served.max(1) as f64;
        // What the window saw, less the idle window's rate over its length.
        let net = |idle: f64, load: f64| (load - idle / idle_s * load_s) / n;
        let pg = |f: fn(&PgStats) -> f64| {
            let (i, l) = (f(&s1.pg) - f(&s0.pg), f(&s2.pg) - f(&s1.pg));
            Count {
                window: l,
                idle_rate_per_s: i / idle_s,
                per_request: net(i, l),
            }
        };
        let calls = |s: &Snapshot, c: &str| s.redis.get(c).copied().unwrap_or(0) as f64;
        let redis = ["evalsha", "eval", "ping", "time", "get", "set", "incr"]
            .iter()
            .map(|&c| {
                let (i, l) = (calls(&s1, c) - calls(&s0, c), calls(&s2, c) - calls(&s1, c));
                (
                    c.to_owned(),
                    Count {
                        window: l,
                        idle_rate_per_s: i / idle_s,
                        per_request: net(i, l),
                    },
                )
            })
            .collect();
        Ok(PathCounts {
            served,
            idle_seconds: idle_s,
            window_seconds: load_s,
            pg_transactions: pg(|s| s.xacts),
            pg_rows_read: pg(|s| s.returned + s.fetched),
            pg_rows_written: pg(|s| s.inserted + s.updated + s.deleted),
            redis_commandstats: redis,
            monitor: None,
        })
    }

    /// The evidence: PostgreSQL and Redis counts over the c=1 and c=N phases
    /// just measured (`runs`, indexed like `all`), then a short `MONITOR`
    /// window on this side alone.
    pub async fn count(
        &self,
        client: &reqwest::Client,
        window: Window,
        all: &[Target],
        runs: (&[Run], &[Run]),
        concurrency: usize,
    ) -> Result<PathCounts, String> {
        let i = all
            .iter()
            .position(|t| t.name == SIDE)
            .ok_or("scale-out side missing")?;
        let served = runs.0[i].latencies.len() + runs.1[i].latencies.len();
        let mut counts = self.finish(window, served).await?;
        counts.monitor = Some(self.monitor(client, &all[i], 500, concurrency, 1.0).await?);
        println!("scale-out round trips counted");
        Ok(counts)
    }

    /// A window under `MONITOR`: `requests` at c=1, then c=`concurrency` for
    /// `seconds`, to this side only; every top-level command from the
    /// gateway's sockets, counted by name.
    async fn monitor(
        &self,
        client: &reqwest::Client,
        target: &Target,
        requests: usize,
        concurrency: usize,
        seconds: f64,
    ) -> Result<MonitorCount, String> {
        let port = self
            .redis
            .addr
            .rsplit(':')
            .next()
            .and_then(|p| p.parse::<u16>().ok())
            .ok_or("redis port")?;
        let mut sockets = gateway_sockets(self.proc.pid(), port);
        let mut mon = Conn::connect(&self.redis.addr)?;
        // A second handle on the socket, to end the reader's blocking read.
        let stop = mon.try_clone_stream()?;
        // Quiet stretches are not the end: only `stop` ends the reader.
        let _ = stop.set_read_timeout(None);
        mon.send(&["MONITOR"])?;
        mon.line()?;
        let reader = std::thread::spawn(move || {
            let mut seen: Vec<(String, String)> = Vec::new();
            while let Ok(line) = mon.line() {
                if let Some(c) = parse_monitor(&line) {
                    seen.push(c);
                }
            }
            seen
        });
        let mut run = load::sequential(client, target, requests).await;
        run.merge(
            load::closed_loop(
                client,
                target,
                concurrency,
                Duration::from_secs_f64(seconds),
            )
            .await,
        );
        // The last replies and their MONITOR lines leave Redis together; give
        // the lines time to arrive before closing.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let _ = stop.shutdown(std::net::Shutdown::Both);
        sockets.extend(gateway_sockets(self.proc.pid(), port));
        let seen = reader.join().map_err(|_| "MONITOR reader panicked")?;
        let mut commands: BTreeMap<String, u64> = BTreeMap::new();
        for (addr, cmd) in seen {
            if sockets.contains(&addr) {
                *commands.entry(cmd).or_default() += 1;
            }
        }
        let admitted = run.latencies.len();
        let scripts = commands.get("evalsha").copied().unwrap_or(0)
            + commands.get("eval").copied().unwrap_or(0);
        Ok(MonitorCount {
            admitted,
            errors: run.errors,
            seconds: run.elapsed.as_secs_f64(),
            gateway_connections: sockets.len(),
            commands,
            scripts_per_request: scripts as f64 / admitted.max(1) as f64,
        })
    }
}

/// `(client address, command)` of a top-level command in a `MONITOR` line:
/// `+1701388800.123456 [0 127.0.0.1:54321] "EVALSHA" "…"`; commands a script
/// runs (`[0 lua]`) are not round trips and are left out.
pub fn parse_monitor(line: &str) -> Option<(String, String)> {
    let open = line.find('[')?;
    let close = open + line[open..].find(']')?;
    let client = line[open + 1..close].split_whitespace().nth(1)?;
    if client == "lua" {
        return None;
    }
    let rest = &line[close + 1..];
    let cmd = rest.split('"').nth(1)?;
    Some((client.to_owned(), cmd.to_ascii_lowercase()))
}

/// Local addresses (`127.0.0.1:port`) of `pid`'s TCP connections to `port`.
pub fn gateway_sockets(pid: u32, port: u16) -> std::collections::BTreeSet<String> {
    let inodes: std::collections::BTreeSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter_map(|l| {
            l.to_string_lossy()
                .strip_prefix("socket:[")
                .and_then(|s| s.strip_suffix(']'))
                .map(str::to_owned)
        })
        .collect();
    let table = std::fs::read_to_string(format!("/proc/{pid}/net/tcp")).unwrap_or_default();
    table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (local, remote, inode) = (f.get(1)?, f.get(2)?, f.get(9)?);
            let remote_port = u16::from_str_radix(remote.split(':').nth(1)?, 16).ok()?;
            (remote_port == port && inodes.contains(*inode)).then(|| ipv4(local))?
        })
        .collect()
}

/// `0100007F:D431` (little-endian address, port) as `127.0.0.1:54321`.
fn ipv4(hex: &str) -> Option<String> {
    let (a, p) = hex.split_once(':')?;
    let a = u32::from_str_radix(a, 16).ok()?.to_le_bytes();
    let p = u16::from_str_radix(p, 16).ok()?;
    Some(format!("{}.{}.{}.{}:{p}", a[0], a[1], a[2], a[3]))
}

struct Snapshot {
    at: Instant,
    pg: PgStats,
    redis: BTreeMap<String, u64>,
}

struct PgStats {
    xacts: f64,
    returned: f64,
    fetched: f64,
    inserted: f64,
    updated: f64,
    deleted: f64,
}

/// The idle window's two snapshots.
pub struct Window {
    idle: (Snapshot, Snapshot),
}

#[derive(Debug, Serialize)]
pub struct Count {
    /// Over the measured window.
    pub window: f64,
    /// Over the idle window, per second.
    pub idle_rate_per_s: f64,
    /// (window − idle rate × window length) / requests served.
    pub per_request: f64,
}

#[derive(Debug, Serialize)]
pub struct MonitorCount {
    pub admitted: usize,
    pub errors: u64,
    pub seconds: f64,
    pub gateway_connections: usize,
    /// Top-level commands from the gateway's sockets, by name.
    pub commands: BTreeMap<String, u64>,
    pub scripts_per_request: f64,
}

#[derive(Debug, Serialize)]
pub struct PathCounts {
    pub served: usize,
    pub idle_seconds: f64,
    pub window_seconds: f64,
    pub pg_transactions: Count,
    pub pg_rows_read: Count,
    pub pg_rows_written: Count,
    /// Server-wide (commands scripts run included), less the idle rate.
    pub redis_commandstats: BTreeMap<String, Count>,
    pub monitor: Option<MonitorCount>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monitor_lines() {
        let l = r#"+1701388800.123456 [0 127.0.0.1:54321] "EVALSHA" "ab" "3""#;
        assert_eq!(
            parse_monitor(l),
            Some(("127.0.0.1:54321".into(), "evalsha".into()))
        );
        assert_eq!(parse_monitor(r#"+1.2 [0 lua] "TIME""#), None);
        assert_eq!(parse_monitor("+OK"), None);
    }

    #[test]
    fn proc_addresses() {
        assert_eq!(ipv4("0100007F:18EB").as_deref(), Some("127.0.0.1:6379"));
    }
}
