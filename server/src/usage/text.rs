//! The text an estimate counts: the prompt from the request body, the completion
//! from the response. One reader serves every API shape Palisade relays (chat
//! completions, legacy completions, embeddings, the Responses API, Anthropic
//! messages): it looks for the fields that carry text, wherever the shape puts
//! them, rather than modelling each API.

use serde_json::Value;

/// What a request asks the model to read.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Prompt {
    /// The prompt's text pieces, joined with newlines.
    pub text: String,
    /// Chat messages (each costs a few framing tokens).
    pub messages: u64,
    /// Prompts sent as token ids (`prompt: [1, 2, 3]`): already counted.
    pub token_ids: u64,
}

/// The prompt of a JSON request body; `None` when it is not a JSON object.
pub fn prompt(body: &[u8]) -> Option<Prompt> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let obj = v.as_object()?;
    let mut p = Prompt::default();
    for key in ["system", "instructions"] {
        if let Some(v) = obj.get(key) {
            content(v, &mut p);
        }
    }
    if let Some(Value::Array(messages)) = obj.get("messages") {
        p.messages = messages.len() as u64;
        for m in messages {
            message(m, &mut p.text);
            if let Some(c) = m.get("content") {
                content(c, &mut p);
            }
        }
    }
    for key in ["prompt", "input"] {
        if let Some(v) = obj.get(key) {
            content(v, &mut p);
        }
    }
    // Tool definitions are part of what the model reads.
    for key in ["tools", "functions"] {
        if let Some(v @ Value::Array(a)) = obj.get(key)
            && !a.is_empty()
        {
            push(&mut p.text, &v.to_string());
        }
    }
    Some(p)
}

/// Text parts, arrays of them, token-id arrays, and input items.
fn content(v: &Value, p: &mut Prompt) {
    match v {
        Value::String(s) => push(&mut p.text, s),
        Value::Number(_) => p.token_ids += 1,
        Value::Array(items) => items.iter().for_each(|i| content(i, p)),
        Value::Object(o) => {
            // `{type: text|input_text, text}`, Responses input items, tool results.
            for key in ["text", "content", "output", "arguments", "input"] {
                if let Some(inner) = o.get(key) {
                    match inner {
                        Value::Object(_) if key == "input" => push(&mut p.text, &inner.to_string()),
                        _ => content(inner, p),
                    }
                }
            }
            if o.contains_key("arguments")
                && let Some(Value::String(name)) = o.get("name")
            {
                push(&mut p.text, name);
            }
        }
        Value::Null | Value::Bool(_) => {}
    }
}

/// A chat message's or choice's fields besides `content`: the name, reasoning,
/// refusal and tool calls.
fn message(m: &Value, out: &mut String) {
    for key in ["name", "reasoning_content", "reasoning", "refusal"] {
        if let Some(Value::String(s)) = m.get(key) {
            push(out, s);
        }
    }
    if let Some(Value::Array(calls)) = m.get("tool_calls") {
        for call in calls {
            function(call.get("function").unwrap_or(call), out);
        }
    }
    if let Some(f) = m.get("function_call") {
        function(f, out);
    }
}

fn function(f: &Value, out: &mut String) {
    for key in ["name", "arguments"] {
        if let Some(Value::String(s)) = f.get(key) {
            push(out, s);
        }
    }
}

/// The completion of a whole (non-streamed) JSON response.
pub fn completion(body: &[u8]) -> String {
    let mut out = String::new();
    if let Ok(v) = serde_json::from_slice::<Value>(body) {
        response_text(&v, &mut out);
    }
    out
}

/// The completion of a stream: the text of every event's delta.
pub fn stream_completion<'a>(events: impl IntoIterator<Item = &'a str>) -> String {
    let (mut out, mut piece) = (String::new(), String::new());
    for data in events {
        let Ok(v) = serde_json::from_str::<Value>(data) else {
            continue;
        };
        response_text(&v, &mut piece);
        // Responses API (`response.output_text.delta`, `…arguments.delta`) and
        // Anthropic (`content_block_delta` with `delta.text|partial_json|thinking`).
        match v.get("delta") {
            Some(Value::String(s)) => push(&mut piece, s),
            Some(d @ Value::Object(_)) => {
                for key in ["text", "partial_json", "thinking"] {
                    if let Some(Value::String(s)) = d.get(key) {
                        push(&mut piece, s);
                    }
                }
            }
            _ => {}
        }
        // Deltas continue one another: no separator between events.
        out.push_str(&piece);
        piece.clear();
    }
    out
}

