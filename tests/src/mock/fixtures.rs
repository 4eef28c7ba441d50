//! Recorded streams: exactly what the mock sends in fixed mode (`x-mock-fixed: 1`)
//! for a standard request, per dialect, also kept as files under
//! `tests/fixtures/sse/` for tests outside this crate (the gateway's SSE
//! property tests). A unit test keeps the files equal to these functions;
//! `PALISADE_UPDATE_FIXTURES=1 cargo test -p palisade-tests --lib fixtures` rewrites them.
//!
//! The standard request: model `gpt-4o-mini`, one user message `hello there`
//! (2 prompt tokens), 5 content pieces; tools: one tool named `lookup`.

use super::chat::{Answer, Completion};
use super::dialect::Dialect;
use super::responses::Responses;

pub const MODEL: &str = "gpt-4o-mini";
pub const CHUNKS: u64 = 5;

fn completion(d: Dialect, answer: Answer) -> Completion {
    Completion {
        dialect: d,
        chat: true,
        id: "chatcmpl-mock-0".to_owned(),
        created: 1_700_000_000,
        model: MODEL.to_owned(),
        prompt_tokens: 2,
        answer,
    }
}

fn join(frames: Vec<super::chat::Frame>) -> Vec<u8> {
    frames.into_iter().flat_map(|f| f.bytes.to_vec()).collect()
}

/// A streamed chat completion; `include_usage` as the request asked.
pub fn chat_stream(d: Dialect, include_usage: bool) -> Vec<u8> {
    let c = completion(d, Answer::Text("mock reply: hello there".to_owned()));
    join(c.frames(CHUNKS, include_usage))
}

/// A streamed call of the tool `lookup`.
pub fn tools_stream(d: Dialect, include_usage: bool) -> Vec<u8> {
    let c = completion(
        d,
        Answer::Tool {
            name: "lookup".to_owned(),
            arguments: r#"{"query":"hello there"}"#.to_owned(),
        },
    );
    join(c.frames(CHUNKS, include_usage))
}

/// A streamed `/v1/responses` answer.
pub fn responses_stream(d: Dialect) -> Vec<u8> {
    let r = Responses {
        dialect: d,
        id_n: 0,
        created: 1_700_000_000,
        model: MODEL.to_owned(),
        input_tokens: 2,
    };
    join(r.frames(CHUNKS))
}

/// Every recorded stream as (file name, bytes):
/// `{dialect}-chat.txt` (no usage asked: what a client must receive),
/// `{dialect}-chat-usage.txt` (what the upstream sends when usage is asked),
/// `{dialect}-tools.txt`, `{dialect}-tools-usage.txt`, `{dialect}-responses.txt`.
pub fn all() -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for d in Dialect::ALL {
        out.push((format!("{d}-chat.txt"), chat_stream(d, false)));
        out.push((format!("{d}-chat-usage.txt"), chat_stream(d, true)));
        out.push((format!("{d}-tools.txt"), tools_stream(d, false)));
        out.push((format!("{d}-tools-usage.txt"), tools_stream(d, true)));
        out.push((format!("{d}-responses.txt"), responses_stream(d)));
    }
    out
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    #[test]
    fn fixtures_are_what_the_mock_sends() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/sse");
        let update = std::env::var_os("PALISADE_UPDATE_FIXTURES").is_some();
        for (name, bytes) in super::all() {
            let path = dir.join(&name);
            if update {
                std::fs::create_dir_all(&dir).unwrap();
                std::fs::write(&path, &bytes).unwrap();
                continue;
            }
            let on_disk = std::fs::read(&path).unwrap_or_default();
            assert!(
                on_disk == bytes,
                "{} differs from what the mock sends; rerun with PALISADE_UPDATE_FIXTURES=1",
                path.display()
            );
        }
    }
}
