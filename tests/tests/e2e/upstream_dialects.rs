//! Palisade in front of upstreams that speak the dialects of real servers (the
//! mock's `x-mock-dialect`, see `docs/mock-upstream.md`): each stream through the
//! gateway equals the same request sent straight to the mock (fixed mode), no
//! usage reaches a client that did not ask for it, the usage a client asked for
//! arrives as the upstream sent it, and every stream is recorded with tokens.

use std::io::Read as _;

use palisade_tests::sse;
use serde_json::{Value, json};
use tokio::time::{Duration, Instant};

use crate::harness::{Gateway, Mock, start};

pub(crate) const PROMPT: &str = "hello there";

/// Where a request goes: straight to the mock, or through the gateway with a token.
pub(crate) enum Target<'a> {
    Direct(&'a Mock),
    Via(&'a Gateway, &'a str),
}

impl Target<'_> {
    /// A POST to `path` (`/v1/...`) with the dialect and fixed mode set.
    pub(crate) fn post(&self, path: &str, dialect: &str) -> reqwest::RequestBuilder {
        let req = match self {
            Target::Direct(mock) => mock.wire_client().post(format!("{}{path}", mock.url)),
            Target::Via(gw, token) => gw
                .wire_client()
                .post(format!("{}{path}", gw.url))
                .bearer_auth(token),
        };
        req.header("x-mock-dialect", dialect)
            .header("x-mock-fixed", "1")
    }
}

pub(crate) fn chat_stream_body(include_usage: bool) -> Value {
    let mut body = json!({"model": "gpt-4o-mini", "stream": true,
        "messages": [{"role": "user", "content": PROMPT}]});
    if include_usage {
        body["stream_options"] = json!({"include_usage": true});
    }
    body
}

/// The body as the client reads it: gunzipped when it came compressed.
pub(crate) async fn read_body(resp: reqwest::Response) -> Vec<u8> {
    let gzipped = resp
        .headers()
        .get("content-encoding")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"gzip"));
    let raw = resp.bytes().await.unwrap().to_vec();
    if !gzipped {
        return raw;
    }
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(&raw[..])
        .read_to_end(&mut out)
        .unwrap_or_else(|e| panic!("the body says gzip but is not: {e}"));
    out
}

pub(crate) async fn fetch(req: reqwest::RequestBuilder, body: &Value) -> Vec<u8> {
    let resp = req.json(body).send().await.unwrap();
    assert_eq!(resp.status(), 200, "{:?}", resp.headers());
    read_body(resp).await
}

/// The events a client sees: name and data (parsed when JSON); comments aside.
pub(crate) fn events(bytes: &[u8]) -> Vec<(Option<String>, Value)> {
    sse::parse(bytes).iter().map(sse::Event::parsed).collect()
}

/// Asserts a client got the events it would have got directly, naming the first
/// difference.
pub(crate) fn assert_same_events(what: &str, via: &[u8], direct: &[u8]) {
    let (v, d) = (events(via), events(direct));
    if v == d {
        return;
    }
    let at = v
        .iter()
        .zip(&d)
        .position(|(a, b)| a != b)
        .unwrap_or(v.len().min(d.len()));
    let show = |e: Option<&(Option<String>, Value)>| match e {
        Some((name, data)) => format!("{} {data}", name.as_deref().unwrap_or("")),
        None => "(none)".to_owned(),
    };
    panic!(
        "{what}: the client's events differ from the upstream's at event #{at} ({} via Palisade, {} direct)\n  via:    {}\n  direct: {}\nwhole stream via Palisade:\n{}",
        v.len(),
        d.len(),
        show(v.get(at)),
        show(d.get(at)),
        text(via)
    );
}

/// Every event that carries a `usage` member (any value, `null` included).
fn with_usage(events: &[(Option<String>, Value)]) -> Vec<&Value> {
    events
        .iter()
        .map(|(_, v)| v)
        .filter(|v| v.get("usage").is_some())
        .collect()
}

