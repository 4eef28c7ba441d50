//! The official `openai` Python SDK through Palisade to upstreams speaking each
//! dialect (`tests/python/dialect_sdk.py`): chat whole and streamed with and
//! without `include_usage`, tools, the Responses API, base64 embeddings,
//! `models.retrieve`; and a permanent refusal the SDK must not retry.

use serde_json::{Value, json};

use crate::harness::{Gateway, start};
use crate::python_sdk::{Py, run_python};
use crate::upstream_dialects::usage_row;

/// Runs the script in `mode` against `gw` with `token`; its JSON summary.
async fn run_script(gw: &Gateway, token: &str, mode: &str, env: &[(&str, &str)]) -> Value {
    let env = env
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let what = Py::Script("dialect_sdk.py", vec![mode.to_owned()]);
    run_python(gw, token, what, env).await
}

async fn sdk_dialect(dialect: &str, gzip: Option<&str>) {
    let (_mock, gw) = start("");
    let (_, tid, token) = gw.project_and_token(json!({}), json!({})).await;
    let mut env = vec![("MOCK_DIALECT", dialect)];
    if let Some(g) = gzip {
        env.push(("MOCK_GZIP", g));
    }
    let summary = run_script(&gw, &token, "dialect", &env).await;
    assert_eq!(summary["dialect"], dialect);
    assert_eq!(summary["model"], "gpt-4o-mini");
    // Every chat request of the run is recorded with tokens (2 non-streamed chat,
    // 3 streamed, 2 responses and 3 embeddings calls: at least the chats count).
    let row = usage_row(&gw, &tid, 10).await;
    assert!(
        row["prompt_tokens"].as_i64() > Some(0) && row["completion_tokens"].as_i64() > Some(0),
        "{dialect}: usage recorded without tokens: {row}"
    );
}

#[tokio::test]
async fn sdk_dialect_openai_works_end_to_end() {
    sdk_dialect("openai", None).await;
}

#[tokio::test]
async fn sdk_dialect_litellm_works_end_to_end() {
    sdk_dialect("litellm", None).await;
}

#[tokio::test]
async fn sdk_dialect_starlette_works_end_to_end() {
    sdk_dialect("starlette", None).await;
}

#[tokio::test]
async fn sdk_dialect_llamacpp_works_end_to_end() {
    sdk_dialect("llamacpp", None).await;
}

#[tokio::test]
async fn sdk_dialect_lastchunk_works_end_to_end() {
    sdk_dialect("lastchunk", None).await;
}

#[tokio::test]
async fn sdk_dialect_gzip_upstream_works_end_to_end() {
    // The SDK sends `Accept-Encoding: gzip`; the upstream compresses when allowed.
    sdk_dialect("openai", Some("1")).await;
}

#[tokio::test]
async fn sdk_quota_exceeded_is_not_retried_by_the_sdk() {
    let (mock, gw) = start("");
    let (_, tid, token) = gw
        .project_and_token(json!({}), json!({"max_requests": 1}))
        .await;
    let summary = run_script(&gw, &token, "quota", &[]).await;
    assert_eq!(summary["code"], "quota_exceeded");
    assert_eq!(summary["requests_for_refused_call"], 1);
    // Palisade saw the refused call once (one audited denial), the upstream never.
    let denied = gw
        .wait_for(
            &format!("/manage/audit?action=proxy.denied&token_id={tid}"),
            |b| !b["data"].as_array().unwrap().is_empty(),
        )
        .await;
    let reasons: Vec<&Value> = denied["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["details"]["reason"])
        .collect();
    assert_eq!(reasons, vec!["quota_exceeded"], "{denied}");
    assert_eq!(mock.count("/v1/chat/completions").await, 1);
}
