//! What reaches the upstream and what comes back (SPEC §2).

use std::time::Duration;

use serde_json::json;

use crate::harness::{Mock, PROVIDER_KEY, assert_proxy_error, chat_body, error_of, gateway, setup};

#[tokio::test]
async fn forwarding_substitutes_credentials_and_strips_headers() {
    let (mock, gw, t) = setup().await;
    let resp = gw
        .post("/v1/chat/completions?trace=1")
        .bearer_auth(&t)
        .header("cookie", "session=abc")
        .header("x-forwarded-for", "6.6.6.6")
        .header("x-forwarded-host", "evil")
        .header("forwarded", "for=6.6.6.6")
        .header("x-real-ip", "6.6.6.6")
        .header("openai-organization", "org-kept")
        .header("x-custom-thing", "kept")
        .header("x-request-id", "client-req.42")
        .json(&chat_body("gpt-4o-mini"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-request-id"], "client-req.42");
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "mock reply: hello there"
    );

    let seen = mock.last_request().await;
    let h = &seen["headers"];
    assert_eq!(h["authorization"], format!("Bearer {PROVIDER_KEY}"));
    for gone in [
        "cookie",
        "x-forwarded-for",
        "x-forwarded-host",
        "forwarded",
        "x-real-ip",
        "x-api-key",
    ] {
        assert!(h.get(gone).is_none(), "{gone} reached the upstream: {seen}");
    }
    assert_eq!(h["openai-organization"], "org-kept");
    assert_eq!(h["x-custom-thing"], "kept");
    assert_eq!(h["x-request-id"], "client-req.42");
    assert_eq!(seen["query"], "trace=1");
    assert!(
        !seen.to_string().contains(&t),
        "client token reached the upstream"
    );
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(seen["body"].as_str().unwrap()).unwrap(),
        chat_body("gpt-4o-mini")
    );
}

#[tokio::test]
async fn forwarding_request_ids_are_validated_or_generated() {
    let (mock, gw, t) = setup().await;
    for bad in ["has space", "x".repeat(129).as_str(), "semi;colon"] {
        let resp = gw
            .post("/v1/chat/completions")
            .bearer_auth(&t)
            .header("x-request-id", bad)
            .json(&chat_body("gpt-4o-mini"))
            .send()
            .await
            .unwrap();
        let id = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
        let uuid = uuid::Uuid::parse_str(&id).unwrap();
        assert_eq!(uuid.get_version_num(), 7);
        assert_eq!(mock.last_request().await["headers"]["x-request-id"], id);
    }
    // Every route, errors included, carries one.
    for path in [
        "/health",
        "/ready",
        "/manage/projects",
        "/nowhere",
        "/v1/models",
    ] {
        let resp = gw
            .client()
            .get(format!("{}{path}", gw.url))
            .send()
            .await
            .unwrap();
        assert!(resp.headers().contains_key("x-request-id"), "{path}");
    }
}

#[tokio::test]
async fn forwarding_project_upstream_key_replaces_provider_key() {
    let mock = Mock::start("up");
    let gw = gateway().provider(&mock, "[\"*\"]").start();
    let (_, _, t) = gw
        .project_and_token(json!({"upstream_api_key": "sk-project-own-key"}), json!({}))
        .await;
    assert_eq!(gw.chat(&t, chat_body("gpt-4o-mini")).await.status(), 200);
    assert_eq!(
        mock.last_request().await["headers"]["authorization"],
        "Bearer sk-project-own-key"
    );
}

#[tokio::test]
async fn forwarding_upstream_client_errors_pass_through_unchanged() {
    let (_mock, gw, t) = setup().await;
    let resp = gw
        .post("/v1/chat/completions")
        .bearer_auth(&t)
        .header("x-mock-status", "400")
        .json(&chat_body("gpt-4o-mini"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert_eq!(resp.headers()["x-mock-header"], "kept");
    let text = resp.text().await.unwrap();
    assert_eq!(
        text,
        r#"{"error":{"message":"mock bad request","type":"invalid_request_error","param":null,"code":"mock_bad_request"}}"#
    );
    // 429 is retryable: retried (after its Retry-After), and when every attempt
    // is rate limited the client gets 429 `upstream_rate_limited` (SPEC §2).
    let resp = gw
        .post("/v1/chat/completions")
        .bearer_auth(&t)
        .header("x-mock-status", "429")
        .header("x-mock-retry-after", "0")
        .json(&chat_body("gpt-4o-mini"))
        .send()
        .await
        .unwrap();
    let (status, body) = error_of(resp).await;
    assert_proxy_error(status, &body, 429, "upstream_rate_limited");
}

#[tokio::test]
async fn forwarding_other_endpoints_reach_the_upstream() {
    let (_mock, gw, t) = setup().await;
    let resp = gw
        .post("/v1/embeddings")
        .bearer_auth(&t)
        .json(&json!({"model": "text-embedding-3-small", "input": ["a", "b"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["data"].as_array().unwrap().len(), 2);
    let resp = gw
        .post("/v1/moderations")
        .bearer_auth(&t)
        .json(&json!({"input": "hi"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // Multipart: the model is read from the form field.
    let boundary = "XyZ";
    let body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nwhisper-1\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n\r\nRIFF\r\n--{boundary}--\r\n"
    );
    let resp = gw
        .post("/v1/audio/transcriptions")
        .bearer_auth(&t)
        .header(
            "content-type",
            format!("multipart/form-data; boundary={boundary}"),
        )
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.json::<serde_json::Value>().await.unwrap()["path"],
        "/v1/audio/transcriptions"
    );
}

#[tokio::test]
async fn forwarding_unreachable_and_hanging_upstreams_map_to_502_and_504() {
    let hanging = Mock::start("hang");
    let gw = gateway()
        // No health check: the down provider must be tried (and fail), not skipped.
        .provider_yaml("{ name: down, base_url: \"http://127.0.0.1:9/v1\", models: [\"down-*\"], timeouts: { connect: 1s, first_byte: 1s, idle: 1s }, health_check: { enabled: false } }")
        .provider_yaml(&format!("{{ name: hang, base_url: \"{}\", models: [\"gpt-*\"], timeouts: {{ connect: 1s, first_byte: 500ms, idle: 1s }} }}", hanging.base_url()))
        .start();
    let (_, _, t) = gw.project_and_token(json!({}), json!({})).await;
    let (status, body) = error_of(gw.chat(&t, chat_body("down-model")).await).await;
    assert_proxy_error(status, &body, 502, "upstream_error");
    let started = tokio::time::Instant::now();
    let resp = gw
        .post("/v1/chat/completions")
        .bearer_auth(&t)
        .header("x-mock-hang", "1")
        .json(&chat_body("gpt-4o-mini"))
        .send()
        .await
        .unwrap();
    let (status, body) = error_of(resp).await;
    assert_proxy_error(status, &body, 504, "upstream_timeout");
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(!gw.logs().contains("panicked"));
}

#[tokio::test]
async fn ops_health_and_ready() {
    let mock = Mock::start("up");
    let gw = gateway().provider(&mock, "[\"*\"]").start();
    let v: serde_json::Value = gw
        .client()
        .get(format!("{}/health", gw.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v, json!({"status": "ok"}));
    let resp = gw
        .client()
        .get(format!("{}/ready", gw.url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}
