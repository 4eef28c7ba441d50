//! A mock OpenAI-compatible upstream for the end-to-end tests and the benchmark.
//!
//! Behaviour is chosen per request, by header (headers pass through the gateway
//! unchanged) or by model name (so an SDK user can trigger it too); headers win:
//!
//! | header | model | effect |
//! |---|---|---|
//! | `x-mock-delay-ms: N` | `mock-slow-N` | wait N ms before the response head |
//! | `x-mock-status: C` | `mock-error-C` | answer status C with an OpenAI error body (429 adds `Retry-After`) |
//! | `x-mock-hang: 1` | `mock-hang` | never answer |
//! | `x-mock-chunks: N` | | stream N content frames (default 5) |
//! | `x-mock-chunk-delay-ms: N` | | wait N ms before each frame after the first |
//! | `x-mock-cut-after: K` | `mock-stream-cut` (K=2) | abort the stream after K content frames |
//! | `x-mock-fixed: 1` | | fixed ids and timestamps, so outputs compare byte for byte |
//!
//! Observation and control (not under `/v1`): `GET /_mock/stats`, `GET /_mock/requests`,
//! `GET /_mock/last`, `POST /_mock/reset`,
//! `POST /_mock/fail-next {"count","status","hang","retry_after"}` (this instance
//! only: the next `count` completion-style requests answer `status`, or hang),
//! `POST /_mock/models-delay {"ms"}` (`GET /v1/models` answers after `ms`).

// The one stdout line is the port handshake the test harness reads.
#![allow(clippy::print_stdout)]

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::web::{self, Bytes};
use actix_web::{App, HttpRequest, HttpResponse, HttpServer};
use clap::Parser;
use serde_json::{Value, json};

#[derive(Parser, Debug)]
#[command(
    name = "mock-upstream",
    about = "Mock OpenAI-compatible upstream for tests"
)]
struct Args {
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: String,
    #[arg(long, default_value = "mock")]
    name: String,
    #[arg(
        long,
        default_value = "gpt-4o-mini,gpt-4o,text-embedding-3-small",
        value_delimiter = ','
    )]
    models: Vec<String>,
    #[arg(long, default_value_t = 1)]
    workers: usize,
}

#[derive(Default)]
struct Stats {
    requests_total: AtomicU64,
    streams_started: AtomicU64,
    streams_completed: AtomicU64,
    streams_cancelled: AtomicU64,
    in_flight: AtomicU64,
    handlers_cancelled: AtomicU64,
    seq: AtomicU64,
    by_path: Mutex<BTreeMap<String, u64>>,
    log: Mutex<VecDeque<Value>>,
    fail_next: Mutex<FailNext>,
}

/// `POST /_mock/fail-next`: how the next `count` completion requests misbehave.
#[derive(Default, Clone)]
struct FailNext {
    count: u64,
    status: u16,
    /// Never answer instead of answering `status`.
    hang: bool,
    retry_after: Option<String>,
}

struct Mock {
    name: String,
    models: Vec<String>,
    stats: Stats,
}

type Shared = web::Data<Arc<Mock>>;

const LOG_CAP: usize = 1000;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Counts a handler in flight; notices when the client gave up before an answer.
struct HandlerGuard {
    mock: Arc<Mock>,
    answered: bool,
}

impl HandlerGuard {
    fn new(mock: &Arc<Mock>) -> Self {
        mock.stats.in_flight.fetch_add(1, Ordering::SeqCst);
        Self {
            mock: Arc::clone(mock),
            answered: false,
        }
    }
}

