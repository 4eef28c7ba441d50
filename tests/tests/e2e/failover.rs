//! ProviderSupervisor end to end: retries, failover before the first byte, circuit
//! breakers, health checks and weighted routing, against two or three mock
//! upstream processes.

use std::time::Duration;

use serde_json::{Value, json};
use tokio::time::Instant;

use crate::harness::{
    Gateway, Mock, WAIT, assert_proxy_error, chat_body, error_of, eventually, gateway,
};

const CHAT: &str = "/v1/chat/completions";

/// A provider entry for `mock` with extra YAML fields (`priority: 1, …`); `models`
/// and `timeouts` get defaults unless `extra` sets them.
fn entry(mock: &Mock, extra: &str) -> String {
    let mut fields = format!(
        "name: {}, base_url: \"{}\", api_key: \"sk-{}\"",
        mock.name,
        mock.base_url(),
        mock.name
    );
    if !extra.contains("models:") {
        fields.push_str(", models: [\"*\"]");
    }
    if !extra.contains("timeouts:") {
        fields.push_str(", timeouts: { connect: 1s, first_byte: 2s, idle: 5s }");
    }
    format!("{{ {fields}, {extra} }}")
}

/// A primary (priority 0) and a secondary (priority 1) mock behind one gateway,
/// each entry with its extra fields, and a token.
async fn pair(primary: &str, secondary: &str) -> (Mock, Mock, Gateway, String) {
    let (a, b) = (Mock::start("primary"), Mock::start("secondary"));
    let with = |priority: u8, extra: &str| match extra {
        "" => format!("priority: {priority}"),
        _ => format!("priority: {priority}, {extra}"),
    };
    let gw = gateway()
        .provider_yaml(&entry(&a, &with(0, primary)))
        .provider_yaml(&entry(&b, &with(1, secondary)))
        .start();
    let (_, _, t) = gw.project_and_token(json!({}), json!({})).await;
    (a, b, gw, t)
}

/// No periodic health checks: these tests drive breaker state by requests alone.
const NO_HEALTH: &str = "health_check: { enabled: false }";

async fn providers(gw: &Gateway) -> Value {
    let (status, body) = gw.manage("GET", "/manage/providers", None).await;
    assert_eq!(status, 200, "{body}");
    body
}

