//! Floods aimed at the expensive paths (issue 16, rows 6 and 7): logins from many
//! addresses must neither fail with 500 nor run more bcrypt hashes at once than
//! `auth.bcrypt_concurrency`, and the proxy keeps serving meanwhile; random
//! tokens must leave a handful of audit rows, not one per request, while
//! `/metrics` counts every one. (How much `/v1` latency moves under a login flood
//! is measured by `bench --login-flood`, not asserted here.)

use std::collections::BTreeMap;

use futures_util::StreamExt;
use serde_json::{Value, json};

use crate::harness::{Gateway, Mock, chat_body, gateway};

const JWT_SECRET: &str = "floods-jwt-secret-0123456789abcdef0123456789";

fn events(body: &Value) -> &Vec<Value> {
    body["data"].as_array().unwrap()
}

/// Sum of `details.count` over `proxy.denied` events with this reason.
fn counted(body: &Value, reason: &str) -> u64 {
    events(body)
        .iter()
        .filter(|e| e["details"]["reason"] == reason)
        .map(|e| e["details"]["count"].as_u64().unwrap())
        .sum()
}

async fn login_from(gw: &Gateway, ip: &str, username: &str, password: &str) -> reqwest::Response {
    gw.post("/manage/auth/login")
        .header("x-forwarded-for", ip)
        .json(&json!({ "username": username, "password": password }))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn floods_logins_from_300_addresses_never_500_and_never_exceed_the_hash_bound() {
    let mock = Mock::start("up");
    let gw = gateway()
        .provider(&mock, "[\"*\"]")
        .yaml(&format!(
            "server: {{ listen: \"127.0.0.1:0\", workers: 2, shutdown_grace: 5s, trusted_proxies: [\"127.0.0.1/32\"] }}\n\
             auth: {{ management_token: \"${{E2E_MANAGEMENT_TOKEN}}\", jwt_secret: \"{JWT_SECRET}\", bcrypt_cost: 10, bcrypt_concurrency: 2 }}\n\
             database: {{ url: \"${{E2E_DATABASE_URL}}\", max_connections: 4 }}"
        ))
        .start();
    let (status, body) = gw
        .manage(
            "POST",
            "/manage/users",
            Some(json!({ "username": "root", "password": "the real password!", "role": "admin" })),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (_, _, token) = gw.project_and_token(json!({}), json!({})).await;

    // 300 addresses, two attempts each (unknown users and wrong passwords), all
    // at once; the proxy is used at the same time.
    let attempts: Vec<(String, &str)> = (0..600)
        .map(|i| {
            let ip = format!("198.18.{}.{}", (i % 300) / 250, (i % 300) % 250 + 1);
            (ip, if i % 2 == 0 { "root" } else { "nobody-here" })
        })
        .collect();
    let flood = futures_util::stream::iter(attempts)
        .map(|(ip, user)| {
            let gw = &gw;
            async move {
                let r = login_from(gw, &ip, user, "guessing guessing").await;
                let status = r.status().as_u16();
                let retry_after = r.headers().contains_key("retry-after");
                let body: Value = r.json().await.unwrap();
                (status, retry_after, body)
            }
        })
        .buffer_unordered(300)
        .collect::<Vec<_>>();
    let proxy = gw.chat_many(&token, 200, 4);
    let (logins, chats) = tokio::join!(flood, proxy);

    assert!(
        chats.iter().all(|s| *s == 200),
        "proxy during the flood: {chats:?}"
    );
    let mut by_status: BTreeMap<u16, usize> = BTreeMap::new();
    for (status, retry_after, body) in &logins {
        *by_status.entry(*status).or_default() += 1;
        match status {
            401 => assert_eq!(body["error"]["code"], "invalid_credentials", "{body}"),
            429 | 503 => {
                assert!(retry_after, "{status} without retry-after: {body}");
                let code = if *status == 503 {
                    "service_unavailable"
                } else {
                    "rate_limit_exceeded"
                };
                assert_eq!(body["error"]["code"], code, "{body}");
            }
            other => panic!("login answered {other}: {body}"),
        }
    }
    println!("login flood: {by_status:?}");
    // Most were shed at once instead of queueing behind two hashing threads.
    assert!(
        by_status.get(&503).copied().unwrap_or(0) > 0,
        "{by_status:?}"
    );
    assert!(
        by_status.get(&401).copied().unwrap_or(0) > 0,
        "{by_status:?}"
    );

    let text = gw.metrics_text().await;
    let metric = |name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {text}"))
    };
    // The configured bound, reached and never passed.
    assert_eq!(metric("palisade_password_hashes_in_flight_max"), 2.0);
    assert_eq!(metric("palisade_password_hashes_in_flight"), 0.0);
    assert_eq!(
        metric("palisade_password_hashes_refused_total"),
        by_status[&503] as f64
    );

    // Once the flood is over, the real user logs in from an address of its own
    // (after the wait the answers name: the flood spent the username's allowance).
    for _ in 0..20 {
        let r = login_from(&gw, "192.0.2.200", "root", "the real password!").await;
        match r.status().as_u16() {
            200 => return,
            429 => {
                let wait: u64 = r.headers()["retry-after"]
                    .to_str()
                    .unwrap()
                    .parse()
                    .unwrap();
                tokio::time::sleep(std::time::Duration::from_secs(wait)).await;
            }
            other => panic!("login answered {other}: {}", r.text().await.unwrap()),
        }
    }
    panic!("the real user could not log in after the flood");
}

#[tokio::test]
async fn floods_random_tokens_leave_a_handful_of_audit_rows_and_are_all_counted() {
    let mock = Mock::start("up");
    let gw = gateway()
        .provider(&mock, "[\"*\"]")
        .yaml("audit: { flush_interval: 50ms, unauthenticated_window: 1s }")
        .start();
    let (_, _, token) = gw.project_and_token(json!({}), json!({})).await;
    const N: usize = 2000;
    let (url, client) = (&gw.url, gw.client());
    let statuses: Vec<(u16, bool)> = futures_util::stream::iter(0..N)
        .map(|i| async move {
            let mut req = client
                .post(format!("{url}/v1/chat/completions"))
                .json(&chat_body("gpt-4o-mini"));
            // One in ten presents no credential at all.
            if i % 10 != 0 {
                req = req.bearer_auth(format!("tok-{}", uuid::Uuid::now_v7().simple()));
            }
            let r = req.send().await.unwrap();
            (r.status().as_u16(), r.headers().contains_key("retry-after"))
        })
        .buffer_unordered(32)
        .collect()
        .await;
    let unauthorized = statuses.iter().filter(|(s, _)| *s == 401).count();
    let limited = statuses.iter().filter(|(s, _)| *s == 429).count();
    assert_eq!(unauthorized + limited, N, "{statuses:?}");
    // The per-IP limit is on by default: the burst of 100, then 429 with retry-after.
    assert!(unauthorized >= 100, "{unauthorized} answered 401");
    assert!(limited > N / 2, "{limited} answered 429");
    assert!(statuses.iter().all(|(s, ra)| *s != 429 || *ra));
    // A valid token from the same address is not refused by that limit.
    assert_eq!(
        gw.chat(&token, chat_body("gpt-4o-mini")).await.status(),
        200
    );

    // Every one is counted…
    let text = gw.metrics_text().await;
    let metric = |name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0.0)
    };
    let missing = N / 10;
    assert_eq!(
        metric("palisade_unauthenticated_requests_total{reason=\"invalid_api_key\"}"),
        (N - missing) as f64
    );
    assert_eq!(
        metric("palisade_unauthenticated_requests_total{reason=\"missing_api_key\"}"),
        missing as f64
    );
    // …and audited in a few events carrying the counts.
    let body = gw
        .wait_for("/manage/audit?action=proxy.denied&limit=500", |b| {
            counted(b, "invalid_api_key") == (N - missing) as u64
                && counted(b, "missing_api_key") == missing as u64
        })
        .await;
    let rows = events(&body);
    assert!(
        rows.len() <= 12,
        "{} audit rows for {N} requests",
        rows.len()
    );
    assert!(rows.iter().all(|e| e["client_ip"] == "127.0.0.1"), "{body}");
    assert!(
        rows.iter().any(|e| e["details"]["aggregated"] == true),
        "{body}"
    );
}

