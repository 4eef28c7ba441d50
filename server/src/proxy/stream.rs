//! Relaying the upstream response: status and end-to-end headers as they are, body
//! chunk by chunk as it arrives (each chunk is written and flushed on its own, so
//! SSE frames are not held back). No total timeout: the client's per-read idle
//! timeout guards silence instead.
//!
//! When the client goes away actix drops the body stream at its next write; dropping
//! it drops the upstream response, which closes the upstream connection and so
//! cancels the upstream work. A failure mid-SSE-stream becomes an SSE `error`
//! event followed by `[DONE]`, so SDKs raise an error instead of hanging.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use actix_web::HttpResponse;
use actix_web::body::SizedStream;
use actix_web::http::StatusCode;
use actix_web::web::Bytes;
use futures_util::{Stream, StreamExt};
use tokio::time::Instant;

use crate::actors::audit_writer::{Record, UsageRecord, UsageSlot};
use crate::actors::request_queue::Permit;
use crate::providers::status::InFlight;

/// Response headers that belong to the upstream hop, not to our client.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
    "x-request-id",
];

/// Relays `resp`. For SSE the first chunk is awaited (within the first-byte
/// timeout) before the response head is committed, so a failure before any data
/// can still become a proper error, and head and first frame leave in one write.
pub async fn relay(
    resp: reqwest::Response,
    first_byte: std::time::Duration,
    tap: UsageTap,
    strip_usage: bool,
) -> Result<HttpResponse, (crate::error::ProxyError, UsageTap)> {
    let is_sse = resp
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    if !is_sse {
        return Ok(build(resp, None, tap, strip_usage));
    }
    let mut resp = resp;
    match tokio::time::timeout(first_byte, resp.chunk()).await {
        Err(_) => Err((crate::error::ProxyError::UpstreamTimeout, tap)),
        Ok(Err(e)) => Err((
            crate::error::ProxyError::UpstreamError(crate::providers::without_url(&e)),
            tap,
        )),
        Ok(Ok(first)) => Ok(build(resp, first, tap, strip_usage)),
    }
}

/// Watches a response on its way to the client and files its usage record when the
/// body is dropped (finished, failed or abandoned by the client). It only keeps
/// references to chunks (`Bytes` clones); parsing happens on the audit writer.
pub struct UsageTap {
    /// The record's reserved place in the audit buffer; `None` (usage disabled)
    /// files nothing.
    slot: Option<UsageSlot>,
    pub started: Instant,
    pub record: UsageRecord,
    ttfb: Option<Duration>,
    sent: u64,
    length: Option<u64>,
    /// What the usage record keeps of the body (bounded; see `crate::usage`).
    capture: crate::usage::Capture,
    /// Counts this request against the provider that answers it until the body ends.
    in_flight: Option<InFlight>,
    /// The request queue slot, given back when the body ends or is dropped.
    _admission: Permit,
}

impl UsageTap {
    pub fn new(
        slot: Option<UsageSlot>,
        started: Instant,
        record: UsageRecord,
        admission: Permit,
    ) -> Self {
        Self {
            _admission: admission,
            slot,
            started,
            record,
            ttfb: None,
            sent: 0,
            length: None,
            capture: crate::usage::Capture::default(),
            in_flight: None,
        }
    }

    /// Replaces the provider this request counts against (a new attempt).
    pub fn hold(&mut self, in_flight: InFlight) {
        self.in_flight = Some(in_flight);
    }

    fn on_chunk(&mut self, chunk: &Bytes) {
        if self.slot.is_none() {
            return;
        }
        if self.ttfb.is_none() {
            let ttfb = self.started.elapsed();
            crate::metrics::global().upstream_ttfb(&self.record.provider, ttfb);
            self.ttfb = Some(ttfb);
        }
        self.sent += chunk.len() as u64;
        self.capture.push(chunk, self.record.streamed);
    }

    /// Files the record; `completed` is whether the client got the whole body.
    pub fn finish(mut self, completed: bool) {
        let Some(slot) = self.slot.take() else {
            return;
        };
        let completed = completed || self.length.is_some_and(|l| self.sent >= l);
        self.record.latency_ms = self.started.elapsed().as_secs_f64() * 1e3;
        self.record.ttfb_ms = self.ttfb.map(|d| d.as_secs_f64() * 1e3);
        self.record.client_closed = !completed;
        self.record.response = self.capture.finish();
        slot.send(Record::Usage(Box::new(self.record)));
    }
}

