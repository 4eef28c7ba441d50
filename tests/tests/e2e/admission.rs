//! RequestQueue end to end: bounded in-flight work, a bounded waiting line with
//! `queue_full` / `queue_timeout`, per-project fairness, and places given back
//! when a waiting client disconnects. Slowness comes from the mock's
//! `x-mock-delay-ms` header, which the gateway forwards.

// Concurrent clients are spawned tasks here; the rule against spawning is for
// server code.
#![allow(clippy::disallowed_methods)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::harness::{Gateway, Mock, assert_proxy_error, chat_body, error_of, gateway};

fn slow_chat(gw: &Gateway, token: &str, delay_ms: u64) -> reqwest::RequestBuilder {
    gw.post("/v1/chat/completions")
        .bearer_auth(token)
        .header("x-mock-delay-ms", delay_ms.to_string())
        .json(&chat_body("gpt-4o-mini"))
}

async fn queue(gw: &Gateway) -> Value {
    let (status, body) = gw.manage("GET", "/manage/queue", None).await;
    assert_eq!(status, 200, "{body}");
    body
}

/// Polls `/manage/queue` until `done` holds (or fails after 10 s).
async fn queue_until(gw: &Gateway, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let q = queue(gw).await;
        if done(&q) {
            return q;
        }
        assert!(
            Instant::now() < deadline,
            "queue never reached the state: {q}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn start(mock: &Mock, queue: &str) -> Gateway {
    gateway()
        .provider(mock, "[\"*\"]")
        .yaml(&format!("queue: {{ {queue} }}"))
        .start()
}

#[tokio::test]
async fn admission_bounded_in_flight_and_waiting_then_queue_full() {
    let mock = Mock::start("up");
    let gw = start(&mock, "max_in_flight: 4, max_waiting: 8, max_wait: 20s");
    let (_, _, token) = gw.project_and_token(json!({}), json!({})).await;

    let requests: Vec<_> = (0..20)
        .map(|_| {
            let req = slow_chat(&gw, &token, 1500);
            tokio::spawn(async move { req.send().await.unwrap() })
        })
        .collect();
    // While it happens: 4 forwarded, 8 waiting, 8 turned away.
    let q = queue_until(&gw, |q| q["rejected"]["queue_full"] == 8).await;
    assert_eq!(q["in_flight"], 4, "{q}");
    assert_eq!(q["waiting"], 8, "{q}");
    assert_eq!(q["max_in_flight"], 4, "{q}");
    assert_eq!(q["max_waiting"], 8, "{q}");

    let mut ok = 0;
    let mut full = 0;
    for r in requests {
        let resp = r.await.unwrap();
        match resp.status().as_u16() {
            200 => ok += 1,
            _ => {
                let retry = resp.headers().get("retry-after").cloned();
                let (status, body) = error_of(resp).await;
                assert_proxy_error(status, &body, 503, "queue_full");
                assert!(retry.is_some(), "queue_full without retry-after");
                full += 1;
            }
        }
    }
    assert_eq!((ok, full), (12, 8));
    assert_eq!(mock.count("/v1/chat/completions").await, 12);
    let q = queue(&gw).await;
    assert_eq!(q["in_flight"], 0, "{q}");
    assert_eq!(q["waiting"], 0, "{q}");
    assert_eq!(q["admitted_total"], 12, "{q}");
    assert_eq!(q["waited_total"], 8, "{q}");
    assert_eq!(q["rejected_total"], 8, "{q}");
}

#[tokio::test]
async fn admission_a_flooding_project_does_not_starve_another() {
    let mock = Mock::start("up");
    let gw = start(&mock, "max_in_flight: 4, max_waiting: 200, max_wait: 30s");
    let (_, _, flood) = gw.project_and_token(json!({}), json!({})).await;
    let (_, _, single) = gw.project_and_token(json!({}), json!({})).await;

    let done_a = Arc::new(AtomicUsize::new(0));
    let a: Vec<_> = (0..100)
        .map(|_| {
            let req = slow_chat(&gw, &flood, 300);
            let done = Arc::clone(&done_a);
            tokio::spawn(async move {
                let status = req.send().await.unwrap().status().as_u16();
                done.fetch_add(1, Ordering::SeqCst);
                status
            })
        })
        .collect();
    // Most of the flood is queued (the first ones may already be done on a slow
    // machine).
    queue_until(&gw, |q| q["waiting"].as_u64() >= Some(80)).await;

    let started = Instant::now();
    let resp = slow_chat(&gw, &single, 300).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let a_before_b = done_a.load(Ordering::SeqCst);
    // Round-robin: B goes at the second slot release at the latest, so only the
    // first few of A's requests finish before it, not A's whole backlog.
    assert!(
        a_before_b <= 12,
        "{a_before_b} of project A's requests finished before project B's one"
    );
    assert!(started.elapsed() < Duration::from_millis(2500));
    for r in a {
        assert_eq!(r.await.unwrap(), 200);
    }
}

#[tokio::test]
async fn admission_max_wait_exceeded_is_queue_timeout() {
    let mock = Mock::start("up");
    let gw = start(&mock, "max_in_flight: 1, max_waiting: 4, max_wait: 300ms");
    let (_, _, token) = gw.project_and_token(json!({}), json!({})).await;

    let first = slow_chat(&gw, &token, 1500).send();
    let first = tokio::spawn(first);
    queue_until(&gw, |q| q["in_flight"] == 1).await;

    let started = Instant::now();
    let resp = slow_chat(&gw, &token, 0).send().await.unwrap();
    let waited = started.elapsed();
    assert!(resp.headers().contains_key("retry-after"));
    let (status, body) = error_of(resp).await;
    assert_proxy_error(status, &body, 503, "queue_timeout");
    assert!(
        waited >= Duration::from_millis(280) && waited < Duration::from_millis(1200),
        "answered after {waited:?}"
    );
    assert_eq!(first.await.unwrap().unwrap().status(), 200);
    let q = queue(&gw).await;
    assert_eq!(q["rejected"]["queue_timeout"], 1, "{q}");
    assert_eq!(q["waiting"], 0, "{q}");
}

#[tokio::test]
async fn admission_waiting_client_that_disconnects_leaves_the_line() {
    let mock = Mock::start("up");
    let gw = start(&mock, "max_in_flight: 1, max_waiting: 4, max_wait: 20s");
    let (_, _, token) = gw.project_and_token(json!({}), json!({})).await;

    let first = tokio::spawn(slow_chat(&gw, &token, 2500).send());
    queue_until(&gw, |q| q["in_flight"] == 1).await;

    // A client that gives up after 400 ms closes its connection.
    let impatient = slow_chat(&gw, &token, 0)
        .timeout(Duration::from_millis(400))
        .send();
    let impatient = tokio::spawn(impatient);
    queue_until(&gw, |q| q["waiting"] == 1).await;
    assert!(
        impatient.await.unwrap().is_err(),
        "the client should time out"
    );
    let gone = Instant::now();
    queue_until(&gw, |q| q["waiting"] == 0).await;
    assert!(
        gone.elapsed() < Duration::from_millis(1000),
        "the place was given back only after {:?}",
        gone.elapsed()
    );
    assert_eq!(first.await.unwrap().unwrap().status(), 200);
    // The one who left never reached the upstream.
    assert_eq!(mock.count("/v1/chat/completions").await, 1);
    let q = queue(&gw).await;
    assert_eq!(q["admitted_total"], 1, "{q}");
    assert_eq!(q["in_flight"], 0, "{q}");
}

#[tokio::test]
async fn admission_a_stream_holds_its_slot_until_it_ends() {
    let mock = Mock::start("up");
    let gw = start(&mock, "max_in_flight: 1, max_waiting: 4, max_wait: 20s");
    let (_, _, token) = gw.project_and_token(json!({}), json!({})).await;

    let mut body = chat_body("gpt-4o-mini");
    body["stream"] = json!(true);
    let resp = gw
        .client()
        .post(format!("{}/v1/chat/completions", gw.url))
        .bearer_auth(&token)
        .header("x-mock-chunks", "6")
        .header("x-mock-chunk-delay-ms", "150")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut frames = resp.bytes_stream();
    frames.next().await.unwrap().unwrap();
    // Headers are out, the body is still streaming: the slot is taken, and the
    // next request waits for it.
    let q = queue(&gw).await;
    assert_eq!(q["in_flight"], 1, "{q}");
    let next = tokio::spawn(slow_chat(&gw, &token, 0).send());
    queue_until(&gw, |q| q["waiting"] == 1).await;
    while let Some(chunk) = frames.next().await {
        chunk.unwrap();
    }
    assert_eq!(next.await.unwrap().unwrap().status(), 200);
    let q = queue_until(&gw, |q| q["in_flight"] == 0).await;
    assert_eq!(q["waited_total"], 1, "{q}");
}

#[tokio::test]
async fn admission_queue_off_never_waits() {
    let mock = Mock::start("up");
    let gw = start(&mock, "max_in_flight: 0");
    let (_, _, token) = gw.project_and_token(json!({}), json!({})).await;
    let requests: Vec<_> = (0..30)
        .map(|_| tokio::spawn(slow_chat(&gw, &token, 300).send()))
        .collect();
    let q = queue_until(&gw, |q| q["in_flight"] == 30).await;
    assert_eq!(q["waiting"], 0, "{q}");
    for r in requests {
        assert_eq!(r.await.unwrap().unwrap().status(), 200);
    }
}
