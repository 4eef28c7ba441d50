//! Builder harness: start a mock upstream and a gateway wired to it, then talk HTTP.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, Once, OnceLock};
use std::time::Duration;

use serde_json::{Value, json};

pub const MANAGEMENT_TOKEN: &str = "e2e-management-token-0123456789abcdef";
pub const PROVIDER_KEY: &str = "sk-provider-secret-key-for-e2e";
/// base64 of 32 bytes 0..31; only for tests.
pub const ENCRYPTION_KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

pub fn init() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// `target/debug/palisade`, built by `cargo test --workspace` (the `palisade`
/// package has integration tests, so cargo builds its binary), or `PALISADE_BIN`.
pub fn palisade_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("PALISADE_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    let bin = dir.join("palisade");
    assert!(
        bin.exists(),
        "{} not found: run the suite with `cargo test --workspace` (or `cargo build -p palisade` first)",
        bin.display()
    );
    bin
}

/// Reads a child's stream into `sink` on a thread; reports the first line that
/// contains `marker` through the returned receiver.
fn pump(
    stream: impl std::io::Read + Send + 'static,
    sink: Arc<Mutex<String>>,
    marker: &'static str,
) -> std::sync::mpsc::Receiver<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            if line.contains(marker)
                && let Some(tx) = tx.take()
            {
                let _ = tx.send(line.clone());
            }
            let mut s = sink.lock().unwrap();
            s.push_str(&line);
            s.push('\n');
        }
    });
    rx
}

fn addr_after(line: &str, marker: &str) -> String {
    let rest = &line[line.find(marker).unwrap() + marker.len()..];
    rest.split(|c: char| c == '"' || c.is_whitespace())
        .next()
        .unwrap()
        .to_owned()
}

mod mock;
mod postgres;
mod redis;
pub mod smallfs;
pub use mock::Mock;
pub use postgres::PgDatabase;
pub use redis::{RedisServer, machine_redis, unique_prefix};

// === Gateway ===

pub struct GatewayBuilder {
    providers: Vec<String>,
    extra: String,
    env: Vec<(String, String)>,
    dir: Option<tempfile::TempDir>,
    wrap: Vec<String>,
    database_url: Option<String>,
}

pub struct Gateway {
    child: Option<Child>,
    pub url: String,
    /// This gateway's own clients (see [`Clients`]).
    clients: Clients,
    pub logs: Arc<Mutex<String>>,
    pub dir: tempfile::TempDir,
    config_path: PathBuf,
    env: Vec<(String, String)>,
    wrap: Vec<String>,
}

pub fn gateway() -> GatewayBuilder {
    init();
    GatewayBuilder {
        providers: Vec::new(),
        extra: String::new(),
        env: Vec::new(),
        dir: None,
        wrap: Vec::new(),
        database_url: None,
    }
}

impl GatewayBuilder {
    /// Adds a provider entry pointing at `mock` (`api_key` = [`PROVIDER_KEY`]).
    pub fn provider(mut self, mock: &Mock, models: &str) -> Self {
        self.providers.push(format!(
            "  - {{ name: {}, base_url: \"{}\", api_key: \"{PROVIDER_KEY}\", models: {models}, timeouts: {{ connect: 2s, first_byte: 3s, idle: 5s }} }}\n",
            mock.name,
            mock.base_url()
        ));
        self
    }

    /// A raw provider entry (YAML flow mapping).
    pub fn provider_yaml(mut self, entry: &str) -> Self {
        self.providers.push(format!("  - {entry}\n"));
        self
    }

