//! Storage faults injected for real: the database and the audit file sit on small
//! tmpfs mounts ([`SmallFs`]) that the test fills with a filler file under load
//! and then frees. Whatever happens in between, the gateway must say so (`/ready`,
//! `/metrics`), refuse at once instead of hanging (503 `service_unavailable` with
//! `retry-after`), never answer a management write it did not apply, and recover
//! by itself with every record of every 200 written, in the database and in the
//! audit file, with no torn line.

// Concurrent clients are spawned tasks here; the rule against spawning is for
// server code.
#![allow(clippy::disallowed_methods)]

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::time::Instant;

use crate::harness::smallfs::SmallFs;
use crate::harness::{
    Gateway, Mock, assert_manage_error, assert_proxy_error, chat_body, eventually, gateway,
};

/// How long a condition may take here (a recovery includes backoff).
const STORAGE_WAIT: Duration = Duration::from_secs(20);

/// Fails instead of hanging (a hang is one of the faults under test).
async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .unwrap_or_else(|_| panic!("{what} hung"))
}

/// The whole scenario, bounded: whatever hangs fails the test.
async fn within_test(scenario: impl Future<Output = ()>) {
    tokio::time::timeout(Duration::from_secs(180), scenario)
        .await
        .expect("the scenario hung");
}

async fn manage(gw: &Gateway, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    within(&format!("{method} {path}"), gw.manage(method, path, body)).await
}

async fn ready(gw: &Gateway) -> (u16, Value) {
    within("/ready", async {
        let resp = gw.get("/ready").send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap())
    })
    .await
}

/// A refusal as the client saw it: status, body, `retry-after`.
type Refusal = (u16, Value, Option<String>);

/// Concurrent chat completions until stopped, counting what came back.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    refused: Arc<AtomicUsize>,
    /// The first 503 (status, body, retry-after) and the slowest 503's latency.
    first_refusal: Arc<Mutex<Option<Refusal>>>,
    slowest_refusal: Arc<Mutex<Duration>>,
    other: Arc<Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(gw: &Gateway, token: &str, workers: usize) -> Self {
        let mut load = Load {
            stop: Arc::default(),
            ok: Arc::default(),
            refused: Arc::default(),
            first_refusal: Arc::default(),
            slowest_refusal: Arc::default(),
            other: Arc::default(),
            tasks: Vec::new(),
        };
        for _ in 0..workers {
            let (url, client) = (
                format!("{}/v1/chat/completions", gw.url),
                gw.client().clone(),
            );
            let token = token.to_owned();
            let (stop, ok, refused) = (
                Arc::clone(&load.stop),
                Arc::clone(&load.ok),
                Arc::clone(&load.refused),
            );
            let (first, slowest, other) = (
                Arc::clone(&load.first_refusal),
                Arc::clone(&load.slowest_refusal),
                Arc::clone(&load.other),
            );
            load.tasks.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let t0 = Instant::now();
                    let req = client.post(&url).bearer_auth(&token);
                    let resp = match req.json(&chat_body("gpt-4o-mini")).send().await {
                        Ok(r) => r,
                        Err(e) => {
                            other.lock().unwrap().push(e.to_string());
                            continue;
                        }
                    };
                    let status = resp.status().as_u16();
                    let retry = resp
                        .headers()
                        .get("retry-after")
                        .map(|v| v.to_str().unwrap().to_owned());
                    let body = resp.bytes().await;
                    match (status, body) {
                        (200, Ok(_)) => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        (503, Ok(b)) => {
                            refused.fetch_add(1, Ordering::Relaxed);
                            let took = t0.elapsed();
                            {
                                let mut s = slowest.lock().unwrap();
                                *s = (*s).max(took);
                            }
                            let v: Value = serde_json::from_slice(&b).unwrap_or(Value::Null);
                            first.lock().unwrap().get_or_insert((status, v, retry));
                            // A client would honour retry-after; a short pause
                            // keeps the refusals from drowning the log.
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        (s, b) => other.lock().unwrap().push(format!("{s}: {b:?}")),
                    }
                }
            }));
        }
        load
    }

    fn ok(&self) -> usize {
        self.ok.load(Ordering::Relaxed)
    }

    /// Stops the clients; returns how many got 200.
    async fn stop(self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            tokio::time::timeout(Duration::from_secs(30), t)
                .await
                .expect("a client hung")
                .unwrap();
        }
        let other = self.other.lock().unwrap().clone();
        assert!(other.is_empty(), "unexpected answers: {other:?}");
        self.ok.load(Ordering::Relaxed)
    }
}