impl Drop for HandlerGuard {
    fn drop(&mut self) {
        self.mock.stats.in_flight.fetch_sub(1, Ordering::SeqCst);
        if !self.answered {
            self.mock
                .stats
                .handlers_cancelled
                .fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// Lives inside a streaming body; tells a completed stream from an abandoned one.
struct StreamGuard {
    mock: Arc<Mock>,
    finished: bool,
}

impl StreamGuard {
    fn complete(mut self) {
        self.finished = true;
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.mock.stats.in_flight.fetch_sub(1, Ordering::SeqCst);
        let counter = if self.finished {
            &self.mock.stats.streams_completed
        } else {
            &self.mock.stats.streams_cancelled
        };
        counter.fetch_add(1, Ordering::SeqCst);
    }
}

/// How this request should misbehave.
struct Plan {
    delay_ms: u64,
    status: Option<u16>,
    retry_after: String,
    hang: bool,
    chunks: u64,
    chunk_delay_ms: u64,
    cut_after: Option<u64>,
    fixed: bool,
}

fn header<'a>(req: &'a HttpRequest, name: &str) -> Option<&'a str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

fn header_u64(req: &HttpRequest, name: &str) -> Option<u64> {
    header(req, name).and_then(|v| v.trim().parse().ok())
}

impl Plan {
    fn new(req: &HttpRequest, model: Option<&str>, mock: &Mock) -> Self {
        let model = model.unwrap_or_default();
        let by_model_num = |prefix: &str| {
            model
                .strip_prefix(prefix)
                .and_then(|n| n.parse::<u64>().ok())
        };
        let mut status = header_u64(req, "x-mock-status")
            .or_else(|| by_model_num("mock-error-"))
            .and_then(|c| u16::try_from(c).ok());
        let mut hang = false;
        let mut retry_after = None;
        {
            let mut fail = lock(&mock.stats.fail_next);
            if fail.count > 0 {
                fail.count -= 1;
                hang = fail.hang;
                retry_after.clone_from(&fail.retry_after);
                if !hang {
                    status = Some(fail.status);
                }
            }
        }
        Plan {
            delay_ms: header_u64(req, "x-mock-delay-ms")
                .or_else(|| by_model_num("mock-slow-"))
                .unwrap_or(0),
            status,
            retry_after: retry_after
                .unwrap_or_else(|| header(req, "x-mock-retry-after").unwrap_or("1").to_owned()),
            hang: hang
                || header(req, "x-mock-hang").is_some_and(|v| v == "1")
                || model == "mock-hang",
            chunks: header_u64(req, "x-mock-chunks").unwrap_or(5),
            chunk_delay_ms: header_u64(req, "x-mock-chunk-delay-ms").unwrap_or(0),
            cut_after: header_u64(req, "x-mock-cut-after")
                .or((model == "mock-stream-cut").then_some(2)),
            fixed: header(req, "x-mock-fixed").is_some_and(|v| v == "1"),
        }
    }
}

fn error_response(code: u16, plan: &Plan) -> HttpResponse {
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = if code == 400 {
        r#"{"error":{"message":"mock bad request","type":"invalid_request_error","param":null,"code":"mock_bad_request"}}"#.to_owned()
    } else {
        json!({"error": {"message": format!("mock error {code}"), "type": "mock_error", "param": null, "code": format!("mock_{code}")}}).to_string()
    };
    let mut resp = HttpResponse::build(status);
    resp.insert_header(("x-mock-header", "kept"));
    if code == 429 {
        resp.insert_header(("retry-after", plan.retry_after.clone()));
    }
    resp.content_type("application/json").body(body)
}

fn record(mock: &Mock, req: &HttpRequest, body: &[u8]) {
    mock.stats.requests_total.fetch_add(1, Ordering::SeqCst);
    *lock(&mock.stats.by_path)
        .entry(req.path().to_owned())
        .or_default() += 1;
    let headers: BTreeMap<String, String> = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let entry = json!({
        "method": req.method().as_str(),
        "path": req.path(),
        "query": req.query_string(),
        "headers": headers,
        "body": String::from_utf8_lossy(body),
    });
    let mut log = lock(&mock.stats.log);
    if log.len() == LOG_CAP {
        log.pop_front();
    }
    log.push_back(entry);
}

fn last_user_text(body: &Value) -> Option<String> {
    body["messages"].as_array()?.last()?["content"]
        .as_str()
        .map(str::to_owned)
}

fn words(body: &Value) -> u64 {
    let count = |v: &Value| {
        v.as_str()
            .map_or(0, |s| s.split_whitespace().count() as u64)
    };
    match body["messages"].as_array() {
        Some(msgs) => msgs.iter().map(|m| count(&m["content"])).sum(),
        None => count(&body["prompt"]),
    }
}

async fn v1(req: HttpRequest, body: Bytes, mock: Shared) -> HttpResponse {
    let mock = Arc::clone(&mock);
    let mut guard = HandlerGuard::new(&mock);
    record(&mock, &req, &body);
    let path = req.path().to_owned();
    if req.method() == actix_web::http::Method::GET && path == "/v1/models" {
        models_delay().await;
        guard.answered = true;
        let data: Vec<Value> = mock
            .models
            .iter()
            .map(|m| json!({"id": m, "object": "model", "created": 1_700_000_000, "owned_by": "mock"}))
            .collect();
        return HttpResponse::Ok().json(json!({"object": "list", "data": data}));
    }
    let json_endpoint = matches!(
        path.as_str(),
        "/v1/chat/completions" | "/v1/completions" | "/v1/embeddings"
    );
    let parsed: Option<Value> = serde_json::from_slice(&body).ok();
    let model = parsed
        .as_ref()
        .and_then(|v| v["model"].as_str())
        .map(str::to_owned);
    let plan = Plan::new(&req, model.as_deref(), &mock);
    if plan.hang {
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
    if plan.delay_ms > 0 {
        tokio::time::sleep(Duration::from_millis(plan.delay_ms)).await;
    }
    guard.answered = true;
    if let Some(code) = plan.status {
        return error_response(code, &plan);
    }
    let Some(parsed) = parsed.filter(|_| json_endpoint) else {
        if json_endpoint {
            return HttpResponse::BadRequest().json(json!({"error": {"message": "mock: invalid JSON", "type": "invalid_request_error", "param": null, "code": "invalid_json"}}));
        }
        return HttpResponse::Ok().json(
            json!({"object": "mock.echo", "path": path, "model": model, "bytes": body.len()}),
        );
    };
    let n = mock.stats.seq.fetch_add(1, Ordering::SeqCst);
    let (id_n, created) = if plan.fixed {
        (0, 1_700_000_000)
    } else {
        (n, now_secs())
    };
    let model = model.unwrap_or_else(|| "mock".to_owned());
    match path.as_str() {
        "/v1/embeddings" => embeddings(&parsed, &model),
        "/v1/chat/completions" | "/v1/completions" => {
            let chat = path == "/v1/chat/completions";
            let reply = match (chat, last_user_text(&parsed)) {
                (true, Some(text)) => format!("mock reply: {text}"),
                (true, None) => "mock reply".to_owned(),
                (false, _) => format!(
                    "mock completion: {}",
                    parsed["prompt"].as_str().unwrap_or_default()
                ),
            };
            if parsed["stream"].as_bool() == Some(true) {
                let usage = parsed["stream_options"]["include_usage"].as_bool() == Some(true);
                drop(guard);
                mock.stats.in_flight.fetch_add(1, Ordering::SeqCst);
                stream(
                    &mock,
                    plan,
                    chat,
                    id_n,
                    created,
                    &model,
                    usage,
                    words(&parsed),
                )
            } else {
                let prompt = words(&parsed);
                let completion = reply.split_whitespace().count() as u64;
                let usage = json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion});
                let body = if chat {
                    json!({"id": format!("chatcmpl-mock-{id_n}"), "object": "chat.completion", "created": created, "model": model,
                        "choices": [{"index": 0, "message": {"role": "assistant", "content": reply}, "finish_reason": "stop"}], "usage": usage})
                } else {
                    json!({"id": format!("cmpl-mock-{id_n}"), "object": "text_completion", "created": created, "model": model,
                        "choices": [{"index": 0, "text": reply, "finish_reason": "stop"}], "usage": usage})
                };
                HttpResponse::Ok().json(body)
            }
        }
        _ => HttpResponse::NotFound().finish(),
    }
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn embeddings(body: &Value, model: &str) -> HttpResponse {
    let inputs: Vec<String> = match &body["input"] {
        Value::String(s) => vec![s.clone()],
        Value::Array(items) => items.iter().map(Value::to_string).collect(),
        other => vec![other.to_string()],
    };
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(i, text)| {
            let seed: u32 = text
                .bytes()
                .fold(7u32, |a, b| a.wrapping_mul(31).wrapping_add(u32::from(b)));
            let v: Vec<f64> = (0..8u32)
                .map(|k| f64::from(seed.rotate_left(k * 4) % 1000) / 1000.0)
                .collect();
            json!({"object": "embedding", "index": i, "embedding": v})
        })
        .collect();
    let tokens: usize = inputs
        .iter()
        .map(|s| s.split_whitespace().count().max(1))
        .sum();
    HttpResponse::Ok().json(json!({"object": "list", "data": data, "model": model, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}))
}

#[allow(clippy::too_many_arguments)]
fn stream(
    mock: &Arc<Mock>,
    plan: Plan,
    chat: bool,
    n: u64,
    created: u64,
    model: &str,
    usage: bool,
    prompt: u64,
) -> HttpResponse {
    mock.stats.streams_started.fetch_add(1, Ordering::SeqCst);
    let id = if chat {
        format!("chatcmpl-mock-{n}")
    } else {
        format!("cmpl-mock-{n}")
    };
    let object = if chat {
        "chat.completion.chunk"
    } else {
        "text_completion"
    };
    let usage_field = |v: Value| if usage { v } else { Value::Null };
    let choice = |delta: Value, finish: Value| {
        if chat {
            json!([{"index": 0, "delta": delta, "finish_reason": finish}])
        } else {
            json!([{"index": 0, "text": delta.get("content").cloned().unwrap_or(json!("")), "finish_reason": finish}])
        }
    };
    let frame = |choices: Value, u: Value| {
        let mut v = json!({"id": id, "object": object, "created": created, "model": model, "choices": choices});
        if usage {
            v["usage"] = u;
        }
        Bytes::from(format!("data: {v}\n\n"))
    };
    let mut frames = vec![frame(
        choice(json!({"role": "assistant", "content": ""}), Value::Null),
        Value::Null,
    )];
    for i in 0..plan.chunks {
        frames.push(frame(
            choice(json!({"content": format!("tok{i} ")}), Value::Null),
            Value::Null,
        ));
    }
    frames.push(frame(choice(json!({}), json!("stop")), Value::Null));
    if usage {
        let u = json!({"prompt_tokens": prompt, "completion_tokens": plan.chunks, "total_tokens": prompt + plan.chunks});
        frames.push(frame(json!([]), usage_field(u)));
    }
    frames.push(Bytes::from_static(b"data: [DONE]\n\n"));
    // Frame index after which the stream is aborted (role frame + K content frames).
    let cut_at = plan
        .cut_after
        .map(|k| usize::try_from(k + 1).unwrap_or(usize::MAX));
    let delay = Duration::from_millis(plan.chunk_delay_ms);
    // Role frame, content frames and the finishing frame are paced.
    let paced = usize::try_from(plan.chunks)
        .unwrap_or(usize::MAX)
        .saturating_add(2);
    let guard = StreamGuard {
        mock: Arc::clone(mock),
        finished: false,
    };
    let body = futures_util::stream::unfold(
        (frames, 0usize, guard),
        move |(frames, i, guard)| async move {
            if cut_at == Some(i) {
                // Let the frames already produced reach the wire before the abort.
                tokio::time::sleep(Duration::from_millis(50)).await;
                return Some((
                    Err(std::io::Error::other("mock: stream cut")),
                    (frames, usize::MAX, guard),
                ));
            }
            if i >= frames.len() {
                if i != usize::MAX {
                    guard.complete();
                }
                return None;
            }
            // Content frames are spaced; the usage chunk and `[DONE]` follow the
            // last one at once, as OpenAI sends them.
            if i > 0 && i < paced && !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            let chunk = frames[i].clone();
            Some((Ok::<_, std::io::Error>(chunk), (frames, i + 1, guard)))
        },
    );
    HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("cache-control", "no-cache"))
        .streaming(body)
}

