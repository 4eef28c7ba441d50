use super::*;

fn record(endpoint: &str, model: &str, status: u16, streamed: bool) -> UsageRecord {
    UsageRecord {
        id: uuid::Uuid::now_v7(),
        timestamp: crate::time::now(),
        request_id: "r".to_owned(),
        project_id: uuid::Uuid::now_v7(),
        token_id: uuid::Uuid::now_v7(),
        model: Some(model.to_owned()),
        provider: "p".to_owned(),
        endpoint: endpoint.to_owned(),
        status,
        streamed,
        latency_ms: 1.0,
        ttfb_ms: None,
        client_closed: false,
        body_cut: false,
        request: KeptRequest::default(),
        response: KeptResponse::default(),
        instance: None,
    }
}

fn with_bodies(mut r: UsageRecord, request: &str, chunks: &[&str]) -> UsageRecord {
    r.request = KeptRequest::of(&Bytes::copy_from_slice(request.as_bytes()));
    let mut c = Capture::default();
    for chunk in chunks {
        c.push(&Bytes::copy_from_slice(chunk.as_bytes()), r.streamed);
    }
    r.response = c.finish();
    r
}

fn counts(row: &UsageRow) -> (Option<i64>, Option<i64>, Option<i64>, bool) {
    let t = row.tokens.unwrap_or_default();
    (
        t.prompt_tokens,
        t.completion_tokens,
        t.total_tokens,
        row.estimated,
    )
}

const CHAT: &str =
    r#"{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"Hello world"}]}"#;

