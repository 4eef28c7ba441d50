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

/// What the Python interpreter runs: a script under `tests/python`, or inline code.
pub(crate) enum Py<'a> {
    Script(&'a str, Vec<String>),
    Code(&'static str),
}

/// Runs Python with the gateway's `/v1` base URL and a token in
/// `PALISADE_BASE_URL` / `PALISADE_TOKEN` (the SDK's own variables removed, so
/// nothing can bypass the gateway), plus `env`. Returns the JSON summary it
/// prints; a failure shows its output and the tail of the gateway's log.
pub(crate) async fn run_python(
    gw: &crate::harness::Gateway,
    token: &str,
    what: Py<'_>,
    env: Vec<(String, String)>,
) -> serde_json::Value {
    let mut cmd = Command::new(python());
    match what {
        Py::Script(name, args) => {
            cmd.arg(
                Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("python")
                    .join(name),
            )
            .args(args);
        }
        Py::Code(code) => {
            cmd.args(["-c", code]);
        }
    }
    cmd.env("PALISADE_BASE_URL", format!("{}/v1", gw.url))
        .env("PALISADE_TOKEN", token)
        .envs(env)
        .env_remove("OPENAI_API_KEY")
        .env_remove("OPENAI_BASE_URL");
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "python failed\nstdout: {stdout}\nstderr: {stderr}\ngateway logs (tail):\n{}",
        tail(&gw.logs(), 40)
    );
    serde_json::from_str(stdout.trim()).unwrap()
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[tokio::test]
async fn sdk_chat_stream_embeddings_models_and_revocation_work() {
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

    let env = vec![
        ("PALISADE_REVOKED_TOKEN".to_owned(), revoked),
        ("PALISADE_MODELS".to_owned(), MODELS.to_owned()),
    ];
    let summary = run_python(&gw, &token, Py::Script("sdk_check.py", Vec::new()), env).await;
    assert_eq!(summary["revoked"], "token_revoked");
    assert_eq!(mock.count("/v1/chat/completions").await, 2);
}
