//! What the client hears when the upstream keeps failing: the truth about the last
//! answer (429 stays a rate limit, a 5xx is named, "could not be reached" only when
//! nothing answered), the upstream's `retry-after`, and `x-should-retry` so SDK
//! retries never multiply the gateway's (SPEC §2).

use serde_json::json;
use tokio::time::{Duration, Instant};

use crate::harness::{Gateway, Mock, assert_proxy_error, chat_body, error_of, gateway};

const CHAT: &str = "/v1/chat/completions";
const NO_HEALTH: &str = "health_check: { enabled: false }";

fn single(mock: &Mock) -> String {
    format!(
        "{{ name: {}, base_url: \"{}\", api_key: \"sk-x\", models: [\"*\"], {NO_HEALTH}, \
         timeouts: {{ connect: 1s, first_byte: 2s, idle: 5s }} }}",
        mock.name,
        mock.base_url()
    )
}

fn header<'a>(resp: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    resp.headers().get(name).and_then(|v| v.to_str().ok())
}

/// One provider (default retry settings) whose next `count` answers are 429 with
/// `retry-after: retry_after`, and a token to call it with.
async fn answering_429(count: u32, retry_after: &str) -> (Mock, Gateway, String) {
    let mock = Mock::start("only");
    let gw = gateway().provider_yaml(&single(&mock)).start();
    let (_, _, t) = gw.project_and_token(json!({}), json!({})).await;
    mock.fail_next(json!({"count": count, "status": 429, "retry_after": retry_after}))
        .await;
    (mock, gw, t)
}

#[tokio::test]
async fn upstream_errors_429_retry_after_longer_than_max_delay_returns_at_once() {
    let (mock, gw, t) = answering_429(100, "30").await;
    let started = Instant::now();
    let resp = gw.chat(&t, chat_body("gpt-4o-mini")).await;
    let took = started.elapsed();
    assert_eq!(header(&resp, "retry-after"), Some("30"));
    assert_eq!(header(&resp, "x-should-retry"), Some("false"));
    let (status, body) = error_of(resp).await;
    assert_proxy_error(status, &body, 429, "upstream_rate_limited");
    assert_eq!(body["error"]["type"], "rate_limit_error");
    assert_eq!(mock.count(CHAT).await, 1, "one upstream call, no waiting");
    assert!(took < Duration::from_secs(3), "{took:?}");
}

#[tokio::test]
async fn upstream_errors_429_retry_after_beyond_u64_seconds_is_an_error_envelope() {
    // `1e20` seconds is past what a `Duration` holds: converting it used to panic
    // the worker, and the client lost the connection instead of hearing the 429.
    let (mock, gw, t) = answering_429(1, "1e20").await;
    let resp = gw.chat(&t, chat_body("gpt-4o-mini")).await;
    assert_eq!(
        header(&resp, "retry-after"),
        Some(u64::MAX.to_string().as_str())
    );
    let (status, body) = error_of(resp).await;
    assert_proxy_error(status, &body, 429, "upstream_rate_limited");
    assert_eq!(mock.count(CHAT).await, 1, "one upstream call, no waiting");
    let resp = gw.chat(&t, chat_body("gpt-4o-mini")).await;
    assert_eq!(resp.status(), 200, "the gateway still serves");
}

#[tokio::test]
async fn upstream_errors_persistent_429_within_max_delay_ends_as_429_after_max_attempts() {
    let mock = Mock::start("only");
    let gw = gateway()
        .yaml("retry: { max_attempts: 3, initial_delay: 10ms, max_delay: 2s }")
        .provider_yaml(&single(&mock))
        .start();
    let (_, _, t) = gw.project_and_token(json!({}), json!({})).await;
    mock.fail_next(json!({"count": 100, "status": 429, "retry_after": "0"}))
        .await;
    let resp = gw.chat(&t, chat_body("gpt-4o-mini")).await;
    assert_eq!(header(&resp, "retry-after"), Some("0"));
    assert_eq!(header(&resp, "x-should-retry"), Some("false"));
    let (status, body) = error_of(resp).await;
    assert_proxy_error(status, &body, 429, "upstream_rate_limited");
    assert_eq!(mock.count(CHAT).await, 3);
}

#[tokio::test]
async fn upstream_errors_persistent_503_is_502_naming_the_status() {
    let mock = Mock::start("only");
    let gw = gateway()
        .yaml("retry: { max_attempts: 2, initial_delay: 10ms, max_delay: 50ms }")
        .provider_yaml(&single(&mock))
        .start();
    let (_, _, t) = gw.project_and_token(json!({}), json!({})).await;
    mock.fail_next(json!({"count": 100, "status": 503})).await;
    let resp = gw.chat(&t, chat_body("gpt-4o-mini")).await;
    assert_eq!(header(&resp, "x-should-retry"), Some("false"));
    let (status, body) = error_of(resp).await;
    assert_proxy_error(status, &body, 502, "upstream_error");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("503"), "{message}");
    assert!(!message.contains("could not be reached"), "{message}");
    assert_eq!(mock.count(CHAT).await, 2);
}

