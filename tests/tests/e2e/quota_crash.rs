//! Lifetime quotas across crashes and restarts: a token's `max_requests` holds
//! across a SIGKILL (request leases, `docs/operations.md`), and a clean restart
//! costs no quota.

// The load runs as tasks of the test's own runtime, so the SIGKILL can land mid-way.
#![allow(clippy::disallowed_methods)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::json;

use crate::harness::{Gateway, Mock, chat_body, gateway};

/// Counters are written back only at shutdown here, so anything the database
/// knows after a SIGKILL came from the request leases.
const NO_FLUSH: &str = "tokens: { usage_flush_interval: 1h }";

/// Sends chat completions, `concurrency` at a time, until told to stop; counts 200s.
fn load(
    client: &reqwest::Client,
    url: String,
    token: String,
    concurrency: usize,
    ok: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..concurrency)
        .map(|_| {
            let (client, url, token) = (client.clone(), url.clone(), token.clone());
            let (ok, stop) = (ok.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Acquire) {
                    let sent = client
                        .post(format!("{url}/v1/chat/completions"))
                        .bearer_auth(&token)
                        .json(&chat_body("gpt-4o-mini"))
                        .send()
                        .await;
                    match sent {
                        Ok(r) if r.status() == 200 => {
                            ok.fetch_add(1, Ordering::AcqRel);
                        }
                        // Quota refused, or the gateway is gone.
                        _ => return,
                    }
                }
            })
        })
        .collect()
}

/// Requests one at a time until the first refusal; the number of 200s, and the
/// refusal's status and code.
async fn use_up(gw: &Gateway, token: &str) -> (usize, u16, String) {
    let mut ok = 0;
    loop {
        let r = gw.chat(token, chat_body("gpt-4o-mini")).await;
        let status = r.status().as_u16();
        if status != 200 {
            let body: serde_json::Value = r.json().await.unwrap();
            return (
                ok,
                status,
                body["error"]["code"].as_str().unwrap_or("").to_owned(),
            );
        }
        ok += 1;
    }
}

/// `n` requests one after another, each answered 200.
async fn serve(gw: &Gateway, token: &str, n: usize) {
    for i in 0..n {
        let status = gw.chat(token, chat_body("gpt-4o-mini")).await.status();
        assert_eq!(status, 200, "request {i} of {n}");
    }
}

#[tokio::test]
async fn quota_survives_a_sigkill_under_load() {
    let mock = Mock::start("up");
    let mut gw = gateway().provider(&mock, "[\"*\"]").yaml(NO_FLUSH).start();
    let (_, tid, token) = gw
        .project_and_token(json!({}), json!({"max_requests": 1000}))
        .await;
    let (ok, stop) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicBool::new(false)),
    );
    let workers = load(
        gw.client(),
        gw.url.clone(),
        token.clone(),
        16,
        ok.clone(),
        stop.clone(),
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while ok.load(Ordering::Acquire) < 400 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "load did not reach 400 requests"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    gw.kill();
    stop.store(true, Ordering::Release);
    for w in workers {
        w.await.unwrap();
    }
    let before = ok.load(Ordering::Acquire);

    gw.start_again();
    let (_, got) = gw
        .manage("GET", &format!("/manage/tokens/{tid}"), None)
        .await;
    let count = got["request_count"].as_u64().unwrap() as usize;
    assert!(
        count >= before,
        "restarted at {count}, but {before} were served: {got}"
    );
    let (after, status, code) = use_up(&gw, &token).await;
    assert_eq!((status, code.as_str()), (429, "quota_exceeded"));
    assert!(
        before + after <= 1000,
        "{before} served before the kill and {after} after: the quota of 1000 was exceeded"
    );
    // What a crash may cost: one lease (10 requests at this quota) and the
    // requests in flight at the kill (16 workers).
    assert!(
        before + after >= 1000 - 10 - 16,
        "{before} + {after}: too much quota lost"
    );
}

#[tokio::test]
async fn quota_clean_restart_costs_nothing() {
    let mock = Mock::start("up");
    let mut gw = gateway().provider(&mock, "[\"*\"]").yaml(NO_FLUSH).start();
    let (_, tid, token) = gw
        .project_and_token(json!({}), json!({"max_requests": 1000}))
        .await;
    // 35 requests hold a lease up to 40 (a lease is 10 requests at this quota).
    serve(&gw, &token, 35).await;
    gw.restart();
    let (_, got) = gw
        .manage("GET", &format!("/manage/tokens/{tid}"), None)
        .await;
    assert_eq!(
        got["request_count"], 35,
        "the unused lease was not released: {got}"
    );
    // And a token near its quota admits exactly up to it after the restart.
    let (_, _, small) = gw
        .project_and_token(json!({}), json!({"max_requests": 150}))
        .await;
    serve(&gw, &small, 100).await;
    gw.restart();
    let (after, status, code) = use_up(&gw, &small).await;
    assert_eq!((after, status, code.as_str()), (50, 429, "quota_exceeded"));
}
