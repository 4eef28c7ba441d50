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
