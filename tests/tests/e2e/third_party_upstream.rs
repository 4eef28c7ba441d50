//! A real OpenAI-compatible server written by others as Palisade's upstream: the
//! LiteLLM proxy, pinned in `tests/thirdparty/requirements.txt`, configured by
//! `tests/thirdparty/litellm.yaml` (every model answers with `mock_response`, so it
//! calls no provider and runs offline).
//!
//! Each test sends the same request to LiteLLM directly and through Palisade and
//! compares what the client gets: the stream must be event for event what LiteLLM
//! sent (LiteLLM's usage chunk carries `"choices":[{"index":0,"delta":{}}]`, not
//! `"choices":[]`, so a gateway that recognises usage chunks by their text leaks it).
//!
//! LiteLLM is `PALISADE_LITELLM` when set, else `target/thirdparty-venv/bin/litellm`,
//! made by `tests/thirdparty/install.sh` (`.ci/run` runs it). Without it the tests
//! fail saying so: they never pass by skipping. One LiteLLM process serves every test
//! of this module (it takes seconds to start); it is stopped when the test binary
//! exits, by a shell that waits for its standard input to close.

use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::{Gateway, gateway};

/// LiteLLM's own key (`general_settings.master_key`); Palisade's provider key.
const MASTER_KEY: &str = "sk-litellm-e2e-master-key-0123456789";
const MODEL: &str = "gpt-4o-mini";
const REPLY: &str = "Hello from LiteLLM through Palisade";

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn litellm_bin() -> PathBuf {
    let bin = std::env::var_os("PALISADE_LITELLM").map_or_else(
        || workspace_root().join("target/thirdparty-venv/bin/litellm"),
        PathBuf::from,
    );
    assert!(
        bin.exists(),
        "{} not found: the third-party upstream tests need the LiteLLM proxy; create its venv once with `bash tests/thirdparty/install.sh` (.ci/run does), or set PALISADE_LITELLM",
        bin.display()
    );
    bin
}

// === The shared LiteLLM process ===

struct LiteLlm {
    url: String,
    log: PathBuf,
    /// Held for the life of the test binary: when it closes (at exit), the wrapper
    /// shell stops LiteLLM.
    _lifeline: Mutex<ChildStdin>,
    _wrapper: Mutex<Child>,
}

impl LiteLlm {
    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

fn free_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    listener.local_addr().unwrap().port()
}

fn litellm() -> &'static LiteLlm {
    static SHARED: OnceLock<LiteLlm> = OnceLock::new();
    SHARED.get_or_init(start_litellm)
}

