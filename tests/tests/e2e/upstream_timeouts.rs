//! The provider timeouts mean what they say (issue 16, row 8): `first_byte` bounds
//! the wait for the response head, `idle` only the gaps between body chunks. A
//! head timeout is 504 `upstream_timeout`; a body cut after a 200 head ends an SSE
//! stream with an error event and counts as an error in usage. One test per cell.

use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::time::{Duration, Instant};

use crate::harness::{Gateway, Mock, assert_proxy_error, chat_body, error_of, gateway};

const CHAT: &str = "/v1/chat/completions";

/// One provider in front of `mock` with these timeouts, retries allowed (so an
/// attempt cut too early would show as more than one upstream call).
fn start(mock: &Mock, first_byte: &str, idle: &str) -> Gateway {
    gateway()
        .yaml("retry: { max_attempts: 3, initial_delay: 10ms, max_delay: 50ms }\n")
        .provider_yaml(&format!(
            "{{ name: {}, base_url: \"{}\", api_key: \"sk-x\", models: [\"*\"], \
             health_check: {{ enabled: false }}, \
             timeouts: {{ connect: 1s, first_byte: {first_byte}, idle: {idle} }} }}",
            mock.name,
            mock.base_url()
        ))
        .start()
}

fn stream_body() -> Value {
    json!({"model": "gpt-4o-mini", "stream": true, "messages": [{"role": "user", "content": "hi"}]})
}

async fn read_all(resp: reqwest::Response) -> String {
    let mut all = Vec::new();
    let mut body = resp.bytes_stream();
    while let Some(chunk) = body.next().await {
        all.extend_from_slice(&chunk.unwrap());
    }
    String::from_utf8(all).unwrap()
}

/// Waits until the day's usage shows `requests` requests, then returns its errors.
async fn usage_errors(gw: &Gateway, requests: u64) -> Value {
    let body = gw
        .wait_for("/manage/usage?group_by=day", |b: &Value| {
            b["data"][0]["requests"] == json!(requests)
        })
        .await;
    body["data"][0]["errors"].clone()
}

#[tokio::test]
async fn upstream_timeouts_slow_head_within_first_byte_is_not_cut_by_idle() {
    let mock = Mock::start("slow");
    let gw = start(&mock, "3s", "500ms");
    let (_, _, t) = gw.project_and_token(json!({}), json!({})).await;
    let resp = gw
        .chat_with(&t, &[("x-mock-delay-ms", "1500")], chat_body("gpt-4o-mini"))
        .await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["object"], "chat.completion", "{body}");
    assert_eq!(mock.count(CHAT).await, 1, "one upstream call");
}

#[tokio::test]
async fn upstream_timeouts_hang_with_first_byte_equal_to_idle_is_504() {
    let mock = Mock::start("hang");
    let gw = start(&mock, "500ms", "500ms");
    let (_, _, t) = gw.project_and_token(json!({}), json!({})).await;
    let started = Instant::now();
    let resp = gw
        .chat_with(&t, &[("x-mock-hang", "1")], chat_body("gpt-4o-mini"))
        .await;
    let (status, body) = error_of(resp).await;
    assert_proxy_error(status, &body, 504, "upstream_timeout");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn upstream_timeouts_head_slower_than_first_byte_is_504() {
    // `idle` shorter than the delay too: the head wait is `first_byte`'s alone.
    let mock = Mock::start("slowhead");
    let gw = start(&mock, "800ms", "300ms");
    let (_, _, t) = gw.project_and_token(json!({}), json!({})).await;
    let resp = gw
        .chat_with(&t, &[("x-mock-delay-ms", "2500")], chat_body("gpt-4o-mini"))
        .await;
    let (status, body) = error_of(resp).await;
    assert_proxy_error(status, &body, 504, "upstream_timeout");
}

#[tokio::test]
async fn upstream_timeouts_chunk_gap_beyond_idle_ends_the_stream_with_an_error() {
    let mock = Mock::start("gappy");
    let gw = start(&mock, "3s", "400ms");
    let (_, _, t) = gw.project_and_token(json!({}), json!({})).await;
    let started = Instant::now();
    let resp = gw
        .chat_with(
            &t,
            &[("x-mock-chunks", "3"), ("x-mock-chunk-delay-ms", "1500")],
            stream_body(),
        )
        .await;
    assert_eq!(resp.status(), 200);
    let text = read_all(resp).await;
    let took = started.elapsed();
    assert!(text.contains("\"code\":\"upstream_timeout\""), "{text}");
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    // Cut at the first long gap, not after the whole (6 s) stream.
    assert!(took < Duration::from_secs(3), "{took:?}");
    assert_eq!(usage_errors(&gw, 1).await, json!(1));
}

#[tokio::test]
async fn upstream_timeouts_upstream_cut_mid_stream_counts_as_an_error() {
    let mock = Mock::start("cut");
    let gw = start(&mock, "3s", "5s");
    let (_, _, t) = gw.project_and_token(json!({}), json!({})).await;
    let resp = gw
        .chat_with(&t, &[("x-mock-cut-after", "2")], stream_body())
        .await;
    assert_eq!(resp.status(), 200);
    let text = read_all(resp).await;
    assert!(text.contains("\"code\":\"upstream_error\""), "{text}");
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    assert_eq!(usage_errors(&gw, 1).await, json!(1));
}

#[tokio::test]
async fn upstream_timeouts_gaps_below_idle_complete_however_long_the_stream() {
    let mock = Mock::start("steady");
    let gw = start(&mock, "3s", "600ms");
    let (_, _, t) = gw.project_and_token(json!({}), json!({})).await;
    let started = Instant::now();
    let resp = gw
        .chat_with(
            &t,
            &[("x-mock-chunks", "10"), ("x-mock-chunk-delay-ms", "200")],
            stream_body(),
        )
        .await;
    assert_eq!(resp.status(), 200);
    let text = read_all(resp).await;
    // 11 gaps of 200 ms: far above `idle` in total.
    assert!(started.elapsed() >= Duration::from_secs(2));
    assert!(!text.contains("\"error\""), "{text}");
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    assert_eq!(usage_errors(&gw, 1).await, json!(0));
    assert_eq!(mock.count(CHAT).await, 1);
}
