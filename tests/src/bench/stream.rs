//! Streaming measurements: time to first byte, gaps between chunks, and many
//! concurrent streams with a stall check.

use std::time::Duration;

use futures_util::StreamExt;
use tokio::time::Instant;

use super::load::Target;

#[derive(Debug, Default)]
pub struct StreamSample {
    pub ttfb_us: f64,
    pub gaps_us: Vec<f64>,
    pub bytes: usize,
}

pub async fn stream_once(
    client: &reqwest::Client,
    t: &Target,
    chunks: u32,
    delay_ms: u32,
) -> Result<StreamSample, String> {
    let start = Instant::now();
    let mut req = client
        .post(format!("{}/chat/completions", t.base))
        .header("content-type", "application/json")
        .header("x-mock-chunks", chunks.to_string())
        .header("x-mock-chunk-delay-ms", delay_ms.to_string())
        .body(r#"{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"hello"}]}"#);
    if let Some(k) = &t.key {
        req = req.bearer_auth(k);
    }
    let resp = req.send().await.map_err(|e| e.to_string())?;
    if !resp.status().is_success() {
        return Err(format!("status {}", resp.status()));
    }
    let mut body = resp.bytes_stream();
    let mut sample = StreamSample::default();
    let mut last: Option<Instant> = None;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| e.to_string())?;
        let now = Instant::now();
        match last {
            None => sample.ttfb_us = (now - start).as_secs_f64() * 1e6,
            Some(prev) => sample.gaps_us.push((now - prev).as_secs_f64() * 1e6),
        }
        sample.bytes += chunk.len();
        last = Some(now);
    }
    Ok(sample)
}

#[derive(Debug, Default)]
pub struct ManyStreams {
    pub streams: usize,
    pub errors: usize,
    pub stalled: usize,
    pub max_gap_us: f64,
    pub elapsed: Duration,
}

/// `n` streams started `spacing` apart (each runs to its end while later ones
/// start), so each time to first byte is measured on an otherwise idle pipeline
/// instead of behind a burst of simultaneous requests.
pub async fn staggered(
    client: &reqwest::Client,
    t: &Target,
    n: usize,
    spacing: Duration,
    chunks: u32,
    delay_ms: u32,
) -> Vec<StreamSample> {
    let start = Instant::now();
    let streams = (0..n).map(|i| async move {
        tokio::time::sleep_until(start + spacing.mul_f64(i as f64)).await;
        stream_once(client, t, chunks, delay_ms).await
    });
    futures_util::future::join_all(streams)
        .await
        .into_iter()
        .flatten()
        .collect()
}

/// `n` concurrent streams; a stall is any gap above `2 × delay + 5 ms`.
pub async fn many(
    client: &reqwest::Client,
    t: &Target,
    n: usize,
    chunks: u32,
    delay_ms: u32,
) -> ManyStreams {
    let limit_us = f64::from(2 * delay_ms + 5) * 1000.0;
    let start = Instant::now();
    let results =
        futures_util::future::join_all((0..n).map(|_| stream_once(client, t, chunks, delay_ms)))
            .await;
    let mut out = ManyStreams {
        streams: n,
        elapsed: start.elapsed(),
        ..Default::default()
    };
    for r in results {
        match r {
            Ok(s) => {
                let max = s.gaps_us.iter().copied().fold(0.0, f64::max);
                out.max_gap_us = out.max_gap_us.max(max);
                if max > limit_us {
                    out.stalled += 1;
                }
            }
            Err(_) => out.errors += 1,
        }
    }
    out
}