    /// Extra top-level YAML (sections not otherwise written by the harness).
    pub fn yaml(mut self, extra: &str) -> Self {
        self.extra.push_str(extra);
        self.extra.push('\n');
        self
    }

    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.to_owned(), v.to_owned()));
        self
    }

    /// The database (`${E2E_DATABASE_URL}`) at `url` instead of the SQLite file in
    /// the gateway's directory: a [`PgDatabase`], shared by several gateways.
    pub fn database_url(mut self, url: &str) -> Self {
        self.database_url = Some(url.to_owned());
        self
    }

    /// Reuse a data directory (restart scenarios).
    pub fn dir(mut self, dir: tempfile::TempDir) -> Self {
        self.dir = Some(dir);
        self
    }

    /// Starts the gateway through this command (program and arguments), which
    /// must end by executing its remaining arguments (the `palisade serve`
    /// command line), so the process is still the gateway (the storage fault
    /// tests run it in its own mount namespace).
    pub fn wrap(mut self, command: Vec<String>) -> Self {
        self.wrap = command;
        self
    }

    pub fn start(self) -> Gateway {
        let dir = self.dir.unwrap_or_else(|| tempfile::tempdir().unwrap());
        let db = dir.path().join("data/palisade.db");
        let has = |section: &str| self.extra.lines().any(|l| l.starts_with(section));
        let mut yaml = String::new();
        if !has("server:") {
            yaml.push_str("server: { listen: \"127.0.0.1:0\", workers: 2, shutdown_grace: 5s }\n");
        }
        // A test with its own `database:` section points it at `${E2E_DATABASE_URL}`.
        let db_url = self
            .database_url
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}?mode=rwc", db.display()));
        if !has("database:") {
            yaml.push_str("database: { url: \"${E2E_DATABASE_URL}\" }\n");
        }
        if !has("auth:") {
            yaml.push_str("auth: { management_token: \"${E2E_MANAGEMENT_TOKEN}\", encryption_key: \"${E2E_ENCRYPTION_KEY}\" }\n");
        }
        if !has("tokens:") {
            yaml.push_str("tokens: { usage_flush_interval: 200ms }\n");
        }
        if !has("audit:") {
            yaml.push_str("audit: { flush_interval: 50ms }\n");
        }
        if !has("logging:") {
            yaml.push_str("logging: { level: \"palisade=debug,info\", format: json }\n");
        }
        yaml.push_str(&self.extra);
        yaml.push_str("providers:\n");
        for p in &self.providers {
            yaml.push_str(p);
        }
        let config_path = dir.path().join("config.yaml");
        std::fs::write(&config_path, yaml).unwrap();
        let mut env = vec![
            (
                "E2E_MANAGEMENT_TOKEN".to_owned(),
                MANAGEMENT_TOKEN.to_owned(),
            ),
            ("E2E_ENCRYPTION_KEY".to_owned(), ENCRYPTION_KEY.to_owned()),
            ("E2E_DATABASE_URL".to_owned(), db_url),
        ];
        env.extend(self.env);
        let logs = Arc::new(Mutex::new(String::new()));
        let (child, url) = spawn_gateway(&config_path, dir.path(), &env, &logs, &self.wrap);
        Gateway {
            child: Some(child),
            url,
            clients: Clients::new(),
            logs,
            dir,
            config_path,
            env,
            wrap: self.wrap,
        }
    }
}

fn spawn_gateway(
    config: &Path,
    cwd: &Path,
    env: &[(String, String)],
    logs: &Arc<Mutex<String>>,
    wrap: &[String],
) -> (Child, String) {
    let mut cmd = match wrap.split_first() {
        Some((program, args)) => {
            let mut cmd = Command::new(program);
            cmd.args(args).arg(palisade_bin());
            cmd
        }
        None => Command::new(palisade_bin()),
    };
    cmd.args(["serve", "--config"])
        .arg(config)
        .current_dir(cwd)
        .env_remove("RUST_LOG")
        .env_remove("PALISADE_LISTEN")
        .env_remove("PALISADE_DATABASE_URL")
        .env_remove("PALISADE_REDIS_URL")
        .env_remove("PALISADE_CONFIG")
        // A config that leaves these secrets out reads them: only what a test
        // passes may reach the gateway, never the developer's shell.
        .env_remove("PALISADE_MANAGEMENT_TOKEN")
        .env_remove("PALISADE_JWT_SECRET")
        .env_remove("PALISADE_ENCRYPTION_KEY")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("start palisade");
    let err = child.stderr.take().unwrap();
    let rx = pump(err, Arc::clone(logs), "listening on http");
    let line = match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(line) => line,
        Err(_) => {
            let _ = child.kill();
            std::thread::sleep(Duration::from_millis(100));
            panic!("palisade did not start:\n{}", logs.lock().unwrap());
        }
    };
    let url = addr_after(&line, "listening on ");
    (child, url)
}

