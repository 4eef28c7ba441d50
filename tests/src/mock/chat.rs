//! Chat and legacy completions, whole and streamed, in each dialect's shape
//! (key order, optional members, where the usage goes). Pure functions: the HTTP
//! layer paces, cuts and compresses what they return.

use bytes::Bytes;
use serde_json::{Value, json};

use super::dialect::{Dialect, Node, null};
use crate::obj;

/// What one completion answers, independent of how it is framed.
#[derive(Clone, Debug)]
pub struct Completion {
    pub dialect: Dialect,
    /// `/v1/chat/completions` (else legacy `/v1/completions`).
    pub chat: bool,
    pub id: String,
    pub created: u64,
    pub model: String,
    pub prompt_tokens: u64,
    pub answer: Answer,
}

/// Text, or a call of the first tool the request offered.
#[derive(Clone, Debug)]
pub enum Answer {
    Text(String),
    Tool { name: String, arguments: String },
}

/// One piece of a stream, and whether the mock waits `x-mock-chunk-delay-ms`
/// before sending it.
#[derive(Clone, Debug)]
pub struct Frame {
    pub bytes: Bytes,
    pub paced: bool,
    /// Carries generated content (what `x-mock-cut-after` counts).
    pub content: bool,
}

impl Frame {
    fn new(bytes: Bytes, paced: bool, content: bool) -> Self {
        Frame {
            bytes,
            paced,
            content,
        }
    }
}

/// The fingerprint every dialect that has one reports.
const FINGERPRINT: &str = "fp_mock";

/// A stream's deltas, before framing.
enum Part {
    Role,
    Text(String),
    ToolStart(String),
    ToolArgs(String),
}

impl Completion {
    fn tool_call_id(&self) -> String {
        format!("call_{}", self.id.rsplit('-').next().unwrap_or("0"))
    }

    /// `prompt/completion/total` in the dialect's usage shape.
    fn usage(&self, completion: u64) -> Node {
        let (p, c) = (self.prompt_tokens, completion);
        match self.dialect {
            Dialect::OpenAi => obj! {
                "prompt_tokens" => p, "completion_tokens" => c, "total_tokens" => p + c,
                "prompt_tokens_details" => obj!{"cached_tokens" => 0u64, "audio_tokens" => 0u64},
                "completion_tokens_details" => obj!{"reasoning_tokens" => 0u64, "audio_tokens" => 0u64,
                    "accepted_prediction_tokens" => 0u64, "rejected_prediction_tokens" => 0u64},
            },
            Dialect::LiteLlm => obj! {
                "completion_tokens" => c, "prompt_tokens" => p, "total_tokens" => p + c,
                "completion_tokens_details" => null(), "prompt_tokens_details" => null(),
            },
            Dialect::LlamaCpp => {
                json!({"completion_tokens": c, "prompt_tokens": p, "total_tokens": p + c}).into()
            }
            Dialect::Starlette | Dialect::LastChunk => obj! {
                "prompt_tokens" => p, "completion_tokens" => c, "total_tokens" => p + c,
            },
        }
    }

    /// The envelope around `choices` (and `usage`, when given).
    fn envelope(&self, object: &str, choices: Node, usage: Option<Node>) -> Node {
        let (id, created, model) = (self.id.as_str(), self.created, self.model.as_str());
        let mut v = match self.dialect {
            Dialect::OpenAi => obj! {"id" => id, "object" => object, "created" => created,
            "model" => model, "system_fingerprint" => FINGERPRINT, "choices" => choices},
            Dialect::LiteLlm => obj! {"id" => id, "created" => created, "model" => model,
            "object" => object, "system_fingerprint" => FINGERPRINT, "choices" => choices},
            Dialect::Starlette | Dialect::LastChunk => obj! {"id" => id, "object" => object,
            "created" => created, "model" => model, "choices" => choices},
            Dialect::LlamaCpp => {
                // nlohmann::json keeps keys sorted.
                let mut v = json!({"choices": choices.to_value(), "created": created, "id": id,
                    "model": model, "object": object, "system_fingerprint": FINGERPRINT});
                if let Some(u) = usage {
                    v["usage"] = u.to_value();
                }
                return v.into();
            }
        };
        if let Some(u) = usage {
            v.push("usage", u);
        }
        v
    }