fn start_litellm() -> LiteLlm {
    let bin = litellm_bin();
    let dir = tempfile::tempdir().unwrap().keep();
    let log = dir.join("litellm.log");
    let port = free_port();
    let config = workspace_root().join("tests/thirdparty/litellm.yaml");
    // LiteLLM in the background, stopped (and its directory removed) once our end
    // of the pipe on stdin closes, however this process ends.
    let script = r#"dir="$1"; shift; "$@" >"$dir/litellm.log" 2>&1 & pid=$!
cat >/dev/null; kill "$pid" 2>/dev/null; wait "$pid"; rm -rf "$dir""#;
    let mut wrapper = Command::new("sh")
        .arg("-c")
        .arg(script)
        .arg("sh")
        .arg(&dir)
        .arg(&bin)
        .arg("--config")
        .arg(&config)
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .current_dir(&dir)
        .env("LITELLM_MASTER_KEY", MASTER_KEY)
        .env("LITELLM_LOCAL_MODEL_COST_MAP", "True")
        .env("HOME", &dir)
        .env_remove("DATABASE_URL")
        .env_remove("OPENAI_API_KEY")
        .env_remove("OPENAI_BASE_URL")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start sh for LiteLLM");
    let lifeline = wrapper.stdin.take().unwrap();
    let server = LiteLlm {
        url: format!("http://127.0.0.1:{port}"),
        log,
        _lifeline: Mutex::new(lifeline),
        _wrapper: Mutex::new(wrapper),
    };
    // Uvicorn binds its socket only after the application's start-up succeeded.
    let deadline = std::time::SystemTime::now() + Duration::from_secs(120);
    while TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err() {
        let exited = server
            ._wrapper
            .lock()
            .unwrap()
            .try_wait()
            .unwrap()
            .is_some();
        assert!(
            !exited && std::time::SystemTime::now() < deadline,
            "LiteLLM did not start on port {port}:\n{}",
            server.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    server
}

// === Requests and streams ===

/// Palisade in front of the shared LiteLLM, a project and a token in it.
async fn palisade() -> (&'static LiteLlm, Gateway, String, String) {
    let upstream = litellm();
    let gw = gateway()
        .provider_yaml(&format!(
            "{{ name: litellm, base_url: \"{}/v1\", api_key: \"{MASTER_KEY}\", models: [\"{MODEL}\"], timeouts: {{ connect: 2s, first_byte: 20s, idle: 20s }} }}",
            upstream.url
        ))
        .start();
    let (project, _, token) = gw.project_and_token(json!({}), json!({})).await;
    (upstream, gw, project, token)
}

fn chat(extra: Value) -> Value {
    let mut body = json!({"model": MODEL, "messages": [{"role": "user", "content": "hello"}]});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    body
}

/// POSTs a chat completion to `base` (`…/v1`); status and raw body.
async fn post(client: &reqwest::Client, base: &str, key: &str, body: &Value) -> (u16, String) {
    let resp = client
        .post(format!("{base}/chat/completions"))
        .bearer_auth(key)
        .json(body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap())
}

/// The `data` of each event of an SSE body, per the SSE specification: lines end
/// with CRLF, LF or CR; a blank line ends an event; several `data` lines join with
/// LF; comments and other fields are not data.
fn sse_data(body: &str) -> Vec<String> {
    let text = body.replace("\r\n", "\n").replace('\r', "\n");
    let mut events = Vec::new();
    let mut data: Option<String> = None;
    for line in text.split('\n') {
        if line.is_empty() {
            events.extend(data.take());
        } else if let Some(rest) = line.strip_prefix("data") {
            if !(rest.is_empty() || rest.starts_with(':')) {
                continue; // a field whose name only starts with "data"
            }
            let value = rest.strip_prefix(':').unwrap_or("");
            let value = value.strip_prefix(' ').unwrap_or(value);
            match &mut data {
                Some(d) => {
                    d.push('\n');
                    d.push_str(value);
                }
                None => data = Some(value.to_owned()),
            }
        }
    }
    events
}

/// The events of a chat stream with what differs between two calls (`id`,
/// `created`) removed; `[DONE]` stays a string.
fn chunks(body: &str) -> Vec<Value> {
    sse_data(body)
        .into_iter()
        .map(|d| match serde_json::from_str::<Value>(&d) {
            Ok(mut v) => {
                strip_volatile(&mut v);
                v
            }
            Err(_) => Value::String(d),
        })
        .collect()
}

fn strip_volatile(v: &mut Value) {
    if let Some(o) = v.as_object_mut() {
        o.remove("id");
        o.remove("created");
    }
}

/// The same request straight to LiteLLM and through Palisade: both answers.
async fn direct_and_through(
    upstream: &LiteLlm,
    gw: &Gateway,
    token: &str,
    body: &Value,
) -> (String, String) {
    let (status, direct) = post(
        gw.client(),
        &format!("{}/v1", upstream.url),
        MASTER_KEY,
        body,
    )
    .await;
    assert_eq!(
        status,
        200,
        "direct: {direct}\nLiteLLM:\n{}",
        upstream.logs()
    );
    let (status, through) = post(gw.client(), &format!("{}/v1", gw.url), token, body).await;
    assert_eq!(
        status,
        200,
        "through Palisade: {through}\ngateway:\n{}\nLiteLLM:\n{}",
        gw.logs(),
        upstream.logs()
    );
    (direct, through)
}

fn has_usage(chunk: &Value) -> bool {
    chunk.get("usage").is_some_and(|u| !u.is_null())
}

fn streamed_text(chunks: &[Value]) -> String {
    chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect()
}

// === Tests ===

#[tokio::test]
async fn litellm_upstream_chat_completion_is_relayed_with_usage() {
    let (upstream, gw, _, token) = palisade().await;
    let (direct, through) = direct_and_through(upstream, &gw, &token, &chat(json!({}))).await;
    let mut direct: Value = serde_json::from_str(&direct).unwrap();
    let mut through: Value = serde_json::from_str(&through).unwrap();
    assert_eq!(
        through["choices"][0]["message"]["content"], REPLY,
        "{through}"
    );
    assert!(
        through["usage"]["total_tokens"].as_u64() > Some(0),
        "{through}"
    );
    strip_volatile(&mut direct);
    strip_volatile(&mut through);
    assert_eq!(through, direct);
}

#[tokio::test]
async fn litellm_upstream_stream_without_include_usage_equals_direct_and_has_no_usage() {
    let (upstream, gw, _, token) = palisade().await;
    let body = chat(json!({"stream": true}));
    let (direct, through) = direct_and_through(upstream, &gw, &token, &body).await;
    let (direct, through) = (chunks(&direct), chunks(&through));
    assert_eq!(streamed_text(&direct), REPLY, "LiteLLM changed: {direct:?}");
    assert!(!direct.iter().any(has_usage), "LiteLLM changed: {direct:?}");
    let leaked: Vec<_> = through.iter().filter(|c| has_usage(c)).collect();
    assert!(
        leaked.is_empty(),
        "usage chunk nobody asked for: {leaked:?}"
    );
    assert_eq!(through, direct, "through Palisade vs direct");
    assert_eq!(through.last(), Some(&json!("[DONE]")));
}

#[tokio::test]
async fn litellm_upstream_stream_with_include_usage_delivers_the_usage_chunk() {
    let (upstream, gw, _, token) = palisade().await;
    let body = chat(json!({"stream": true, "stream_options": {"include_usage": true}}));
    let (direct, through) = direct_and_through(upstream, &gw, &token, &body).await;
    let (direct, through) = (chunks(&direct), chunks(&through));
    assert!(direct.iter().any(has_usage), "LiteLLM changed: {direct:?}");
    let usage: Vec<_> = through.iter().filter(|c| has_usage(c)).collect();
    assert_eq!(usage.len(), 1, "{through:?}");
    assert!(
        usage[0]["usage"]["completion_tokens"].as_u64() > Some(0),
        "{through:?}"
    );
    assert_eq!(streamed_text(&through), REPLY);
    assert_eq!(through, direct, "through Palisade vs direct");
}

/// One token per kind of request, so `group_by=token` gives one row per kind.
#[tokio::test]
async fn litellm_upstream_usage_rows_record_tokens_for_every_kind_of_request() {
    let (_upstream, gw, project, plain) = palisade().await;
    let (stream_id, stream_token) = gw.create_token(&project, json!({})).await;
    let (counted_id, counted_token) = gw.create_token(&project, json!({})).await;
    let base = format!("{}/v1", gw.url);

    let (status, body) = post(gw.client(), &base, &plain, &chat(json!({}))).await;
    assert_eq!(status, 200, "{body}");
    let reported: Value = serde_json::from_str(&body).unwrap();
    let (status, _) = post(
        gw.client(),
        &base,
        &stream_token,
        &chat(json!({"stream": true})),
    )
    .await;
    assert_eq!(status, 200);
    let with_usage = chat(json!({"stream": true, "stream_options": {"include_usage": true}}));
    let (status, body) = post(gw.client(), &base, &counted_token, &with_usage).await;
    assert_eq!(status, 200, "{body}");
    let streamed_usage = chunks(&body)
        .into_iter()
        .find(has_usage)
        .unwrap_or_else(|| panic!("no usage chunk: {body}"))["usage"]
        .clone();

    let rows = gw
        .wait_for("/manage/usage?group_by=token", |b| {
            b["data"].as_array().is_some_and(|rows| rows.len() == 3)
        })
        .await;
    let row = |token_id: &str| {
        rows["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["key"] == token_id)
            .unwrap_or_else(|| panic!("no row for {token_id}: {rows}"))
            .clone()
    };
    let plain_id = rows["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["key"].as_str().unwrap())
        .find(|k| *k != stream_id && *k != counted_id)
        .unwrap()
        .to_owned();
    let plain_row = row(&plain_id);
    assert_eq!(plain_row["requests"], 1, "{rows}");
    assert_eq!(plain_row["errors"], 0, "{rows}");
    assert_eq!(
        plain_row["prompt_tokens"], reported["usage"]["prompt_tokens"],
        "{rows}"
    );
    assert_eq!(
        plain_row["completion_tokens"], reported["usage"]["completion_tokens"],
        "{rows}"
    );
    let counted_row = row(&counted_id);
    assert_eq!(
        counted_row["prompt_tokens"], streamed_usage["prompt_tokens"],
        "{rows}"
    );
    assert_eq!(
        counted_row["completion_tokens"], streamed_usage["completion_tokens"],
        "{rows}"
    );
    // The client did not ask for usage, but the request is still accounted for.
    let stream_row = row(&stream_id);
    assert_eq!(stream_row["requests"], 1, "{rows}");
    assert!(stream_row["prompt_tokens"].as_u64() > Some(0), "{rows}");
    assert!(stream_row["completion_tokens"].as_u64() > Some(0), "{rows}");
}

#[test]
fn sse_data_follows_the_three_line_endings_and_multi_line_data() {
    let body =
        "data: {\"a\":1}\r\n\r\n: comment\rdata:x\r\rdata: l1\ndata: l2\nid: 7\n\nevent: e\n\n";
    assert_eq!(sse_data(body), vec!["{\"a\":1}", "x", "l1\nl2"]);
}
