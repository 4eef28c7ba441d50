//! Logging: JSON lines by default, `logging.format: pretty` for people. Lines are
//! written by a background thread (tracing-appender) so an actix worker never
//! blocks on stderr. `RUST_LOG` overrides `logging.level`.

use tracing_appender::non_blocking::{NonBlocking, WorkerGuard};
use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, LoggingConfig};

const DISPATCHER_OFF: &str = "actix_http::h1::dispatcher=off";

/// The log's writer when lines are JSON, for the access log, which writes its
/// lines itself (the same shape as the JSON formatter's, at a fraction of the cost:
/// `access_log`).
static JSON_LINES: std::sync::OnceLock<NonBlocking> = std::sync::OnceLock::new();

/// Where finished JSON log lines can be written directly; `None` when lines are
/// not JSON (or logging is not set up).
pub fn json_lines() -> Option<&'static NonBlocking> {
    JSON_LINES.get()
}

/// Installs the global subscriber; keep the guard alive until exit so buffered
/// lines are flushed.
pub fn init(cfg: &LoggingConfig) -> WorkerGuard {
    // Buffered: the writer thread flushes once per batch of queued lines, so a
    // busy gateway makes one `write` per batch instead of one per line.
    let stderr = std::io::BufWriter::with_capacity(64 * 1024, std::io::stderr());
    let (writer, guard) = tracing_appender::non_blocking(stderr);
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| EnvFilter::try_new(v).ok())
        .or_else(|| EnvFilter::try_new(&cfg.level).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    // actix-http logs every connection that ended on an error at ERROR, the parse
    // errors clients choose to cause included; `edge::conn` reports them itself
    // (WARN at most, once a second).
    let filter = match DISPATCHER_OFF.parse() {
        Ok(directive) => filter.add_directive(directive),
        Err(_) => filter,
    };
    if cfg.format == LogFormat::Json {
        let _ = JSON_LINES.set(writer.clone());
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_target(true);
    let result = match cfg.format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Pretty => builder.with_ansi(false).try_init(),
    };
    if result.is_err() {
        // Already installed (tests); keep the existing subscriber.
    }
    guard
}

/// Root span per request: method, path, request id, status. Field values come from
/// the request line only; headers (which carry credentials) are never recorded.
pub struct RootSpan;

impl tracing_actix_web::RootSpanBuilder for RootSpan {
    fn on_request_start(request: &actix_web::dev::ServiceRequest) -> tracing::Span {
        use actix_web::HttpMessage;
        let request_id = request
            .extensions()
            .get::<crate::request_id::RequestId>()
            .map(|r| r.as_str().to_owned())
            .unwrap_or_default();
        tracing::info_span!(
            "http",
            method = %request.method(),
            path = %request.path(),
            request_id = %request_id,
            status = tracing::field::Empty,
        )
    }

    fn on_request_end<B: actix_web::body::MessageBody>(
        span: tracing::Span,
        outcome: &Result<actix_web::dev::ServiceResponse<B>, actix_web::Error>,
    ) {
        let status = match outcome {
            Ok(res) => res.status().as_u16(),
            Err(e) => e.as_response_error().status_code().as_u16(),
        };
        span.record("status", status);
        span.in_scope(|| tracing::debug!(status, "request finished"));
    }
}
