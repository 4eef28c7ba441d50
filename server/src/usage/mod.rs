//! Token accounting for proxied requests.
//!
//! The request path only keeps what a record needs ([`Capture`], [`KeptRequest`]:
//! references and bounded copies); everything here runs on the audit writer's
//! thread when the record is written:
//! 1. the usage the upstream reported: a non-streamed body's `usage`, or the last
//!    stream event carrying a non-null `usage` (also `response.usage` of the
//!    Responses API; `input_tokens`/`output_tokens` are read as prompt/completion);
//! 2. when there is none (llama.cpp and others ignore `stream_options`, some
//!    servers never send usage) and the upstream answered 2xx on an endpoint that
//!    generates or embeds text, an estimate ([`estimate`]), recorded with
//!    `usage_estimated = true`.
//!
//! `docs/usage-accounting.md` describes the rules and their limits.

mod capture;
mod estimate;
mod events;
mod text;

use std::borrow::Cow;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use uuid::Uuid;

pub use self::capture::{Capture, KeptRequest, KeptResponse};
use self::estimate::{Counter, PER_MESSAGE, REPLY_PRIMING, bytes_heuristic, scale};

/// The largest request or non-streamed response body kept for accounting; a
/// bigger one is counted from its length alone.
pub const MAX_ACCOUNTED_BODY: usize = 1 << 20;
/// How much of a stream is kept for accounting (copied, see [`Capture`]).
/// Past it the estimate scales the kept part's count to the stream's length.
pub const STREAM_KEPT_BYTES: usize = 256 * 1024;
/// How many trailing chunks of a stream past [`STREAM_KEPT_BYTES`] are kept: the
/// usage chunk comes last, followed only by `[DONE]`.
pub const STREAM_TAIL_CHUNKS: usize = 3;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub struct Tokens {
    #[serde(alias = "input_tokens")]
    pub prompt_tokens: Option<i64>,
    #[serde(alias = "output_tokens")]
    pub completion_tokens: Option<i64>,
    pub total_tokens: Option<i64>,
}

impl Tokens {
    fn is_known(&self) -> bool {
        self.prompt_tokens.is_some() || self.completion_tokens.is_some()
    }
}

#[derive(Deserialize)]
struct WithUsage {
    #[serde(default)]
    usage: Option<Tokens>,
    /// Responses API stream: `response.completed` carries the response object.
    #[serde(default)]
    response: Option<Box<WithUsage>>,
}

impl WithUsage {
    fn tokens(self) -> Option<Tokens> {
        self.usage
            .or_else(|| self.response.and_then(|r| r.usage))
            .filter(Tokens::is_known)
    }
}

/// One proxied request. What was kept of the request and response bodies rides
/// along so token counts are parsed (or estimated) on the writer's thread, not on
/// the request path (this module).
#[derive(Debug, Clone)]
pub struct UsageRecord {
    pub id: Uuid,
    pub timestamp: DateTime<Utc>,
    pub request_id: String,
    pub project_id: Uuid,
    pub token_id: Uuid,
    pub model: Option<String>,
    pub provider: String,
    pub endpoint: String,
    pub status: u16,
    pub streamed: bool,
    pub latency_ms: f64,
    pub ttfb_ms: Option<f64>,
    pub client_closed: bool,
    /// The body was cut after a 2xx head (upstream error or idle timeout):
    /// `status` holds the error (502 or 504), yet what the client got is counted.
    pub body_cut: bool,
    /// The request body (if small enough), for a prompt estimate.
    pub request: KeptRequest,
    /// The response body as [`Capture`] kept it.
    pub response: KeptResponse,
    /// `server.instance_id`, filled in by the audit writer.
    pub instance: Option<String>,
}

/// A usage record ready for the database.
#[derive(Debug, Clone)]
pub struct UsageRow {
    pub record: UsageRecord,
    pub tokens: Option<Tokens>,
    /// The tokens were counted by Palisade, not reported by the upstream.
    pub estimated: bool,
}

pub fn finish(mut record: UsageRecord) -> UsageRow {
    let response = std::mem::take(&mut record.response);
    let request = std::mem::take(&mut record.request);
    let (tokens, estimated) = match reported(&response, record.streamed) {
        Some(t) => (Some(t), false),
        None => (estimate(&record, &request, &response), true),
    };
    let estimated = estimated && tokens.is_some();
    if let Some(t) = &tokens {
        crate::metrics::global().usage_tokens(t.prompt_tokens, t.completion_tokens, estimated);
    }
    UsageRow {
        record,
        tokens,
        estimated,
    }
}

