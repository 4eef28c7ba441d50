//! Answers the HTTP parser gives on its own (malformed request line or headers,
//! bad chunked encoding, a head past the buffer, a head that took too long), in
//! the JSON envelope with an `x-request-id`, and logged at WARN at most once a
//! second.
//!
//! actix-http writes those responses itself, with an empty body and no hook. The
//! connection guard recognises them on their way out: they start a write while no
//! request of the connection is in the application, and carry no `x-request-id`
//! (every response of the application does, `request_id::middleware` stamps it).
//! A bad request pipelined behind a good one may share a write with that one's
//! tail and then goes out as actix wrote it (still a 400, then the close).

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use actix_web::http::StatusCode;
use bytes::Bytes;

use super::state::ConnHandle;

/// If `buf` starts with a complete response head the parser wrote itself, its
/// length and status. Runs on response writes: no allocation, and the usual
/// answer (the application's, with a body) is rejected at the first check.
/// actix writes header names in lower case.
pub fn parser_response(buf: &[u8]) -> Option<(usize, u16)> {
    let rest = buf
        .strip_prefix(b"HTTP/1.1 ")
        .or_else(|| buf.strip_prefix(b"HTTP/1.0 "))?;
    let status = std::str::from_utf8(rest.get(..3)?)
        .ok()?
        .parse::<u16>()
        .ok()?;
    if !(400..600).contains(&status) {
        return None;
    }
    // The parser's answers are a status line and three or four short headers.
    let window = &buf[..buf.len().min(512)];
    let end = memchr::memmem::find(window, b"\r\n\r\n")? + 4;
    let head = &buf[..end];
    let empty = memchr::memmem::find(head, b"\r\ncontent-length: 0\r\n").is_some();
    let own = memchr::memmem::find(head, b"\r\nx-request-id:").is_some();
    (empty && !own).then_some((end, status))
}

/// The error code for a status the parser answers with.
pub fn code(status: u16) -> &'static str {
    match status {
        400 => "malformed_request",
        408 => "request_timeout",
        431 => "request_head_too_large",
        500..=599 => "internal_error",
        _ => "bad_request",
    }
}

fn message(status: u16) -> &'static str {
    match status {
        400 => "The request could not be parsed as HTTP/1.1.",
        408 => "The request head was not received in time.",
        431 => "The request head is larger than the gateway accepts.",
        500..=599 => "The connection failed inside the gateway.",
        _ => "The request was refused.",
    }
}

/// A complete response closing the connection: the OpenAI-shaped envelope (the
/// path was never parsed, so the `/v1` one; it names `message` and `code` like
/// the management one), a fresh request id.
pub fn response(status: u16, request_id: &str) -> Bytes {
    let body = serde_json::json!({
        "error": {
            "message": message(status),
            "type": if status >= 500 { "api_error" } else { "invalid_request_error" },
            "code": code(status),
            "param": null,
        }
    })
    .to_string();
    let reason = StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Error");
    Bytes::from(format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nx-request-id: {request_id}\r\nx-content-type-options: nosniff\r\ncache-control: no-store\r\nconnection: close\r\n\r\n{body}",
        body.len()
    ))
}

/// A fresh request id (the parser never saw the client's).
pub fn fresh_id() -> String {
    uuid::Uuid::now_v7().hyphenated().to_string()
}

/// Logs a refused connection at WARN, at most once a second process-wide; lines
/// left out are counted into the next one (`suppressed`). Clients choose how
/// often these happen, so they must not be able to fill the log.
pub fn warn(what: &str, status: u16, peer: Option<SocketAddr>, request_id: &str) {
    let suppressed = LOG_BUDGET.take(now_ms());
    if let Some(suppressed) = suppressed {
        let peer = peer.map(|p| p.ip().to_string()).unwrap_or_default();
        tracing::warn!(%peer, status, request_id, suppressed, "{what}");
    }
}

