//! Usage records: one per admitted request, token counts from the upstream's
//! `usage`, aggregates, and no loss across a SIGTERM (estimates when the upstream
//! reports none: `usage_estimates`).

use serde_json::{Value, json};

use crate::harness::{Mock, chat_body, gateway, setup};

fn rows(v: &Value) -> &Vec<Value> {
    v["data"].as_array().unwrap()
}

#[tokio::test]
async fn usage_counts_tokens_and_aggregates() {
    let (_mock, gw, t) = setup().await;
    assert_eq!(gw.chat(&t, chat_body("gpt-4o-mini")).await.status(), 200);
    // Streamed with include_usage: the usage chunk is counted.
    let resp = gw
        .post("/v1/chat/completions")
        .bearer_auth(&t)
        .header("x-mock-chunks", "3")
        .json(&json!({"model": "gpt-4o", "stream": true, "stream_options": {"include_usage": true}, "messages": [{"role": "user", "content": "a b"}]}))
        .send()
        .await
        .unwrap();
    resp.bytes().await.unwrap();
    // An upstream error is still a usage record, with an error status.
    gw.post("/v1/chat/completions")
        .bearer_auth(&t)
        .header("x-mock-status", "500")
        .json(&chat_body("gpt-4o"))
        .send()
        .await
        .unwrap();

    let by_model = gw
        .wait_for("/manage/usage?group_by=model", |b| {
            rows(b)
                .iter()
                .map(|r| r["requests"].as_i64().unwrap())
                .sum::<i64>()
                >= 3
        })
        .await;
    let model = |m: &str| {
        rows(&by_model)
            .iter()
            .find(|r| r["key"] == m)
            .unwrap()
            .clone()
    };
    let mini = model("gpt-4o-mini");
    assert_eq!(mini["requests"], 1);
    assert_eq!(mini["errors"], 0);
    assert_eq!(mini["prompt_tokens"], 2);
    assert_eq!(mini["completion_tokens"], 4);
    let four = model("gpt-4o");
    assert_eq!(four["requests"], 2);
    assert_eq!(four["errors"], 1);
    assert_eq!(four["completion_tokens"], 3);

    let (_, by_day) = gw.manage("GET", "/manage/usage?group_by=day", None).await;
    assert_eq!(rows(&by_day).len(), 1);
    assert_eq!(
        rows(&by_day)[0]["key"],
        chrono::Utc::now().format("%Y-%m-%d").to_string()
    );
    assert_eq!(rows(&by_day)[0]["requests"], 3);
    let (_, by_token) = gw.manage("GET", "/manage/usage?group_by=token", None).await;
    assert_eq!(rows(&by_token).len(), 1);
    assert!(uuid::Uuid::parse_str(rows(&by_token)[0]["key"].as_str().unwrap()).is_ok());
    let (status, _) = gw.manage("GET", "/manage/usage?group_by=week", None).await;
    assert_eq!(status, 422);
}

