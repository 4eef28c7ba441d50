//! A server-sent events reader for the tests, after the WHATWG specification:
//! lines end with `\r\n`, `\n` or `\r`; a blank line dispatches an event; lines
//! starting with `:` are comments; `field: value` loses one leading space.

use serde_json::Value;

/// One dispatched event (comments are kept apart: they are not events).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// The `event:` field, if any.
    pub event: Option<String>,
    /// The `data:` lines joined with `\n`.
    pub data: String,
    pub id: Option<String>,
}

impl Event {
    /// `data` as JSON (`None` for `[DONE]` and other non-JSON data).
    pub fn json(&self) -> Option<Value> {
        serde_json::from_str(&self.data).ok()
    }

    /// What a client compares: the event name and the data, parsed when JSON.
    pub fn parsed(&self) -> (Option<String>, Value) {
        let data = self
            .json()
            .unwrap_or_else(|| Value::String(self.data.clone()));
        (self.event.clone(), data)
    }
}

/// Reads events from bytes fed in pieces of any size.
#[derive(Default)]
pub struct Reader {
    buf: Vec<u8>,
    event: Option<String>,
    data: Vec<String>,
    id: Option<String>,
    pub comments: Vec<String>,
}

impl Reader {
    /// Feeds bytes; returns the events they completed.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<Event> {
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        while let Some(end) = self.buf.iter().position(|b| *b == b'\n' || *b == b'\r') {
            // A `\r` at the very end may be the first half of `\r\n`: wait.
            if self.buf[end] == b'\r' && end + 1 == self.buf.len() {
                break;
            }
            let skip = if self.buf[end] == b'\r' && self.buf[end + 1] == b'\n' {
                2
            } else {
                1
            };
            let line: Vec<u8> = self.buf.drain(..end + skip).take(end).collect();
            if let Some(ev) = self.line(&String::from_utf8_lossy(&line)) {
                out.push(ev);
            }
        }
        out
    }

    /// The end of the stream: a trailing `\r` ends its line; an unfinished event
    /// is discarded, as the specification says.
    pub fn finish(&mut self) -> Vec<Event> {
        if self.buf.last() == Some(&b'\r') {
            self.buf.push(b'\n');
            return self.push(&[]);
        }
        Vec::new()
    }

    fn line(&mut self, line: &str) -> Option<Event> {
        if line.is_empty() {
            if self.data.is_empty() && self.event.is_none() {
                return None;
            }
            return Some(Event {
                event: self.event.take(),
                data: std::mem::take(&mut self.data).join("\n"),
                id: self.id.clone(),
            });
        }
        if let Some(comment) = line.strip_prefix(':') {
            self.comments
                .push(comment.strip_prefix(' ').unwrap_or(comment).to_owned());
            return None;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "event" => self.event = Some(value.to_owned()),
            "data" => self.data.push(value.to_owned()),
            "id" => self.id = Some(value.to_owned()),
            _ => {}
        }
        None
    }
}

/// Every event of a complete stream.
pub fn parse(bytes: &[u8]) -> Vec<Event> {
    let mut r = Reader::default();
    let mut events = r.push(bytes);
    events.extend(r.finish());
    events
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_three_line_ends_and_any_split_give_the_same_events() {
        let want = parse(b"data: {\"a\":1}\n\n: ping\n\nevent: x\ndata: b\n\n");
        assert_eq!(want.len(), 2);
        for eol in ["\n", "\r\n", "\r"] {
            let text = format!(
                "data: {{\"a\":1}}{eol}{eol}: ping{eol}{eol}event: x{eol}data: b{eol}{eol}"
            );
            for cut in 0..text.len() {
                let mut r = Reader::default();
                let mut got = r.push(&text.as_bytes()[..cut]);
                got.extend(r.push(&text.as_bytes()[cut..]));
                got.extend(r.finish());
                assert_eq!(got, want, "{eol:?} cut at {cut}");
                assert_eq!(r.comments, vec!["ping"]);
            }
        }
    }
}
