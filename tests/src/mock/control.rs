//! Observation and control, outside `/v1`: `GET /_mock/stats`, `/_mock/requests`,
//! `/_mock/last`, `POST /_mock/reset`, `POST /_mock/fail-next`,
//! `POST /_mock/models-delay`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::{Value, json};

use super::state::{FailNext, Mock, lock};

pub type Shared = web::Data<Arc<Mock>>;

const LOG_CAP: usize = 1000;

/// Counts and logs one request (headers and body as received).
pub fn record(mock: &Mock, req: &HttpRequest, body: &[u8]) {
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

pub async fn stats(mock: Shared) -> HttpResponse {
    let s = &mock.stats;
    let load = |a: &AtomicU64| a.load(Ordering::SeqCst);
    HttpResponse::Ok().json(json!({
        "name": mock.name,
        "dialect": mock.dialect.name(),
        "requests_total": load(&s.requests_total),
        "by_path": *lock(&s.by_path),
        "streams_started": load(&s.streams_started),
        "streams_completed": load(&s.streams_completed),
        "streams_cancelled": load(&s.streams_cancelled),
        "in_flight": load(&s.in_flight),
        "handlers_cancelled": load(&s.handlers_cancelled),
        "generating": load(&mock.generating),
    }))
}

pub async fn requests(mock: Shared) -> HttpResponse {
    HttpResponse::Ok().json(lock(&mock.stats.log).iter().collect::<Vec<_>>())
}

pub async fn last(mock: Shared) -> HttpResponse {
    HttpResponse::Ok().json(lock(&mock.stats.log).back().cloned().unwrap_or(Value::Null))
}

pub async fn reset(mock: Shared) -> HttpResponse {
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

pub async fn fail_next(mock: Shared, body: web::Json<Value>) -> HttpResponse {
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
/// answer (a slow health check, whatever the dialect); 0 = none. Not cleared by
/// `reset`.
pub async fn models_delay(mock: Shared, body: web::Json<Value>) -> HttpResponse {
    mock.models_delay_ms
        .store(body["ms"].as_u64().unwrap_or(0), Ordering::SeqCst);
    HttpResponse::NoContent().finish()
}