/// The usage row of one token, once `requests` requests are recorded.
pub(crate) async fn usage_row(gw: &Gateway, token_id: &str, requests: i64) -> Value {
    let body = gw
        .wait_for(
            &format!("/manage/usage?group_by=token&token_id={token_id}"),
            |b| b["data"][0]["requests"].as_i64() >= Some(requests),
        )
        .await;
    body["data"][0].clone()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The whole contract for one dialect's chat streams.
async fn stream_matches_direct(dialect: &str) {
    let (mock, gw) = start("");
    let (pid, plain_tid, plain) = gw.project_and_token(json!({}), json!({})).await;
    let (with_tid, with) = gw.create_token(&pid, json!({})).await;

    // No stream_options: what the client would have got without Palisade.
    let body = chat_stream_body(false);
    let direct = fetch(
        Target::Direct(&mock).post("/v1/chat/completions", dialect),
        &body,
    )
    .await;
    let via = fetch(
        Target::Via(&gw, &plain).post("/v1/chat/completions", dialect),
        &body,
    )
    .await;
    assert_same_events(dialect, &via, &direct);
    assert!(
        with_usage(&events(&via)).is_empty(),
        "{dialect}: usage the client did not ask for:\n{}",
        text(&via)
    );
    // Where nothing had to be removed from an event, its bytes are the upstream's:
    // these dialects add nothing but a usage chunk of its own (or nothing at all).
    if matches!(dialect, "litellm" | "starlette" | "llamacpp") {
        assert_eq!(
            text(&via),
            text(&direct),
            "{dialect}: bytes changed where no change was needed"
        );
    }

    // include_usage: the upstream's usage, as it sent it, byte for byte.
    let body = chat_stream_body(true);
    let direct = fetch(
        Target::Direct(&mock).post("/v1/chat/completions", dialect),
        &body,
    )
    .await;
    let via = fetch(
        Target::Via(&gw, &with).post("/v1/chat/completions", dialect),
        &body,
    )
    .await;
    assert_eq!(text(&via), text(&direct), "{dialect}: with include_usage");
    if dialect != "llamacpp" {
        let via_events = events(&via);
        let usage: Vec<_> = with_usage(&via_events)
            .into_iter()
            .filter(|v| !v["usage"].is_null())
            .collect();
        assert_eq!(
            usage.len(),
            1,
            "{dialect}: one usage object:\n{}",
            text(&via)
        );
        assert_eq!(usage[0]["usage"]["prompt_tokens"], 2, "{dialect}");
        assert_eq!(usage[0]["usage"]["completion_tokens"], 5, "{dialect}");
    }

    // Both recorded with tokens: the upstream's count where it sent one (Palisade
    // asked for it on the plain stream), an estimate where it never does.
    for (tid, what) in [(&plain_tid, "without"), (&with_tid, "with")] {
        let row = usage_row(&gw, tid, 1).await;
        if dialect == "llamacpp" {
            assert!(
                row["prompt_tokens"].as_i64() > Some(0)
                    && row["completion_tokens"].as_i64() > Some(0),
                "{dialect} ({what} include_usage): llama.cpp never reports stream usage, so the tokens must be estimated: {row}"
            );
        } else {
            assert_eq!(
                (&row["prompt_tokens"], &row["completion_tokens"]),
                (&json!(2), &json!(5)),
                "{dialect} ({what} include_usage): recorded tokens: {row}"
            );
        }
    }
}

#[tokio::test]
async fn dialect_openai_stream_equals_direct_and_usage_only_when_asked() {
    stream_matches_direct("openai").await;
}

#[tokio::test]
async fn dialect_litellm_stream_equals_direct_and_usage_only_when_asked() {
    stream_matches_direct("litellm").await;
}

#[tokio::test]
async fn dialect_starlette_stream_equals_direct_and_usage_only_when_asked() {
    stream_matches_direct("starlette").await;
}

#[tokio::test]
async fn dialect_llamacpp_stream_equals_direct_and_usage_is_estimated() {
    stream_matches_direct("llamacpp").await;
}

#[tokio::test]
async fn dialect_lastchunk_stream_equals_direct_and_usage_only_when_asked() {
    stream_matches_direct("lastchunk").await;
}

/// When each data event arrived, measured from the request's start.
async fn arrivals(req: reqwest::RequestBuilder, body: &Value) -> Vec<Duration> {
    let t0 = Instant::now();
    let mut resp = req.json(body).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut reader = sse::Reader::default();
    let mut at = Vec::new();
    while let Some(chunk) = resp.chunk().await.unwrap() {
        let n = reader.push(&chunk).len();
        at.extend(std::iter::repeat_n(t0.elapsed(), n));
    }
    at
}

#[tokio::test]
async fn dialect_starlette_crlf_stream_arrives_chunk_by_chunk() {
    let (mock, gw) = start("");
    let (_, _, token) = gw.project_and_token(json!({}), json!({})).await;
    // 5 content chunks 300 ms apart, the SDK's default request (no stream_options).
    let body = chat_stream_body(false);
    let paced = |t: Target<'_>| {
        t.post("/v1/chat/completions", "starlette")
            .header("x-mock-chunks", "5")
            .header("x-mock-chunk-delay-ms", "300")
    };
    let direct = arrivals(paced(Target::Direct(&mock)), &body).await;
    let via = arrivals(paced(Target::Via(&gw, &token)), &body).await;
    assert!(
        via.len() >= 8 && direct.len() >= 8,
        "role, 5 content, finish, [DONE]: {via:?} {direct:?}"
    );
    let late = via[0].saturating_sub(direct[0]);
    assert!(
        late <= Duration::from_millis(50),
        "first chunk through Palisade at {:?}, directly at {:?} (at most 50 ms later); all arrivals via Palisade: {via:?}",
        via[0],
        direct[0]
    );
    // Chunk by chunk: the finishing chunk (#6) comes ~1.8 s after the first, not with it.
    let spread = via[6].saturating_sub(via[0]);
    assert!(
        spread >= Duration::from_millis(1000),
        "events were held back and sent together: arrivals {via:?}"
    );
}

