//! Answers Palisade must pass through intact, in every dialect: tool calls (whole
//! and streamed argument deltas), `/v1/responses` (object and event stream) and
//! base64 embeddings; and the llama.cpp single slot the health tests rely on.

use base64::Engine as _;
use serde_json::{Value, json};
use tokio::time::{Duration, Instant};

use crate::harness::{Mock, start};
use crate::upstream_dialects::{
    PROMPT, Target, assert_same_events, events, fetch, read_body, usage_row,
};

const DIALECTS: [&str; 5] = ["openai", "litellm", "starlette", "llamacpp", "lastchunk"];

/// Runs `check` for every dialect and fails afterwards, naming each dialect that
/// failed (their messages are printed as they happen).
async fn each_dialect<F, Fut>(check: F)
where
    F: Fn(&'static str) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    use futures_util::FutureExt as _;
    let mut failed = Vec::new();
    for d in DIALECTS {
        if std::panic::AssertUnwindSafe(check(d))
            .catch_unwind()
            .await
            .is_err()
        {
            failed.push(d);
        }
    }
    assert!(failed.is_empty(), "failed for {failed:?} (messages above)");
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The same request direct and through Palisade: both answers, direct first.
async fn both_ways(
    (direct, via): (&Target<'_>, &Target<'_>),
    path: &str,
    dialect: &str,
    body: &Value,
) -> (Vec<u8>, Vec<u8>) {
    let a = fetch(direct.post(path, dialect), body).await;
    let b = fetch(via.post(path, dialect), body).await;
    (a, b)
}

fn tools_body(stream: bool, include_usage: bool) -> Value {
    let mut body = json!({"model": "gpt-4o-mini", "stream": stream,
        "messages": [{"role": "user", "content": PROMPT}],
        "tools": [{"type": "function", "function": {"name": "lookup", "description": "Looks a thing up",
            "parameters": {"type": "object", "properties": {"query": {"type": "string"}}}}}]});
    if include_usage {
        body["stream_options"] = json!({"include_usage": true});
    }
    body
}

/// The tool call's arguments, joined from a stream's deltas.
fn streamed_arguments(events: &[(Option<String>, Value)]) -> String {
    events
        .iter()
        .filter_map(|(_, v)| {
            v["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"].as_str()
        })
        .collect()
}

#[tokio::test]
async fn dialect_tool_calls_pass_through_intact() {
    let (mock, gw) = start("");
    let (_, _, token) = gw.project_and_token(json!({}), json!({})).await;
    let want_args = json!({"query": PROMPT}).to_string();
    let (mock, gw, token, want_args) = (&mock, &gw, token.as_str(), want_args.as_str());
    each_dialect(|d| async move {
        let (direct, via) = (Target::Direct(mock), Target::Via(gw, token));
        let path = "/v1/chat/completions";
        let body = tools_body(false, false);
        let (a, b) = both_ways((&direct, &via), path, d, &body).await;
        assert_eq!(text(&b), text(&a), "{d}: non-streamed tool call");
        let v: Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["choices"][0]["finish_reason"], "tool_calls", "{d}: {v}");
        assert_eq!(
            v["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"], want_args,
            "{d}"
        );

        let body = tools_body(true, false);
        let (a, b) = both_ways((&direct, &via), path, d, &body).await;
        assert_same_events(&format!("{d}: streamed tool call"), &b, &a);
        assert_eq!(streamed_arguments(&events(&b)), want_args, "{d}");

        let body = tools_body(true, true);
        let (a, b) = both_ways((&direct, &via), path, d, &body).await;
        assert_eq!(
            text(&b),
            text(&a),
            "{d}: streamed tool call with include_usage"
        );
    })
    .await;
}

#[tokio::test]
async fn dialect_responses_api_passes_through_intact() {
    let (mock, gw) = start("");
    let (_, _, token) = gw.project_and_token(json!({}), json!({})).await;
    let (mock, gw, token) = (&mock, &gw, token.as_str());
    each_dialect(|d| async move {
        let (direct, via) = (Target::Direct(mock), Target::Via(gw, token));
        let body = json!({"model": "gpt-4o-mini", "input": PROMPT});
        let (a, b) = both_ways((&direct, &via), "/v1/responses", d, &body).await;
        assert_eq!(text(&b), text(&a), "{d}: response object");
        let v: Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(
            v["output"][0]["content"][0]["text"],
            format!("mock reply: {PROMPT}"),
            "{d}"
        );
        assert_eq!(v["usage"]["input_tokens"], 2, "{d}");

        let body = json!({"model": "gpt-4o-mini", "input": PROMPT, "stream": true});
        let (a, b) = both_ways((&direct, &via), "/v1/responses", d, &body).await;
        assert_eq!(text(&b), text(&a), "{d}: response events");
        let evs = events(&b);
        let names: Vec<_> = evs
            .iter()
            .map(|(e, _)| e.clone().unwrap_or_default())
            .collect();
        assert_eq!(
            names.first().map(String::as_str),
            Some("response.created"),
            "{d}"
        );
        assert_eq!(
            names.last().map(String::as_str),
            Some("response.completed"),
            "{d}"
        );
        assert_eq!(
            names
                .iter()
                .filter(|n| *n == "response.output_text.delta")
                .count(),
            5,
            "{d}"
        );
        let done = &evs.last().unwrap().1;
        assert_eq!(done["response"]["usage"]["output_tokens"], 5, "{d}: {done}");
    })
    .await;
}

