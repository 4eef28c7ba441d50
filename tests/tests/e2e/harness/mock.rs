//! The `mock-upstream` binary as a test fixture: one process per mock, on an
//! ephemeral port, with its observation and control endpoints.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use super::{Clients, addr_after, pump};

pub struct Mock {
    child: Child,
    pub url: String,
    pub name: String,
    /// This mock's own clients (see [`Clients`]).
    clients: Clients,
}

impl Mock {
    pub fn start(name: &str) -> Mock {
        Self::start_dialect(name, "openai")
    }

    /// A mock whose requests without `x-mock-dialect` get `dialect` (`openai`,
    /// `litellm`, `starlette`, `llamacpp`, `lastchunk`; `docs/mock-upstream.md`).
    pub fn start_dialect(name: &str, dialect: &str) -> Mock {
        let mut child = Command::new(env!("CARGO_BIN_EXE_mock-upstream"))
            .args([
                "--listen",
                "127.0.0.1:0",
                "--name",
                name,
                "--dialect",
                dialect,
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start mock-upstream");
        let out = child.stdout.take().unwrap();
        let rx = pump(out, Arc::default(), "listening on ");
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("mock did not start");
        let addr = addr_after(&line, "listening on ");
        Mock {
            child,
            url: format!("http://{addr}"),
            name: name.to_owned(),
            clients: Clients::new(),
        }
    }

    /// This mock's client (built with it: see [`Clients`]).
    pub fn client(&self) -> &reqwest::Client {
        self.clients.plain()
    }

    /// This mock's client that shows the wire (see [`Clients::wire`]).
    pub fn wire_client(&self) -> &reqwest::Client {
        self.clients.wire()
    }

    /// What the provider's `base_url` should be.
    pub fn base_url(&self) -> String {
        format!("{}/v1", self.url)
    }

    pub async fn stats(&self) -> Value {
        self.control_get("stats").await
    }

    /// How many requests reached `path` (e.g. `/v1/chat/completions`).
    pub async fn count(&self, path: &str) -> u64 {
        self.stats().await["by_path"][path].as_u64().unwrap_or(0)
    }

    /// `POST /_mock/fail-next`: `{"count","status","hang","retry_after"}`.
    pub async fn fail_next(&self, plan: Value) {
        self.control_post("fail-next", Some(plan)).await;
    }

    /// Clears counters, the request log and any pending failures.
    pub async fn reset(&self) {
        self.control_post("reset", None).await;
    }

    pub async fn last_request(&self) -> Value {
        self.control_get("last").await
    }

    /// Every request received (up to the last 1000), oldest first.
    pub async fn requests(&self) -> Vec<Value> {
        match self.control_get("requests").await {
            Value::Array(all) => all,
            other => panic!("/_mock/requests: {other}"),
        }
    }

    /// `GET /_mock/{what}` as JSON.
    async fn control_get(&self, what: &str) -> Value {
        self.client()
            .get(format!("{}/_mock/{what}", self.url))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// `POST /_mock/{what}` (with a JSON body if given), which answers 204.
    async fn control_post(&self, what: &str, body: Option<Value>) {
        let mut req = self.client().post(format!("{}/_mock/{what}", self.url));
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 204);
    }
}

impl Drop for Mock {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