fn build(
    resp: reqwest::Response,
    first: Option<Bytes>,
    mut tap: UsageTap,
    strip_usage: bool,
) -> HttpResponse {
    let status = StatusCode::from_u16(resp.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut out = HttpResponse::build(status);
    let mut sse = false;
    for (name, value) in resp.headers() {
        if HOP_BY_HOP.contains(&name.as_str()) {
            continue;
        }
        if name == reqwest::header::CONTENT_TYPE
            && value.as_bytes().starts_with(b"text/event-stream")
        {
            sse = true;
        }
        if let Ok(v) = actix_web::http::header::HeaderValue::from_bytes(value.as_bytes()) {
            out.append_header((name.as_str(), v));
        }
    }
    if sdk_would_retry(status) {
        // A 4xx/5xx relayed as the answer (not in `retry.retry_on`): Palisade
        // already decided it is not worth another call, so the SDK should not
        // make one either (the retry budget, see `error::ProxyError::should_retry`).
        out.insert_header((crate::error::SHOULD_RETRY, "false"));
    }
    if let Some(encoding) = resp.headers().get(reqwest::header::CONTENT_ENCODING) {
        // Asked for `identity`, and gzip/deflate/br are decoded on the way in:
        // whatever is left cannot be read, so usage will be missing.
        tracing::warn!(
            encoding = %String::from_utf8_lossy(encoding.as_bytes()),
            "upstream sent an encoding Palisade cannot read; relayed as is, usage not recorded"
        );
    }
    let length = resp.content_length();
    tap.record.status = status.as_u16();
    tap.record.streamed = sse;
    tap.length = length.filter(|_| !sse);
    let rest = resp.bytes_stream();
    let inner: Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>> = match first {
        Some(chunk) => Box::pin(futures_util::stream::once(async move { Ok(chunk) }).chain(rest)),
        None => Box::pin(rest),
    };
    let body = Relay {
        inner,
        sse,
        state: State::Streaming,
        stripper: (sse && strip_usage).then(super::sse::UsageStripper::default),
        tap: Some(tap),
    };
    match length {
        Some(len) if !sse => out.body(SizedStream::new(len, body)),
        _ => out.streaming(body),
    }
}

/// The statuses the official SDKs retry on their own (408, 409, 429, 5xx).
fn sdk_would_retry(status: StatusCode) -> bool {
    matches!(status.as_u16(), 408 | 409 | 429) || status.is_server_error()
}

#[derive(PartialEq, Eq)]
enum State {
    Streaming,
    /// An SSE error event was sent; end the stream cleanly next.
    Ending,
    Done,
}

struct Relay {
    inner: Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>,
    sse: bool,
    state: State,
    tap: Option<UsageTap>,
    /// Set when Palisade added `include_usage` the client did not ask for.
    stripper: Option<super::sse::UsageStripper>,
}

impl Stream for Relay {
    type Item = Result<Bytes, actix_web::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match self.state {
            State::Done => return Poll::Ready(None),
            State::Ending => {
                self.state = State::Done;
                return Poll::Ready(None);
            }
            State::Streaming => {}
        }
        loop {
            match self.inner.as_mut().poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(chunk))) => {
                    let this = &mut *self;
                    if let Some(tap) = this.tap.as_mut() {
                        tap.on_chunk(&chunk);
                    }
                    let Some(stripper) = this.stripper.as_mut() else {
                        return Poll::Ready(Some(Ok(chunk)));
                    };
                    let out = stripper.push(chunk);
                    if !out.is_empty() {
                        return Poll::Ready(Some(Ok(out)));
                    }
                    // Only part of a frame so far: wait for its end.
                }
                Poll::Ready(None) => {
                    self.state = State::Done;
                    let rest = self
                        .stripper
                        .as_mut()
                        .map(super::sse::UsageStripper::finish);
                    return match rest {
                        Some(rest) if !rest.is_empty() => Poll::Ready(Some(Ok(rest))),
                        _ => Poll::Ready(None),
                    };
                }
                Poll::Ready(Some(Err(e))) => {
                    let reason = if e.is_timeout() {
                        "upstream_timeout"
                    } else {
                        "upstream_error"
                    };
                    tracing::warn!(reason, error = %crate::providers::without_url(&e), "upstream failed mid-response");
                    return if self.sse {
                        self.state = State::Ending;
                        Poll::Ready(Some(Ok(sse_error(reason))))
                    } else {
                        self.state = State::Done;
                        Poll::Ready(Some(Err(actix_web::error::ErrorBadGateway(reason))))
                    };
                }
            }
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let completed = self.state != State::Streaming;
        if let Some(tap) = self.tap.take() {
            if !completed && tap.length.is_none_or(|l| tap.sent < l) {
                tracing::debug!(
                    "client went away before the response ended; upstream request cancelled"
                );
            }
            tap.finish(completed);
        }
    }
}

fn sse_error(code: &str) -> Bytes {
    let event = serde_json::json!({
        "error": {
            "message": "The upstream provider failed while streaming the response.",
            "type": "api_error",
            "code": code,
            "param": null,
        }
    });
    Bytes::from(format!("data: {event}\n\ndata: [DONE]\n\n"))
}
