//! Proxy admission per SPEC §2: credentials, models, IPs, body shape and size.

use serde_json::json;

use crate::harness::{Mock, assert_proxy_error, chat_body, error_of, gateway, setup};

#[tokio::test]
async fn proxy_credentials_are_required_and_checked() {
    let (mock, gw, t) = setup().await;

    let resp = gw
        .post("/v1/chat/completions")
        .json(&chat_body("gpt-4o-mini"))
        .send()
        .await
        .unwrap();
    let (status, body) = error_of(resp).await;
    assert_proxy_error(status, &body, 401, "missing_api_key");

    let resp = gw
        .post("/v1/chat/completions")
        .bearer_auth("tok-nope")
        .json(&chat_body("gpt-4o-mini"))
        .send()
        .await
        .unwrap();
    let (status, body) = error_of(resp).await;
    assert_proxy_error(status, &body, 401, "invalid_api_key");

    let resp = gw
        .post("/v1/chat/completions")
        .header("x-api-key", &t)
        .json(&chat_body("gpt-4o-mini"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(mock.count("/v1/chat/completions").await, 1);
}

#[tokio::test]
async fn proxy_model_outside_allowlists_is_forbidden() {
    let mock = Mock::start("up");
    let gw = gateway().provider(&mock, "[\"*\"]").start();
    let (_, _, by_token) = gw
        .project_and_token(json!({}), json!({"allowed_models": ["gpt-4o-mini"]}))
        .await;
    let (_, _, by_project) = gw
        .project_and_token(json!({"allowed_models": ["gpt-4o*"]}), json!({}))
        .await;
    let (_, _, both) = gw
        .project_and_token(
            json!({"allowed_models": ["gpt-4o*"]}),
            json!({"allowed_models": ["gpt-4o", "o1"]}),
        )
        .await;

    let (status, body) = error_of(gw.chat(&by_token, chat_body("gpt-4o")).await).await;
    assert_proxy_error(status, &body, 403, "model_not_allowed");
    let (status, body) = error_of(gw.chat(&by_project, chat_body("o1")).await).await;
    assert_proxy_error(status, &body, 403, "model_not_allowed");
    // Intersection: the token allows o1 but the project does not.
    let (status, body) = error_of(gw.chat(&both, chat_body("o1")).await).await;
    assert_proxy_error(status, &body, 403, "model_not_allowed");
    assert_eq!(gw.chat(&both, chat_body("gpt-4o")).await.status(), 200);
    assert_eq!(
        gw.chat(&by_project, chat_body("gpt-4o-mini"))
            .await
            .status(),
        200
    );
    // A restricted token must name its model even where the endpoint would not need one.
    let resp = gw
        .post("/v1/moderations")
        .bearer_auth(&by_token)
        .json(&json!({"input": "hi"}))
        .send()
        .await
        .unwrap();
    let (status, body) = error_of(resp).await;
    assert_proxy_error(status, &body, 400, "missing_model");
    // Denied requests never reach the upstream.
    assert_eq!(mock.count("/v1/chat/completions").await, 2);
}

#[tokio::test]
async fn proxy_client_ip_outside_cidrs_is_forbidden() {
    let mock = Mock::start("up");
    let gw = gateway().provider(&mock, "[\"*\"]").start();
    let (_, _, t_other) = gw
        .project_and_token(json!({}), json!({"allowed_cidrs": ["10.0.0.0/8"]}))
        .await;
    let (_, _, p_other) = gw
        .project_and_token(
            json!({"allowed_cidrs": ["192.168.0.0/16", "::1/128"]}),
            json!({}),
        )
        .await;
    let (_, _, local) = gw
        .project_and_token(
            json!({"allowed_cidrs": ["127.0.0.0/8"]}),
            json!({"allowed_cidrs": ["127.0.0.1"]}),
        )
        .await;
    for t in [&t_other, &p_other] {
        let (status, body) = error_of(gw.chat(t, chat_body("gpt-4o-mini")).await).await;
        assert_proxy_error(status, &body, 403, "ip_not_allowed");
    }
    // A spoofed X-Forwarded-For from an untrusted peer changes nothing.
    let resp = gw
        .post("/v1/chat/completions")
        .bearer_auth(&t_other)
        .header("x-forwarded-for", "10.1.2.3")
        .json(&chat_body("gpt-4o-mini"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    assert_eq!(
        gw.chat(&local, chat_body("gpt-4o-mini")).await.status(),
        200
    );
}

#[tokio::test]
async fn proxy_trusted_proxy_forwarded_for_is_used_for_cidrs() {
    let mock = Mock::start("up");
    let gw = gateway()
        .provider(&mock, "[\"*\"]")
        .yaml("server: { listen: \"127.0.0.1:0\", trusted_proxies: [\"127.0.0.0/8\"] }")
        .start();
    let (_, _, t) = gw
        .project_and_token(json!({}), json!({"allowed_cidrs": ["10.0.0.0/8"]}))
        .await;
    let resp = gw
        .post("/v1/chat/completions")
        .bearer_auth(&t)
        .header("x-forwarded-for", "10.1.2.3")
        .json(&chat_body("gpt-4o-mini"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let resp = gw
        .post("/v1/chat/completions")
        .bearer_auth(&t)
        .header("x-forwarded-for", "10.1.2.3, 8.8.8.8")
        .json(&chat_body("gpt-4o-mini"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
}

#[tokio::test]
async fn proxy_body_limit_is_exact_and_bad_json_is_rejected() {
    let mock = Mock::start("up");
    let gw = gateway()
        .provider(&mock, "[\"*\"]")
        .yaml("server: { listen: \"127.0.0.1:0\", max_body_bytes: 1024 }")
        .start();
    let (_, _, t) = gw.project_and_token(json!({}), json!({})).await;
    let base = serde_json::to_string(&chat_body("gpt-4o-mini")).unwrap();
    let exact = format!("{base}{}", " ".repeat(1024 - base.len()));
    assert_eq!(exact.len(), 1024);
    let resp = gw
        .post("/v1/chat/completions")
        .bearer_auth(&t)
        .header("content-type", "application/json")
        .body(exact.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let resp = gw
        .post("/v1/chat/completions")
        .bearer_auth(&t)
        .header("content-type", "application/json")
        .body(format!("{exact} "))
        .send()
        .await
        .unwrap();
    let (status, body) = error_of(resp).await;
    assert_proxy_error(status, &body, 413, "payload_too_large");
    // Chunked upload without a Content-Length is cut off too.
    let stream =
        futures_util::stream::iter((0..4).map(|_| Ok::<_, std::io::Error>(vec![b' '; 400])));
    let resp = gw
        .post("/v1/chat/completions")
        .bearer_auth(&t)
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);

    for bad in ["{\"model\": ", "[1,2]", "", "{\"model\": 5}", "\u{0}"] {
        let resp = gw
            .post("/v1/chat/completions")
            .bearer_auth(&t)
            .header("content-type", "application/json")
            .body(bad)
            .send()
            .await
            .unwrap();
        let (status, body) = error_of(resp).await;
        assert_proxy_error(status, &body, 400, "invalid_json");
    }
    let resp = gw
        .post("/v1/chat/completions")
        .bearer_auth(&t)
        .json(&json!({"messages": []}))
        .send()
        .await
        .unwrap();
    let (status, body) = error_of(resp).await;
    assert_proxy_error(status, &body, 400, "missing_model");
    assert_eq!(mock.count("/v1/chat/completions").await, 1);
}

#[tokio::test]
async fn proxy_unknown_endpoints_and_models_are_not_found() {
    let mock = Mock::start("up");
    let gw = gateway()
        .provider(&mock, "[\"gpt-4o-mini\", \"gpt-4o\"]")
        .start();
    let (_, _, t) = gw.project_and_token(json!({}), json!({})).await;
    for (method, path) in [
        ("POST", "/v1/files"),
        ("GET", "/v1/chat/completions"),
        ("DELETE", "/v1/models"),
    ] {
        let resp = gw
            .client()
            .request(method.parse().unwrap(), format!("{}{path}", gw.url))
            .bearer_auth(&t)
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        let (status, body) = error_of(resp).await;
        assert!(status == 404, "{method} {path}: {status} {body}");
        assert_eq!(
            body["error"]["code"], "unknown_endpoint",
            "{method} {path}: {body}"
        );
    }
    let (status, body) = error_of(gw.chat(&t, chat_body("claude-3")).await).await;
    assert_proxy_error(status, &body, 404, "model_not_found");
}

#[tokio::test]
async fn proxy_models_list_is_filtered_by_allowlists() {
    let mock = Mock::start("up");
    let gw = gateway()
        .provider(
            &mock,
            "[\"gpt-4o-mini\", \"gpt-4o\", \"text-embedding-3-small\"]",
        )
        .start();
    let (_, _, all) = gw.project_and_token(json!({}), json!({})).await;
    let (_, _, some) = gw
        .project_and_token(
            json!({"allowed_models": ["gpt-4o*"]}),
            json!({"allowed_models": ["gpt-4o-mini", "text-embedding-3-small"]}),
        )
        .await;
    let ids = |v: serde_json::Value| -> Vec<String> {
        v["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let v: serde_json::Value = gw
        .client()
        .get(format!("{}/v1/models", gw.url))
        .bearer_auth(&all)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["object"], "list");
    assert_eq!(
        ids(v),
        vec!["gpt-4o", "gpt-4o-mini", "text-embedding-3-small"]
    );
    let v: serde_json::Value = gw
        .client()
        .get(format!("{}/v1/models", gw.url))
        .bearer_auth(&some)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ids(v), vec!["gpt-4o-mini"]);
    let resp = gw
        .client()
        .get(format!("{}/v1/models", gw.url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
}

#[tokio::test]
async fn proxy_glob_provider_models_come_from_upstream_list() {
    let (mock, gw, t) = setup().await;
    let mut ids = Vec::new();
    for _ in 0..50 {
        let v: serde_json::Value = gw
            .client()
            .get(format!("{}/v1/models", gw.url))
            .bearer_auth(&t)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        ids = v["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap().to_owned())
            .collect();
        if !ids.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(ids, vec!["gpt-4o", "gpt-4o-mini", "text-embedding-3-small"]);
    // The listing costs no tokens: only GET /models reached the upstream.
    let stats = mock.stats().await;
    assert!(
        stats["by_path"].get("/v1/chat/completions").is_none(),
        "{stats}"
    );
}
