//! The official `openai` Node SDK streaming through Palisade to upstreams speaking
//! each dialect (`tests/node/dialect_stream.cjs`): chat streams with and without
//! `include_usage`, a streamed tool call, a Responses API stream.
//!
//! The SDK is found under `PALISADE_NODE_SDK` (a directory holding
//! `node_modules/openai`) when set, else installed on first use into
//! `target/node-sdk` with npm. Without `node`/`npm` the test fails: it never passes
//! by skipping.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};

use crate::harness::start;

/// The pinned major version: v6 supports Node 18+; v7 needs Node 22.
const OPENAI_NODE: &str = "openai@^6";

/// The directory whose `node_modules` holds the SDK (installed once per test
/// process; the tests run in parallel).
fn node_sdk() -> PathBuf {
    static SDK: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    SDK.get_or_init(install).clone()
}

fn install() -> PathBuf {
    if let Some(p) = std::env::var_os("PALISADE_NODE_SDK") {
        return PathBuf::from(p);
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let dir = root.join("target/node-sdk");
    if !dir.join("node_modules/openai/package.json").exists() {
        std::fs::create_dir_all(&dir).unwrap();
        let ok = Command::new("npm")
            .args(["install", "--silent", "--no-audit", "--no-fund", "--prefix"])
            .arg(&dir)
            .arg(OPENAI_NODE)
            .status();
        assert!(
            ok.is_ok_and(|s| s.success()),
            "node and npm are required for the Node SDK test (or set PALISADE_NODE_SDK): npm install {OPENAI_NODE} failed"
        );
    }
    dir
}

async fn node_dialect(dialect: &str, gzip: Option<&str>) {
    let sdk = node_sdk();
    let (_mock, gw) = start("");
    let (_, _, token) = gw.project_and_token(json!({}), json!({})).await;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("node/dialect_stream.cjs");
    let base = format!("{}/v1", gw.url);
    let (dialect_env, gzip_env) = (dialect.to_owned(), gzip.unwrap_or_default().to_owned());
    let out = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg(script)
            .env("NODE_PATH", sdk.join("node_modules"))
            .env("PALISADE_BASE_URL", base)
            .env("PALISADE_TOKEN", token)
            .env("MOCK_DIALECT", dialect_env)
            .env("MOCK_GZIP", gzip_env)
            .env_remove("OPENAI_API_KEY")
            .env_remove("OPENAI_BASE_URL")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{dialect}: {}\nstdout: {stdout}",
        stderr.trim()
    );
    let summary: Value = serde_json::from_str(stdout.trim()).unwrap();
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
