//! `/metrics`: Prometheus text behind the management token or `metrics.token`,
//! with the series operators rely on, fed by real traffic.

use serde_json::json;

use crate::harness::{MANAGEMENT_TOKEN, chat_body, start};

const SCRAPE_TOKEN: &str = "scrape-token-for-e2e-0123456789abcdef";

#[tokio::test]
async fn metrics_need_credentials_and_report_real_traffic() {
    let (_mock, gw) = start(&format!("metrics: {{ token: \"{SCRAPE_TOKEN}\" }}"));
    let (_, _, token) = gw.project_and_token(json!({}), json!({})).await;
    for _ in 0..3 {
        assert_eq!(
            gw.chat(&token, chat_body("gpt-4o-mini")).await.status(),
            200
        );
    }
    assert_eq!(
        gw.chat("tok-wrong", chat_body("gpt-4o-mini"))
            .await
            .status(),
        401
    );

    // Closed without credentials, and to a wrong one.
    let r = gw.get("/metrics").send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = gw.get("/metrics").bearer_auth("nope").send().await.unwrap();
    assert_eq!(r.status(), 401);
    // Open to the scrape token and to the management token.
    let r = gw
        .get("/metrics")
        .bearer_auth(MANAGEMENT_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = gw
        .get("/metrics")
        .bearer_auth(SCRAPE_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    let text = r.text().await.unwrap();
    for series in [
        "palisade_http_requests_total{route=\"/v1/chat/completions\",status=\"200\"} 3",
        "palisade_http_requests_total{route=\"/v1/chat/completions\",status=\"401\"} 1",
        "palisade_http_requests_total{route=\"/manage/projects\",status=\"201\"} 1",
        "palisade_request_duration_seconds_count{route=\"/v1/chat/completions\"} 4",
        "palisade_upstream_ttfb_seconds_count{provider=\"up\"} 3",
        "palisade_rejected_total{reason=\"invalid_api_key\"} 1",
        "palisade_auth_failures_total{reason=\"invalid_api_key\"} 1",
        "palisade_auth_failures_total{reason=\"metrics\"} 2",
        "palisade_tokens_total{kind=\"active\"} 1",
        "palisade_provider_state{provider=\"up\"} 0",
        "palisade_queue_in_flight 0",
        "palisade_queue_waiting 0",
        "palisade_audit_backlog ",
    ] {
        assert!(text.contains(series), "missing {series:?} in:\n{text}");
    }
    // Raw paths never become labels (one series per id would grow without bound).
    assert!(!text.contains(&token), "a token in the metrics");
    assert!(!text.contains("/manage/tokens/0"), "{text}");
}

#[tokio::test]
async fn metrics_upstream_ttfb_recorded_with_usage_disabled() {
    // Time to first byte describes the upstream: it used to be measured only on
    // the way to a usage record, so `usage.enabled: false` left it empty.
    let (_mock, gw) = start("usage: { enabled: false }");
    let (_, _, token) = gw.project_and_token(json!({}), json!({})).await;
    let mut streamed = chat_body("gpt-4o-mini");
    streamed["stream"] = json!(true);
    for body in [chat_body("gpt-4o-mini"), streamed] {
        let resp = gw.chat(&token, body).await;
        assert_eq!(resp.status(), 200);
        // The whole body read: its first chunk has been through the gateway.
        assert!(!resp.text().await.unwrap().is_empty());
    }
    let text = gw.metrics_text().await;
    let series = "palisade_upstream_ttfb_seconds_count{provider=\"up\"} 2";
    assert!(text.contains(series), "missing {series:?} in:\n{text}");
}