/// The kept head as one slice (a non-streamed body usually arrives as one chunk).
fn joined(parts: &[Bytes]) -> Cow<'_, [u8]> {
    match parts {
        [] => Cow::Borrowed(&[]),
        [one] => Cow::Borrowed(one),
        many => Cow::Owned(many.concat()),
    }
}

fn reported(response: &KeptResponse, streamed: bool) -> Option<Tokens> {
    if !streamed {
        return serde_json::from_slice::<WithUsage>(&joined(&response.head))
            .ok()?
            .tokens();
    }
    // The usage chunk is near the end: in the tail when the stream outgrew the
    // head, else at the end of the head.
    if let Some(t) = from_sse(&joined(&response.tail)) {
        return Some(t);
    }
    let head = joined(&response.head);
    let from = head.len().saturating_sub(USAGE_SEARCH_BYTES);
    from_sse(&head[from..])
}

/// How far from a kept stream's end its usage is looked for (the usage chunk is
/// the last event or two; the cut event at the start fails to parse harmlessly).
const USAGE_SEARCH_BYTES: usize = 16 * 1024;

/// The last event that carries a non-null `usage`.
fn from_sse(body: &[u8]) -> Option<Tokens> {
    let text = String::from_utf8_lossy(body);
    events::data_events(&text)
        .iter()
        .rev()
        .filter(|d| d.trim_start().starts_with('{'))
        .find_map(|d| serde_json::from_str::<WithUsage>(d).ok()?.tokens())
}

/// Endpoints whose tokens can be estimated: they read a prompt and generate text
/// (or, for embeddings, only read).
fn generates(endpoint: &str) -> Option<bool> {
    match endpoint {
        "/chat/completions" | "/completions" | "/responses" | "/messages" => Some(true),
        "/embeddings" => Some(false),
        _ => None,
    }
}

/// Prompt and completion tokens counted by Palisade; `None` when the request
/// failed (no 2xx answer; a body cut after a 2xx head still counts what was sent) or the endpoint is not one that counts tokens.
fn estimate(
    record: &UsageRecord,
    request: &KeptRequest,
    response: &KeptResponse,
) -> Option<Tokens> {
    if !(200..300).contains(&record.status) && !record.body_cut {
        return None;
    }
    let generates = generates(&record.endpoint)?;
    let counter = Counter::for_model(record.model.as_deref());
    let prompt = estimate_prompt(counter, request);
    let completion = match generates {
        false => 0,
        true => estimate_completion(counter, response, record.streamed),
    };
    let (prompt, completion) = (as_i64(prompt), as_i64(completion));
    Some(Tokens {
        prompt_tokens: Some(prompt),
        completion_tokens: Some(completion),
        total_tokens: Some(prompt.saturating_add(completion)),
    })
}

fn estimate_prompt(counter: Counter, request: &KeptRequest) -> u64 {
    let parsed = request.body.as_deref().and_then(text::prompt);
    let Some(p) = parsed else {
        // Not kept (too large) or not JSON: the whole body's length.
        return bytes_heuristic(request.len);
    };
    let framing = match p.messages {
        0 => 0,
        n => n * PER_MESSAGE + REPLY_PRIMING,
    };
    counter.count(&p.text) + framing + p.token_ids
}

fn estimate_completion(counter: Counter, response: &KeptResponse, streamed: bool) -> u64 {
    if !streamed {
        if !response.whole {
            // Past the cap nothing was kept: the body's length.
            return bytes_heuristic(usize::try_from(response.total).unwrap_or(usize::MAX));
        }
        return counter.count(&text::completion(&joined(&response.head)));
    }
    let head = joined(&response.head);
    let text = String::from_utf8_lossy(&head);
    let events = events::data_events(&text);
    let completion = text::stream_completion(events.iter().map(AsRef::as_ref));
    let counted = counter.count(&completion);
    // A stream longer than what was kept: its deltas are alike, so the kept part's
    // count is scaled to the whole stream's length.
    scale(counted, head.len() as u64, response.total)
}

fn as_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests;