    // === whole responses ===

    /// The non-streamed body.
    pub fn body(&self) -> String {
        let (choice, completion) = if self.chat {
            self.message_choice()
        } else {
            let text = match &self.answer {
                Answer::Text(t) => t.clone(),
                Answer::Tool { arguments, .. } => arguments.clone(),
            };
            let n = words(&text);
            (self.text_choice(Some(text), Some("stop")), n)
        };
        let object = if self.chat {
            "chat.completion"
        } else {
            "text_completion"
        };
        let mut body = self.envelope(
            object,
            Node::Arr(vec![choice]),
            Some(self.usage(completion)),
        );
        if self.dialect == Dialect::LlamaCpp {
            let mut v = body.to_value();
            v["timings"] = timings(completion);
            body = v.into();
        }
        self.dialect.body_json(&body)
    }

    fn message_choice(&self) -> (Node, u64) {
        let d = self.dialect;
        let (message, finish, completion) = match &self.answer {
            Answer::Text(text) => {
                let m = match d {
                    Dialect::OpenAi => obj! {"role" => "assistant", "content" => text.as_str(),
                    "refusal" => null(), "annotations" => Node::Arr(vec![])},
                    Dialect::LiteLlm => obj! {"content" => text.as_str(), "role" => "assistant",
                    "tool_calls" => null(), "function_call" => null()},
                    _ => obj! {"role" => "assistant", "content" => text.as_str()},
                };
                (m, "stop", words(text))
            }
            Answer::Tool { name, arguments } => {
                let call = obj! {"id" => self.tool_call_id(), "type" => "function",
                "function" => obj!{"name" => name.as_str(), "arguments" => arguments.as_str()}};
                let m = obj! {"role" => "assistant", "content" => null(),
                "tool_calls" => Node::Arr(vec![call])};
                (m, "tool_calls", arg_pieces(arguments, 5).len() as u64)
            }
        };
        let choice = match d {
            Dialect::OpenAi => obj! {"index" => 0u64, "message" => message, "logprobs" => null(),
            "finish_reason" => finish},
            Dialect::LiteLlm => {
                obj! {"finish_reason" => finish, "index" => 0u64, "message" => message}
            }
            Dialect::LlamaCpp => {
                json!({"finish_reason": finish, "index": 0, "message": message.to_value()}).into()
            }
            Dialect::Starlette | Dialect::LastChunk => {
                obj! {"index" => 0u64, "message" => message, "finish_reason" => finish}
            }
        };
        (choice, completion)
    }

    fn text_choice(&self, text: Option<String>, finish: Option<&str>) -> Node {
        let text = text.unwrap_or_default();
        let finish: Node = finish.map_or_else(null, Node::from);
        if self.dialect == Dialect::LlamaCpp {
            return json!({"finish_reason": finish.to_value(), "index": 0, "logprobs": null, "text": text})
                .into();
        }
        obj! {"text" => text, "index" => 0u64, "logprobs" => null(), "finish_reason" => finish}
    }

    // === streams ===

