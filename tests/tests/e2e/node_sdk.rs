//! The official `openai` Node SDK against Palisade and the mock upstream: a chat
//! completion, a stream without usage (the SDK's default), and a stream with
//! `stream_options.include_usage`.
//!
//! Node is `PALISADE_NODE` when set, else `node` on the PATH; the SDK is the one
//! pinned in `tests/node/package-lock.json`, installed by `npm ci` there (`.ci/run`
//! does it). Without either the test fails naming what is missing: it never passes
//! by skipping.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};

use crate::harness::{Mock, gateway};

fn node_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("node")
}

/// The `node` binary, after checking that it runs and that the SDK is installed.
fn node() -> PathBuf {
    let node =
        std::env::var_os("PALISADE_NODE").map_or_else(|| PathBuf::from("node"), PathBuf::from);
    let runs = Command::new(&node)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        runs,
        "`{}` does not run: the Node SDK test needs Node.js (apt-get install nodejs npm, or set PALISADE_NODE)",
        node.display()
    );
    let sdk = node_dir().join("node_modules/openai/package.json");
    assert!(
        sdk.exists(),
        "{} is missing: run `npm ci` in {} (.ci/run does)",
        sdk.display(),
        node_dir().display()
    );
    node
}

/// Runs `tests/node/<script>` with `env`; its JSON summary, or a failure with
/// everything needed to see why.
pub async fn run_node_script(
    script: &str,
    env: Vec<(&'static str, String)>,
    logs: impl Fn() -> String,
) -> Value {
    let node = node();
    let script = node_dir().join(script);
    let out = tokio::task::spawn_blocking(move || {
        let mut cmd = Command::new(node);
        cmd.arg(script)
            .env_remove("OPENAI_API_KEY")
            .env_remove("OPENAI_BASE_URL");
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "node script failed\nstdout: {stdout}\nstderr: {stderr}\ngateway logs:\n{}",
        logs()
    );
    serde_json::from_str(stdout.trim()).unwrap()
}

#[tokio::test]
async fn node_sdk_chat_and_streams_with_and_without_usage_work() {
    let mock = Mock::start("up");
    let gw = gateway().provider(&mock, "[\"gpt-4o-mini\"]").start();
    let (_, _, token) = gw.project_and_token(json!({}), json!({})).await;

    let summary = run_node_script(
        "sdk_check.mjs",
        vec![
            ("PALISADE_BASE_URL", format!("{}/v1", gw.url)),
            ("PALISADE_TOKEN", token),
            ("PALISADE_MODEL", "gpt-4o-mini".to_owned()),
        ],
        || gw.logs(),
    )
    .await;
    assert_eq!(summary["chat"], "mock reply: hello node", "{summary}");
    assert_eq!(
        summary["stream"]["text"], "tok0 tok1 tok2 tok3 tok4 ",
        "{summary}"
    );
    assert!(
        summary["stream_usage"]["usage"]["completion_tokens"].as_u64() > Some(0),
        "{summary}"
    );
    assert_eq!(mock.count("/v1/chat/completions").await, 3);
}
