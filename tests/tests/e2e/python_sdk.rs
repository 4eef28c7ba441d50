//! The official `openai` Python SDK against Palisade, as applications use it.
//!
//! The interpreter is `PALISADE_PYTHON` when set (CI sets it), else a venv at
//! `target/py-sdk-venv` created on first use with `openai` from PyPI. Without
//! `python3` the test fails: it never passes by skipping.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::json;

use crate::harness::{Mock, gateway};

const MODELS: &str = "gpt-4o-mini,text-embedding-3-small";

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

pub(crate) fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("PALISADE_PYTHON") {
        return PathBuf::from(p);
    }
    let venv = workspace_root().join("target/py-sdk-venv");
    let py = venv.join("bin/python");
    let ready = Command::new(&py)
        .args(["-c", "import openai"])
        .status()
        .is_ok_and(|s| s.success());
    if !ready {
        let made = Command::new("python3")
            .arg("-m")
            .arg("venv")
            .arg(&venv)
            .status();
        assert!(
            made.is_ok_and(|s| s.success()),
            "python3 with the venv module is required for the OpenAI SDK test (or set PALISADE_PYTHON)"
        );
        let pip = Command::new(venv.join("bin/pip"))
            .args([
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "openai>=1.40,<3",
            ])
            .status();
        assert!(pip.is_ok_and(|s| s.success()), "pip install openai failed");
    }
    py
}

#[tokio::test]
async fn sdk_chat_stream_embeddings_models_and_revocation_work() {
    let python = python();
    let mock = Mock::start("up");
    let gw = gateway()
        .provider(&mock, "[\"gpt-4o-mini\", \"text-embedding-3-small\"]")
        .start();
    let (pid, _, token) = gw.project_and_token(json!({}), json!({})).await;
    let (revoked_id, revoked) = gw.create_token(&pid, json!({})).await;
    let (status, _) = gw
        .manage("DELETE", &format!("/manage/tokens/{revoked_id}"), None)
        .await;
    assert_eq!(status, 204);

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/sdk_check.py");
    let out = tokio::task::spawn_blocking({
        let base = format!("{}/v1", gw.url);
        move || {
            Command::new(python)
                .arg(script)
                .env("PALISADE_BASE_URL", base)
                .env("PALISADE_TOKEN", token)
                .env("PALISADE_REVOKED_TOKEN", revoked)
                .env("PALISADE_MODELS", MODELS)
                .env_remove("OPENAI_API_KEY")
                .env_remove("OPENAI_BASE_URL")
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "sdk_check failed\nstdout: {stdout}\nstderr: {stderr}\ngateway logs:\n{}",
        gw.logs()
    );
    let summary: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(summary["revoked"], "token_revoked");
    assert_eq!(mock.count("/v1/chat/completions").await, 2);
}
