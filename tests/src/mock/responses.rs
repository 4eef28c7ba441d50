//! `POST /v1/responses`: the response object, and the streamed event sequence
//! (`response.created` … `response.output_text.delta` … `response.completed`, the
//! usage inside the last one; no `[DONE]`), as OpenAI documents them.

use serde_json::Value;

use super::chat::Frame;
use super::dialect::{Dialect, Node, null};
use crate::obj;

pub struct Responses {
    pub dialect: Dialect,
    pub id_n: u64,
    pub created: u64,
    pub model: String,
    pub input_tokens: u64,
}

/// The text of the last user input (a string, or the last message's content).
pub fn input_text(body: &Value) -> Option<String> {
    match &body["input"] {
        Value::String(s) => Some(s.clone()),
        Value::Array(items) => match &items.last()?["content"] {
            Value::String(s) => Some(s.clone()),
            Value::Array(parts) => parts
                .iter()
                .find_map(|p| p["text"].as_str().map(str::to_owned)),
            _ => None,
        },
        _ => None,
    }
}

pub fn input_words(body: &Value) -> u64 {
    let mut n = 0;
    if let Some(s) = body["instructions"].as_str() {
        n += s.split_whitespace().count() as u64;
    }
    match &body["input"] {
        Value::String(s) => n += s.split_whitespace().count() as u64,
        Value::Array(items) => {
            for item in items {
                match &item["content"] {
                    Value::String(s) => n += s.split_whitespace().count() as u64,
                    Value::Array(parts) => {
                        for p in parts {
                            n += p["text"]
                                .as_str()
                                .map_or(0, |s| s.split_whitespace().count() as u64);
                        }
                    }
                    _ => {}
                }
            }
        }
        _ => {}
    }
    n
}

impl Responses {
    fn resp_id(&self) -> String {
        format!("resp_mock{}", self.id_n)
    }

    fn msg_id(&self) -> String {
        format!("msg_mock{}", self.id_n)
    }

    fn text_part(text: &str) -> Node {
        obj! {"type" => "output_text", "annotations" => Node::Arr(vec![]), "logprobs" => Node::Arr(vec![]), "text" => text}
    }

    fn message(&self, status: &str, content: Vec<Node>) -> Node {
        obj! {"id" => self.msg_id(), "type" => "message", "status" => status,
        "content" => Node::Arr(content), "role" => "assistant"}
    }

    fn usage(&self, output: u64) -> Node {
        let i = self.input_tokens;
        obj! {"input_tokens" => i, "input_tokens_details" => obj!{"cached_tokens" => 0u64},
        "output_tokens" => output, "output_tokens_details" => obj!{"reasoning_tokens" => 0u64},
        "total_tokens" => i + output}
    }

    /// The response object; `output`/`usage` empty until it is complete.
    fn object(&self, status: &str, output: Vec<Node>, usage: Option<Node>) -> Node {
        obj! {
            "id" => self.resp_id(), "object" => "response", "created_at" => self.created,
            "status" => status, "background" => false, "error" => null(),
            "incomplete_details" => null(), "instructions" => null(), "max_output_tokens" => null(),
            "model" => self.model.as_str(), "output" => Node::Arr(output),
            "parallel_tool_calls" => true, "previous_response_id" => null(),
            "reasoning" => obj!{"effort" => null(), "summary" => null()},
            "store" => true, "temperature" => 1.0, "text" => obj!{"format" => obj!{"type" => "text"}},
            "tool_choice" => "auto", "tools" => Node::Arr(vec![]), "top_p" => 1.0,
            "truncation" => "disabled", "usage" => usage.unwrap_or_else(null), "user" => null(),
            "metadata" => obj!{},
        }
    }

    /// The non-streamed body.
    pub fn body(&self, text: &str) -> String {
        let out = text.split_whitespace().count() as u64;
        let msg = self.message("completed", vec![Self::text_part(text)]);
        let v = self.object("completed", vec![msg], Some(self.usage(out)));
        self.dialect.body_json(&v)
    }

    /// The event sequence for `chunks` text deltas.
    pub fn frames(&self, chunks: u64) -> Vec<Frame> {
        let d = self.dialect;
        let deltas: Vec<String> = (0..chunks).map(|i| format!("tok{i} ")).collect();
        let text = deltas.concat();
        let mut seq = 0u64;
        let mut frames = Vec::new();
        let mut push = |name: &'static str, mut v: Node, paced: bool, content: bool| {
            if let Node::Obj(members) = &mut v {
                members.insert(0, ("type", Node::from(name)));
                members.insert(1, ("sequence_number", Node::from(seq)));
            }
            seq += 1;
            let data = d.json(&v);
            frames.push(Frame {
                bytes: d.event(Some(name), &data),
                paced,
                content,
            });
        };
        let item = |status| obj! {"output_index" => 0u64, "item" => status};
        let at = || (self.msg_id(), 0u64, 0u64);
        push(
            "response.created",
            obj! {"response" => self.object("in_progress", vec![], None)},
            false,
            false,
        );
        push(
            "response.in_progress",
            obj! {"response" => self.object("in_progress", vec![], None)},
            false,
            false,
        );
        push(
            "response.output_item.added",
            item(self.message("in_progress", vec![])),
            false,
            false,
        );
        let (item_id, oi, ci) = at();
        push(
            "response.content_part.added",
            obj! {"item_id" => item_id.as_str(), "output_index" => oi,
            "content_index" => ci, "part" => Self::text_part("")},
            false,
            false,
        );
        for delta in &deltas {
            push(
                "response.output_text.delta",
                obj! {"item_id" => item_id.as_str(), "output_index" => oi,
                "content_index" => ci, "delta" => delta.as_str(), "logprobs" => Node::Arr(vec![])},
                true,
                true,
            );
        }
        push(
            "response.output_text.done",
            obj! {"item_id" => item_id.as_str(), "output_index" => oi,
            "content_index" => ci, "text" => text.as_str(), "logprobs" => Node::Arr(vec![])},
            true,
            false,
        );
        push(
            "response.content_part.done",
            obj! {"item_id" => item_id.as_str(), "output_index" => oi,
            "content_index" => ci, "part" => Self::text_part(&text)},
            false,
            false,
        );
        let done = self.message("completed", vec![Self::text_part(&text)]);
        push(
            "response.output_item.done",
            item(done.clone()),
            false,
            false,
        );
        let fin = self.object("completed", vec![done], Some(self.usage(chunks)));
        push("response.completed", obj! {"response" => fin}, false, false);
        frames
    }
}