#[tokio::test]
async fn usage_no_record_is_lost_across_sigterm() {
    let mock = Mock::start("up");
    let mut gw = gateway()
        .provider(&mock, "[\"*\"]")
        // A small buffer and slow flushes: producers must wait, and nothing may drop.
        .yaml("audit: { flush_interval: 1s, batch_size: 300, buffer: 256 }")
        .start();
    let (_, _, t) = gw.project_and_token(json!({}), json!({})).await;
    const N: usize = 5000;
    // Denied requests alongside, so audit events are in flight at the SIGTERM
    // too: unknown tokens are audited in aggregate (the first at once, the rest
    // as a count filed at the latest at shutdown).
    const DENIED: usize = 400;
    let (statuses, denied) = tokio::join!(
        gw.chat_many(&t, N, 64),
        gw.chat_many("tok-not-a-real-token-0000000000000000000000", DENIED, 8)
    );
    assert!(statuses.iter().all(|s| *s == 200));
    // Past the per-IP allowance for unknown tokens, 429 instead of 401.
    assert!(denied.iter().all(|s| *s == 401 || *s == 429));
    // The small buffer made producers wait, and that is visible.
    assert!(gw.metric("palisade_audit_waits_total").await > 0.0);
    // SIGTERM right after the last response, then count after a restart.
    gw.restart();
    let (_, body) = gw.manage("GET", "/manage/usage?group_by=day", None).await;
    assert_eq!(rows(&body)[0]["requests"], N as i64, "{body}");
    // Every audit event too: the 2 of the setup and the denials (their counts
    // add up to every one), in the table and in the JSON-lines file.
    let (_, body) = gw
        .manage("GET", "/manage/audit?action=proxy.denied&limit=500", None)
        .await;
    let counted: u64 = rows(&body)
        .iter()
        .map(|e| e["details"]["count"].as_u64().unwrap())
        .sum();
    assert_eq!(counted, DENIED as u64, "{body}");
    let file = std::fs::read_to_string(gw.dir.path().join("data/audit.jsonl")).unwrap();
    assert_eq!(file.lines().count(), rows(&body).len() + 2);
}

#[tokio::test]
async fn usage_streams_are_accounted_without_changing_what_the_client_sees() {
    let (mock, gw, t) = setup().await;
    let fetch = |req: reqwest::RequestBuilder, include: bool| async move {
        let mut body = json!({"model": "gpt-4o-mini", "stream": true, "messages": [{"role": "user", "content": "one two three"}]});
        if include {
            body["stream_options"] = json!({"include_usage": true});
        }
        req.header("x-mock-chunks", "6")
            .header("x-mock-fixed", "1")
            .json(&body)
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap()
    };
    let direct = |include| {
        fetch(
            mock.client()
                .post(format!("{}/chat/completions", mock.base_url())),
            include,
        )
    };
    let plain_direct = direct(false).await;
    let plain_via = fetch(gw.post("/v1/chat/completions").bearer_auth(&t), false).await;
    assert_eq!(
        String::from_utf8_lossy(&plain_via),
        String::from_utf8_lossy(&plain_direct)
    );
    assert!(!String::from_utf8_lossy(&plain_via).contains("usage"));
    // Upstream was asked for usage all the same.
    let sent: Value =
        serde_json::from_str(mock.last_request().await["body"].as_str().unwrap()).unwrap();
    assert_eq!(sent["stream_options"]["include_usage"], true);

    let with_direct = direct(true).await;
    let with_via = fetch(gw.post("/v1/chat/completions").bearer_auth(&t), true).await;
    assert_eq!(
        String::from_utf8_lossy(&with_via),
        String::from_utf8_lossy(&with_direct)
    );
    assert!(String::from_utf8_lossy(&with_via).contains("\"usage\":{"));

    let body = gw
        .wait_for("/manage/usage?group_by=model", |b| {
            rows(b).first().is_some_and(|r| r["requests"] == 2)
        })
        .await;
    let r = &rows(&body)[0];
    assert_eq!(
        r["prompt_tokens"], 6,
        "3 words in each of the two streams: {body}"
    );
    assert_eq!(r["completion_tokens"], 12, "{body}");
}

#[tokio::test]
async fn usage_disabled_records_nothing_but_audit_goes_on() {
    let mock = Mock::start("up");
    let gw = gateway()
        .provider(&mock, "[\"*\"]")
        .yaml("usage: { enabled: false }")
        .start();
    let (_, _, t) = gw.project_and_token(json!({}), json!({})).await;
    assert_eq!(gw.chat(&t, chat_body("gpt-4o-mini")).await.status(), 200);
    gw.chat("tok-bad", chat_body("gpt-4o-mini")).await;
    gw.wait_for("/manage/audit?action=proxy.denied", |b| {
        !b["data"].as_array().unwrap().is_empty()
    })
    .await;
    let (_, body) = gw.manage("GET", "/manage/usage", None).await;
    assert!(rows(&body).is_empty(), "{body}");
}
