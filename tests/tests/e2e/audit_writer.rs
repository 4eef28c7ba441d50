//! The audit writer off the request path: a database that cannot be written does
//! not hold requests up and loses nothing, the writer threads run at their
//! priorities and hand the work over when the writer falls behind, a record's
//! wait stays bounded with every core busy, and retention deletes only what is
//! past it.

use std::time::Duration;

use sea_orm::sqlx::{Connection, sqlite::SqliteConnection};
use serde_json::{Value, json};

use crate::harness::{Mock, WAIT, chat_body, eventually, gateway, poll};

#[tokio::test]
async fn audit_locked_database_does_not_hold_requests_and_loses_nothing() {
    let mock = Mock::start("up");
    let gw = gateway()
        .provider(&mock, "[\"*\"]")
        .yaml(
            "database: { url: \"${E2E_DATABASE_URL}\", busy_timeout: 100ms }\n\
             audit: { flush_interval: 20ms }",
        )
        .start();
    let (_, _, t) = gw.project_and_token(json!({}), json!({})).await;
    assert_eq!(gw.chat(&t, chat_body("gpt-4o-mini")).await.status(), 200);

    let mut lock = gw.lock_database().await;
    const N: usize = 300;
    // Every request must finish while the lock is still held: a request path
    // that waited for the database would never get here (the bound only turns a
    // hang into a failure).
    let statuses = tokio::time::timeout(Duration::from_secs(60), gw.chat_many(&t, N, 16))
        .await
        .expect("requests waited for the locked database");
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    // The records are held, not dropped, and the failure is reported.
    assert!(gw.metric("palisade_audit_backlog").await >= N as f64);
    eventually("the failed write in the log", WAIT, async || {
        gw.logs()
            .contains("writing audit batch failed; retrying")
            .then_some(())
    })
    .await;

    sea_orm::sqlx::query("COMMIT")
        .execute(&mut lock)
        .await
        .unwrap();
    drop(lock);
    let body = gw
        .wait_for("/manage/usage?group_by=day", |b: &Value| {
            b["data"][0]["requests"] == json!(N + 1)
        })
        .await;
    assert_eq!(body["data"][0]["requests"], json!(N + 1), "{body}");
}

const SCHED_OTHER: u32 = 0;
const SCHED_IDLE: u32 = 5;

/// Scheduling policy and nice value of every thread with this name prefix, from
/// `/proc/<pid>/task/*/stat` (fields 41 and 19; 5 is `SCHED_IDLE`, 0 normal).
fn thread_sched(pid: u32, prefix: &str) -> Vec<(u32, i32)> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
    {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if !comm.trim().starts_with(prefix) {
            continue;
        }
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap();
        let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..]
            .split_whitespace()
            .collect();
        out.push((
            fields[41 - 3].parse().unwrap(),
            fields[19 - 3].parse().unwrap(),
        ));
    }
    out
}

#[tokio::test]
async fn audit_writer_threads_idle_and_catch_up_priorities() {
    let mock = Mock::start("up");
    let gw = gateway().provider(&mock, "[\"*\"]").start();
    // Each writer thread, and the SQLite connection thread each one opened (which
    // may appear a moment after the gateway listens).
    let (writer, sqlite) = settled(gw.pid(), |_, s| {
        s.iter().any(|(p, _)| *p == SCHED_IDLE) && s.iter().any(|(_, n)| *n == 10)
    })
    .await;
    assert_eq!(writer, vec![(SCHED_IDLE, 0)]);
    assert_eq!(
        thread_sched(gw.pid(), "audit-catchup"),
        vec![(SCHED_OTHER, 10)]
    );
    assert_eq!(
        thread_sched(gw.pid(), "audit-rescue"),
        vec![(SCHED_OTHER, 0)]
    );
    assert_eq!(
        sqlite.iter().filter(|(p, _)| *p == SCHED_IDLE).count(),
        1,
        "{sqlite:?}"
    );
    assert_eq!(
        sqlite
            .iter()
            .filter(|(p, n)| *p == SCHED_OTHER && *n == 10)
            .count(),
        1,
        "{sqlite:?}"
    );
}

#[tokio::test]
async fn audit_writer_behind_hands_over_to_catch_up_and_back() {
    let mock = Mock::start("up");
    let gw = gateway()
        .provider(&mock, "[\"*\"]")
        .yaml(
            "database: { url: \"${E2E_DATABASE_URL}\", busy_timeout: 100ms }\n\
             audit: { flush_interval: 20ms, buffer: 32, batch_size: 8 }",
        )
        .start();
    let (_, _, t) = gw.project_and_token(json!({}), json!({})).await;
    // The writer cannot write: the buffer fills and requests wait for room.
    let mut lock = gw.lock_database().await;
    const N: usize = 100;
    let requests = gw.chat_many(&t, N, 16);
    let unlock = async {
        // Unlocks either way: a writer that never hands over fails below.
        poll(WAIT, async || {
            gw.logs()
                .contains("the catch-up thread writes")
                .then_some(())
        })
        .await;
        sea_orm::sqlx::query("COMMIT")
            .execute(&mut lock)
            .await
            .unwrap();
    };
    let (statuses, ()) = tokio::join!(requests, unlock);
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    gw.wait_for("/manage/usage?group_by=day", |b: &Value| {
        b["data"][0]["requests"] == json!(N)
    })
    .await;
    let logs = eventually("the hand-back in the log", WAIT, async || {
        let logs = gw.logs();
        logs.contains("caught up; back to idle priority")
            .then_some(logs)
    })
    .await;
    let behind = logs
        .find("the catch-up thread writes")
        .expect("never behind");
    let caught_up = logs
        .find("caught up; back to idle priority")
        .expect("never caught up");
    assert!(behind < caught_up);
    // The catch-up thread did write batches.
    assert!(
        logs.lines()
            .any(|l| l.contains("audit batch written") && l.contains("CatchUp")),
        "{logs}"
    );
}

