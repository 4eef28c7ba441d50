//! The dialects: how each family of real OpenAI-compatible servers writes its JSON
//! and frames its server-sent events. Everything byte-level lives here, so the
//! response builders describe *what* a vendor sends and this file *how*.

use std::fmt;
use std::io;
use std::str::FromStr;

use bytes::Bytes;
use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};
use serde_json::Value;

/// A family of upstream servers, chosen per request (`x-mock-dialect`) or per
/// process (`--dialect`). See `docs/mock-upstream.md`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Dialect {
    /// api.openai.com: compact JSON, `\n\n` framing, `"usage":null` on every chunk
    /// and a `"choices":[]` usage chunk when `include_usage` is asked.
    #[default]
    OpenAi,
    /// LiteLLM proxy: its own key order, no `usage` member on content chunks, and a
    /// usage chunk whose `choices` holds one content-less delta.
    LiteLlm,
    /// A FastAPI app streaming through sse-starlette: `json.dumps` spacing,
    /// `\r\n` line ends, `: ping` comments.
    Starlette,
    /// llama.cpp's server: sorted keys (nlohmann::json), ignores `stream_options`,
    /// a single slot (`GET /v1/models` waits while a generation runs).
    LlamaCpp,
    /// Vendors that put `usage` on the last content chunk (the one with
    /// `finish_reason`) instead of a chunk of its own.
    LastChunk,
}

impl Dialect {
    pub const ALL: [Dialect; 5] = [
        Dialect::OpenAi,
        Dialect::LiteLlm,
        Dialect::Starlette,
        Dialect::LlamaCpp,
        Dialect::LastChunk,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Dialect::OpenAi => "openai",
            Dialect::LiteLlm => "litellm",
            Dialect::Starlette => "starlette",
            Dialect::LlamaCpp => "llamacpp",
            Dialect::LastChunk => "lastchunk",
        }
    }

    /// The line end of its SSE framing.
    fn eol(self) -> &'static str {
        match self {
            Dialect::Starlette => "\r\n",
            _ => "\n",
        }
    }

    /// The `content-type` of its event streams.
    pub fn stream_content_type(self) -> &'static str {
        match self {
            Dialect::Starlette => "text/event-stream; charset=utf-8",
            _ => "text/event-stream",
        }
    }

    /// JSON text as this vendor writes it in a stream's `data:` (sse-starlette apps
    /// call `json.dumps` with its defaults).
    pub fn json(self, v: &impl Serialize) -> String {
        let mut out = Vec::with_capacity(256);
        let written = match self {
            Dialect::Starlette => v.serialize(&mut serde_json::Serializer::with_formatter(
                &mut out,
                PyFormatter,
            )),
            _ => v.serialize(&mut serde_json::Serializer::new(&mut out)),
        };
        // Serializing a `Node` or a `Value` into a Vec cannot fail.
        debug_assert!(written.is_ok());
        String::from_utf8(out).unwrap_or_default()
    }

    /// A whole JSON response body: compact for every dialect (Starlette's
    /// `JSONResponse` uses `separators=(",", ":")` too).
    pub fn body_json(self, v: &impl Serialize) -> String {
        Dialect::OpenAi.json(v)
    }

    /// One `data:` event.
    pub fn data(self, v: &impl Serialize) -> Bytes {
        self.event(None, &self.json(v))
    }

    /// One event with an optional `event:` field and a single-line `data`.
    pub fn event(self, name: Option<&str>, data: &str) -> Bytes {
        let eol = self.eol();
        let mut s = String::with_capacity(data.len() + 32);
        if let Some(name) = name {
            s.push_str("event: ");
            s.push_str(name);
            s.push_str(eol);
        }
        s.push_str("data: ");
        s.push_str(data);
        s.push_str(eol);
        s.push_str(eol);
        Bytes::from(s)
    }

    /// A comment line, ended as an event (as sse-starlette sends its pings).
    pub fn comment(self, text: &str) -> Bytes {
        let eol = self.eol();
        Bytes::from(format!(": {text}{eol}{eol}"))
    }

    /// `data: [DONE]`.
    pub fn done(self) -> Bytes {
        self.event(None, "[DONE]")
    }
}

impl fmt::Display for Dialect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Dialect {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Dialect::ALL
            .into_iter()
            .find(|d| d.name().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| {
                let names: Vec<_> = Dialect::ALL.iter().map(|d| d.name()).collect();
                format!("unknown dialect {s:?} (one of {})", names.join(", "))
            })
    }
}

