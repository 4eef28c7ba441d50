//! `POST /v1/embeddings`: deterministic 8-dimensional vectors, as floats or, with
//! `encoding_format: "base64"`, as the base64 of their little-endian `f32` bytes
//! (what OpenAI sends, and what the Python SDK asks for by default).

use base64::Engine as _;
use serde_json::{Value, json};

/// The vector for one input, in thousandths (a hash of its text spread over 8
/// components).
pub fn thousandths(text: &str) -> Vec<u16> {
    let seed: u32 = text
        .bytes()
        .fold(7u32, |a, b| a.wrapping_mul(31).wrapping_add(u32::from(b)));
    (0..8u32)
        .map(|k| u16::try_from(seed.rotate_left(k * 4) % 1000).unwrap_or(0))
        .collect()
}

/// `vector` as OpenAI encodes it for `encoding_format: "base64"`.
pub fn base64_of(v: &[f32]) -> String {
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The response body for `body` (an embeddings request) and `model`.
pub fn body(body: &Value, model: &str) -> Value {
    let inputs: Vec<String> = match &body["input"] {
        Value::String(s) => vec![s.clone()],
        Value::Array(items) => items
            .iter()
            .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
            .collect(),
        other => vec![other.to_string()],
    };
    let base64 = body["encoding_format"].as_str() == Some("base64");
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(i, text)| {
            let v = thousandths(text);
            let embedding = if base64 {
                let f: Vec<f32> = v.iter().map(|n| f32::from(*n) / 1000.0).collect();
                json!(base64_of(&f))
            } else {
                json!(v.iter().map(|n| f64::from(*n) / 1000.0).collect::<Vec<_>>())
            };
            json!({"object": "embedding", "index": i, "embedding": embedding})
        })
        .collect();
    let tokens: usize = inputs
        .iter()
        .map(|s| s.split_whitespace().count().max(1))
        .sum();
    json!({"object": "list", "data": data, "model": model, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})
}