/// Refuses a connection over `server.max_connections_per_ip`: counted, logged
/// (budgeted), and on plaintext answered 503 in one non-blocking write before the
/// close (a client that already sent its request may see a reset instead).
pub fn refuse_connection(
    tcp: &actix_web::rt::net::TcpStream,
    peer: Option<SocketAddr>,
    plaintext: bool,
) {
    crate::metrics::global().connection_refused("per_ip");
    let id = fresh_id();
    warn(
        "connection refused: server.max_connections_per_ip reached",
        503,
        peer,
        &id,
    );
    if plaintext {
        // Whatever the client already sent, so the close is not a reset.
        let mut sink = [0u8; 4096];
        let _ = tcp.try_read(&mut sink);
        let body = serde_json::json!({
            "error": {
                "message": "Too many open connections from this IP address; retry shortly.",
                "type": "api_error",
                "code": "too_many_connections",
                "param": null,
            }
        })
        .to_string();
        let response = format!(
            "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nx-request-id: {id}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = tcp.try_write(response.as_bytes());
    }
}

/// A connection ended on an error. Client-caused ones were answered and logged
/// already, or are routine (resets, timeouts): DEBUG; anything else at WARN,
/// budgeted like the rest. (actix-http's own ERROR line for these is filtered
/// out in `telemetry`.)
pub fn report(e: &actix_http::error::DispatchError, conn: &ConnHandle, peer: Option<SocketAddr>) {
    use actix_http::error::DispatchError as E;
    let routine = matches!(e, E::Io(_) | E::DisconnectTimeout | E::SlowRequestTimeout)
        || (conn.answered() && matches!(e, E::Parse(_)));
    if routine {
        tracing::debug!(error = %e, "connection closed");
        return;
    }
    if let Some(suppressed) = LOG_BUDGET.take(now_ms()) {
        let peer = peer.map(|p| p.ip().to_string()).unwrap_or_default();
        tracing::warn!(%peer, error = %e, suppressed, "connection ended on an error");
    }
}

fn now_ms() -> u64 {
    static START: OnceLock<tokio::time::Instant> = OnceLock::new();
    let start = *START.get_or_init(tokio::time::Instant::now);
    u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX)
}

static LOG_BUDGET: LogBudget = LogBudget::new(1_000);

/// One line per `every_ms`; the lines left out in between are counted.
pub struct LogBudget {
    every_ms: u64,
    /// The first millisecond the next line may be written (+1, so 0 = never yet).
    next: AtomicU64,
    skipped: AtomicU64,
}

impl LogBudget {
    pub const fn new(every_ms: u64) -> Self {
        Self {
            every_ms,
            next: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
        }
    }

    /// `Some(lines skipped since the last one)` when a line may be written now.
    pub fn take(&self, now_ms: u64) -> Option<u64> {
        let next = self.next.load(Ordering::Relaxed);
        if now_ms + 1 >= next
            && self
                .next
                .compare_exchange(
                    next,
                    now_ms + 1 + self.every_ms,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
        {
            return Some(self.skipped.swap(0, Ordering::Relaxed));
        }
        self.skipped.fetch_add(1, Ordering::Relaxed);
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_the_parsers_own_responses_only() {
        let actix = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\ndate: Mon, 30 Nov 2026 15:00:00 GMT\r\n\r\n";
        assert_eq!(parser_response(actix), Some((actix.len(), 400)));
        let too_large =
            b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\n\r\nrest";
        assert_eq!(parser_response(too_large), Some((too_large.len() - 4, 431)));
        // The application's responses carry a request id, or a body.
        let app = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nx-request-id: a\r\n\r\n";
        assert_eq!(parser_response(app), None);
        let app = b"HTTP/1.1 404 Not Found\r\ncontent-length: 12\r\n\r\n";
        assert_eq!(parser_response(app), None);
        assert_eq!(
            parser_response(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"),
            None
        );
        // Not at a response start, or not a whole head.
        assert_eq!(parser_response(b"0\r\n\r\n"), None);
        assert_eq!(
            parser_response(b"HTTP/1.1 400 Bad Request\r\ncontent-len"),
            None
        );
    }

    #[test]
    fn the_replacement_is_a_json_envelope_with_an_id() {
        let r = response(400, "abc");
        let text = std::str::from_utf8(&r).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{head}");
        assert!(head.contains("\r\nx-request-id: abc\r\n"), "{head}");
        assert!(head.contains("\r\nconnection: close"), "{head}");
        assert!(
            head.contains(&format!("\r\ncontent-length: {}\r\n", body.len())),
            "{head}"
        );
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["error"]["code"], "malformed_request");
        assert_eq!(v["error"]["type"], "invalid_request_error");
    }

    #[test]
    fn log_budget_allows_one_line_a_second_and_counts_the_rest() {
        let b = LogBudget::new(1_000);
        assert_eq!(b.take(0), Some(0));
        assert_eq!(b.take(10), None);
        assert_eq!(b.take(999), None);
        assert_eq!(b.take(1_000), Some(2));
        assert_eq!(b.take(1_500), None);
        assert_eq!(b.take(5_000), Some(1));
    }
}