#[tokio::test]
async fn dialect_gzip_upstream_usage_is_recorded_and_client_reads_the_body() {
    // Compressed when the request accepts gzip (a stock GZip middleware).
    gzip_upstream("1").await;
}

#[tokio::test]
async fn dialect_gzip_always_upstream_is_decoded_and_usage_recorded() {
    // Compressed whatever the request accepts (a misconfigured CDN): the gateway
    // must decode what it cannot avoid receiving.
    gzip_upstream("always").await;
}

/// An upstream behind gzip (`x-mock-gzip: mode`), the client accepting gzip as the
/// SDKs do.
async fn gzip_upstream(mode: &str) {
    let (mock, gw) = start("");
    let (pid, plain_tid, plain) = gw.project_and_token(json!({}), json!({})).await;
    let (stream_tid, streamed) = gw.create_token(&pid, json!({})).await;
    let gz = |t: Target<'_>| {
        t.post("/v1/chat/completions", "openai")
            .header("x-mock-gzip", mode)
            .header("accept-encoding", "gzip, deflate")
    };
    // Sanity: the mock does compress for a client that accepts gzip.
    let resp = gz(Target::Direct(&mock))
        .json(&json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": PROMPT}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["content-encoding"], "gzip");
    let direct: Value = serde_json::from_slice(&read_body(resp).await).unwrap();

    let resp = gz(Target::Via(&gw, &plain))
        .json(&json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": PROMPT}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let raw = read_body(resp).await;
    let via: Value = serde_json::from_slice(&raw)
        .unwrap_or_else(|e| panic!("unreadable body through Palisade ({e}): {:?}", text(&raw)));
    assert_eq!(via, direct);
    let row = usage_row(&gw, &plain_tid, 1).await;
    assert_eq!(
        (&row["prompt_tokens"], &row["completion_tokens"]),
        (&json!(2), &json!(4)),
        "a gzip ({mode}) upstream's non-streamed usage must be recorded: {row}"
    );

    // A compressed stream: readable, the same events, and its usage recorded.
    let body = chat_stream_body(false);
    let direct = fetch(gz(Target::Direct(&mock)), &body).await;
    let via = fetch(gz(Target::Via(&gw, &streamed)), &body).await;
    assert_same_events(&format!("gzip ({mode}) stream"), &via, &direct);
    assert!(with_usage(&events(&via)).is_empty(), "{}", text(&via));
    let row = usage_row(&gw, &stream_tid, 1).await;
    assert_eq!(
        (&row["prompt_tokens"], &row["completion_tokens"]),
        (&json!(2), &json!(5)),
        "a gzip ({mode}) upstream's streamed usage must be recorded: {row}"
    );
}