async fn provider(gw: &Gateway, name: &str) -> Value {
    providers(gw).await["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .cloned()
        .unwrap()
}

async fn wait_state(gw: &Gateway, name: &str, state: &str) -> Value {
    for _ in 0..100 {
        let p = provider(gw, name).await;
        if p["state"] == state {
            return p;
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    panic!("{name} never became {state}: {}", providers(gw).await);
}

async fn answered_by(resp: reqwest::Response) -> String {
    assert_eq!(resp.status(), 200);
    resp.headers()["x-mock-name"].to_str().unwrap().to_owned()
}

async fn ready(gw: &Gateway) -> u16 {
    gw.client()
        .get(format!("{}/ready", gw.url))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn failover_primary_500_is_answered_by_the_secondary_at_once() {
    let (a, b, gw, t) = pair("", "").await;
    a.fail_next(json!({"count": 1, "status": 500})).await;
    let resp = gw.chat(&t, chat_body("gpt-4o-mini")).await;
    assert_eq!(answered_by(resp).await, "secondary");
    assert_eq!((a.count(CHAT).await, b.count(CHAT).await), (1, 1));
    // Each provider got its own key; the body was replayed unchanged.
    assert_eq!(
        b.last_request().await["headers"]["authorization"],
        "Bearer sk-secondary"
    );
    let sent: Value =
        serde_json::from_str(b.last_request().await["body"].as_str().unwrap()).unwrap();
    assert_eq!(sent, chat_body("gpt-4o-mini"));
    let p = provider(&gw, "primary").await;
    assert_eq!(p["consecutive_failures"], 1, "{p}");
    assert_eq!(p["state"], "closed");
}

#[tokio::test]
async fn failover_primary_hangs_secondary_answers_after_one_first_byte_timeout() {
    let (a, _b, gw, t) = pair("timeouts: { first_byte: 1s }", "").await;
    a.fail_next(json!({"count": 1, "hang": true})).await;
    let started = Instant::now();
    let resp = gw.chat(&t, chat_body("gpt-4o-mini")).await;
    let took = started.elapsed();
    assert_eq!(answered_by(resp).await, "secondary");
    assert!(
        took >= Duration::from_millis(950) && took < Duration::from_millis(1700),
        "{took:?}"
    );
}

#[tokio::test]
async fn retry_429_without_alternative_honours_retry_after() {
    let a = Mock::start("only");
    let gw = gateway().provider_yaml(&entry(&a, NO_HEALTH)).start();
    let (_, _, t) = gw.project_and_token(json!({}), json!({})).await;
    a.fail_next(json!({"count": 1, "status": 429, "retry_after": "1"}))
        .await;
    let started = Instant::now();
    let resp = gw.chat(&t, chat_body("gpt-4o-mini")).await;
    let took = started.elapsed();
    assert_eq!(answered_by(resp).await, "only");
    assert_eq!(a.count(CHAT).await, 2);
    assert!(
        took >= Duration::from_millis(950) && took < Duration::from_millis(2000),
        "{took:?}"
    );
}

#[tokio::test]
async fn retry_never_on_non_retryable_client_errors() {
    let (a, b, gw, t) = pair("", "").await;
    a.fail_next(json!({"count": 1, "status": 400})).await;
    let resp = gw.chat(&t, chat_body("gpt-4o-mini")).await;
    assert_eq!(resp.status(), 400);
    assert_eq!((a.count(CHAT).await, b.count(CHAT).await), (1, 0));
}

#[tokio::test]
async fn breaker_opens_skips_the_provider_then_one_probe_closes_it() {
    let breaker =
        "circuit_breaker: { failure_threshold: 3, cooldown: 1s, half_open_max_requests: 1 }";
    let (a, _b, gw, t) = pair(&format!("{NO_HEALTH}, {breaker}"), NO_HEALTH).await;
    a.fail_next(json!({"count": 3, "status": 500})).await;
    for _ in 0..3 {
        let resp = gw.chat(&t, chat_body("gpt-4o-mini")).await;
        assert_eq!(answered_by(resp).await, "secondary");
    }
    let open = wait_state(&gw, "primary", "open").await;
    assert_eq!(open["consecutive_failures"], 3, "{open}");
    assert!(
        open["last_error"].as_str().unwrap().contains("500"),
        "{open}"
    );
    // Open: traffic skips the primary without touching it.
    for _ in 0..5 {
        let resp = gw.chat(&t, chat_body("gpt-4o-mini")).await;
        assert_eq!(answered_by(resp).await, "secondary");
    }
    assert_eq!(a.count(CHAT).await, 3);
    // After the cooldown one probe goes through, and its success closes the breaker.
    wait_state(&gw, "primary", "half_open").await;
    let resp = gw.chat(&t, chat_body("gpt-4o-mini")).await;
    assert_eq!(answered_by(resp).await, "primary");
    assert_eq!(a.count(CHAT).await, 4);
    let closed = wait_state(&gw, "primary", "closed").await;
    assert_eq!(closed["consecutive_failures"], 0, "{closed}");
}

#[tokio::test]
async fn breaker_failed_probe_reopens() {
    let breaker = "circuit_breaker: { failure_threshold: 1, cooldown: 500ms }";
    let (a, _b, gw, t) = pair(&format!("{NO_HEALTH}, {breaker}"), NO_HEALTH).await;
    a.fail_next(json!({"count": 2, "status": 503})).await;
    let resp = gw.chat(&t, chat_body("gpt-4o-mini")).await;
    assert_eq!(answered_by(resp).await, "secondary");
    wait_state(&gw, "primary", "open").await;
    wait_state(&gw, "primary", "half_open").await;
    let resp = gw.chat(&t, chat_body("gpt-4o-mini")).await;
    assert_eq!(answered_by(resp).await, "secondary");
    wait_state(&gw, "primary", "open").await;
    assert_eq!(a.count(CHAT).await, 2);
}

#[tokio::test]
async fn failover_never_after_the_first_byte() {
    let (_a, b, gw, t) = pair("", "").await;
    let resp = gw
        .post(CHAT)
        .bearer_auth(&t)
        .header("x-mock-cut-after", "2")
        .json(&json!({"model": "gpt-4o-mini", "stream": true, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-mock-name"], "primary");
    let text = String::from_utf8(resp.bytes().await.unwrap().to_vec()).unwrap();
    assert_eq!(text.matches("tok0").count(), 1, "{text}");
    assert_eq!(text.matches("tok1").count(), 1, "{text}");
    assert!(!text.contains("tok2"), "{text}");
    assert!(text.contains("\"code\":\"upstream_error\""), "{text}");
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    assert_eq!(b.count(CHAT).await, 0);
}

#[tokio::test]
async fn failover_all_providers_down_503_then_recover_without_restart() {
    let (a, b) = (Mock::start("primary"), Mock::start("secondary"));
    let breaker = "circuit_breaker: { failure_threshold: 2, cooldown: 1s }";
    let gw = gateway()
        .yaml("retry: { max_attempts: 2, initial_delay: 10ms, max_delay: 50ms }")
        .provider_yaml(&entry(&a, &format!("priority: 0, {NO_HEALTH}, {breaker}")))
        .provider_yaml(&entry(&b, &format!("priority: 1, {NO_HEALTH}, {breaker}")))
        .start();
    let (_, _, t) = gw.project_and_token(json!({}), json!({})).await;
    assert_eq!(ready(&gw).await, 200);
    for m in [&a, &b] {
        m.fail_next(json!({"count": 100, "status": 500})).await;
    }
    for _ in 0..2 {
        let (status, body) = error_of(gw.chat(&t, chat_body("gpt-4o-mini")).await).await;
        assert_proxy_error(status, &body, 502, "upstream_error");
    }
    wait_state(&gw, "primary", "open").await;
    wait_state(&gw, "secondary", "open").await;
    let resp = gw.chat(&t, chat_body("gpt-4o-mini")).await;
    let retry_after: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=1).contains(&retry_after), "{retry_after}");
    let (status, body) = error_of(resp).await;
    assert_proxy_error(status, &body, 503, "no_healthy_provider");
    assert_eq!(ready(&gw).await, 503);
    let before = a.count(CHAT).await + b.count(CHAT).await;
    assert_eq!(before, 4);
    // The providers recover; after the cooldown the gateway does too.
    a.reset().await;
    b.reset().await;
    wait_state(&gw, "primary", "half_open").await;
    assert_eq!(ready(&gw).await, 200);
    let resp = gw.chat(&t, chat_body("gpt-4o-mini")).await;
    assert_eq!(answered_by(resp).await, "primary");
    wait_state(&gw, "primary", "closed").await;
}

#[tokio::test]
async fn routing_weights_share_traffic_3_to_1() {
    let (a, b) = (Mock::start("heavy"), Mock::start("light"));
    let gw = gateway()
        .provider_yaml(&entry(&a, &format!("weight: 3, {NO_HEALTH}")))
        .provider_yaml(&entry(&b, &format!("weight: 1, {NO_HEALTH}")))
        .start();
    let (_, _, t) = gw.project_and_token(json!({}), json!({})).await;
    const N: u64 = 2000;
    let statuses = gw.chat_many(&t, N as usize, 32).await;
    let ok = statuses.iter().filter(|s| **s == 200).count();
    assert_eq!(ok as u64, N);
    let (heavy, light) = (a.count(CHAT).await, b.count(CHAT).await);
    assert_eq!(heavy + light, N);
    let share = heavy as f64 / N as f64;
    assert!(
        (0.70..=0.80).contains(&share),
        "heavy {heavy}, light {light}"
    );
}

#[tokio::test]
async fn health_checks_use_the_configured_path_and_interval_only() {
    let a = Mock::start("checked");
    // Every check comes after this: at most one at start-up and one per interval.
    let started = Instant::now();
    let gw = gateway()
        .provider_yaml(&entry(
            &a,
            "models: [\"gpt-*\"], health_check: { interval: 200ms, timeout: 1s, path: /ping }",
        ))
        .start();
    let (_, _, t) = gw.project_and_token(json!({}), json!({})).await;
    let pings = |stats: &Value| stats["by_path"]["/v1/ping"].as_u64().unwrap_or(0);
    // Four checks, and over a second: checking twice as often would show by then.
    let (stats, elapsed) = eventually("four health checks", WAIT, async || {
        let stats = a.stats().await;
        let elapsed = started.elapsed();
        (pings(&stats) >= 4 && elapsed >= Duration::from_secs(1)).then_some((stats, elapsed))
    })
    .await;
    let most = u64::try_from(elapsed.as_millis() / 200).unwrap() + 1;
    assert!(pings(&stats) <= most, "{stats} in {elapsed:?}");
    // Nothing but the checks and the glob's model listing: never a completion.
    let paths: Vec<&String> = stats["by_path"].as_object().unwrap().keys().collect();
    assert!(
        paths.iter().all(|p| *p == "/v1/ping" || *p == "/v1/models"),
        "{stats}"
    );
    let p = provider(&gw, "checked").await;
    assert_eq!(p["healthy"], true, "{p}");
    assert!(p["last_check_at"].is_string(), "{p}");
    // A failing health check takes the provider out of rotation ...
    a.fail_next(json!({"count": 1000, "status": 503})).await;
    for _ in 0..100 {
        if provider(&gw, "checked").await["healthy"] == false {
            break;
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let p = provider(&gw, "checked").await;
    assert_eq!(p["healthy"], false, "{p}");
    assert!(
        p["last_error"].as_str().unwrap().contains("health check"),
        "{p}"
    );
    // With no healthy provider left and its breaker closed, it is still tried
    // (fail open on health, closed on breakers): its 503s come back as a 502.
    let (status, body) = error_of(gw.chat(&t, chat_body("gpt-4o-mini")).await).await;
    assert_proxy_error(status, &body, 502, "upstream_error");
    assert_eq!(ready(&gw).await, 200);
    assert!(a.count(CHAT).await >= 1);
    // ... and a passing one brings it back.
    a.reset().await;
    for _ in 0..100 {
        if provider(&gw, "checked").await["healthy"] == true {
            break;
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let resp = gw.chat(&t, chat_body("gpt-4o-mini")).await;
    assert_eq!(answered_by(resp).await, "checked");
}

#[tokio::test]
async fn failover_connection_cut_before_headers_moves_on() {
    // A "provider" that accepts, reads the request and hangs up without a word.
    let cutter = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = cutter.local_addr().unwrap();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let seen = std::sync::Arc::clone(&accepted);
    // The fake provider lives as long as the test's runtime.
    #[allow(clippy::disallowed_methods)]
    tokio::spawn(async move {
        use tokio::io::AsyncReadExt;
        while let Ok((mut sock, _)) = cutter.accept().await {
            seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let mut buf = [0u8; 4096];
            let _ = sock.read(&mut buf).await;
        }
    });
    let b = Mock::start("secondary");
    let gw = gateway()
        .provider_yaml(&format!(
            "{{ name: cutter, base_url: \"http://{addr}/v1\", priority: 0, {NO_HEALTH} }}"
        ))
        .provider_yaml(&entry(&b, &format!("priority: 1, {NO_HEALTH}")))
        .start();
    let (_, _, t) = gw.project_and_token(json!({}), json!({})).await;
    let resp = gw.chat(&t, chat_body("gpt-4o-mini")).await;
    assert_eq!(answered_by(resp).await, "secondary");
    assert!(accepted.load(std::sync::atomic::Ordering::SeqCst) >= 1);
    let p = provider(&gw, "cutter").await;
    assert_eq!(p["consecutive_failures"], 1, "{p}");
}

#[tokio::test]
async fn routing_project_pin_overrides_priority_and_is_validated() {
    let (a, b, gw, _) = pair(NO_HEALTH, NO_HEALTH).await;
    let (status, body) = gw
        .manage(
            "POST",
            "/manage/projects",
            Some(json!({"name": "pinned", "providers": ["secondary", "primary"]})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["providers"], json!(["secondary", "primary"]));
    let pid = body["id"].as_str().unwrap().to_owned();
    let (_, t) = gw.create_token(&pid, json!({})).await;
    let resp = gw.chat(&t, chat_body("gpt-4o-mini")).await;
    assert_eq!(answered_by(resp).await, "secondary");
    // The pinned order is also the failover order.
    b.fail_next(json!({"count": 1, "status": 502})).await;
    let resp = gw.chat(&t, chat_body("gpt-4o-mini")).await;
    assert_eq!(answered_by(resp).await, "primary");
    // Pinning only the primary keeps the secondary out entirely.
    let (status, body) = gw
        .manage(
            "PATCH",
            &format!("/manage/projects/{pid}"),
            Some(json!({"providers": ["primary"]})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    a.fail_next(json!({"count": 3, "status": 500})).await;
    let (status, body) = error_of(gw.chat(&t, chat_body("gpt-4o-mini")).await).await;
    assert_proxy_error(status, &body, 502, "upstream_error");
    assert_eq!(b.count(CHAT).await, 2);
    // Unknown or repeated names are refused.
    for bad in [
        json!(["nope"]),
        json!(["primary", "primary"]),
        json!("primary"),
    ] {
        let (status, body) = gw
            .manage(
                "PATCH",
                &format!("/manage/projects/{pid}"),
                Some(json!({ "providers": bad })),
            )
            .await;
        assert_eq!(status, 422, "{body}");
        assert!(body["error"]["fields"]["providers"].is_string(), "{body}");
    }
}