/// Ids of every audit event in the database, through `GET /manage/audit`.
async fn audit_ids_in_db(gw: &Gateway) -> BTreeSet<String> {
    let mut ids = BTreeSet::new();
    let mut cursor = String::new();
    loop {
        let (status, page) =
            manage(gw, "GET", &format!("/manage/audit?limit=500{cursor}"), None).await;
        assert_eq!(status, 200, "{page}");
        for e in page["data"].as_array().unwrap() {
            ids.insert(e["id"].as_str().unwrap().to_owned());
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = format!("&cursor={c}"),
            None => return ids,
        }
    }
}

/// Ids of the audit file's events; fails on a torn or unparsable line.
fn audit_ids_in_file(path: &Path) -> BTreeSet<String> {
    let text = std::fs::read_to_string(path).unwrap();
    assert!(
        text.is_empty() || text.ends_with('\n'),
        "the audit file ends in a partial line"
    );
    let mut ids = BTreeSet::new();
    for line in text.lines() {
        let v: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("torn or corrupt audit line ({e}): {line}"));
        assert!(
            ids.insert(v["id"].as_str().unwrap().to_owned()),
            "duplicate line: {line}"
        );
    }
    ids
}

async fn metric(gw: &Gateway, name: &str) -> f64 {
    within("/metrics", gw.metric(name)).await
}

/// Waits until nothing waits in the audit writer's hands.
async fn audit_drained(gw: &Gateway) {
    eventually(
        "the audit backlog to be written",
        STORAGE_WAIT,
        async || (metric(gw, "palisade_audit_waiting").await == 0.0).then_some(()),
    )
    .await;
}

