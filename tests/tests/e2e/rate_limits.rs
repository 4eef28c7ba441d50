//! Rate limits end to end: per-token and per-project requests per minute with the
//! OpenAI-style headers, `rate_limits.default_token_rpm`, the per-IP limit
//! (actix-governor) with and without a trusted proxy, and the lock-out after
//! repeated failed management authentication.

use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::harness::{
    Gateway, MANAGEMENT_TOKEN, assert_manage_error, assert_proxy_error, chat_body, error_of, start,
};

fn header(resp: &reqwest::Response, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_owned())
}

/// Sends `n` chat requests, 16 at a time; returns the responses in completion order.
async fn burst(gw: &Gateway, token: &str, n: usize) -> Vec<reqwest::Response> {
    let mut out = Vec::new();
    let mut pending = FuturesUnordered::new();
    for _ in 0..n {
        if pending.len() == 16 {
            out.push(pending.next().await.unwrap());
        }
        pending.push(gw.chat(token, chat_body("gpt-4o-mini")));
    }
    while let Some(r) = pending.next().await {
        out.push(r);
    }
    out
}

#[tokio::test]
async fn rate_limits_token_rpm_burst_headers_retry_after_and_patch() {
    let (_mock, gw) = start("");
    let (_, tid, token) = gw
        .project_and_token(json!({}), json!({ "rate_limit_rpm": 60 }))
        .await;

    // The first success reports the allowance left.
    let first = gw.chat(&token, chat_body("gpt-4o-mini")).await;
    assert_eq!(first.status(), 200);
    assert_eq!(header(&first, "x-ratelimit-limit-requests").unwrap(), "60");
    assert_eq!(
        header(&first, "x-ratelimit-remaining-requests").unwrap(),
        "59"
    );
    assert_eq!(header(&first, "x-ratelimit-reset-requests").unwrap(), "1s");

    let started = Instant::now();
    let responses = burst(&gw, &token, 79).await;
    let elapsed = started.elapsed();
    let ok = responses.iter().filter(|r| r.status() == 200).count();
    let mut denials = responses.iter().filter(|r| r.status() == 429).count();
    // 60 at once; the bucket refills one per second while the burst runs.
    let refilled = usize::try_from(elapsed.as_secs()).unwrap();
    assert!(
        (59..=59 + refilled).contains(&ok),
        "{ok} passed in {elapsed:?}"
    );
    let limited = responses
        .into_iter()
        .find(|r| r.status() == 429)
        .expect("some requests are limited");
    assert_eq!(
        header(&limited, "x-ratelimit-limit-requests").unwrap(),
        "60"
    );
    assert_eq!(
        header(&limited, "x-ratelimit-remaining-requests").unwrap(),
        "0"
    );
    assert!(header(&limited, "x-ratelimit-reset-requests").is_some());
    let retry_after: u64 = header(&limited, "retry-after").unwrap().parse().unwrap();
    assert_eq!(retry_after, 1);
    let (status, body) = error_of(limited).await;
    assert_proxy_error(status, &body, 429, "rate_limit_exceeded");
    assert_eq!(body["error"]["type"], "rate_limit_error");

    // After the stated time it passes again.
    tokio::time::sleep(Duration::from_secs(retry_after)).await;
    assert_eq!(
        gw.chat(&token, chat_body("gpt-4o-mini")).await.status(),
        200
    );

    // A limit changed by PATCH applies to the next request.
    let (status, body) = gw
        .manage(
            "PATCH",
            &format!("/manage/tokens/{tid}"),
            Some(json!({ "rate_limit_rpm": 2 })),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let mut got = Vec::new();
    for _ in 0..3 {
        let r = gw.chat(&token, chat_body("gpt-4o-mini")).await;
        got.push(r.status().as_u16());
        if r.status() == 429 {
            denials += 1;
            assert_eq!(header(&r, "x-ratelimit-limit-requests").unwrap(), "2");
            // One request per 30 s at 2 rpm.
            let wait: u64 = header(&r, "retry-after").unwrap().parse().unwrap();
            assert!((29..=30).contains(&wait), "retry-after {wait}");
        }
    }
    assert_eq!(got, [200, 200, 429]);

    // Denials are audited with the reason (a batch later: wait for every one)
    // and counted by the queue.
    let audit = gw
        .wait_for("/manage/audit?action=proxy.denied&limit=500", |b| {
            b["data"].as_array().unwrap().len() >= denials
        })
        .await;
    let reasons: Vec<&Value> = audit["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["details"]["reason"])
        .collect();
    assert!(
        reasons.iter().all(|r| *r == "rate_limit_exceeded") && !reasons.is_empty(),
        "{audit}"
    );
    let (_, q) = gw.manage("GET", "/manage/queue", None).await;
    assert!(q["rejected"]["rate_limited"].as_u64().unwrap() >= 2, "{q}");
}

#[tokio::test]
async fn rate_limits_project_rpm_is_shared_by_its_tokens() {
    let (_mock, gw) = start("");
    let (pid, _, a) = gw
        .project_and_token(json!({ "rate_limit_rpm": 5 }), json!({}))
        .await;
    let (_, b) = gw.create_token(&pid, json!({})).await;
    let mut got = Vec::new();
    for i in 0..7 {
        let t = if i % 2 == 0 { &a } else { &b };
        let r = gw.chat(t, chat_body("gpt-4o-mini")).await;
        if r.status() == 200 {
            assert_eq!(header(&r, "x-ratelimit-limit-requests").unwrap(), "5");
        }
        got.push(r.status().as_u16());
    }
    assert_eq!(got, [200, 200, 200, 200, 200, 429, 429]);
}

#[tokio::test]
async fn rate_limits_default_token_rpm_applies_to_tokens_without_a_limit() {
    let (_mock, gw) = start("rate_limits: { default_token_rpm: 3 }");
    let (pid, _, plain) = gw.project_and_token(json!({}), json!({})).await;
    let (_, own) = gw
        .create_token(&pid, json!({ "rate_limit_rpm": 100 }))
        .await;
    let mut got = Vec::new();
    for _ in 0..4 {
        got.push(
            gw.chat(&plain, chat_body("gpt-4o-mini"))
                .await
                .status()
                .as_u16(),
        );
    }
    assert_eq!(got, [200, 200, 200, 429]);
    // A token's own limit wins over the default.
    for _ in 0..4 {
        let r = gw.chat(&own, chat_body("gpt-4o-mini")).await;
        assert_eq!(r.status(), 200);
        assert_eq!(header(&r, "x-ratelimit-limit-requests").unwrap(), "100");
    }
}

#[tokio::test]
async fn rate_limits_no_limit_no_headers() {
    let (_mock, gw) = start("");
    let (_, _, token) = gw.project_and_token(json!({}), json!({})).await;
    let r = gw.chat(&token, chat_body("gpt-4o-mini")).await;
    assert_eq!(r.status(), 200);
    assert!(header(&r, "x-ratelimit-limit-requests").is_none());
}

async fn from(gw: &Gateway, token: &str, xff: Option<&str>) -> reqwest::Response {
    let mut req = gw
        .post("/v1/chat/completions")
        .bearer_auth(token)
        .json(&chat_body("gpt-4o-mini"));
    if let Some(x) = xff {
        req = req.header("x-forwarded-for", x);
    }
    req.send().await.unwrap()
}

#[tokio::test]
async fn rate_limits_per_ip_ignores_spoofed_forwarded_for_from_untrusted_peers() {
    let (_mock, gw) = start("rate_limits: { per_ip_rps: 1, per_ip_burst: 3 }");
    let (_, _, token) = gw.project_and_token(json!({}), json!({})).await;
    let mut got = Vec::new();
    for i in 0..5 {
        // A different claimed client each time: the peer (127.0.0.1) is the key.
        let r = from(&gw, &token, Some(&format!("203.0.113.{i}"))).await;
        got.push(r.status().as_u16());
        if r.status() == 429 {
            assert!(header(&r, "retry-after").is_some());
            let (status, body) = error_of(r).await;
            assert_proxy_error(status, &body, 429, "rate_limit_exceeded");
        }
    }
    assert_eq!(got, [200, 200, 200, 429, 429]);
    // Health endpoints are not limited.
    for _ in 0..10 {
        let r = gw.get("/health").send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
    // The limit refills at one per second.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(from(&gw, &token, None).await.status(), 200);
}

#[tokio::test]
async fn rate_limits_per_ip_keys_on_forwarded_for_behind_a_trusted_proxy() {
    let (_mock, gw) = start(
        "server: { listen: \"127.0.0.1:0\", workers: 2, shutdown_grace: 5s, trusted_proxies: [\"127.0.0.1/32\"] }\n\
         rate_limits: { per_ip_rps: 1, per_ip_burst: 2 }",
    );
    let (_, _, token) = gw.project_and_token(json!({}), json!({})).await;
    // Each forwarded client has its own allowance...
    for i in 0..6 {
        let r = from(&gw, &token, Some(&format!("198.51.100.{i}"))).await;
        assert_eq!(r.status(), 200, "client {i}");
    }
    // ...and one client is limited whatever the hops before it claim.
    let mut got = Vec::new();
    for i in 0..3 {
        let xff = format!("10.9.9.{i}, 198.51.100.77");
        got.push(from(&gw, &token, Some(&xff)).await.status().as_u16());
    }
    assert_eq!(got, [200, 200, 429]);
}

#[tokio::test]
async fn rate_limits_failed_management_auth_locks_the_ip_out() {
    let (_mock, gw) =
        start("rate_limits: { auth_failures_per_minute: 60, auth_failures_burst: 3 }");
    let attempt = |key: &str| {
        gw.client()
            .get(format!("{}/manage/projects", gw.url))
            .bearer_auth(key)
            .send()
    };
    for _ in 0..3 {
        let r = attempt("wrong-token-guess").await.unwrap();
        assert_eq!(r.status(), 401);
    }
    let r = attempt("wrong-token-guess").await.unwrap();
    assert_eq!(r.status(), 429, "{:?}", r.headers());
    let retry: u64 = header(&r, "retry-after").unwrap().parse().unwrap();
    assert_eq!(retry, 1, "one attempt per second at 60 per minute");
    let status = r.status().as_u16();
    let body: Value = r.json().await.unwrap();
    assert_manage_error(status, &body, 429, "rate_limit_exceeded");
    // Locked out: even the right credentials are not looked at.
    let r = attempt(MANAGEMENT_TOKEN).await.unwrap();
    assert_eq!(r.status(), 429);
    // Once the stated time has passed, the right credentials work again.
    tokio::time::sleep(Duration::from_millis(retry * 1000 + 100)).await;
    let (_, _, token) = gw.project_and_token(json!({}), json!({})).await;
    assert_eq!(
        gw.chat(&token, chat_body("gpt-4o-mini")).await.status(),
        200
    );
    let (_, q) = gw.manage("GET", "/manage/queue", None).await;
    assert_eq!(q["rejected"]["rate_limited"], 2, "{q}");
}