/// The generated text of one response object or stream chunk.
fn response_text(v: &Value, out: &mut String) {
    if let Some(Value::Array(choices)) = v.get("choices") {
        for c in choices {
            if let Some(Value::String(s)) = c.get("text") {
                push(out, s);
            }
            for key in ["message", "delta"] {
                if let Some(m) = c.get(key) {
                    if let Some(Value::String(s)) = m.get("content") {
                        push(out, s);
                    }
                    message(m, out);
                }
            }
        }
    }
    // Responses API `output` items, Anthropic `content` blocks.
    for key in ["output", "content"] {
        if let Some(Value::Array(items)) = v.get(key) {
            let mut p = Prompt::default();
            items.iter().for_each(|i| content(i, &mut p));
            push(out, &p.text);
        }
    }
}

fn push(out: &mut String, s: &str) {
    if s.is_empty() {
        return;
    }
    if !out.is_empty() {
        out.push('\n');
    }
    out.push_str(s);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_prompt_collects_messages_parts_tools() {
        let body = br#"{"model":"m","messages":[
            {"role":"system","content":"be brief"},
            {"role":"user","content":[{"type":"text","text":"hello"},{"type":"image_url","image_url":{"url":"data:x"}}]},
            {"role":"assistant","content":null,"tool_calls":[{"id":"c","type":"function","function":{"name":"get","arguments":"{\"q\":1}"}}]},
            {"role":"tool","tool_call_id":"c","content":"42"}],
            "tools":[{"type":"function","function":{"name":"get"}}]}"#;
        let p = prompt(body).unwrap();
        assert_eq!(p.messages, 4);
        assert_eq!(p.token_ids, 0);
        let lines: Vec<&str> = p.text.lines().collect();
        assert_eq!(
            &lines[..5],
            &["be brief", "hello", "get", "{\"q\":1}", "42"]
        );
        assert!(lines[5].contains("\"function\""), "{lines:?}");
        assert!(!p.text.contains("data:x"), "image urls are not text");
    }

    #[test]
    fn completions_embeddings_responses_prompts() {
        let p = prompt(br#"{"prompt":["one","two"]}"#).unwrap();
        assert_eq!((p.text.as_str(), p.messages), ("one\ntwo", 0));
        let p = prompt(br#"{"input":[[1,2,3],[4]]}"#).unwrap();
        assert_eq!((p.text.as_str(), p.token_ids), ("", 4));
        let p = prompt(
            br#"{"instructions":"be nice","input":[{"role":"user","content":[{"type":"input_text","text":"hi"}]}]}"#,
        )
        .unwrap();
        assert_eq!(p.text, "be nice\nhi");
        assert!(prompt(b"[1,2]").is_none());
        assert!(prompt(b"not json").is_none());
    }

    #[test]
    fn non_stream_completions() {
        let chat = br#"{"choices":[{"index":0,"message":{"role":"assistant","content":"Hi there","tool_calls":[{"function":{"name":"f","arguments":"{}"}}]}}]}"#;
        assert_eq!(completion(chat), "Hi there\nf\n{}");
        assert_eq!(completion(br#"{"choices":[{"text":"legacy"}]}"#), "legacy");
        let responses = br#"{"output":[{"type":"message","content":[{"type":"output_text","text":"answer"}]},{"type":"function_call","name":"g","arguments":"{\"a\":2}"}]}"#;
        assert_eq!(completion(responses), "answer\n{\"a\":2}\ng");
        assert_eq!(completion(br#"{"data":[{"embedding":[0.1]}]}"#), "");
    }

    #[test]
    fn streamed_deltas() {
        let events = [
            r#"{"choices":[{"delta":{"role":"assistant","content":""}}]}"#,
            r#"{"choices":[{"delta":{"content":"Hel"}}]}"#,
            r#"{"choices":[{"delta":{"content":"lo"}}]}"#,
            r#"{"choices":[{"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"x\""}}]}}]}"#,
            r#"{"type":"response.output_text.delta","delta":"resp"}"#,
            r#"{"type":"content_block_delta","delta":{"type":"text_delta","text":"claude"}}"#,
            "[DONE]",
        ];
        assert_eq!(stream_completion(events), "Hello{\"x\"respclaude");
    }
}
