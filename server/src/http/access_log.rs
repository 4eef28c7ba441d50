//! The access log: one `info` line per request, target `palisade::access`, written
//! when the response body ends (for a stream: when the last event left, or the
//! client went away), with `logging.access_log: true` (the default).
//!
//! Fields: `method`, `route` (the route pattern, as the metrics label it: never
//! the raw path with its ids, nor the query string), `status`, `duration_ms`
//! (request to end of body), `bytes` (response body bytes sent), `request_id`;
//! on `/v1` routes also `token_id`, `project_id`, `model` (as the client named it,
//! cut to [`MODEL_MAX`] bytes), `provider` and `upstream_status` of the last
//! attempt, and `attempts` (upstream calls made). A field with no value is left
//! out. Never a header value, a secret, a prompt or a completion: the line is
//! built only from the request line's method, the route table and the ids the
//! proxy notes in an [`AccessNote`].
//!
//! The request path only collects the fields and hands them to the `access-log`
//! thread (nice 10), which formats and emits the line: formatting a JSON line and
//! waking the log writer per request cost about 25 µs of added latency at c=1 on
//! the bench when done inline. A full hand-off queue ([`QUEUE_LINES`]) writes the
//! line inline instead of dropping it; shutdown drains the queue ([`drain`]).

use std::pin::Pin;
use std::task::{Context, Poll};