async fn stats(mock: Shared) -> HttpResponse {
    let s = &mock.stats;
    let load = |a: &AtomicU64| a.load(Ordering::SeqCst);
    HttpResponse::Ok().json(json!({
        "name": mock.name,
        "requests_total": load(&s.requests_total),
        "by_path": *lock(&s.by_path),
        "streams_started": load(&s.streams_started),
        "streams_completed": load(&s.streams_completed),
        "streams_cancelled": load(&s.streams_cancelled),
        "in_flight": load(&s.in_flight),
        "handlers_cancelled": load(&s.handlers_cancelled),
    }))
}

async fn requests(mock: Shared) -> HttpResponse {
    HttpResponse::Ok().json(lock(&mock.stats.log).iter().collect::<Vec<_>>())
}

async fn last(mock: Shared) -> HttpResponse {
    HttpResponse::Ok().json(lock(&mock.stats.log).back().cloned().unwrap_or(Value::Null))
}

async fn reset(mock: Shared) -> HttpResponse {
    let s = &mock.stats;
    for a in [
        &s.requests_total,
        &s.streams_started,
        &s.streams_completed,
        &s.streams_cancelled,
        &s.handlers_cancelled,
    ] {
        a.store(0, Ordering::SeqCst);
    }
    lock(&s.by_path).clear();
    lock(&s.log).clear();
    *lock(&s.fail_next) = FailNext::default();
    HttpResponse::NoContent().finish()
}