async fn usage_requests(gw: &Gateway, token_id: &str) -> Value {
    let (status, body) = gw
        .manage(
            "GET",
            &format!("/manage/usage?group_by=token&token_id={token_id}"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body["data"][0].clone()
}

/// A gateway whose directory `sub` of its data directory is a tmpfs of `size`
/// bytes: the fs, the mount point, the gateway and its mock upstream (bind it by
/// name: dropping it stops the upstream).
type OnSmallFs = (SmallFs, std::path::PathBuf, Gateway, Mock);

fn start_on_small_fs(sub: &str, size: u64, yaml: &str) -> OnSmallFs {
    let dir = tempfile::tempdir().unwrap();
    let mount = dir.path().join(sub);
    let mut fs = SmallFs::mount(&[(&mount, size)]);
    let mock = Mock::start("up");
    let mut gw = gateway()
        .dir(dir)
        .wrap(fs.wrapper())
        .provider(&mock, "[\"*\"]");
    if !yaml.is_empty() {
        gw = gw.yaml(yaml);
    }
    let gw = gw.start();
    fs.attach(gw.pid());
    (fs, mount, gw, mock)
}

#[tokio::test]
async fn storage_full_disk_refuses_fast_loses_nothing_and_recovers_without_restart() {
    // A small buffer, so it fills up during the outage.
    let on = start_on_small_fs("data", 8 << 20, "audit: { buffer: 64 }");
    within_test(full_disk(on)).await;
}

async fn full_disk(on: OnSmallFs) {
    let (fs, data, gw, _mock) = on;
    let (project, token_id, token) = gw.project_and_token(json!({}), json!({})).await;
    let (victim, victim_secret) = gw.create_token(&project, json!({})).await;
    let load = Load::start(&gw, &token, 8);
    eventually("traffic", STORAGE_WAIT, async || {
        (load.ok() >= 300).then_some(())
    })
    .await;

    // The disk fills up under load.
    let filler = fs.fill(&data);
    let (_, body) = eventually("/ready to fail", STORAGE_WAIT, async || {
        let (status, body) = ready(&gw).await;
        (status == 503).then_some((status, body))
    })
    .await;
    assert_eq!(body["checks"]["writes"], json!(false), "{body}");
    assert!(metric(&gw, "palisade_db_write_errors_total").await > 0.0);
    assert_eq!(metric(&gw, "palisade_storage_failing").await, 1.0);
    // Once the buffer is full, /v1 is refused at once, not left hanging.
    eventually("a 503 on /v1", STORAGE_WAIT, async || {
        (load.refused.load(Ordering::Relaxed) > 0).then_some(())
    })
    .await;
    let (status, body, retry) = load.first_refusal.lock().unwrap().clone().unwrap();
    assert_proxy_error(status, &body, 503, "service_unavailable");
    assert_eq!(retry.as_deref(), Some("1"));
    let (_, body) = ready(&gw).await;
    assert_eq!(body["checks"]["records"], json!(false), "{body}");
    assert!(metric(&gw, "palisade_audit_waiting").await > 0.0);
    assert!(metric(&gw, "palisade_audit_oldest_record_seconds").await > 0.0);

    // A revoke during the outage answers fast, and only what it did.
    let t0 = Instant::now();
    let (revoke, body) = manage(&gw, "DELETE", &format!("/manage/tokens/{victim}"), None).await;
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "revoke took {:?}",
        t0.elapsed()
    );
    if revoke != 204 {
        assert_manage_error(revoke, &body, 503, "service_unavailable");
    }
    // The writer keeps retrying while the disk stays full.
    let errors = metric(&gw, "palisade_db_write_errors_total").await;
    eventually("retries", STORAGE_WAIT, async || {
        (metric(&gw, "palisade_db_write_errors_total").await >= errors + 3.0).then_some(())
    })
    .await;

    // Space comes back: the gateway recovers by itself, same process.
    fs.free(&filler);
    eventually("/ready to recover", STORAGE_WAIT, async || {
        (ready(&gw).await.0 == 200).then_some(())
    })
    .await;
    let t0 = Instant::now();
    let (status, body) = gw
        .manage(
            "POST",
            "/manage/tokens",
            Some(json!({ "project_id": project })),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert!(t0.elapsed() < Duration::from_secs(5));
    assert!(
        Path::new(&format!("/proc/{}", gw.pid())).exists(),
        "restarted"
    );
    assert_eq!(metric(&gw, "palisade_storage_failing").await, 0.0);

    // Every 200 has its usage row.
    let slowest = *load.slowest_refusal.lock().unwrap();
    assert!(
        slowest < Duration::from_secs(2),
        "a refusal took {slowest:?}"
    );
    let ok = load.stop().await;
    audit_drained(&gw).await;
    let usage = usage_requests(&gw, &token_id).await;
    assert_eq!(usage["requests"], json!(ok), "{usage}");
    assert_eq!(usage["errors"], json!(0), "{usage}");

    // The revoke did what it answered, in the cache and in the database.
    let victim_chat = gw.chat(&victim_secret, chat_body("gpt-4o-mini")).await;
    let (_, row) = gw
        .manage("GET", &format!("/manage/tokens/{victim}"), None)
        .await;
    if revoke == 204 {
        assert_eq!(victim_chat.status(), 401);
        assert!(row["revoked_at"].is_string(), "{row}");
    } else {
        assert_eq!(victim_chat.status(), 200);
        assert!(row["revoked_at"].is_null(), "{row}");
    }

    // Every audit event is in both places, and the file has no torn line.
    audit_drained(&gw).await;
    let in_db = audit_ids_in_db(&gw).await;
    let in_file = audit_ids_in_file(&fs.path(&data.join("audit.jsonl")));
    assert!(in_db.len() >= 4, "{in_db:?}");
    assert_eq!(in_file, in_db);
}

#[tokio::test]
async fn storage_full_audit_file_gets_every_event_once_space_returns() {
    let on = start_on_small_fs("audit", 1 << 20, AUDIT_ON_ITS_OWN_FS);
    within_test(full_audit_file(on)).await;
}

const AUDIT_ON_ITS_OWN_FS: &str =
    "audit: { file: audit/audit.jsonl, flush_interval: 50ms, buffer: 256 }";

async fn full_audit_file(on: OnSmallFs) {
    let (fs, audit, gw, _mock) = on;
    let file = fs.path(&audit.join("audit.jsonl"));
    // Denials of a known token are audited one by one (unknown tokens' are
    // aggregated per address and window).
    let (_, _, token) = gw
        .project_and_token(json!({}), json!({"allowed_models": ["another-model"]}))
        .await;
    audit_drained(&gw).await;

    let filler = fs.fill(&audit);
    // Management actions and denials, each with its audit event, while the file
    // cannot take them (the database can).
    let mut created = Vec::new();
    for i in 0..20 {
        let p = gw
            .create_project(
                json!({ "name": format!("during-{i}"), "description": "x".repeat(200) }),
            )
            .await;
        created.push(p["id"].as_str().unwrap().to_owned());
        let resp = gw.chat(&token, chat_body("gpt-4o-mini")).await;
        assert_eq!(resp.status(), 403);
    }
    let (_, body) = eventually("/ready to fail", STORAGE_WAIT, async || {
        let (status, body) = ready(&gw).await;
        (status == 503).then_some((status, body))
    })
    .await;
    assert_eq!(body["checks"]["writes"], json!(false), "{body}");
    assert_eq!(metric(&gw, "palisade_storage_failing").await, 1.0);
    assert!(metric(&gw, "palisade_audit_waiting").await > 0.0);
    let partial = std::fs::read_to_string(&file).unwrap();
    assert!(
        partial.is_empty() || partial.ends_with('\n'),
        "torn line during the outage"
    );

    fs.free(&filler);
    eventually("/ready to recover", STORAGE_WAIT, async || {
        (ready(&gw).await.0 == 200).then_some(())
    })
    .await;
    audit_drained(&gw).await;
    let in_file = audit_ids_in_file(&file);
    let in_db = audit_ids_in_db(&gw).await;
    assert_eq!(in_file, in_db);
    // 1 + 1 before the fault, then 20 projects and 20 denials.
    assert_eq!(in_file.len(), 42);
    let text = std::fs::read_to_string(&file).unwrap();
    for id in &created {
        assert!(
            text.contains(id.as_str()),
            "project {id} missing from the file"
        );
    }
}

#[tokio::test]
async fn storage_full_disk_at_shutdown_reports_what_was_not_written() {
    let on = start_on_small_fs("data", 4 << 20, "");
    within_test(full_disk_at_shutdown(on)).await;
}

async fn full_disk_at_shutdown(on: OnSmallFs) {
    let (fs, data, mut gw, _mock) = on;
    let (_, _, token) = gw.project_and_token(json!({}), json!({})).await;
    audit_drained(&gw).await;
    fs.fill(&data);
    // Accepted while the buffer has room; their records wait.
    let statuses = within("chats", gw.chat_many(&token, 20, 4)).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    eventually("/ready to fail", STORAGE_WAIT, async || {
        (ready(&gw).await.0 == 503).then_some(())
    })
    .await;
    assert_eq!(gw.terminate(), Some(0));
    let logs = gw.logs();
    let line = logs
        .lines()
        .find(|l| l.contains("audit records NOT written at shutdown"))
        .unwrap_or_else(|| panic!("no report of the lost records:\n{logs}"));
    let report: Value = serde_json::from_str(line).unwrap();
    assert_eq!(report["level"], "ERROR", "{line}");
    assert_eq!(report["usage_records"], json!(20), "{line}");
    assert!(!logs.contains("\"audit records written\""), "{logs}");
}
