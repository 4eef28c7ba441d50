//! Token accounting from upstream responses. Runs on the audit writer's thread:
//! the request path only keeps references to the last body chunks.

use serde::Deserialize;

use crate::actors::audit_writer::UsageRecord;

/// The largest non-streamed body kept for accounting; bigger bodies (embeddings of
/// many inputs) are recorded with unknown token counts rather than copied.
pub const MAX_ACCOUNTED_BODY: usize = 1 << 20;
/// How many trailing chunks of a stream are kept: the usage chunk comes last,
/// followed only by `[DONE]`.
pub const STREAM_TAIL_CHUNKS: usize = 3;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub struct Tokens {
    pub prompt_tokens: Option<i64>,
    pub completion_tokens: Option<i64>,
    pub total_tokens: Option<i64>,
}

#[derive(Deserialize)]
struct WithUsage {
    #[serde(default)]
    usage: Option<Tokens>,
}

/// A usage record ready for the database.
#[derive(Debug, Clone)]
pub struct UsageRow {
    pub record: UsageRecord,
    pub tokens: Option<Tokens>,
}

pub fn finish(mut record: UsageRecord) -> UsageRow {
    let tail = std::mem::take(&mut record.body_tail);
    // A non-streamed body usually arrives as one chunk: parse it in place.
    let joined;
    let body: &[u8] = match tail.as_slice() {
        [one] => one,
        many => {
            joined = many.concat();
            &joined
        }
    };
    let tokens = if record.streamed {
        from_sse(body)
    } else {
        from_json(body)
    };
    UsageRow { record, tokens }
}

fn from_json(body: &[u8]) -> Option<Tokens> {
    serde_json::from_slice::<WithUsage>(body).ok()?.usage
}

/// The last `data:` event that carries a non-null `usage`.
fn from_sse(body: &[u8]) -> Option<Tokens> {
    let text = String::from_utf8_lossy(body);
    text.lines()
        .rev()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(str::trim)
        .filter(|d| d.starts_with('{'))
        .find_map(|d| serde_json::from_str::<WithUsage>(d).ok()?.usage)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_usage() {
        let t = from_json(
            br#"{"id":"x","usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}}"#,
        )
        .unwrap();
        assert_eq!(
            (t.prompt_tokens, t.completion_tokens, t.total_tokens),
            (Some(3), Some(4), Some(7))
        );
        assert!(from_json(br#"{"id":"x"}"#).is_none());
        assert!(from_json(b"not json").is_none());
    }

    #[test]
    fn sse_usage_is_the_last_non_null_one() {
        let body = b"data: {\"choices\":[],\"usage\":null}\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":2,\"completion_tokens\":5,\"total_tokens\":7}}\n\ndata: [DONE]\n\n";
        assert_eq!(from_sse(body).unwrap().completion_tokens, Some(5));
        assert!(from_sse(b"data: {\"choices\":[]}\n\ndata: [DONE]\n\n").is_none());
    }
}
