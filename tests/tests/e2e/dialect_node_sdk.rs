//! The official `openai` Node SDK streaming through Palisade to upstreams speaking
//! each dialect (`tests/node/dialect_stream.cjs`): chat streams with and without
//! `include_usage`, a streamed tool call, a Responses API stream.
//!
//! The SDK and Node are found as in [`crate::node_sdk`] (`tests/node`, pinned by its
//! lock file, `npm ci` by `.ci/run`). Without them the test fails: it never passes
//! by skipping.

use serde_json::json;

use crate::harness::start;

async fn node_dialect(dialect: &str, gzip: Option<&str>) {
    let (_mock, gw) = start("");
    let (_, _, token) = gw.project_and_token(json!({}), json!({})).await;
    let env = vec![
        ("PALISADE_BASE_URL", format!("{}/v1", gw.url)),
        ("PALISADE_TOKEN", token),
        ("MOCK_DIALECT", dialect.to_owned()),
        ("MOCK_GZIP", gzip.unwrap_or_default().to_owned()),
    ];
    let summary = crate::node_sdk::run_node_script("dialect_stream.cjs", env, || gw.logs()).await;
    assert_eq!(summary["dialect"], dialect);
}

#[tokio::test]
async fn node_sdk_dialect_openai_streams() {
    node_dialect("openai", None).await;
}

#[tokio::test]
async fn node_sdk_dialect_litellm_streams() {
    node_dialect("litellm", None).await;
}

#[tokio::test]
async fn node_sdk_dialect_starlette_streams() {
    node_dialect("starlette", None).await;
}

#[tokio::test]
async fn node_sdk_dialect_llamacpp_streams() {
    node_dialect("llamacpp", None).await;
}

#[tokio::test]
async fn node_sdk_dialect_lastchunk_streams() {
    node_dialect("lastchunk", None).await;
}

#[tokio::test]
async fn node_sdk_dialect_gzip_upstream_streams() {
    node_dialect("openai", Some("1")).await;
}