    /// Every frame of the stream: role, content (or tool-call arguments), finish,
    /// the usage where the dialect puts it, `[DONE]`. `chunks` is how many content
    /// pieces; `include_usage` is what the request asked for.
    pub fn frames(&self, chunks: u64, include_usage: bool) -> Vec<Frame> {
        let d = self.dialect;
        // llama.cpp ignores `stream_options` altogether.
        let usage_asked = include_usage && d != Dialect::LlamaCpp;
        let mut parts = vec![Part::Role];
        match &self.answer {
            Answer::Text(_) => parts.extend((0..chunks).map(|i| Part::Text(format!("tok{i} ")))),
            Answer::Tool { name, arguments } => {
                parts.push(Part::ToolStart(name.clone()));
                parts.extend(
                    arg_pieces(arguments, usize::try_from(chunks).unwrap_or(1))
                        .into_iter()
                        .map(Part::ToolArgs),
                );
            }
        }
        let content_parts = parts
            .iter()
            .filter(|p| matches!(p, Part::Text(_) | Part::ToolArgs(_)))
            .count() as u64;
        let finish = match self.answer {
            Answer::Text(_) => "stop",
            Answer::Tool { .. } => "tool_calls",
        };
        let usage_null = usage_asked && d == Dialect::OpenAi;
        let mut frames = Vec::with_capacity(parts.len() + 4);
        let last_rides = d == Dialect::LastChunk && content_parts > 0;
        let n = parts.len();
        for (i, part) in parts.into_iter().enumerate() {
            let is_content = matches!(part, Part::Text(_) | Part::ToolArgs(_));
            let delta = self.delta(part);
            if last_rides && i + 1 == n {
                // The last content piece carries the finish reason (and the usage).
                let usage = usage_asked.then(|| self.usage(content_parts));
                let choice = self.stream_choice(delta, Some(finish));
                frames.push(Frame::new(d.data(&self.chunk(choice, usage)), true, true));
                continue;
            }
            let usage = usage_null.then(null);
            let choice = self.stream_choice(delta, None);
            frames.push(Frame::new(
                d.data(&self.chunk(choice, usage)),
                i > 0,
                is_content,
            ));
            if i == 0 && d == Dialect::Starlette {
                frames.push(Frame::new(d.comment(&self.ping()), false, false));
            }
        }
        if !last_rides {
            let choice = self.stream_choice(self.finish_delta(), Some(finish));
            let mut chunk = self.chunk(choice, usage_null.then(null));
            if d == Dialect::LlamaCpp {
                let mut v = chunk.to_value();
                v["timings"] = timings(content_parts);
                chunk = v.into();
            }
            frames.push(Frame::new(d.data(&chunk), true, false));
        }
        if usage_asked && d != Dialect::LastChunk {
            let choices = match d {
                Dialect::LiteLlm => Node::Arr(vec![obj! {"index" => 0u64, "delta" => obj!{}}]),
                _ => Node::Arr(vec![]),
            };
            let usage = self.usage(content_parts);
            frames.push(Frame::new(
                d.data(&self.chunk(choices, Some(usage))),
                false,
                false,
            ));
        }
        frames.push(Frame::new(d.done(), false, false));
        frames
    }

    fn chunk(&self, choices: Node, usage: Option<Node>) -> Node {
        let object = if self.chat {
            "chat.completion.chunk"
        } else {
            "text_completion"
        };
        let choices = match choices {
            Node::Arr(_) => choices,
            one => Node::Arr(vec![one]),
        };
        self.envelope(object, choices, usage)
    }

    /// A sse-starlette keep-alive comment (its default `ping - <datetime>` text).
    fn ping(&self) -> String {
        let at = chrono::DateTime::from_timestamp(i64::try_from(self.created).unwrap_or(0), 0)
            .unwrap_or_default();
        format!("ping - {}", at.format("%Y-%m-%d %H:%M:%S%.6f+00:00"))
    }

    fn delta(&self, part: Part) -> Node {
        let d = self.dialect;
        if !self.chat {
            return match part {
                Part::Text(t) | Part::ToolArgs(t) => Node::from(t),
                Part::Role | Part::ToolStart(_) => Node::from(""),
            };
        }
        match part {
            Part::Role => match d {
                Dialect::OpenAi => {
                    obj! {"role" => "assistant", "content" => "", "refusal" => null()}
                }
                Dialect::LiteLlm => obj! {"content" => "", "role" => "assistant"},
                Dialect::LlamaCpp => json!({"content": null, "role": "assistant"}).into(),
                Dialect::Starlette | Dialect::LastChunk => {
                    obj! {"role" => "assistant", "content" => ""}
                }
            },
            Part::Text(t) => obj! {"content" => t},
            Part::ToolStart(name) => {
                let call = obj! {"index" => 0u64, "id" => self.tool_call_id(), "type" => "function",
                "function" => obj!{"name" => name, "arguments" => ""}};
                obj! {"tool_calls" => Node::Arr(vec![call])}
            }
            Part::ToolArgs(args) => {
                let call = obj! {"index" => 0u64, "function" => obj!{"arguments" => args}};
                obj! {"tool_calls" => Node::Arr(vec![call])}
            }
        }
    }

    fn finish_delta(&self) -> Node {
        if self.chat {
            obj! {}
        } else {
            Node::from("")
        }
    }