type Sched = Vec<(u32, i32)>;

/// The writer's and the SQLite threads' scheduling once `ready` holds (or after
/// 5 s, for the assertions to report).
async fn settled(pid: u32, ready: impl Fn(&Sched, &Sched) -> bool) -> (Sched, Sched) {
    let now = || {
        (
            thread_sched(pid, "audit-writer"),
            thread_sched(pid, "sqlx-sqlite"),
        )
    };
    poll(Duration::from_secs(5), async || {
        let (w, s) = now();
        (!w.is_empty() && ready(&w, &s)).then_some((w, s))
    })
    .await
    .unwrap_or_else(now)
}

#[tokio::test]
async fn audit_retention_days_purges_old_rows_and_keeps_recent_ones() {
    let mock = Mock::start("up");
    let mut gw = gateway()
        .provider(&mock, "[\"*\"]")
        .yaml("audit: { flush_interval: 20ms, retention_days: 30 }\nusage: { retention_days: 7 }")
        .start();
    let (_, _, t) = gw.project_and_token(json!({}), json!({})).await;
    assert_eq!(gw.chat(&t, chat_body("gpt-4o-mini")).await.status(), 200);
    gw.wait_for("/manage/usage?group_by=day", |b: &Value| {
        b["data"][0]["requests"] == json!(1)
    })
    .await;
    assert_eq!(gw.terminate(), Some(0));

    // 2,500 copies of each recent row, backdated past their retention (more than
    // one delete batch), and 10 usage rows 3 days old, which usage keeps.
    let url = format!("sqlite://{}", gw.db_path().display());
    let mut conn = SqliteConnection::connect(&url).await.unwrap();
    for (sql, age) in [
        (
            "INSERT INTO usage_records SELECT randomblob(16), $1, request_id || n, project_id, token_id, model, provider, endpoint, status, streamed, prompt_tokens, completion_tokens, total_tokens, latency_ms, ttfb_ms, client_closed, usage_estimated, instance FROM usage_records, seq WHERE n <= 2500 LIMIT 2500",
            8,
        ),
        (
            "INSERT INTO usage_records SELECT randomblob(16), $1, request_id || n, project_id, token_id, model, provider, endpoint, status, streamed, prompt_tokens, completion_tokens, total_tokens, latency_ms, ttfb_ms, client_closed, usage_estimated, instance FROM usage_records, seq WHERE n <= 10 LIMIT 10",
            3,
        ),
        (
            "INSERT INTO audit_events SELECT randomblob(16), $1, action, actor, client_ip, project_id, token_id, token_hint, request_id, result, details, instance FROM (SELECT * FROM audit_events LIMIT 1), seq WHERE n <= 2500",
            31,
        ),
    ] {
        let with_seq = format!(
            "WITH RECURSIVE seq(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM seq WHERE n < 2500) {sql}"
        );
        let when = (chrono::Utc::now() - chrono::Duration::days(age))
            .to_rfc3339_opts(chrono::SecondsFormat::Micros, false);
        // Fixed SQL from this file; only the timestamp is bound.
        sea_orm::sqlx::query(sea_orm::sqlx::AssertSqlSafe(with_seq))
            .bind(when)
            .execute(&mut conn)
            .await
            .unwrap();
    }
    drop(conn);

    gw.start_again();
    // Only the recent rows are left: the 2 audit events of the setup (project and
    // token created) and 1 + 10 usage rows.
    gw.wait_for("/manage/audit?limit=100", |b: &Value| {
        b["data"].as_array().is_some_and(|d| d.len() == 2)
    })
    .await;
    let body = gw
        .wait_for("/manage/usage?group_by=token", |b: &Value| {
            b["data"][0]["requests"] == json!(11)
        })
        .await;
    assert_eq!(body["data"].as_array().unwrap().len(), 1, "{body}");
}

#[tokio::test]
async fn audit_store_in_db_and_file_switch_their_copy_off() {
    let mock = Mock::start("up");
    // The table off: the event only reaches the JSON-lines file.
    let file_only = gateway()
        .provider(&mock, "[\"*\"]")
        .yaml("audit: { flush_interval: 20ms, store_in_db: false }")
        .start();
    let (_, _, t) = file_only.project_and_token(json!({}), json!({})).await;
    assert_eq!(
        file_only.chat(&t, chat_body("gpt-4o-mini")).await.status(),
        200
    );
    let file = file_only
        .wait_for_file("data/audit.jsonl", |f| f.lines().count() >= 2)
        .await;
    assert_eq!(file.lines().count(), 2, "{file}");
    // Usage still goes to the database; audit events do not.
    file_only
        .wait_for("/manage/usage?group_by=day", |b: &Value| {
            b["data"][0]["requests"] == json!(1)
        })
        .await;
    let (_, body) = file_only.manage("GET", "/manage/audit", None).await;
    assert_eq!(body["data"], json!([]), "{body}");

    // The file off: no file at all, the events in the table.
    let db_only = gateway()
        .provider(&mock, "[\"*\"]")
        .yaml("audit: { flush_interval: 20ms, file: \"\" }")
        .start();
    db_only.project_and_token(json!({}), json!({})).await;
    db_only
        .wait_for("/manage/audit", |b: &Value| {
            b["data"].as_array().is_some_and(|d| d.len() == 2)
        })
        .await;
    assert!(!db_only.dir.path().join("data/audit.jsonl").exists());
}