use actix_web::HttpMessage;
use actix_web::body::{BodySize, BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::web::Bytes;
use tokio::time::Instant;
use uuid::Uuid;

/// The longest model name written to the log (the client chooses it).
pub const MODEL_MAX: usize = 128;

/// How long the `access-log` thread rests after each burst of lines.
const BURST_PAUSE: std::time::Duration = std::time::Duration::from_millis(20);

/// Lines waiting for the `access-log` thread; past this they are written inline.
pub const QUEUE_LINES: usize = 16 * 1024;

enum Msg {
    Line(Box<Line>),
    /// Answered once every line sent before it is written.
    Flush(std::sync::mpsc::Sender<()>),
}

static QUEUE: std::sync::OnceLock<std::sync::mpsc::SyncSender<Msg>> = std::sync::OnceLock::new();

/// Starts the thread that writes the lines (once per process, when the access
/// log is on).
pub fn start() -> std::io::Result<()> {
    if QUEUE.get().is_some() {
        return Ok(());
    }
    let (tx, rx) = std::sync::mpsc::sync_channel::<Msg>(QUEUE_LINES);
    std::thread::Builder::new()
        .name("access-log".into())
        .spawn(move || {
            // Below the request path, like the audit writer's catch-up thread.
            if let Err(e) = rustix::process::setpriority_process(Some(rustix::thread::gettid()), 10)
            {
                tracing::debug!(error = %e, "cannot lower the access log's priority");
            }
            let mut burst = Burst::new();
            while let Ok(first) = rx.recv() {
                // Whatever else is queued goes in the same burst, so the log
                // writer wakes (and writes) once per burst, not once per line;
                // the pause lets a burst form on a busy gateway.
                burst.open();
                for msg in std::iter::once(first).chain(rx.try_iter()) {
                    match msg {
                        Msg::Line(line) => burst.add(&line),
                        Msg::Flush(done) => {
                            burst.write();
                            let _ = done.send(());
                        }
                    }
                }
                burst.write();
                std::thread::sleep(BURST_PAUSE);
            }
        })?;
    let _ = QUEUE.set(tx);
    Ok(())
}

/// Waits (at most `timeout`) until the lines queued so far are written.
pub fn drain(timeout: std::time::Duration) {
    let Some(tx) = QUEUE.get() else {
        return;
    };
    let (done, wait) = std::sync::mpsc::channel();
    if tx.send(Msg::Flush(done)).is_ok() && wait.recv_timeout(timeout).is_err() {
        tracing::warn!("access log lines still queued at exit");
    }
}

fn emit(line: Line) {
    match QUEUE.get() {
        Some(tx) => match tx.try_send(Msg::Line(Box::new(line))) {
            Ok(()) => {}
            Err(
                std::sync::mpsc::TrySendError::Full(Msg::Line(line))
                | std::sync::mpsc::TrySendError::Disconnected(Msg::Line(line)),
            ) => Burst::one(&line),
            Err(_) => {}
        },
        None => Burst::one(&line),
    }
}

/// Lines formatted together and handed to the log's writer in one write.
///
/// When the log is JSON, lines are formatted here, in the shape the JSON formatter
/// gives every other line (`timestamp`, `level`, `message`, the fields, `target`),
/// and written straight to the log's writer: the formatter's per-line visitor and
/// serializer cost about three times as much, on the core the proxy needs at
/// saturation. Otherwise (`logging.format: pretty`) each line is a `tracing` event.
struct Burst {
    text: String,
    /// When the burst is written, as the formatter writes timestamps: the lines
    /// of one burst are written together, so they share it.
    timestamp: String,
    /// The log's writer while lines are JSON and `palisade::access` is enabled
    /// (checked once per burst: `RUST_LOG` can switch it off).
    json: Option<tracing_appender::non_blocking::NonBlocking>,
}

impl Burst {
    fn new() -> Self {
        Self {
            text: String::with_capacity(64 * 1024),
            timestamp: String::new(),
            json: None,
        }
    }

    fn open(&mut self) {
        self.json = crate::telemetry::json_lines()
            .filter(|_| tracing::enabled!(target: "palisade::access", tracing::Level::INFO))
            .cloned();
        self.timestamp.clear();
        if self.json.is_some() {
            let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
            self.timestamp.push_str(&now);
        }
    }

    fn add(&mut self, line: &Line) {
        match self.json {
            Some(_) => line.format_json(&mut self.text, &self.timestamp),
            None => line.event(),
        }
    }

    fn write(&mut self) {
        use std::io::Write;
        if let Some(out) = self.json.as_mut()
            && !self.text.is_empty()
        {
            let _ = out.write_all(self.text.as_bytes());
        }
        self.text.clear();
    }

    /// One line, written on the caller's thread (queue full, or no thread).
    fn one(line: &Line) {
        let mut burst = Burst {
            text: String::with_capacity(512),
            timestamp: String::new(),
            json: None,
        };
        burst.open();
        burst.add(line);
        burst.write();
    }
}

/// What the proxy learns about a request, kept in its extensions for the line.
/// Present only while the access log is on.
#[derive(Debug, Default, Clone)]
pub struct AccessNote {
    pub token_id: Option<Uuid>,
    pub project_id: Option<Uuid>,
    pub model: Option<String>,
    pub provider: Option<String>,
    pub upstream_status: Option<u16>,
    pub attempts: u32,
}

/// Notes the caller once authenticated.
pub fn note_caller(req: &actix_web::HttpRequest, token_id: Uuid, project_id: Uuid) {
    if let Some(n) = req.extensions_mut().get_mut::<AccessNote>() {
        n.token_id = Some(token_id);
        n.project_id = Some(project_id);
    }
}

/// Notes the model the client asked for.
pub fn note_model(req: &actix_web::HttpRequest, model: Option<&str>) {
    if let (Some(n), Some(m)) = (req.extensions_mut().get_mut::<AccessNote>(), model) {
        let mut cut = m.len().min(MODEL_MAX);
        while !m.is_char_boundary(cut) {
            cut -= 1;
        }
        n.model = Some(m[..cut].to_owned());
    }
}

/// Notes one upstream call: the provider, and its HTTP status (`None`: no answer).
pub fn note_attempt(req: &actix_web::HttpRequest, provider: &str, upstream_status: Option<u16>) {
    if let Some(n) = req.extensions_mut().get_mut::<AccessNote>() {
        n.attempts += 1;
        provider.clone_into(n.provider.get_or_insert_default());
        n.upstream_status = upstream_status;
    }
}

/// Sits just inside the request-id middleware: the id exists, and every status
/// (the edge's refusals included) passes through here.
pub async fn middleware(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<LoggedBody>, actix_web::Error> {
    let started = Instant::now();
    req.extensions_mut().insert(AccessNote::default());
    let res = match next.call(req).await {
        Ok(res) => res,
        Err(e) => {
            // Nothing inside answers with `Err` on purpose (errors become
            // responses there), but a line is owed all the same; the request is
            // gone with the error, so only what the error says is known.
            tracing::info!(
                target: "palisade::access",
                status = e.as_response_error().status_code().as_u16(),
                duration_ms = millis(started),
                bytes = 0u64,
                "access"
            );
            return Err(e);
        }
    };
    let line = Line::of(res.request(), res.status().as_u16(), started);
    Ok(res.map_body(|_, body| LoggedBody {
        body: body.boxed(),
        line: Some(line),
    }))
}

/// Everything the line says; `duration_ms` and `bytes` are filled at the end.
struct Line {
    started: Instant,
    duration_ms: f64,
    method: actix_web::http::Method,
    route: std::borrow::Cow<'static, str>,
    status: u16,
    request_id: String,
    proxied: bool,
    note: AccessNote,
    bytes: u64,
}

impl Line {
    fn of(req: &actix_web::HttpRequest, status: u16, started: Instant) -> Self {
        // Taken, not cloned: nothing after this middleware reads the note.
        let note = req.extensions_mut().remove::<AccessNote>();
        let ext = req.extensions();
        let path = req.path();
        Self {
            started,
            duration_ms: 0.0,
            method: req.method().clone(),
            route: crate::metrics::route_label(req),
            status,
            request_id: ext
                .get::<crate::http::request_id::RequestId>()
                .map(|r| r.as_str().to_owned())
                .unwrap_or_default(),
            proxied: path == "/v1" || path.starts_with("/v1/"),
            note: note.unwrap_or_default(),
            bytes: 0,
        }
    }

    /// Appends the line as JSON (and a newline) to `out`; fields without a value
    /// are left out, as the formatter leaves out `None`s.
    fn format_json(&self, out: &mut String, timestamp: &str) {
        use std::fmt::Write;
        let n = &self.note;
        out.push_str(r#"{"timestamp":""#);
        out.push_str(timestamp);
        out.push_str(r#"","level":"INFO","message":"access","method":"#);
        json_str(out, self.method.as_str());
        out.push_str(r#","route":"#);
        json_str(out, &self.route);
        let _ = write!(
            out,
            r#","status":{},"duration_ms":{},"bytes":{},"request_id":"#,
            self.status, self.duration_ms, self.bytes
        );
        json_str(out, &self.request_id);
        for (key, id) in [("token_id", n.token_id), ("project_id", n.project_id)] {
            if let Some(id) = id {
                let _ = write!(out, r#","{key}":"{}""#, id.hyphenated());
            }
        }
        for (key, text) in [("model", &n.model), ("provider", &n.provider)] {
            if let Some(text) = text {
                let _ = write!(out, r#","{key}":"#);
                json_str(out, text);
            }
        }
        if let Some(status) = n.upstream_status {
            let _ = write!(out, r#","upstream_status":{status}"#);
        }
        if self.proxied {
            let _ = write!(out, r#","attempts":{}"#, n.attempts);
        }
        out.push_str(",\"target\":\"palisade::access\"}\n");
    }

    fn event(&self) {
        let n = &self.note;
        let ms = self.duration_ms;
        // A root event: the line carries its own fields, so the JSON formatter
        // need not serialize the request's span and span list again.
        tracing::info!(
            target: "palisade::access",
            parent: None,
            method = %self.method,
            route = %self.route,
            status = self.status,
            duration_ms = ms,
            bytes = self.bytes,
            request_id = %self.request_id,
            token_id = n.token_id.map(tracing::field::display),
            project_id = n.project_id.map(tracing::field::display),
            model = n.model.as_deref(),
            provider = n.provider.as_deref(),
            upstream_status = n.upstream_status,
            attempts = self.proxied.then_some(n.attempts),
            "access"
        );
    }
}

/// Appends `s` as a JSON string: quotes, backslashes and control characters
/// escaped, as serde_json escapes them.
fn json_str(out: &mut String, s: &str) {
    use std::fmt::Write;
    out.push('"');
    // Ids, routes and model names almost never need escaping: one quick scan.
    if !s.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\') {
        out.push_str(s);
        out.push('"');
        return;
    }
    let mut from = 0;
    for (i, b) in s.bytes().enumerate() {
        let escaped = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0..=0x1f => "",
            _ => continue,
        };
        // `i` is an ASCII byte, so both cuts fall on character boundaries.
        out.push_str(&s[from..i]);
        match escaped {
            "" => {
                let _ = write!(out, "\\u{b:04x}");
            }
            e => out.push_str(e),
        }
        from = i + 1;
    }
    out.push_str(&s[from..]);
    out.push('"');
}

/// Milliseconds since `started`, to the microsecond.
fn millis(started: Instant) -> f64 {
    (started.elapsed().as_secs_f64() * 1e6).round() / 1e3
}

/// The response body, counted as it goes; the line is written when it is dropped
/// (finished, failed or abandoned).
pub struct LoggedBody {
    body: BoxBody,
    line: Option<Line>,
}

impl MessageBody for LoggedBody {
    type Error = Box<dyn std::error::Error>;

    fn size(&self) -> BodySize {
        self.body.size()
    }

    fn poll_next(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, Self::Error>>> {
        let polled = Pin::new(&mut self.body).poll_next(cx);
        if let (Poll::Ready(Some(Ok(chunk))), Some(line)) = (&polled, self.line.as_mut()) {
            line.bytes += chunk.len() as u64;
        }
        polled
    }
}

impl Drop for LoggedBody {
    fn drop(&mut self) {
        if let Some(mut line) = self.line.take() {
            line.duration_ms = millis(line.started);
            emit(line);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fields a line carries only when known, in their order.
    const OPTIONAL: [&str; 6] = [
        "token_id",
        "project_id",
        "model",
        "provider",
        "upstream_status",
        "attempts",
    ];

    fn line(note: AccessNote, proxied: bool) -> Line {
        Line {
            started: Instant::now(),
            duration_ms: 1.25,
            method: actix_web::http::Method::POST,
            route: "/v1/chat/completions".into(),
            status: 200,
            request_id: "req-1".into(),
            proxied,
            note,
            bytes: 42,
        }
    }

    fn formatted(line: &Line) -> String {
        let mut out = String::new();
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        line.format_json(&mut out, &now);
        out
    }

    #[test]
    fn json_line_has_the_formatters_shape_and_order() {
        let (token, project) = (Uuid::now_v7(), Uuid::now_v7());
        let note = AccessNote {
            token_id: Some(token),
            project_id: Some(project),
            model: Some("gpt-4o-mini".into()),
            provider: Some("openai".into()),
            upstream_status: Some(200),
            attempts: 1,
        };
        let text = formatted(&line(note, true));
        assert!(
            text.ends_with('\n') && text.matches('\n').count() == 1,
            "{text}"
        );
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        // In the formatter's order (serde_json's map here is sorted, so by position).
        let order = [
            "timestamp",
            "level",
            "message",
            "method",
            "route",
            "status",
            "duration_ms",
            "bytes",
            "request_id",
        ]
        .into_iter()
        .chain(OPTIONAL)
        .chain(["target"]);
        let at: Vec<usize> = order
            .clone()
            .map(|k| text.find(&format!("\"{k}\":")).unwrap())
            .collect();
        assert!(at.windows(2).all(|w| w[0] < w[1]), "{text}");
        assert_eq!(v.as_object().unwrap().len(), order.count());
        assert_eq!(v["level"], "INFO");
        assert_eq!(v["message"], "access");
        assert_eq!(v["target"], "palisade::access");
        assert_eq!(v["status"], 200);
        assert_eq!(v["duration_ms"], 1.25);
        assert_eq!(v["bytes"], 42);
        assert_eq!(v["token_id"], token.to_string());
        assert_eq!(v["project_id"], project.to_string());
        assert_eq!(v["upstream_status"], 200);
        assert_eq!(v["attempts"], 1);
        let ts = v["timestamp"].as_str().unwrap();
        assert!(
            chrono::DateTime::parse_from_rfc3339(ts).is_ok() && ts.ends_with('Z'),
            "{ts}"
        );
    }

    #[test]
    fn json_line_leaves_out_what_is_unknown() {
        let v: serde_json::Value =
            serde_json::from_str(&formatted(&line(AccessNote::default(), false))).unwrap();
        for key in OPTIONAL {
            assert!(v.get(key).is_none(), "{key} in {v}");
        }
    }

    #[test]
    fn json_line_escapes_a_client_chosen_model() {
        let model = "a\"b\\c\nd\u{1}e\u{7f}é\u{200b}";
        let note = AccessNote {
            model: Some(model.into()),
            ..AccessNote::default()
        };
        let text = formatted(&line(note, true));
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["model"], model);
        assert_eq!(
            text.matches('\n').count(),
            1,
            "a raw newline split the line"
        );
    }

    #[test]
    fn notes_fill_only_a_request_that_carries_one() {
        let req = actix_web::test::TestRequest::default().to_http_request();
        note_model(&req, Some("m"));
        note_attempt(&req, "p", Some(200));
        assert!(req.extensions().get::<AccessNote>().is_none());

        req.extensions_mut().insert(AccessNote::default());
        let (token, project) = (Uuid::now_v7(), Uuid::now_v7());
        note_caller(&req, token, project);
        note_attempt(&req, "first", None);
        note_attempt(&req, "second", Some(429));
        // A client-chosen model name is cut, on a character boundary.
        note_model(&req, Some(&"é".repeat(MODEL_MAX)));
        let ext = req.extensions();
        let n = ext.get::<AccessNote>().unwrap();
        assert_eq!((n.token_id, n.project_id), (Some(token), Some(project)));
        assert_eq!(n.attempts, 2);
        assert_eq!(n.provider.as_deref(), Some("second"));
        assert_eq!(n.upstream_status, Some(429));
        let model = n.model.as_deref().unwrap();
        assert_eq!(model.len(), MODEL_MAX);
        assert!(model.chars().all(|c| c == 'é'));
    }
}
