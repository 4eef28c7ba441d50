//! SSE relay (SPEC §2): frames flow as produced, bytes unchanged, and a client that
//! leaves cancels the upstream request.

use std::time::Duration;

use tokio::time::Instant;

use futures_util::StreamExt;
use serde_json::json;

use crate::harness::setup;

fn stream_body() -> serde_json::Value {
    json!({"model": "gpt-4o-mini", "stream": true, "messages": [{"role": "user", "content": "hi"}]})
}

#[tokio::test]
async fn streaming_first_frame_arrives_before_upstream_finishes() {
    let (_mock, gw, t) = setup().await;
    let started = Instant::now();
    let resp = gw
        .post("/v1/chat/completions")
        .bearer_auth(&t)
        .header("x-mock-chunks", "8")
        .header("x-mock-chunk-delay-ms", "250")
        .json(&stream_body())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let mut stream = resp.bytes_stream();
    let first = stream.next().await.unwrap().unwrap();
    let first_at = started.elapsed();
    assert!(
        String::from_utf8_lossy(&first).starts_with("data: "),
        "{first:?}"
    );
    let mut all = first.to_vec();
    while let Some(chunk) = stream.next().await {
        all.extend_from_slice(&chunk.unwrap());
    }
    let total = started.elapsed();
    // 9 delayed frames take >= 2.25 s; the first one must not wait for them.
    assert!(total >= Duration::from_millis(2000), "{total:?}");
    assert!(
        first_at < Duration::from_millis(1000),
        "first frame after {first_at:?}"
    );
    let text = String::from_utf8(all).unwrap();
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
}

#[tokio::test]
async fn streaming_bytes_are_identical_to_the_direct_upstream() {
    let (mock, gw, t) = setup().await;
    let fetch = |req: reqwest::RequestBuilder| async move {
        req.header("x-mock-chunks", "20")
            .header("x-mock-fixed", "1")
            .json(&stream_body())
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap()
    };
    let direct = fetch(
        mock.client()
            .post(format!("{}/chat/completions", mock.base_url())),
    )
    .await;
    let via = fetch(gw.post("/v1/chat/completions").bearer_auth(&t)).await;
    assert!(direct.len() > 500);
    assert_eq!(
        String::from_utf8_lossy(&via),
        String::from_utf8_lossy(&direct)
    );
}

#[tokio::test]
async fn streaming_client_disconnect_cancels_the_upstream() {
    let (mock, gw, t) = setup().await;
    let resp = gw
        .post("/v1/chat/completions")
        .bearer_auth(&t)
        .header("x-mock-chunks", "100")
        .header("x-mock-chunk-delay-ms", "100")
        .json(&stream_body())
        .send()
        .await
        .unwrap();
    let mut stream = resp.bytes_stream();
    stream.next().await.unwrap().unwrap();
    assert_eq!(mock.stats().await["streams_cancelled"], 0);
    drop(stream);
    let mut cancelled = serde_json::Value::Null;
    for _ in 0..50 {
        let stats = mock.stats().await;
        cancelled = stats["streams_cancelled"].clone();
        if cancelled == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(cancelled, 1, "the upstream stream was not cancelled");
    assert_eq!(mock.stats().await["streams_completed"], 0);
}

#[tokio::test]
async fn streaming_upstream_cut_ends_with_an_sse_error_event() {
    let (_mock, gw, t) = setup().await;
    let resp = gw
        .post("/v1/chat/completions")
        .bearer_auth(&t)
        .header("x-mock-cut-after", "2")
        .json(&stream_body())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let text = String::from_utf8(resp.bytes().await.unwrap().to_vec()).unwrap();
    assert!(text.contains("tok0") && text.contains("tok1"), "{text}");
    assert!(text.contains("\"code\":\"upstream_error\""), "{text}");
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
}
