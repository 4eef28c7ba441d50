//! A mock OpenAI-compatible upstream for the end-to-end tests and the benchmark,
//! speaking the dialects of real servers (`docs/mock-upstream.md` has the details).
//!
//! Behaviour is chosen per request, by header (headers pass through the gateway
//! unchanged) or by model name (so an SDK user can trigger it too); headers win:
//!
//! | header | model | effect |
//! |---|---|---|
//! | `x-mock-dialect: NAME` | | `openai` (default, or `--dialect`), `litellm`, `starlette`, `llamacpp`, `lastchunk` |
//! | `x-mock-gzip: 1` / `always` | | gzip the response when `Accept-Encoding` allows it / always |
//! | `x-mock-delay-ms: N` | `mock-slow-N` | wait N ms before the response head |
//! | `x-mock-status: C` | `mock-error-C` | answer status C with an OpenAI error body (429 adds `Retry-After`) |
//! | `x-mock-hang: 1` | `mock-hang` | never answer |
//! | `x-mock-chunks: N` | | stream N content frames (default 5) |
//! | `x-mock-chunk-delay-ms: N` | | wait N ms before each content frame and the finishing one |
//! | `x-mock-cut-after: K` | `mock-stream-cut` (K=2) | abort the stream after K content frames |
//! | `x-mock-fixed: 1` | | fixed ids and timestamps, so outputs compare byte for byte |
//!
//! A chat request with `tools` gets a call of its first tool. Observation and
//! control (not under `/v1`): see [`control`].

pub mod chat;
pub mod control;
pub mod dialect;
pub mod embeddings;
pub mod fixtures;
pub mod gzip;
pub mod plan;
mod request;
pub mod respond;
pub mod responses;
pub mod state;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use actix_web::http::{Method, StatusCode};
use actix_web::web::{self, Bytes};
use actix_web::{App, HttpRequest, HttpResponse, HttpServer};
use serde_json::{Value, json};

use chat::Completion;
use control::{Shared, record};
pub use dialect::Dialect;
use plan::{Plan, header};
use respond::Reply;
use responses::Responses;
use state::{Generation, HandlerGuard, Mock};

/// How to run one mock process.
pub struct Options {
    pub listen: String,
    pub name: String,
    pub models: Vec<String>,
    pub workers: usize,
    pub dialect: Dialect,
}

/// Binds, reports each address through `on_bound`, then serves until stopped.
pub async fn serve(
    opts: Options,
    on_bound: impl FnOnce(&[std::net::SocketAddr]) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let mock = Arc::new(Mock::new(opts.name.clone(), opts.models, opts.dialect));
    let data = web::Data::new(mock);
    let name = opts.name;
    let server = HttpServer::new(move || {
        let name = name.clone();
        App::new()
            .app_data(data.clone())
            .app_data(web::PayloadConfig::new(64 * 1024 * 1024))
            .wrap(actix_web::middleware::DefaultHeaders::new().add(("x-mock-name", name)))
            .route("/_mock/stats", web::get().to(control::stats))
            .route("/_mock/requests", web::get().to(control::requests))
            .route("/_mock/last", web::get().to(control::last))
            .route("/_mock/reset", web::post().to(control::reset))
            .route("/_mock/fail-next", web::post().to(control::fail_next))
            .route("/_mock/models-delay", web::post().to(control::models_delay))
            .default_service(web::to(v1))
    })
    .workers(opts.workers.max(1))
    .on_connect(|conn, _| {
        if let Some(tcp) = conn.downcast_ref::<actix_web::rt::net::TcpStream>() {
            let _ = tcp.set_nodelay(true);
        }
    })
    .bind(&opts.listen)?;
    on_bound(&server.addrs())?;
    server.run().await
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

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

async fn v1(req: HttpRequest, body: Bytes, mock: Shared) -> HttpResponse {
    let mock = Arc::clone(&mock);
    let mut guard = HandlerGuard::new(&mock);
    record(&mock, &req, &body);
    let path = req.path().to_owned();
    if req.method() == Method::GET && path.starts_with("/v1/models") {
        // A single-slot server answers nothing while it generates.
        mock.slot_free().await;
        let delay = mock.models_delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        guard.answered = true;
        return models(&mock, path.strip_prefix("/v1/models"));
    }
    let json_endpoint = matches!(
        path.as_str(),
        "/v1/chat/completions" | "/v1/completions" | "/v1/embeddings" | "/v1/responses"
    );
    let parsed: Option<Value> = serde_json::from_slice(&body).ok();
    let model = parsed
        .as_ref()
        .and_then(|v| v["model"].as_str())
        .map(str::to_owned);
    let plan = Plan::new(&req, model.as_deref(), &mock);
    let generates = matches!(
        path.as_str(),
        "/v1/chat/completions" | "/v1/completions" | "/v1/responses"
    );
    let generation =
        (generates && plan.dialect == Dialect::LlamaCpp).then(|| Generation::start(&mock));
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
    let stream = parsed["stream"].as_bool() == Some(true);
    drop(guard);
    let reply = Reply {
        mock: &mock,
        accept: header(&req, "accept-encoding"),
        plan,
        generation,
    };
    let (dialect, chunks) = (reply.plan.dialect, reply.plan.chunks);
    match path.as_str() {
        "/v1/embeddings" => reply.json(dialect.body_json(&embeddings::body(&parsed, &model))),
        "/v1/responses" => {
            let r = Responses {
                dialect,
                id_n,
                created,
                model,
                input_tokens: responses::input_words(&parsed),
            };
            if stream {
                reply.stream(r.frames(chunks))
            } else {
                let text = responses::input_text(&parsed).unwrap_or_default();
                reply.json(r.body(&format!("mock reply: {text}")))
            }
        }
        "/v1/chat/completions" | "/v1/completions" => {
            let chat = path == "/v1/chat/completions";
            let c = Completion::for_request(&parsed, chat, dialect, id_n, created, model);
            if stream {
                let usage = parsed["stream_options"]["include_usage"].as_bool() == Some(true);
                reply.stream(c.frames(chunks, usage))
            } else {
                reply.json(c.body())
            }
        }
        _ => HttpResponse::NotFound().finish(),
    }
}

/// `GET /v1/models` (`rest` empty) or `GET /v1/models/{id}` (`rest` = `/{id}`).
fn models(mock: &Mock, rest: Option<&str>) -> HttpResponse {
    let entry =
        |m: &str| json!({"id": m, "object": "model", "created": 1_700_000_000, "owned_by": "mock"});
    match rest.unwrap_or_default().strip_prefix('/') {
        None => {
            let data: Vec<Value> = mock.models.iter().map(|m| entry(m)).collect();
            HttpResponse::Ok().json(json!({"object": "list", "data": data}))
        }
        Some(id) if mock.models.iter().any(|m| m == id) => HttpResponse::Ok().json(entry(id)),
        Some(id) => HttpResponse::NotFound().json(json!({"error": {
            "message": format!("The model '{id}' does not exist"),
            "type": "invalid_request_error", "param": "model", "code": "model_not_found"}})),
    }
}