impl Gateway {
    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().clone()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Whether the process is still running (it has not exited).
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().unwrap().is_none())
    }

    /// SIGTERM, then wait (up to 20 s: a drain against failing storage takes 10) for
    /// a clean exit; returns the exit code.
    pub fn terminate(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        for _ in 0..400 {
            if let Ok(Some(status)) = child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }

    /// SIGKILL: the process gets no chance to flush anything.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// Stops the gateway and starts it again on the same config and database.
    pub fn restart(&mut self) {
        assert_eq!(
            self.terminate(),
            Some(0),
            "gateway did not exit cleanly:\n{}",
            self.logs()
        );
        self.start_again();
    }

    /// Starts a terminated gateway again (same config, database and environment).
    pub fn start_again(&mut self) {
        let (child, url) = spawn_gateway(
            &self.config_path,
            self.dir.path(),
            &self.env,
            &self.logs,
            &self.wrap,
        );
        self.child = Some(child);
        self.url = url;
    }

    /// Changes an environment variable for the next start.
    pub fn set_env(&mut self, k: &str, v: &str) {
        self.env.retain(|(name, _)| name != k);
        self.env.push((k.to_owned(), v.to_owned()));
    }

    /// Runs another `palisade` subcommand on this gateway's config, in its
    /// directory and environment (plus `extra`).
    pub fn run_command(&self, args: &[&str], extra: &[(&str, &str)]) -> std::process::Output {
        self.run_command_with_stdin(args, extra, "")
    }

    /// As [`Self::run_command`], writing `stdin` to the command's standard input.
    pub fn run_command_with_stdin(
        &self,
        args: &[&str],
        extra: &[(&str, &str)],
        stdin: &str,
    ) -> std::process::Output {
        let mut cmd = Command::new(palisade_bin());
        cmd.args(args)
            .arg("--config")
            .arg(&self.config_path)
            .current_dir(self.dir.path())
            .env_remove("RUST_LOG")
            .env_remove("PALISADE_DATABASE_URL")
            .env_remove("PALISADE_REDIS_URL")
            .env_remove("PALISADE_CONFIG")
            .env_remove("PALISADE_MANAGEMENT_TOKEN")
            .env_remove("PALISADE_JWT_SECRET")
            .env_remove("PALISADE_ENCRYPTION_KEY");
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        for (k, v) in extra {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        {
            use std::io::Write;
            let mut input = child.stdin.take().unwrap();
            input.write_all(stdin.as_bytes()).unwrap();
        }
        child.wait_with_output().unwrap()
    }

    /// Polls `GET path` until `done(body)` holds, for up to [`WAIT`]: what the
    /// audit writer and the usage flush write (audit events, usage rows, token
    /// counters) appears a batch later than the action, so a test that reads them
    /// waits for them here.
    pub async fn wait_for(&self, path: &str, done: impl Fn(&Value) -> bool) -> Value {
        self.poll_json(path, WAIT, done).await
    }

    /// As [`Self::wait_for`], for up to `within`.
    pub async fn poll_json(
        &self,
        path: &str,
        within: Duration,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let mut last = Value::Null;
        let got = poll(within, async || {
            let (status, body) = self.manage("GET", path, None).await;
            assert_eq!(status, 200, "{body}");
            if done(&body) {
                return Some(body);
            }
            last = body;
            None
        })
        .await;
        if let Some(body) = got {
            return body;
        }
        let logs = self.logs();
        // The polls themselves would fill the tail: leave them out.
        let polled = path.split('?').next().unwrap_or(path);
        let tail: Vec<&str> = logs
            .lines()
            .rev()
            .filter(|l| !l.contains(polled))
            .take(30)
            .collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        panic!(
            "condition not met for {path} within {within:?}: {last}\ngateway log (tail):\n{}",
            tail.join("\n")
        );
    }

    /// Polls the file at `path` (relative to the gateway's directory, e.g.
    /// `data/audit.jsonl`) until `done(text)` holds, for up to [`WAIT`]; its text.
    pub async fn wait_for_file(&self, path: &str, done: impl Fn(&str) -> bool) -> String {
        let path = self.dir.path().join(path);
        let mut last = String::new();
        let got = poll(WAIT, async || {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            if done(&text) {
                return Some(text);
            }
            last = text;
            None
        })
        .await;
        got.unwrap_or_else(|| panic!("condition not met for {}: {last}", path.display()))
    }

    pub fn db_path(&self) -> PathBuf {
        self.dir.path().join("data/palisade.db")
    }

    /// Another writer holds SQLite's write lock (`BEGIN IMMEDIATE`), so every write
    /// of the gateway's gets `SQLITE_BUSY` until it commits (`COMMIT` on the
    /// returned connection).
    pub async fn lock_database(&self) -> sea_orm::sqlx::sqlite::SqliteConnection {
        use sea_orm::sqlx::Connection;
        let url = format!("sqlite://{}", self.db_path().display());
        let mut conn = sea_orm::sqlx::sqlite::SqliteConnection::connect(&url)
            .await
            .unwrap();
        sea_orm::sqlx::query("BEGIN IMMEDIATE")
            .execute(&mut conn)
            .await
            .unwrap();
        conn
    }

    // --- management API ---

    pub async fn manage(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let req = self
            .client()
            .request(method.parse().unwrap(), format!("{}{path}", self.url))
            .bearer_auth(MANAGEMENT_TOKEN);
        let req = match body {
            Some(b) => req.json(&b),
            None => req,
        };
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        let value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, value)
    }

    pub async fn create_project(&self, body: Value) -> Value {
        let (status, v) = self.manage("POST", "/manage/projects", Some(body)).await;
        assert_eq!(status, 201, "{v}");
        v
    }

    /// Creates a project with `project` fields and a token with `token` fields;
    /// returns (project id, token id, secret).
    pub async fn project_and_token(
        &self,
        project: Value,
        token: Value,
    ) -> (String, String, String) {
        let mut project = project;
        if project.get("name").is_none() {
            project["name"] = json!(format!("p-{}", uuid::Uuid::now_v7()));
        }
        let p = self.create_project(project).await;
        let pid = p["id"].as_str().unwrap().to_owned();
        let (tid, secret) = self.create_token(&pid, token).await;
        (pid, tid, secret)
    }

    pub async fn create_token(&self, project_id: &str, extra: Value) -> (String, String) {
        let mut body = extra;
        body["project_id"] = json!(project_id);
        let (status, v) = self.manage("POST", "/manage/tokens", Some(body)).await;
        assert_eq!(status, 201, "{v}");
        (
            v["id"].as_str().unwrap().to_owned(),
            v["token"].as_str().unwrap().to_owned(),
        )
    }

    // --- proxy ---

    /// This gateway's client (built with it: see [`Clients`]).
    pub fn client(&self) -> &reqwest::Client {
        self.clients.plain()
    }

    /// This gateway's client that shows the wire (see [`Clients::wire`]).
    pub fn wire_client(&self) -> &reqwest::Client {
        self.clients.wire()
    }

    pub fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.client().get(format!("{}{path}", self.url))
    }

    pub fn post(&self, path: &str) -> reqwest::RequestBuilder {
        self.client().post(format!("{}{path}", self.url))
    }

    /// A chat completion with extra request headers (the mock's controls pass
    /// through the gateway unchanged).
    pub async fn chat_with(
        &self,
        token: &str,
        headers: &[(&str, &str)],
        body: Value,
    ) -> reqwest::Response {
        let mut req = self.post("/v1/chat/completions").bearer_auth(token);
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        req.json(&body).send().await.unwrap()
    }

    pub async fn chat(&self, token: &str, body: Value) -> reqwest::Response {
        self.post("/v1/chat/completions")
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    /// `/metrics` as text (read with the management token).
    pub async fn metrics_text(&self) -> String {
        self.get("/metrics")
            .bearer_auth(MANAGEMENT_TOKEN)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// One series from `/metrics`, its name with labels as the text writes it.
    pub async fn metric(&self, name: &str) -> f64 {
        let text = self.metrics_text().await;
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {text}"))
    }

    /// `n` non-streamed chat completions, `concurrency` at a time; their statuses.
    pub async fn chat_many(&self, token: &str, n: usize, concurrency: usize) -> Vec<u16> {
        use futures_util::StreamExt;
        futures_util::stream::iter(0..n)
            .map(|_| async {
                self.chat(token, chat_body("gpt-4o-mini"))
                    .await
                    .status()
                    .as_u16()
            })
            .buffer_unordered(concurrency)
            .collect()
            .await
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The common case: a mock serving every model, a gateway in front of it, and one
/// unrestricted token.
pub async fn setup() -> (Mock, Gateway, String) {
    let mock = Mock::start("up");
    let gw = gateway().provider(&mock, "[\"*\"]").start();
    let (_, _, token) = gw.project_and_token(json!({}), json!({})).await;
    (mock, gw, token)
}

/// A mock serving every model and a gateway in front of it, with `yaml` added to
/// the config ("" for none).
pub fn start(yaml: &str) -> (Mock, Gateway) {
    let mock = Mock::start("up");
    let mut gw = gateway().provider(&mock, "[\"*\"]");
    if !yaml.is_empty() {
        gw = gw.yaml(yaml);
    }
    (mock, gw.start())
}

/// A new client. Never share one across tests: each `#[tokio::test]` has its own
/// runtime, a pooled connection belongs to the runtime that opened it, and once that
/// test has ended the connection is dead; another test that reuses it (a port is
/// reused by a later gateway or mock) fails with `DispatchGone`. So each gateway
/// and mock has its own ([`Clients`]), and a test without either builds one.
pub fn new_client() -> reqwest::Client {
    init();
    reqwest::Client::builder().no_proxy().build().unwrap()
}

/// The clients of one gateway or mock, built with it and dropped with it.
pub struct Clients {
    plain: reqwest::Client,
    wire: OnceLock<reqwest::Client>,
}

impl Clients {
    pub fn new() -> Self {
        Self {
            plain: new_client(),
            wire: OnceLock::new(),
        }
    }

    pub fn plain(&self) -> &reqwest::Client {
        &self.plain
    }

    /// A client that shows the wire: no automatic `Accept-Encoding`, no
    /// transparent decompression (whatever reqwest features the workspace build
    /// unifies). Built on first use.
    pub fn wire(&self) -> &reqwest::Client {
        self.wire.get_or_init(|| {
            reqwest::Client::builder()
                .no_proxy()
                .no_gzip()
                .no_deflate()
                .no_brotli()
                .no_zstd()
                .build()
                .unwrap()
        })
    }
}

/// How long a test waits for what the gateway does on its own after an action
/// (an audit batch, a usage flush, a health check). Generous: the audit writer
/// runs at idle or low priority and the suite keeps both cores busy.
pub const WAIT: Duration = Duration::from_secs(15);

/// Polls `probe` (every 20 ms) until it gives `Some`, for up to `within`; `None`
/// once the deadline has passed.
pub async fn poll<T>(within: Duration, mut probe: impl AsyncFnMut() -> Option<T>) -> Option<T> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(v) = probe().await {
            return Some(v);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// As [`poll`], failing the test (naming `what`) once the deadline has passed.
pub async fn eventually<T>(
    what: &str,
    within: Duration,
    probe: impl AsyncFnMut() -> Option<T>,
) -> T {
    poll(within, probe)
        .await
        .unwrap_or_else(|| panic!("timed out after {within:?} waiting for {what}"))
}

pub fn chat_body(model: &str) -> Value {
    json!({ "model": model, "messages": [{ "role": "user", "content": "hello there" }] })
}

/// Status and parsed error envelope of a response.
pub async fn error_of(resp: reqwest::Response) -> (u16, Value) {
    let status = resp.status().as_u16();
    let body: Value = resp.json().await.unwrap();
    (status, body)
}

/// Asserts an OpenAI-envelope error with exactly these keys and code.
pub fn assert_proxy_error(status: u16, body: &Value, want_status: u16, want_code: &str) {
    assert_eq!(status, want_status, "{body}");
    let err = &body["error"];
    assert_eq!(err["code"], want_code, "{body}");
    assert!(
        err["message"].is_string() && err["type"].is_string(),
        "{body}"
    );
    assert!(err.get("param").is_some_and(Value::is_null), "{body}");
    assert_eq!(err.as_object().unwrap().len(), 4, "{body}");
}

/// Asserts a management-envelope error.
pub fn assert_manage_error(status: u16, body: &Value, want_status: u16, want_code: &str) {
    assert_eq!(status, want_status, "{body}");
    assert_eq!(body["error"]["code"], want_code, "{body}");
    assert!(body["error"]["message"].is_string(), "{body}");
}