#[tokio::test]
async fn upstream_errors_unreachable_provider_says_so() {
    // A port that was just free: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let gw = gateway()
        .yaml("retry: { max_attempts: 2, initial_delay: 10ms, max_delay: 50ms }")
        .provider_yaml(&format!(
            "{{ name: gone, base_url: \"http://127.0.0.1:{port}/v1\", api_key: \"sk-x\", \
             models: [\"*\"], {NO_HEALTH} }}"
        ))
        .start();
    let (_, _, t) = gw.project_and_token(json!({}), json!({})).await;
    let resp = gw.chat(&t, chat_body("gpt-4o-mini")).await;
    assert_eq!(header(&resp, "x-should-retry"), Some("false"));
    let (status, body) = error_of(resp).await;
    assert_proxy_error(status, &body, 502, "upstream_error");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("could not be reached"), "{message}");
}

#[tokio::test]
async fn upstream_errors_relayed_5xx_answer_tells_the_sdk_not_to_retry() {
    // 501 is not in `retry.retry_on`: it is the answer, relayed as sent.
    let mock = Mock::start("only");
    let gw = gateway().provider_yaml(&single(&mock)).start();
    let (_, _, t) = gw.project_and_token(json!({}), json!({})).await;
    mock.fail_next(json!({"count": 1, "status": 501})).await;
    let resp = gw.chat(&t, chat_body("gpt-4o-mini")).await;
    assert_eq!(resp.status(), 501);
    assert_eq!(header(&resp, "x-should-retry"), Some("false"));
    assert_eq!(header(&resp, "x-mock-header"), Some("kept"));
}

#[tokio::test]
async fn upstream_errors_permanent_and_capacity_refusals_carry_x_should_retry() {
    let mock = Mock::start("only");
    let gw = gateway().provider_yaml(&single(&mock)).start();
    let (pid, _, _) = gw.project_and_token(json!({}), json!({})).await;
    let (_, t) = gw
        .create_token(&pid, json!({"max_requests": 1, "rate_limit_rpm": 1000}))
        .await;
    assert_eq!(gw.chat(&t, chat_body("gpt-4o-mini")).await.status(), 200);
    let resp = gw.chat(&t, chat_body("gpt-4o-mini")).await;
    assert_eq!(header(&resp, "x-should-retry"), Some("false"));
    assert_eq!(header(&resp, "retry-after"), None);
    let (status, body) = error_of(resp).await;
    assert_proxy_error(status, &body, 429, "quota_exceeded");

    let (_, limited) = gw.create_token(&pid, json!({"rate_limit_rpm": 1})).await;
    assert_eq!(
        gw.chat(&limited, chat_body("gpt-4o-mini")).await.status(),
        200
    );
    let resp = gw.chat(&limited, chat_body("gpt-4o-mini")).await;
    assert_eq!(header(&resp, "x-should-retry"), Some("true"));
    assert!(header(&resp, "retry-after").is_some());
    let (status, body) = error_of(resp).await;
    assert_proxy_error(status, &body, 429, "rate_limit_exceeded");

    let resp = gw.chat("tok-nope", chat_body("gpt-4o-mini")).await;
    assert_eq!(header(&resp, "x-should-retry"), Some("false"));
}

/// The SDK's own retries (default `max_retries=2`) on top of the gateway's: one
/// client call must cost at most `retry.max_attempts` upstream calls, not 3 × 3.
#[tokio::test]
async fn upstream_errors_python_sdk_retries_do_not_multiply_upstream_calls() {
    let mock = Mock::start("only");
    let gw = gateway()
        .yaml("retry: { max_attempts: 3, initial_delay: 10ms, max_delay: 50ms }")
        .provider_yaml(&single(&mock))
        .start();
    let (_, _, t) = gw.project_and_token(json!({}), json!({})).await;
    mock.fail_next(json!({"count": 100, "status": 503})).await;
    let script = r#"
import json, os, openai
client = openai.OpenAI(base_url=os.environ["PALISADE_BASE_URL"], api_key=os.environ["PALISADE_TOKEN"])
try:
    client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    print(json.dumps({"raised": None}))
except openai.APIStatusError as e:
    print(json.dumps({"raised": type(e).__name__, "status": e.status_code}))
"#;
    let what = crate::python_sdk::Py::Code(script);
    let summary = crate::python_sdk::run_python(&gw, &t, what, Vec::new()).await;
    assert_eq!(summary["status"], 502, "{summary}");
    assert_eq!(
        mock.count(CHAT).await,
        3,
        "SDK retried on top of the gateway"
    );
}