// === JSON with a key order ===

/// A JSON value whose objects keep the order they were written in (the workspace's
/// `serde_json` sorts map keys, and real vendors do not).
#[derive(Clone, Debug)]
pub enum Node {
    Raw(Value),
    Obj(Vec<(&'static str, Node)>),
    Arr(Vec<Node>),
}

impl Node {
    /// Appends a member (replacing none: callers write each key once).
    pub fn push(&mut self, key: &'static str, v: impl Into<Node>) {
        if let Node::Obj(members) = self {
            members.push((key, v.into()));
        }
    }

    /// As a `serde_json::Value` (key order lost), for reading in tests.
    pub fn to_value(&self) -> Value {
        match self {
            Node::Raw(v) => v.clone(),
            Node::Obj(m) => Value::Object(
                m.iter()
                    .map(|(k, v)| ((*k).to_owned(), v.to_value()))
                    .collect(),
            ),
            Node::Arr(a) => Value::Array(a.iter().map(Node::to_value).collect()),
        }
    }
}

impl Serialize for Node {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Node::Raw(v) => v.serialize(s),
            Node::Obj(members) => {
                let mut map = s.serialize_map(Some(members.len()))?;
                for (k, v) in members {
                    map.serialize_entry(k, v)?;
                }
                map.end()
            }
            Node::Arr(items) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for v in items {
                    seq.serialize_element(v)?;
                }
                seq.end()
            }
        }
    }
}

impl From<Value> for Node {
    fn from(v: Value) -> Self {
        Node::Raw(v)
    }
}

impl From<Vec<Node>> for Node {
    fn from(v: Vec<Node>) -> Self {
        Node::Arr(v)
    }
}

macro_rules! node_from {
    ($($t:ty),*) => {$(
        impl From<$t> for Node {
            fn from(v: $t) -> Self {
                Node::Raw(Value::from(v))
            }
        }
    )*};
}
node_from!(&str, String, u64, i64, u32, usize, bool, f64);

/// `null`.
pub fn null() -> Node {
    Node::Raw(Value::Null)
}

/// An ordered JSON object: `obj!{"id" => id, "object" => "x"}`.
#[macro_export]
macro_rules! obj {
    ($($k:literal => $v:expr),* $(,)?) => {
        $crate::mock::dialect::Node::Obj(vec![$(($k, $crate::mock::dialect::Node::from($v))),*])
    };
}

/// Python's `json.dumps` defaults: `", "` and `": "` separators, non-ASCII escaped.
struct PyFormatter;

impl serde_json::ser::Formatter for PyFormatter {
    fn begin_array_value<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> io::Result<()> {
        if first { Ok(()) } else { w.write_all(b", ") }
    }

    fn begin_object_key<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> io::Result<()> {
        if first { Ok(()) } else { w.write_all(b", ") }
    }

    fn begin_object_value<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        w.write_all(b": ")
    }

    fn write_string_fragment<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        fragment: &str,
    ) -> io::Result<()> {
        // `ensure_ascii=True`: every non-ASCII character as `\uXXXX` (UTF-16 units).
        for c in fragment.chars() {
            if c.is_ascii() {
                w.write_all(&[c as u8])?;
            } else {
                let mut units = [0u16; 2];
                for u in c.encode_utf16(&mut units) {
                    write!(w, "\\u{u:04x}")?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starlette_writes_python_spacing_and_crlf() {
        let v = obj! {"id" => "x", "choices" => Node::Arr(vec![]), "n" => 1u64, "t" => "é"};
        assert_eq!(
            Dialect::Starlette.data(&v),
            Bytes::from_static(
                b"data: {\"id\": \"x\", \"choices\": [], \"n\": 1, \"t\": \"\\u00e9\"}\r\n\r\n"
            )
        );
        assert_eq!(
            Dialect::OpenAi.data(&v),
            Bytes::from("data: {\"id\":\"x\",\"choices\":[],\"n\":1,\"t\":\"é\"}\n\n")
        );
    }

    #[test]
    fn dialect_names_round_trip() {
        for d in Dialect::ALL {
            assert_eq!(d.name().parse::<Dialect>(), Ok(d));
        }
        assert!("nope".parse::<Dialect>().is_err());
    }
}
