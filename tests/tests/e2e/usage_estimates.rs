//! Usage without upstream help: a stream whose upstream never reports usage
//! (llama.cpp ignores `stream_options`; legacy completions streams carry none) is
//! recorded with estimated token counts and `usage_estimated = 1`; a stream whose
//! upstream reports usage keeps the upstream's numbers with `usage_estimated = 0`.

use std::time::Duration;

use sea_orm::sqlx::{Connection, Row, sqlite::SqliteConnection};
use serde_json::{Value, json};

use crate::harness::{Gateway, setup};

/// The usage rows, oldest first: (endpoint, prompt, completion, total, estimated).
type UsageRow = (String, Option<i64>, Option<i64>, Option<i64>, bool);

async fn usage_rows(gw: &Gateway, n: usize) -> Vec<UsageRow> {
    let url = format!("sqlite://{}", gw.db_path().display());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let mut conn = SqliteConnection::connect(&url).await.unwrap();
        let rows = sea_orm::sqlx::query(
            "SELECT endpoint, prompt_tokens, completion_tokens, total_tokens, usage_estimated \
             FROM usage_records ORDER BY id",
        )
        .fetch_all(&mut conn)
        .await
        .unwrap();
        if rows.len() >= n {
            return rows
                .iter()
                .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get::<bool, _>(4)))
                .collect();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} of {n} usage rows",
            rows.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn stream(gw: &Gateway, token: &str, path: &str, dialect: &str, body: Value) -> String {
    let resp = gw
        .post(path)
        .bearer_auth(token)
        .header("x-mock-dialect", dialect)
        .header("x-mock-chunks", "4")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    String::from_utf8(resp.bytes().await.unwrap().to_vec()).unwrap()
}

#[tokio::test]
async fn usage_streams_without_upstream_usage_are_estimated() {
    let (_mock, gw, t) = setup().await;
    let chat = json!({"model": "gpt-4o-mini", "stream": true,
        "messages": [{"role": "user", "content": "Tell me a short story about a lighthouse"}]});
    // llama.cpp: Palisade asks for the usage chunk, the server ignores it.
    let llama = stream(&gw, &t, "/v1/chat/completions", "llamacpp", chat.clone()).await;
    assert!(!llama.contains("\"usage\""), "{llama}");
    let openai = stream(&gw, &t, "/v1/chat/completions", "openai", chat).await;
    // Legacy completions streams carry no usage either.
    let legacy = json!({"model": "mistral-small", "stream": true, "prompt": "abcdefgh"});
    stream(&gw, &t, "/v1/completions", "openai", legacy).await;

    let rows = usage_rows(&gw, 3).await;
    let (_, prompt, completion, total, estimated) = rows[0].clone();
    assert!(estimated, "{rows:?}");
    let (prompt, completion) = (prompt.unwrap(), completion.unwrap());
    // The tokenizer's count of the message, plus the chat framing (3 + 3).
    assert!((8..=20).contains(&prompt), "{rows:?}");
    assert!(completion >= 4, "four content frames: {rows:?}");
    assert_eq!(total, Some(prompt + completion));
    let llama_completion = completion;

    // The upstream's own numbers when it reports them.
    let usage_of = |body: &str| {
        body.split("data: ")
            .filter_map(|d| serde_json::from_str::<Value>(d.trim()).ok())
            .find_map(|v| v.get("usage").filter(|u| !u.is_null()).cloned())
    };
    assert!(
        usage_of(&openai).is_none(),
        "the client did not ask: {openai}"
    );
    let (_, prompt, completion, _, estimated) = rows[1].clone();
    assert!(!estimated, "{rows:?}");
    assert!(prompt.is_some() && completion.is_some(), "{rows:?}");

    // Other models: one token per four bytes of the prompt.
    assert_eq!(
        rows[2],
        (
            "/completions".to_owned(),
            Some(2),
            rows[2].2,
            rows[2].3,
            true
        )
    );
    assert!(rows[2].2.unwrap() > 0, "{rows:?}");

    let (_, by_model) = gw.manage("GET", "/manage/usage?group_by=model", None).await;
    let estimated: i64 = by_model["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["estimated_requests"].as_i64().unwrap())
        .sum();
    assert_eq!(estimated, 2, "{by_model}");
    let est = gw
        .metric("palisade_usage_tokens_total{kind=\"completion\",estimated=\"true\"}")
        .await;
    assert!(est >= llama_completion as f64, "{est}");
    let reported = gw
        .metric("palisade_usage_records_with_tokens_total{estimated=\"false\"}")
        .await;
    assert_eq!(reported, 1.0);
}
