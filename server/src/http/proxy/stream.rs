//! Relaying the upstream response: status and end-to-end headers as they are, body
//! chunk by chunk as it arrives (each chunk is written and flushed on its own, so
//! SSE frames are not held back). No total timeout: the provider's `idle` timeout
//! bounds each silence between body chunks ([`IdleTimer`]), so a long stream is
//! fine as long as it keeps talking. The wait for the head (and for SSE the first
//! chunk) is bounded by `first_byte` instead, never by `idle`.
//!
//! When the client goes away actix drops the body stream at its next write; dropping
//! it drops the upstream response, which closes the upstream connection and so
//! cancels the upstream work. A failure mid-SSE-stream (an upstream error, or
//! `idle` passing without a chunk) becomes an SSE `error` event followed by
//! `[DONE]`, so SDKs raise an error instead of hanging; a plain body is cut with an
//! error instead. Either way the head already said 200, so the usage record gets
//! the status the failure would have had (502 `upstream_error`, 504
//! `upstream_timeout`) and counts as an error in `/manage/usage`.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use actix_web::HttpResponse;
use actix_web::body::SizedStream;
use actix_web::http::StatusCode;
use actix_web::web::Bytes;
use futures_util::{Stream, StreamExt};
use tokio::time::{Instant, Sleep};

use crate::actors::audit_writer::{Record, UsageRecord, UsageSlot};
use crate::actors::request_queue::Permit;
use crate::providers::Provider;
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
    provider: &Provider,
    tap: UsageTap,
    strip_usage: bool,
) -> Result<HttpResponse, (crate::error::ProxyError, UsageTap)> {
    let is_sse = resp
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    let idle = provider.idle_timeout;
    if !is_sse {
        return Ok(build(resp, None, tap, strip_usage, idle));
    }
    let mut resp = resp;
    match tokio::time::timeout(provider.first_byte_timeout, resp.chunk()).await {
        Err(_) => Err((crate::error::ProxyError::UpstreamTimeout, tap)),
        Ok(Err(e)) => Err((
            crate::error::ProxyError::UpstreamError(crate::providers::without_url(&e)),
            tap,
        )),
        Ok(Ok(first)) => Ok(build(resp, first, tap, strip_usage, idle)),
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
        // The histogram describes the upstream, not usage: it is fed with usage
        // records off too (one `Option` check per chunk after the first).
        if self.ttfb.is_none() {
            let ttfb = self.started.elapsed();
            crate::metrics::global().upstream_ttfb(&self.record.provider, ttfb);
            self.ttfb = Some(ttfb);
        }
        if self.slot.is_none() {
            return;
        }
        self.capture.push(chunk, self.record.streamed);
    }

    /// The body was cut after the head (upstream error or idle timeout): the
    /// record gets the status the failure would have answered had it come before
    /// the head, so it counts as an error; the tokens already sent still count.
    fn cut(&mut self, reason: Cut) {
        // Only a 2xx answer had tokens worth counting; an error body stays uncounted.
        self.record.body_cut = (200..300).contains(&self.record.status);
        self.record.status = match reason {
            Cut::Timeout => StatusCode::GATEWAY_TIMEOUT.as_u16(),
            Cut::Error => StatusCode::BAD_GATEWAY.as_u16(),
        };
    }

    /// Files the record; `completed` is whether the client got the whole body.
    pub fn finish(mut self, completed: bool) {
        let Some(slot) = self.slot.take() else {
            return;
        };
        let completed = completed || self.length.is_some_and(|l| self.capture.total() >= l);
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
    idle: Duration,
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
        idle: IdleTimer::new(idle),
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

/// Why a body ended before the upstream finished it.
#[derive(Clone, Copy)]
enum Cut {
    Timeout,
    Error,
}

impl Cut {
    fn code(self) -> &'static str {
        match self {
            Self::Timeout => "upstream_timeout",
            Self::Error => "upstream_error",
        }
    }
}

/// The `idle` timeout between body chunks: one timer per response. A chunk only
/// stamps the time ([`IdleTimer::touch`]); the timer itself is moved only when it
/// fires before the stamped deadline, so a stream that keeps talking touches the
/// timer wheel about once per `idle`, not once per chunk.
struct IdleTimer {
    sleep: Pin<Box<Sleep>>,
    idle: Duration,
    /// `idle` after the last chunk (or after the timer started).
    deadline: Instant,
}

impl IdleTimer {
    fn new(idle: Duration) -> Self {
        // Bounded so `now + idle` cannot overflow, whatever the configuration says.
        let idle = idle.min(Duration::from_secs(365 * 24 * 3600));
        let deadline = Instant::now() + idle;
        Self {
            sleep: Box::pin(tokio::time::sleep_until(deadline)),
            idle,
            deadline,
        }
    }

    /// A chunk arrived: the next one is due within `idle` from now.
    fn touch(&mut self) {
        self.deadline = Instant::now() + self.idle;
    }

    /// Ready once `idle` has passed without a [`touch`](Self::touch).
    fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            ready!(self.sleep.as_mut().poll(cx));
            if self.sleep.deadline() >= self.deadline {
                return Poll::Ready(());
            }
            let deadline = self.deadline;
            self.sleep.as_mut().reset(deadline);
        }
    }
}

struct Relay {
    inner: Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>,
    sse: bool,
    state: State,
    idle: IdleTimer,
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
                Poll::Pending => {
                    ready!(self.idle.poll_expired(cx));
                    tracing::warn!(
                        idle_ms = self.idle.idle.as_millis(),
                        "upstream went silent mid-response; cut at the idle timeout"
                    );
                    return self.end_early(Cut::Timeout);
                }
                Poll::Ready(Some(Ok(chunk))) => {
                    let this = &mut *self;
                    this.idle.touch();
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
                        Cut::Timeout
                    } else {
                        Cut::Error
                    };
                    tracing::warn!(reason = reason.code(), error = %crate::providers::without_url(&e), "upstream failed mid-response");
                    return self.end_early(reason);
                }
            }
        }
    }
}

impl Relay {
    /// Ends the body before the upstream did: an SSE error event then `[DONE]`, or
    /// an error that makes actix cut a plain body. Dropping `inner` afterwards
    /// closes the upstream connection.
    fn end_early(&mut self, reason: Cut) -> Poll<Option<Result<Bytes, actix_web::Error>>> {
        if let Some(tap) = self.tap.as_mut() {
            tap.cut(reason);
        }
        if self.sse {
            self.state = State::Ending;
            Poll::Ready(Some(Ok(crate::error::sse_error_event(reason.code()))))
        } else {
            self.state = State::Done;
            let err = match reason {
                Cut::Timeout => actix_web::error::ErrorGatewayTimeout(reason.code()),
                Cut::Error => actix_web::error::ErrorBadGateway(reason.code()),
            };
            Poll::Ready(Some(Err(err)))
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let completed = self.state != State::Streaming;
        if let Some(tap) = self.tap.take() {
            if !completed && tap.length.is_none_or(|l| tap.capture.total() < l) {
                tracing::debug!(
                    "client went away before the response ended; upstream request cancelled"
                );
            }
            tap.finish(completed);
        }
    }
}

#[cfg(test)]
mod tests;