    /// One streamed choice; `delta` is the text itself for legacy completions.
    fn stream_choice(&self, delta: Node, finish: Option<&str>) -> Node {
        if !self.chat {
            let text = delta.to_value().as_str().map(str::to_owned);
            return self.text_choice(text, finish);
        }
        let fin: Node = finish.map_or_else(null, Node::from);
        match self.dialect {
            Dialect::OpenAi => obj! {"index" => 0u64, "delta" => delta, "logprobs" => null(),
            "finish_reason" => fin},
            Dialect::LiteLlm => {
                // Pydantic's `exclude_none`: no `finish_reason` until there is one.
                let mut c = obj! {"index" => 0u64, "delta" => delta};
                if finish.is_some() {
                    c.push("finish_reason", fin);
                }
                c
            }
            Dialect::LlamaCpp => json!({"delta": delta.to_value(), "finish_reason": fin.to_value(),
                "index": 0})
            .into(),
            Dialect::Starlette | Dialect::LastChunk => {
                obj! {"index" => 0u64, "delta" => delta, "finish_reason" => fin}
            }
        }
    }
}

/// llama.cpp's per-request timings (fixed numbers: the mock does no work).
fn timings(predicted: u64) -> Value {
    json!({"predicted_ms": 10.0, "predicted_n": predicted, "predicted_per_second": 100.0,
        "prompt_ms": 1.0, "prompt_n": 2})
}

fn words(s: &str) -> u64 {
    s.split_whitespace().count() as u64
}

/// Splits tool-call arguments into at most `n` pieces, on character boundaries.
pub fn arg_pieces(arguments: &str, n: usize) -> Vec<String> {
    let chars: Vec<char> = arguments.chars().collect();
    let size = chars.len().div_ceil(n.max(1)).max(1);
    chars.chunks(size).map(|c| c.iter().collect()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn completion(d: Dialect) -> Completion {
        Completion {
            dialect: d,
            chat: true,
            id: "chatcmpl-mock-0".into(),
            created: 1_700_000_000,
            model: "gpt-4o-mini".into(),
            prompt_tokens: 2,
            answer: Answer::Text("mock reply".into()),
        }
    }

    fn text(frames: &[Frame]) -> String {
        frames
            .iter()
            .map(|f| String::from_utf8_lossy(&f.bytes))
            .collect()
    }

    #[test]
    fn usage_goes_where_each_dialect_puts_it() {
        let with = |d: Dialect| text(&completion(d).frames(2, true));
        assert!(with(Dialect::OpenAi).contains("\"choices\":[],\"usage\":{\"prompt_tokens\":2"));
        assert!(with(Dialect::OpenAi).contains("\"finish_reason\":null}],\"usage\":null}"));
        assert!(
            with(Dialect::LiteLlm).contains("\"choices\":[{\"index\":0,\"delta\":{}}],\"usage\":{")
        );
        assert!(
            with(Dialect::Starlette).contains("\"choices\": [], \"usage\": {\"prompt_tokens\": 2")
        );
        assert!(
            with(Dialect::Starlette)
                .contains("\r\n\r\n: ping - 2023-11-14 22:13:20.000000+00:00\r\n\r\n")
        );
        assert!(!with(Dialect::LlamaCpp).contains("usage"));
        assert!(with(Dialect::LastChunk).contains(
            "{\"content\":\"tok1 \"},\"finish_reason\":\"stop\"}],\"usage\":{\"prompt_tokens\":2,\"completion_tokens\":2"
        ));
        for d in Dialect::ALL {
            assert!(
                !text(&completion(d).frames(2, false)).contains("usage"),
                "{d}"
            );
        }
    }

    #[test]
    fn tool_arguments_stream_in_pieces_that_join_up() {
        let mut c = completion(Dialect::OpenAi);
        c.answer = Answer::Tool {
            name: "lookup".into(),
            arguments: "{\"query\":\"hi\"}".into(),
        };
        let frames = c.frames(3, false);
        let t = text(&frames);
        assert!(t.contains("\"name\":\"lookup\",\"arguments\":\"\""));
        assert!(t.contains("\"finish_reason\":\"tool_calls\""));
        assert_eq!(
            arg_pieces("{\"query\":\"hi\"}", 3).concat(),
            "{\"query\":\"hi\"}"
        );
    }
}