#[tokio::test]
async fn dialect_base64_embeddings_pass_through_intact() {
    let (mock, gw) = start("");
    let (_, _, token) = gw.project_and_token(json!({}), json!({})).await;
    let (mock, gw, token) = (&mock, &gw, token.as_str());
    each_dialect(|d| async move {
        let (direct, via) = (Target::Direct(mock), Target::Via(gw, token));
        let body = json!({"model": "text-embedding-3-small", "input": ["a", "b c"], "encoding_format": "base64"});
        let (a, b) = both_ways((&direct, &via), "/v1/embeddings", d, &body).await;
        assert_eq!(text(&b), text(&a), "{d}: base64 embeddings");
        let floats = json!({"model": "text-embedding-3-small", "input": ["a", "b c"]});
        let f: Value =
            serde_json::from_slice(&fetch(via.post("/v1/embeddings", d), &floats).await).unwrap();
        let v: Value = serde_json::from_slice(&b).unwrap();
        for i in 0..2 {
            let raw = base64::engine::general_purpose::STANDARD
                .decode(v["data"][i]["embedding"].as_str().unwrap())
                .unwrap();
            let decoded: Vec<f32> = raw
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            let want: Vec<f32> = f["data"][i]["embedding"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect();
            assert_eq!(decoded, want, "{d}: input {i}");
        }
    })
    .await;
}

#[tokio::test]
async fn dialect_llamacpp_models_waits_for_the_running_generation() {
    let mock = Mock::start_dialect("llama", "llamacpp");
    let generation = async {
        mock.client()
            .post(format!("{}/chat/completions", mock.base_url()))
            .header("x-mock-delay-ms", "800")
            .json(&json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .await
            .unwrap()
            .status()
    };
    // Once the generation holds the slot, the model list waits for it.
    let probe = async {
        let deadline = Instant::now() + Duration::from_secs(5);
        while mock.stats().await["generating"] != 1 {
            assert!(Instant::now() < deadline, "the generation never started");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let t0 = Instant::now();
        let resp = mock
            .client()
            .get(format!("{}/models", mock.base_url()))
            .send()
            .await
            .unwrap();
        (resp.status(), t0.elapsed())
    };
    let (generated, (listed, waited)) = tokio::join!(generation, probe);
    assert_eq!(generated, 200);
    assert_eq!(listed, 200);
    assert!(
        waited >= Duration::from_millis(500),
        "GET /v1/models answered after {waited:?}, during the generation"
    );
    // Idle: at once.
    let t0 = Instant::now();
    let resp = mock
        .client()
        .get(format!("{}/models", mock.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(t0.elapsed() < Duration::from_millis(300));
    // Non-streamed answers carry usage in this dialect (streams never do).
    let body = read_body(
        mock.client()
            .post(format!("{}/chat/completions", mock.base_url()))
            .json(&json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["usage"]["prompt_tokens"], 1, "{v}");
}

#[tokio::test]
async fn dialect_fixtures_are_what_the_running_mock_sends() {
    use palisade_tests::mock::{Dialect, fixtures};
    let mock = Mock::start("fixtures");
    let direct = Target::Direct(&mock);
    let chat = |include_usage| {
        json!({"model": fixtures::MODEL, "stream": true,
        "stream_options": {"include_usage": include_usage},
        "messages": [{"role": "user", "content": "hello there"}]})
    };
    for d in Dialect::ALL {
        let name = d.name();
        for include in [false, true] {
            let got = fetch(direct.post("/v1/chat/completions", name), &chat(include)).await;
            assert_eq!(
                text(&got),
                text(&fixtures::chat_stream(d, include)),
                "{name} chat, include_usage {include}"
            );
            let mut tools = tools_body(true, include);
            tools["messages"][0]["content"] = json!("hello there");
            let got = fetch(direct.post("/v1/chat/completions", name), &tools).await;
            assert_eq!(
                text(&got),
                text(&fixtures::tools_stream(d, include)),
                "{name} tools, include_usage {include}"
            );
        }
        let body = json!({"model": fixtures::MODEL, "input": "hello there", "stream": true});
        let got = fetch(direct.post("/v1/responses", name), &body).await;
        assert_eq!(
            text(&got),
            text(&fixtures::responses_stream(d)),
            "{name} responses"
        );
    }
}

#[tokio::test]
async fn dialect_responses_api_usage_is_recorded() {
    // The Responses API names its usage `input_tokens`/`output_tokens`; a gateway
    // that only reads `prompt_tokens` records nothing for it.
    let (_mock, gw) = start("");
    let (pid, whole_tid, whole) = gw.project_and_token(json!({}), json!({})).await;
    let (streamed_tid, streamed) = gw.create_token(&pid, json!({})).await;
    let body = json!({"model": "gpt-4o-mini", "input": PROMPT});
    fetch(
        Target::Via(&gw, &whole).post("/v1/responses", "openai"),
        &body,
    )
    .await;
    let body = json!({"model": "gpt-4o-mini", "input": PROMPT, "stream": true});
    fetch(
        Target::Via(&gw, &streamed).post("/v1/responses", "openai"),
        &body,
    )
    .await;
    // "mock reply: hello there" is 4 output tokens whole; 5 deltas streamed.
    for (tid, what, output) in [(&whole_tid, "whole", 4), (&streamed_tid, "streamed", 5)] {
        let row = usage_row(&gw, tid, 1).await;
        assert_eq!(
            (&row["prompt_tokens"], &row["completion_tokens"]),
            (&json!(2), &json!(output)),
            "{what} /v1/responses: the upstream's input_tokens/output_tokens must be recorded: {row}"
        );
    }
}
