//! Health that reflects reality (issue 15): answered requests count, a slow health
//! check does not take out a provider that is serving, `unhealthy_threshold`,
//! fail-open routing when every provider is unhealthy, the start-up race; and
//! the models endpoints: `GET /v1/models/{id}` and model-list refresh failures.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::time::Instant;

use crate::harness::{Gateway, Mock, assert_proxy_error, chat_body, error_of, gateway, new_client};

const CHAT: &str = "/v1/chat/completions";
const MODELS: &str = "/v1/models";

/// Fast health checks: every 300 ms, failed after 100 ms.
const FAST_CHECKS: &str = "interval: 300ms, timeout: 100ms";

fn entry(mock: &Mock, extra: &str) -> String {
    format!(
        "{{ name: {}, base_url: \"{}\", api_key: \"sk-{}\", timeouts: {{ connect: 1s, first_byte: 2s, idle: 5s }}, {extra} }}",
        mock.name,
        mock.base_url(),
        mock.name
    )
}

/// `GET /v1/models` on `mock` answers after `ms` (0: at once).
async fn models_delay(mock: &Mock, ms: u64) {
    let resp = mock
        .client()
        .post(format!("{}/_mock/models-delay", mock.url))
        .json(&json!({ "ms": ms }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
}

async fn provider(gw: &Gateway, name: &str) -> Value {
    let (status, body) = gw.manage("GET", "/manage/providers", None).await;
    assert_eq!(status, 200, "{body}");
    body["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .cloned()
        .unwrap()
}

/// Polls `/manage/providers` until `done` holds for `name` (10 s at most).
async fn wait_provider(gw: &Gateway, name: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let p = provider(gw, name).await;
        if done(&p) {
            return p;
        }
        assert!(Instant::now() < deadline, "condition not met: {p}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn answered_by(resp: reqwest::Response) -> String {
    assert_eq!(resp.status(), 200);
    resp.headers()["x-mock-name"].to_str().unwrap().to_owned()
}

async fn ready(gw: &Gateway) -> u16 {
    gw.get("/ready").send().await.unwrap().status().as_u16()
}

// === health ===

#[tokio::test]
async fn health_slow_check_during_live_traffic_keeps_the_provider_serving() {
    let (serving, backup) = (Mock::start("serving"), Mock::start("backup"));
    let gw = gateway()
        .provider_yaml(&entry(
            &serving,
            &format!("priority: 0, models: [\"*\"], health_check: {{ {FAST_CHECKS} }}"),
        ))
        .provider_yaml(&entry(
            &backup,
            "priority: 1, models: [\"*\"], health_check: { enabled: false }",
        ))
        .start();
    let (_, _, t) = gw.project_and_token(json!({}), json!({})).await;
    assert_eq!(
        answered_by(gw.chat(&t, chat_body("gpt-4o-mini")).await).await,
        "serving"
    );
    // From now on its `/models` answers long after the check's timeout, as
    // llama.cpp's does behind a running generation; completions still work.
    models_delay(&serving, 1_000).await;
    let checks_before = serving.count(MODELS).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut served = 0;
    let mut pace = tokio::time::interval(Duration::from_millis(25));
    // Live traffic while at least four checks fail (more than the threshold).
    while serving.count(MODELS).await < checks_before + 5 {
        assert!(Instant::now() < deadline, "no health checks seen");
        pace.tick().await;
        let resp = gw.chat(&t, chat_body("gpt-4o-mini")).await;
        assert_eq!(answered_by(resp).await, "serving");
        served += 1;
    }
    assert!(served > 10, "{served}");
    assert_eq!(backup.count(CHAT).await, 0);
    let p = provider(&gw, "serving").await;
    assert_eq!(p["healthy"], true, "{p}");
    assert_eq!(p["health_check_failures"], 0, "{p}");
    assert!(p["last_success_at"].is_string(), "{p}");
    assert!(
        p["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("timed out")),
        "{p}"
    );
}

/// A port nothing listens on yet (bound, then released).
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// A mock upstream on a chosen port; killed on drop.
struct PortMock(Child);

impl PortMock {
    async fn start(port: u16) -> PortMock {
        let child = Command::new(env!("CARGO_BIN_EXE_mock-upstream"))
            .args(["--listen", &format!("127.0.0.1:{port}"), "--name", "late"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mock = PortMock(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        let stats = format!("http://127.0.0.1:{port}/_mock/stats");
        let client = new_client();
        while client.get(&stats).send().await.is_err() {
            assert!(Instant::now() < deadline, "mock did not start on {port}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        mock
    }
}

impl Drop for PortMock {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn health_startup_race_costs_at_most_one_failed_request() {
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}/v1");
    // Default health checks (every 30 s, threshold 2); the harshest threshold;
    // a check that is not the model listing (the list then has its own refresh).
    let gateways: Vec<Gateway> = [
        "",
        ", health_check: { unhealthy_threshold: 1 }",
        ", health_check: { path: /ping }",
    ]
    .iter()
        .map(|extra| {
            gateway()
                .provider_yaml(&format!(
                    "{{ name: late, base_url: \"{base}\", models: [\"*\"], timeouts: {{ connect: 1s, first_byte: 2s, idle: 5s }}{extra} }}"
                ))
                .start()
        })
        .collect();
    let mut tokens = Vec::new();
    for gw in &gateways {
        // The first health check has run, and failed: nothing listens yet.
        wait_provider(gw, "late", |p| p["last_check_at"].is_string()).await;
        let (_, _, t) = gw.project_and_token(json!({}), json!({})).await;
        tokens.push(t);
    }
    let _upstream = PortMock::start(port).await;
    for (gw, t) in gateways.iter().zip(&tokens) {
        let started = Instant::now();
        let mut failed = Vec::new();
        loop {
            let resp = gw.chat(t, chat_body("gpt-4o-mini")).await;
            if resp.status() == 200 {
                break;
            }
            failed.push(error_of(resp).await);
            assert!(
                failed.len() <= 1 && started.elapsed() < Duration::from_secs(5),
                "{failed:?}"
            );
        }
        assert!(failed.len() <= 1, "{failed:?}");
        // The `*` provider's models are listed seconds later, not minutes.
        while list_ids(gw, t).await.is_empty() {
            assert!(started.elapsed() < Duration::from_secs(10), "never listed");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test]
async fn health_unhealthy_threshold_3_needs_three_failed_checks() {
    let mock = Mock::start("checked");
    let gw = gateway()
        .provider_yaml(&entry(
            &mock,
            &format!("models: [\"*\"], health_check: {{ {FAST_CHECKS}, unhealthy_threshold: 3 }}"),
        ))
        .start();
    wait_provider(&gw, "checked", |p| p["last_check_at"].is_string()).await;
    models_delay(&mock, 1_000).await;
    // Every snapshot below three failures is healthy; two are seen healthy.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut saw_two = false;
    let p = loop {
        let p = provider(&gw, "checked").await;
        let failures = p["health_check_failures"].as_u64().unwrap();
        if failures < 3 {
            assert_eq!(p["healthy"], true, "{p}");
            saw_two |= failures == 2;
        } else if p["healthy"] == false {
            break p;
        }
        assert!(Instant::now() < deadline, "never unhealthy: {p}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(saw_two, "{p}");
    assert!(p["health_check_failures"].as_u64().unwrap() >= 3, "{p}");
    assert!(
        gw.logs().contains("provider marked unhealthy"),
        "{}",
        gw.logs()
    );
    // One passing check brings it back, within about a second.
    models_delay(&mock, 0).await;
    let p = wait_provider(&gw, "checked", |p| p["healthy"] == true).await;
    assert_eq!(p["health_check_failures"], 0, "{p}");
}

#[tokio::test]
async fn health_all_unhealthy_none_open_tries_the_best_and_succeeds() {
    let (a, b) = (Mock::start("first"), Mock::start("second"));
    let checks =
        format!("models: [\"*\"], health_check: {{ {FAST_CHECKS}, unhealthy_threshold: 1 }}");
    let gw = gateway()
        .provider_yaml(&entry(&a, &format!("priority: 0, {checks}")))
        .provider_yaml(&entry(&b, &format!("priority: 1, {checks}")))
        .start();
    let (_, _, t) = gw.project_and_token(json!({}), json!({})).await;
    // `second` answers a request (the first failed over to it) ...
    a.fail_next(json!({"count": 1, "status": 500})).await;
    let resp = gw.chat(&t, chat_body("gpt-4o-mini")).await;
    assert_eq!(answered_by(resp).await, "second");
    // ... then both fail their health checks.
    models_delay(&a, 1_000).await;
    models_delay(&b, 1_000).await;
    for name in ["first", "second"] {
        wait_provider(&gw, name, |p| p["healthy"] == false).await;
    }
    assert_eq!(provider(&gw, "first").await["state"], "closed");
    assert_eq!(ready(&gw).await, 200);
    // Tried anyway, best first: the one that answered a request last, although
    // `first` has the higher priority.
    let resp = gw.chat(&t, chat_body("gpt-4o-mini")).await;
    assert_eq!(answered_by(resp).await, "second");
    assert_eq!(a.count(CHAT).await, 1);
}

#[tokio::test]
async fn health_all_breakers_open_is_still_503_with_nothing_tried() {
    let mock = Mock::start("down");
    let gw = gateway()
        .yaml("retry: { max_attempts: 1 }")
        .provider_yaml(&entry(
            &mock,
            "models: [\"*\"], health_check: { enabled: false }, circuit_breaker: { failure_threshold: 1, cooldown: 30s }",
        ))
        .start();
    let (_, _, t) = gw.project_and_token(json!({}), json!({})).await;
    mock.fail_next(json!({"count": 1, "status": 500})).await;
    let (status, _) = error_of(gw.chat(&t, chat_body("gpt-4o-mini")).await).await;
    assert_eq!(status, 502);
    wait_provider(&gw, "down", |p| p["state"] == "open").await;
    let resp = gw.chat(&t, chat_body("gpt-4o-mini")).await;
    assert!(resp.headers().contains_key("retry-after"));
    let (status, body) = error_of(resp).await;
    assert_proxy_error(status, &body, 503, "no_healthy_provider");
    assert_eq!(mock.count(CHAT).await, 1);
    assert_eq!(ready(&gw).await, 503);
}

// === models ===

async fn get_model(gw: &Gateway, token: &str, id: &str) -> reqwest::Response {
    gw.get(&format!("/v1/models/{id}"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
}

async fn list_ids(gw: &Gateway, token: &str) -> Vec<String> {
    let v: Value = gw
        .get("/v1/models")
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn models_retrieve_answers_one_model_with_the_list_filtering() {
    let (up, other) = (Mock::start("up"), Mock::start("other"));
    let gw = gateway()
        .provider_yaml(&entry(
            &up,
            "models: [\"gpt-4o-mini\", \"gpt-4o\", \"meta/llama-3\"]",
        ))
        .provider_yaml(&entry(&other, "priority: 1, models: [\"claude-3\"]"))
        .start();
    let (_, _, all) = gw.project_and_token(json!({}), json!({})).await;
    let (_, _, some) = gw
        .project_and_token(
            json!({"allowed_models": ["gpt-4o*", "meta/*"]}),
            json!({"allowed_models": ["gpt-4o-mini", "meta/llama-3"]}),
        )
        .await;
    let (_, _, pinned) = gw
        .project_and_token(json!({"providers": ["other"]}), json!({}))
        .await;

    // The SDK's `client.models.retrieve("gpt-4o-mini")`: OpenAI's model object.
    let resp = gw
        .get("/v1/models/gpt-4o-mini")
        .bearer_auth(&all)
        .header("x-request-id", "models-retrieve-1")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-request-id"], "models-retrieve-1");
    let v: Value = resp.json().await.unwrap();
    assert_eq!(
        v,
        json!({"id": "gpt-4o-mini", "object": "model", "created": 0, "owned_by": "up"})
    );
    // Ids with a slash, as Hugging Face names go.
    let v: Value = get_model(&gw, &all, "meta/llama-3")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v["id"], "meta/llama-3");

    // Exactly what each token's list shows, and nothing else.
    for (token, want) in [
        (
            &all,
            vec!["claude-3", "gpt-4o", "gpt-4o-mini", "meta/llama-3"],
        ),
        (&some, vec!["gpt-4o-mini", "meta/llama-3"]),
        (&pinned, vec!["claude-3"]),
    ] {
        assert_eq!(list_ids(&gw, token).await, want);
        for id in ["claude-3", "gpt-4o", "gpt-4o-mini", "meta/llama-3", "nope"] {
            let resp = get_model(&gw, token, id).await;
            assert!(resp.headers().contains_key("x-request-id"));
            if want.contains(&id) {
                assert_eq!(resp.status(), 200, "{id}");
            } else {
                let (status, body) = error_of(resp).await;
                assert_proxy_error(status, &body, 404, "model_not_found");
            }
        }
    }
    // Credentials first, as everywhere; other methods are not served.
    let resp = gw.get("/v1/models/gpt-4o").send().await.unwrap();
    let (status, body) = error_of(resp).await;
    assert_proxy_error(status, &body, 401, "missing_api_key");
    let resp = gw
        .client()
        .delete(format!("{}/v1/models/gpt-4o", gw.url))
        .bearer_auth(&all)
        .send()
        .await
        .unwrap();
    let (status, body) = error_of(resp).await;
    assert_proxy_error(status, &body, 404, "unknown_endpoint");
    // Answered locally: the upstream saw nothing but its health checks.
    let stats = up.stats().await;
    let paths: Vec<&String> = stats["by_path"].as_object().unwrap().keys().collect();
    assert!(paths.iter().all(|p| *p == MODELS), "{stats}");
}

#[tokio::test]
async fn models_retrieve_works_from_the_python_sdk() {
    let mock = Mock::start("up");
    let gw = gateway().provider(&mock, "[\"gpt-4o-mini\"]").start();
    let (_, _, token) = gw.project_and_token(json!({}), json!({})).await;
    let script = r#"
import json, os, openai
c = openai.OpenAI(base_url=os.environ["PALISADE_BASE_URL"], api_key=os.environ["PALISADE_TOKEN"], max_retries=0)
m = c.models.retrieve("gpt-4o-mini")
try:
    c.models.retrieve("gpt-5-nope")
    missing = "found"
except openai.NotFoundError as e:
    missing = e.code
print(json.dumps({"id": m.id, "object": m.object, "owned_by": m.owned_by, "missing": missing}))
"#;
    let what = crate::python_sdk::Py::Code(script);
    let v = crate::python_sdk::run_python(&gw, &token, what, Vec::new()).await;
    assert_eq!(
        v,
        json!({"id": "gpt-4o-mini", "object": "model", "owned_by": "up", "missing": "model_not_found"})
    );
}

/// `palisade_models_refresh_failures_total{provider="<name>"}`, 0 when absent.
async fn refresh_failures(gw: &Gateway, name: &str) -> u64 {
    let text = gw.metrics_text().await;
    let series = format!("palisade_models_refresh_failures_total{{provider=\"{name}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&series)?.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn models_refresh_failures_are_logged_once_per_change_shown_and_counted() {
    let mock = Mock::start("globbed");
    let gw = gateway()
        .provider_yaml(&entry(
            &mock,
            // A high threshold: the model list matters here, not health.
            &format!(
                "models: [\"*\"], health_check: {{ {FAST_CHECKS}, unhealthy_threshold: 1000 }}"
            ),
        ))
        .start();
    let (_, _, t) = gw.project_and_token(json!({}), json!({})).await;
    let listed = vec!["gpt-4o", "gpt-4o-mini", "text-embedding-3-small"];
    let deadline = Instant::now() + Duration::from_secs(10);
    while list_ids(&gw, &t).await != listed {
        assert!(Instant::now() < deadline, "models never listed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    models_delay(&mock, 1_000).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while refresh_failures(&gw, "globbed").await < 3 {
        assert!(Instant::now() < deadline, "no refresh failures counted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let p = provider(&gw, "globbed").await;
    assert_eq!(p["models_error"], "timed out", "{p}");
    assert!(
        p["last_error"]
            .as_str()
            .is_some_and(|e| e.starts_with("models: ")),
        "{p}"
    );
    // The last good list is kept.
    assert_eq!(list_ids(&gw, &t).await, listed);
    let warned = |logs: &str| {
        logs.lines()
            .filter(|l| l.contains("cannot refresh the model list") && l.contains("\"WARN\""))
            .count()
    };
    assert_eq!(warned(&gw.logs()), 1, "{}", gw.logs());
    // Working again: logged once at INFO, cleared in `/manage/providers`.
    models_delay(&mock, 0).await;
    wait_provider(&gw, "globbed", |p| p["models_error"].is_null()).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !gw.logs().contains("model list refreshed again") {
        assert!(Instant::now() < deadline, "{}", gw.logs());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let logs = gw.logs();
    let again: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("model list refreshed again"))
        .collect();
    assert_eq!(again.len(), 1, "{logs}");
    assert!(again[0].contains("\"INFO\""), "{}", again[0]);
    assert_eq!(warned(&logs), 1, "{logs}");
}
