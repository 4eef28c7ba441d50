//! Reading a completion request: what the mock answers, and how many prompt
//! tokens it counts (words, so tests can predict them).

use serde_json::{Value, json};

use super::chat::{Answer, Completion};
use super::dialect::Dialect;

fn last_user_text(body: &Value) -> Option<String> {
    body["messages"].as_array()?.last()?["content"]
        .as_str()
        .map(str::to_owned)
}

/// Prompt tokens, counted as words of the messages (or of the legacy `prompt`).
fn prompt_words(body: &Value) -> u64 {
    let count = |v: &Value| {
        v.as_str()
            .map_or(0, |s| s.split_whitespace().count() as u64)
    };
    match body["messages"].as_array() {
        Some(msgs) => msgs.iter().map(|m| count(&m["content"])).sum(),
        None => count(&body["prompt"]),
    }
}

/// The first tool a chat request offers (unless `tool_choice` is `none`).
fn offered_tool(body: &Value) -> Option<String> {
    if body["tool_choice"].as_str() == Some("none") {
        return None;
    }
    let tool = body["tools"].as_array()?.first()?;
    tool["function"]["name"]
        .as_str()
        .or_else(|| tool["name"].as_str())
        .map(str::to_owned)
}

impl Completion {
    /// What the mock answers to `body`: an echo of the last user message, or a
    /// call of the first tool offered.
    pub fn for_request(
        body: &Value,
        chat: bool,
        dialect: Dialect,
        id_n: u64,
        created: u64,
        model: String,
    ) -> Self {
        let answer = match (chat, offered_tool(body)) {
            (true, Some(name)) => Answer::Tool {
                name,
                arguments: json!({"query": last_user_text(body).unwrap_or_default()}).to_string(),
            },
            (true, None) => Answer::Text(match last_user_text(body) {
                Some(text) => format!("mock reply: {text}"),
                None => "mock reply".to_owned(),
            }),
            (false, _) => Answer::Text(format!(
                "mock completion: {}",
                body["prompt"].as_str().unwrap_or_default()
            )),
        };
        Completion {
            dialect,
            chat,
            id: format!("{}-mock-{id_n}", if chat { "chatcmpl" } else { "cmpl" }),
            created,
            model,
            prompt_tokens: prompt_words(body),
            answer,
        }
    }
}