async fn fail_next(mock: Shared, body: web::Json<Value>) -> HttpResponse {
    *lock(&mock.stats.fail_next) = FailNext {
        count: body["count"].as_u64().unwrap_or(1),
        status: body["status"]
            .as_u64()
            .and_then(|s| u16::try_from(s).ok())
            .unwrap_or(500),
        hang: body["hang"].as_bool().unwrap_or(false),
        retry_after: body["retry_after"].as_str().map(str::to_owned),
    };
    HttpResponse::NoContent().finish()
}

/// `POST /_mock/models-delay {"ms": N}`: `GET /v1/models` waits N ms before its
/// answer (a slow health check, as behind llama.cpp's generation lock); 0 = none.
static MODELS_DELAY_MS: AtomicU64 = AtomicU64::new(0);

async fn set_models_delay(body: web::Json<Value>) -> HttpResponse {
    MODELS_DELAY_MS.store(body["ms"].as_u64().unwrap_or(0), Ordering::SeqCst);
    HttpResponse::NoContent().finish()
}

async fn models_delay() {
    let ms = MODELS_DELAY_MS.load(Ordering::SeqCst);
    if ms > 0 {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
}

#[actix_web::main]
async fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let mock = Arc::new(Mock {
        name: args.name.clone(),
        models: args.models.clone(),
        stats: Stats::default(),
    });
    let data = web::Data::new(Arc::clone(&mock));
    let name = args.name.clone();
    let server = HttpServer::new(move || {
        let name = name.clone();
        App::new()
            .app_data(data.clone())
            .app_data(web::PayloadConfig::new(64 * 1024 * 1024))
            .wrap(actix_web::middleware::DefaultHeaders::new().add(("x-mock-name", name)))
            .route("/_mock/stats", web::get().to(stats))
            .route("/_mock/requests", web::get().to(requests))
            .route("/_mock/last", web::get().to(last))
            .route("/_mock/reset", web::post().to(reset))
            .route("/_mock/fail-next", web::post().to(fail_next))
            .route("/_mock/models-delay", web::post().to(set_models_delay))
            .default_service(web::to(v1))
    })
    .workers(args.workers.max(1))
    .on_connect(|conn, _| {
        if let Some(tcp) = conn.downcast_ref::<actix_web::rt::net::TcpStream>() {
            let _ = tcp.set_nodelay(true);
        }
    })
    .bind(&args.listen)?;
    let addrs = server.addrs();
    {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        for addr in &addrs {
            writeln!(out, "mock-upstream listening on {addr}")?;
        }
        out.flush()?;
    }
    server.run().await
}
