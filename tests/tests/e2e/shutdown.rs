//! Graceful shutdown: on SIGTERM, streams in flight finish within
//! `server.shutdown_grace`, new connections are refused, and the process exits 0;
//! a stream longer than the grace is cut when it ends.

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::json;
use tokio::time::Instant;

use crate::harness::{Gateway, WAIT, chat_body, eventually, start};

fn sigterm(gw: &Gateway) {
    let status = std::process::Command::new("kill")
        .args(["-TERM", &gw.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// Starts a stream of `chunks` frames 200 ms apart and returns it after its first
/// frame.
async fn open_stream(gw: &Gateway, token: &str, chunks: u32) -> reqwest::Response {
    let mut body = chat_body("gpt-4o-mini");
    body["stream"] = json!(true);
    let resp = gw
        .post("/v1/chat/completions")
        .bearer_auth(token)
        .header("x-mock-chunks", chunks.to_string())
        .header("x-mock-chunk-delay-ms", "200")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    resp
}

/// Reads a stream to its end; returns the text and whether it ended cleanly.
async fn drain(resp: reqwest::Response) -> (String, bool) {
    let mut text = String::new();
    let mut frames = resp.bytes_stream();
    while let Some(chunk) = frames.next().await {
        match chunk {
            Ok(b) => text.push_str(&String::from_utf8_lossy(&b)),
            Err(_) => return (text, false),
        }
    }
    (text, true)
}

#[tokio::test]
async fn shutdown_lets_streams_in_flight_finish_then_exits_zero() {
    let (_mock, mut gw) = start(&server_with_grace("10s"));
    let (_, _, token) = gw.project_and_token(json!({}), json!({})).await;
    let stream = open_stream(&gw, &token, 8).await;
    sigterm(&gw);
    // No new connections once draining: each attempt opens one (nothing is kept
    // idle), until one is refused.
    let fresh = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let health = format!("{}/health", gw.url);
    eventually("a new connection to be refused", WAIT, async || {
        fresh.get(&health).send().await.is_err().then_some(())
    })
    .await;
    // Refused by the draining server, not by one that had already gone.
    assert!(gw.is_running(), "{}", gw.logs());
    let (text, clean) = drain(stream).await;
    assert!(clean, "the stream was cut: {text}");
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
    assert_eq!(gw.terminate(), Some(0), "{}", gw.logs());
}

#[tokio::test]
async fn shutdown_cuts_what_outlives_the_grace_period() {
    let (_mock, mut gw) = start(&server_with_grace("1s"));
    let (_, _, token) = gw.project_and_token(json!({}), json!({})).await;
    let stream = open_stream(&gw, &token, 60).await;
    let started = Instant::now();
    sigterm(&gw);
    let (text, clean) = drain(stream).await;
    let took = started.elapsed();
    assert!(
        !clean || !text.contains("[DONE]"),
        "a 12 s stream outlived a 1 s grace: {text}"
    );
    assert!(took < Duration::from_secs(6), "cut only after {took:?}");
    assert_eq!(gw.terminate(), Some(0), "{}", gw.logs());
}

fn server_with_grace(grace: &str) -> String {
    format!("server: {{ listen: \"127.0.0.1:0\", workers: 1, shutdown_grace: {grace} }}")
}
