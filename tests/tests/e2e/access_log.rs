//! The access log: one `info` line per request (target `palisade::access`) with
//! the route pattern, status, duration, bytes sent, ids, provider, model, upstream
//! status and attempts; never a secret or a prompt; `logging.access_log: false`
//! writes none.

use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::{Gateway, MANAGEMENT_TOKEN, Mock, gateway};

const PROMPT: &str = "the-prompt-text-that-must-not-be-logged";

/// The access lines in the gateway's log.
fn access_lines(logs: &str) -> Vec<Value> {
    logs.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["target"] == "palisade::access")
        .collect()
}

/// Waits until the log holds an access line for each of `ids`.
async fn lines_for(gw: &Gateway, ids: &[String]) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let lines = access_lines(&gw.logs());
        if ids
            .iter()
            .all(|id| lines.iter().any(|l| l["request_id"] == id.as_str()))
        {
            return lines;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "access lines missing:\n{}",
            gw.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn request_id(resp: &reqwest::Response) -> String {
    resp.headers()["x-request-id"].to_str().unwrap().to_owned()
}

fn one<'a>(lines: &'a [Value], id: &str) -> &'a Value {
    let mine: Vec<&Value> = lines.iter().filter(|l| l["request_id"] == id).collect();
    assert_eq!(mine.len(), 1, "one line per request: {mine:?}");
    mine[0]
}

fn chat(stream: bool) -> Value {
    json!({"model": "gpt-4o-mini", "stream": stream,
        "messages": [{"role": "user", "content": PROMPT}]})
}

#[tokio::test]
async fn access_log_one_line_per_request_without_secrets() {
    let mock = Mock::start("up");
    let gw = gateway().provider(&mock, "[\"*\"]").start();
    let (project_id, token_id, token) = gw.project_and_token(json!({}), json!({})).await;

    let plain = gw
        .post("/v1/chat/completions?api_key=query-secret")
        .bearer_auth(&token)
        .json(&chat(false))
        .send()
        .await
        .unwrap();
    let plain_id = request_id(&plain);
    let plain_len = plain.bytes().await.unwrap().len();

    let streamed = gw
        .post("/v1/chat/completions")
        .bearer_auth(&token)
        .header("x-mock-chunks", "6")
        .json(&chat(true))
        .send()
        .await
        .unwrap();
    let stream_id = request_id(&streamed);
    let stream_len = streamed.bytes().await.unwrap().len();

    // Retried once on the same provider (a 503, then the answer).
    let retried = gw
        .post("/v1/chat/completions")
        .bearer_auth(&token)
        .header("x-mock-status", "500")
        .json(&chat(false))
        .send()
        .await
        .unwrap();
    let retried_id = request_id(&retried);
    let retried_status = retried.status().as_u16();

    let denied = gw
        .post("/v1/chat/completions")
        .bearer_auth("tok-not-a-real-token-0000000000000000000000")
        .json(&chat(false))
        .send()
        .await
        .unwrap();
    let denied_id = request_id(&denied);

    let manage = gw
        .get(&format!("/manage/tokens/{token_id}"))
        .bearer_auth(MANAGEMENT_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(manage.status(), 200);
    let manage_id = request_id(&manage);
    let manage_len = manage.bytes().await.unwrap().len();

    let ids = [
        plain_id.clone(),
        stream_id.clone(),
        retried_id.clone(),
        denied_id.clone(),
        manage_id.clone(),
    ];
    let lines = lines_for(&gw, &ids).await;

    let l = one(&lines, &plain_id);
    assert_eq!(l["level"], "INFO");
    assert_eq!(l["method"], "POST");
    assert_eq!(l["route"], "/v1/chat/completions");
    assert_eq!(l["status"], 200);
    assert_eq!(l["bytes"], plain_len);
    assert!(l["duration_ms"].as_f64().unwrap() > 0.0, "{l}");
    assert_eq!(l["token_id"], token_id.as_str());
    assert_eq!(l["project_id"], project_id.as_str());
    assert_eq!(l["provider"], mock.name.as_str());
    assert_eq!(l["model"], "gpt-4o-mini");
    assert_eq!(l["upstream_status"], 200);
    assert_eq!(l["attempts"], 1);

    let l = one(&lines, &stream_id);
    assert_eq!(
        (l["status"].clone(), l["bytes"].clone()),
        (json!(200), json!(stream_len))
    );
    assert_eq!(l["upstream_status"], 200);

    let l = one(&lines, &retried_id);
    assert_eq!(l["status"], retried_status);
    assert_eq!(l["upstream_status"], 500);
    assert!(l["attempts"].as_u64().unwrap() > 1, "{l}");

    let l = one(&lines, &denied_id);
    assert_eq!(l["status"], 401);
    assert_eq!(l["attempts"], 0);
    assert!(
        l.get("token_id").is_none() && l.get("provider").is_none(),
        "{l}"
    );

    let l = one(&lines, &manage_id);
    assert_eq!(l["method"], "GET");
    assert_eq!(l["route"], "/manage/tokens/{id}");
    assert_eq!(l["bytes"], manage_len);
    assert!(l.get("attempts").is_none(), "{l}");

    let logs = gw.logs();
    for secret in [token.as_str(), MANAGEMENT_TOKEN, PROMPT, "query-secret"] {
        assert!(!logs.contains(secret), "{secret} in the log:\n{logs}");
    }
}

#[tokio::test]
async fn access_log_off_writes_no_lines() {
    let mock = Mock::start("up");
    let mut gw = gateway()
        .provider(&mock, "[\"*\"]")
        .yaml("logging: { level: \"palisade=debug,info\", format: json, access_log: false }")
        .start();
    let (_, _, token) = gw.project_and_token(json!({}), json!({})).await;
    let resp = gw
        .post("/v1/chat/completions")
        .bearer_auth(&token)
        .json(&chat(false))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    resp.bytes().await.unwrap();
    // Everything logged is out once the gateway has said its last line.
    assert_eq!(gw.terminate(), Some(0));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !gw.logs().contains("audit records written") {
        assert!(tokio::time::Instant::now() < deadline, "{}", gw.logs());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let logs = gw.logs();
    assert!(
        logs.contains("request finished"),
        "requests were served: {logs}"
    );
    assert!(access_lines(&logs).is_empty(), "{logs}");
}