#[test]
fn json_usage() {
    let r = with_bodies(
        record("/chat/completions", "gpt-4o", 200, false),
        CHAT,
        &[r#"{"id":"x","usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}}"#],
    );
    assert_eq!(counts(&finish(r)), (Some(3), Some(4), Some(7), false));
}

#[test]
fn responses_api_usage_names_are_read() {
    let r = with_bodies(
        record("/responses", "gpt-4o", 200, false),
        "{}",
        &[r#"{"usage":{"input_tokens":5,"output_tokens":6,"total_tokens":11}}"#],
    );
    assert_eq!(counts(&finish(r)), (Some(5), Some(6), Some(11), false));
    let stream = with_bodies(
        record("/responses", "gpt-4o", 200, true),
        "{}",
        &[
            "event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"delta\":\"hi\"}\n\n",
            "event: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"usage\":{\"input_tokens\":2,\"output_tokens\":1,\"total_tokens\":3}}}\n\n",
        ],
    );
    assert_eq!(counts(&finish(stream)), (Some(2), Some(1), Some(3), false));
}

#[test]
fn sse_usage_is_the_last_non_null_one_whatever_the_framing() {
    for sep in ["\n\n", "\r\n\r\n", "\r\r"] {
        let body = format!(
            "data: {{\"choices\":[],\"usage\":null}}{sep}data: {{\"choices\": [{{\"index\":0,\"delta\":{{}}}}], \"usage\": {{\"prompt_tokens\": 2, \"completion_tokens\": 5, \"total_tokens\": 7}}}}{sep}data: [DONE]{sep}"
        );
        let r = with_bodies(
            record("/chat/completions", "gpt-4o", 200, true),
            CHAT,
            &[&body],
        );
        assert_eq!(
            counts(&finish(r)),
            (Some(2), Some(5), Some(7), false),
            "{sep:?}"
        );
    }
}

#[test]
fn stream_without_usage_is_estimated_with_the_tokenizer() {
    let chunks = [
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n",
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hello\"}}]}\n\n",
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\" world\"}}]}\n\n",
        "data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n",
        "data: [DONE]\n\n",
    ];
    let r = with_bodies(
        record("/chat/completions", "gpt-4o-mini", 200, true),
        CHAT,
        &chunks,
    );
    // "Hello world" is 2 o200k tokens, plus 3 for the message and 3 of priming.
    assert_eq!(counts(&finish(r)), (Some(8), Some(2), Some(10), true));
}

#[test]
fn stream_cut_after_its_head_still_counts_what_was_sent() {
    let chunks = [
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hello\"}}]}\n\n",
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\" world\"}}]}\n\n",
    ];
    let mut r = record("/chat/completions", "gpt-4o-mini", 504, true);
    r.body_cut = true;
    let r = with_bodies(r, CHAT, &chunks);
    assert_eq!(counts(&finish(r)), (Some(8), Some(2), Some(10), true));
}

#[test]
fn other_models_use_the_byte_heuristic() {
    let r = with_bodies(
        record("/chat/completions", "llama-3.1-8b", 200, false),
        r#"{"messages":[{"role":"user","content":"abcdefghi"}]}"#,
        &[r#"{"choices":[{"message":{"role":"assistant","content":"12345"}}]}"#],
    );
    // ceil(9/4) + 3 + 3, ceil(5/4).
    assert_eq!(counts(&finish(r)), (Some(9), Some(2), Some(11), true));
}

#[test]
fn embeddings_without_usage_count_the_input_only() {
    let r = with_bodies(
        record("/embeddings", "text-embedding-3-small", 200, false),
        r#"{"input":["Hello world","Hello world"]}"#,
        &[r#"{"data":[{"embedding":[0.1]},{"embedding":[0.2]}]}"#],
    );
    // cl100k: 2 + (newline-joined: "\nHello" merges) — computed, not hand-counted.
    let want = estimate::Counter::Cl100k.count("Hello world\nHello world");
    let want = i64::try_from(want).unwrap();
    assert_eq!(counts(&finish(r)), (Some(want), Some(0), Some(want), true));
}

#[test]
fn failures_and_uncounted_endpoints_stay_unknown() {
    let failed = with_bodies(record("/chat/completions", "gpt-4o", 502, false), CHAT, &[]);
    assert_eq!(counts(&finish(failed)), (None, None, None, false));
    let speech = with_bodies(
        record("/audio/speech", "tts-1", 200, false),
        r#"{"input":"say this"}"#,
        &["binary audio"],
    );
    assert_eq!(counts(&finish(speech)), (None, None, None, false));
}

#[test]
fn bodies_past_the_caps_are_counted_from_their_length() {
    // A request too large to keep: its length, one token per four bytes.
    let big_prompt = format!(
        r#"{{"messages":[{{"role":"user","content":"{}"}}]}}"#,
        "a".repeat(MAX_ACCOUNTED_BODY)
    );
    let mut r = record("/chat/completions", "gpt-4o", 200, false);
    r.request = KeptRequest::of(&Bytes::from(big_prompt.clone()));
    r.response = KeptResponse::whole(Bytes::from_static(
        br#"{"choices":[{"message":{"content":"ok"}}]}"#,
    ));
    let row = finish(r);
    assert_eq!(
        row.tokens.unwrap().prompt_tokens,
        Some(i64::try_from(big_prompt.len().div_ceil(4)).unwrap())
    );
    // A stream longer than what is kept: the kept part's count, scaled.
    let delta = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hello world\"}}]}\n\n";
    let n = STREAM_KEPT_BYTES / delta.len() * 2;
    let chunks = vec![delta; n];
    let r = with_bodies(
        record("/chat/completions", "gpt-4o", 200, true),
        CHAT,
        &chunks,
    );
    let completion = finish(r).tokens.unwrap().completion_tokens.unwrap();
    let exact = i64::try_from(2 * n).unwrap();
    assert!(
        (completion - exact).abs() * 100 <= exact,
        "estimated {completion}, exact {exact}"
    );
}

#[test]
fn usage_in_the_tail_of_a_long_stream_is_found() {
    let delta = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"x\"}}]}\n\n";
    let mut chunks = vec![delta; STREAM_KEPT_BYTES / delta.len() + 10];
    chunks.push("data: {\"choices\":[],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":9,\"total_tokens\":10}}\n\n");
    chunks.push("data: [DONE]\n\n");
    let r = with_bodies(
        record("/chat/completions", "gpt-4o", 200, true),
        CHAT,
        &chunks,
    );
    assert_eq!(counts(&finish(r)), (Some(1), Some(9), Some(10), false));
}