#[tokio::test]
async fn floods_unauthenticated_counts_left_at_shutdown_are_filed() {
    let mock = Mock::start("up");
    // A window far longer than the test: only the shutdown flush can file them.
    let mut gw = gateway()
        .provider(&mock, "[\"*\"]")
        .yaml("audit: { flush_interval: 50ms, unauthenticated_window: 1h }")
        .start();
    for _ in 0..40 {
        let r = gw
            .chat("tok-no-such-token-at-all", chat_body("gpt-4o-mini"))
            .await;
        assert_eq!(r.status(), 401);
    }
    // The first is filed at once, the other 39 are only counted so far.
    let body = gw
        .wait_for("/manage/audit?action=proxy.denied", |b| {
            !events(b).is_empty()
        })
        .await;
    assert_eq!(counted(&body, "invalid_api_key"), 1, "{body}");
    gw.restart();
    let (_, body) = gw
        .manage("GET", "/manage/audit?action=proxy.denied", None)
        .await;
    assert_eq!(counted(&body, "invalid_api_key"), 40, "{body}");
    assert_eq!(events(&body).len(), 2, "{body}");
    // The JSON-lines copy has them too.
    let file = std::fs::read_to_string(gw.dir.path().join("data/audit.jsonl")).unwrap();
    let in_file: u64 = file
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|e| e["action"] == "proxy.denied")
        .map(|e| e["details"]["count"].as_u64().unwrap())
        .sum();
    assert_eq!(in_file, 40);
}
