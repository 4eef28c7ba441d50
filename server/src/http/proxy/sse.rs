//! Accounting for streamed chat completions that the client did not ask to be
//! accounted: Palisade sets `stream_options.include_usage` upstream, then removes
//! what that adds, so the client sees the stream it would have seen.
//!
//! The stream is cut into events as the SSE specification frames them (lines end
//! with `\r\n`, `\n` or `\r`; a blank line ends an event), so `\n\n`, `\r\n\r\n` and
//! `\r\r` all work, whatever the upstream's framework. Only a partial event is ever
//! held back; every complete event leaves at once. Per event, on the parsed JSON of
//! its `data` (whatever the spacing or key order):
//! * a usage-only chunk (usage set, and `choices` empty or holding only content-less
//!   deltas, as OpenAI and LiteLLM send it) is dropped;
//! * any other chunk with a top-level `usage` member (`"usage":null` on every chunk,
//!   or usage riding on the last content chunk) loses just that member, cut out of
//!   the original bytes so the rest stays byte for byte as sent;
//! * everything else (comments, `[DONE]`, events without `usage`) is forwarded
//!   untouched, without being parsed.

use bytes::{Bytes, BytesMut};

use crate::error::ProxyError;

/// Rewrites a chat completion request to ask for the usage chunk. Returns `None`
/// when the client already asked for it (nothing to hide then).
pub fn request_usage(body: &[u8]) -> Result<Option<Bytes>, ProxyError> {
    let mut v: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| ProxyError::InvalidJson(e.to_string()))?;
    let Some(obj) = v.as_object_mut() else {
        return Err(ProxyError::InvalidJson("expected a JSON object".into()));
    };
    let opts = obj
        .entry("stream_options")
        .or_insert_with(|| serde_json::json!({}));
    if !opts.is_object() {
        // Leave a malformed value for the upstream to reject as it would.
        return Ok(None);
    }
    if opts
        .get("include_usage")
        .and_then(serde_json::Value::as_bool)
        == Some(true)
    {
        return Ok(None);
    }
    opts["include_usage"] = serde_json::Value::Bool(true);
    serde_json::to_vec(&v)
        .map(|b| Some(Bytes::from(b)))
        .map_err(|e| ProxyError::InvalidJson(e.to_string()))
}

/// Removes the accounting Palisade added from a stream, event by event.
#[derive(Default)]
pub struct UsageStripper {
    /// The start of the event not yet complete.
    pending: BytesMut,
    framing: Framing,
    /// The last event was dropped and ended on a `\r` at a chunk's end: a `\n`
    /// starting the next chunk is the rest of its line end and goes with it.
    drop_lf: bool,
}

impl UsageStripper {
    /// Feeds upstream bytes; returns what the client should get now (maybe empty).
    /// Complete events that need no change leave as the very bytes that came in.
    pub fn push(&mut self, mut chunk: Bytes) -> Bytes {
        if chunk.is_empty() {
            return chunk;
        }
        let drop_lf = std::mem::take(&mut self.drop_lf);
        let mut lead = None;
        if self.framing.after_cr && self.pending.is_empty() && chunk.first() == Some(&b'\n') {
            // The `\n` of the last event's `\r\n`, split off into this chunk: it
            // goes with that event (out now, or nowhere if the event was dropped).
            self.framing.after_cr = false;
            lead = (!drop_lf).then(|| chunk.slice(..1));
            chunk = chunk.slice(1..);
        }
        let out = self.push_events(chunk);
        match lead {
            Some(lf) if out.is_empty() => lf,
            Some(lf) => {
                let mut joined = BytesMut::with_capacity(1 + out.len());
                joined.extend_from_slice(&lf);
                joined.extend_from_slice(&out);
                joined.freeze()
            }
            None => out,
        }
    }

    fn push_events(&mut self, chunk: Bytes) -> Bytes {
        let complete = if self.pending.is_empty() {
            let end = self.framing.scan(&chunk, 0);
            self.pending.extend_from_slice(&chunk[end..]);
            self.framing.rebase(end);
            chunk.slice(..end)
        } else {
            let from = self.pending.len();
            self.pending.extend_from_slice(&chunk);
            let end = self.framing.scan(&self.pending, from);
            self.framing.rebase(end);
            self.pending.split_to(end).freeze()
        };
        if complete.is_empty() {
            return complete;
        }
        let ends_on_cr = self.pending.is_empty() && complete.last() == Some(&b'\r');
        let (out, dropped_last) = rewrite_events(complete, &self.framing.ends);
        self.drop_lf = dropped_last && ends_on_cr;
        out
    }

    /// Whatever is left when the upstream ends (an unterminated last event, which
    /// SSE clients discard): forwarded as it came.
    pub fn finish(&mut self) -> Bytes {
        self.framing = Framing::default();
        std::mem::take(&mut self.pending).freeze()
    }
}

/// Where the scan of the pending event stands, across chunk boundaries.
#[derive(Default)]
struct Framing {
    /// Scanned up to here (offset in the pending event).
    pos: usize,
    /// Start of the line being scanned.
    line_start: usize,
    /// The last byte seen was a `\r`: a `\n` right after it belongs to that line end.
    after_cr: bool,
    /// Ends (exclusive) of the complete events found by the last `scan`.
    ends: Vec<usize>,
}

impl Framing {
    /// Scans `buf` from `from`, recording where events end; returns the end of the
    /// last complete event (0 if none).
    fn scan(&mut self, buf: &[u8], from: usize) -> usize {
        self.ends.clear();
        let mut pos = from.max(self.pos);
        let mut last_end = 0;
        while pos < buf.len() {
            if std::mem::take(&mut self.after_cr) && buf[pos] == b'\n' {
                // The `\n` of a `\r\n` split across chunks (or right after an event
                // that ended on `\r`): part of the line end already counted.
                pos += 1;
                if self.line_start == pos - 1 {
                    self.line_start = pos;
                }
                continue;
            }
            let Some(off) = buf[pos..].iter().position(|&b| b == b'\n' || b == b'\r') else {
                pos = buf.len();
                break;
            };
            let at = pos + off;
            let blank = at == self.line_start;
            pos = at + 1;
            if buf[at] == b'\r' {
                if pos < buf.len() {
                    if buf[pos] == b'\n' {
                        pos += 1;
                    }
                } else {
                    self.after_cr = true;
                }
            }
            self.line_start = pos;
            if blank {
                // Every blank line ends an event (an empty one dispatches nothing
                // in a client, and passes through as it came).
                last_end = pos;
                self.ends.push(pos);
            }
        }
        self.pos = pos;
        last_end
    }

    /// The first `end` bytes left the pending buffer: shift the offsets.
    fn rebase(&mut self, end: usize) {
        self.pos -= end;
        self.line_start -= end;
    }
}

/// Applies the per-event rules to a run of complete events ending at `ends`.
/// Returns the same bytes when nothing changed (the common case, no copy), and
/// whether the last event was dropped.
fn rewrite_events(complete: Bytes, ends: &[usize]) -> (Bytes, bool) {
    if memfind(&complete, b"usage").is_none() {
        return (complete, false);
    }
    let mut out: Option<BytesMut> = None;
    let mut start = 0;
    let mut dropped = false;
    for &end in ends {
        let event = &complete[start..end];
        let rewritten = rewrite_event(event);
        dropped = rewritten.as_ref().is_some_and(|r| r.len() <= 1);
        match (&mut out, rewritten) {
            (None, None) => {}
            (None, Some(new)) => {
                let mut buf = BytesMut::with_capacity(complete.len());
                buf.extend_from_slice(&complete[..start]);
                buf.extend_from_slice(&new);
                out = Some(buf);
            }
            (Some(buf), None) => buf.extend_from_slice(event),
            (Some(buf), Some(new)) => buf.extend_from_slice(&new),
        }
        start = end;
    }
    (out.map_or(complete, BytesMut::freeze), dropped)
}

/// `None`: forward the event unchanged. `Some(bytes)`: forward these instead (empty
/// when the event is dropped).
fn rewrite_event(event: &[u8]) -> Option<Vec<u8>> {
    memfind(event, b"usage")?;
    let (data_start, data_end) = single_data_line(event)?;
    let json = &event[data_start..data_end];
    let usage = top_level_member(json, b"usage")?;
    let value = &json[usage.value.clone()];
    if value != b"null" && is_usage_only(json) {
        // Dropped, except a leading `\n` that ends the previous event's `\r\n`.
        return Some(event[..usize::from(event[0] == b'\n')].to_vec());
    }
    let mut out = Vec::with_capacity(event.len());
    out.extend_from_slice(&event[..data_start + usage.cut.start]);
    out.extend_from_slice(&event[data_start + usage.cut.end..]);
    Some(out)
}

/// The byte range of the value of the event's only `data` field. Events with
/// several data lines are left alone (no OpenAI-compatible server sends them).
fn single_data_line(event: &[u8]) -> Option<(usize, usize)> {
    let mut found = None;
    let mut pos = 0;
    while pos < event.len() {
        let len = event[pos..]
            .iter()
            .position(|&b| b == b'\n' || b == b'\r')
            .unwrap_or(event.len() - pos);
        let line = &event[pos..pos + len];
        if let Some(rest) = line.strip_prefix(b"data") {
            let value_start = match rest.first() {
                None => 0,
                Some(b':') if rest.get(1) == Some(&b' ') => 2,
                Some(b':') => 1,
                // Another field whose name starts with "data".
                Some(_) => usize::MAX,
            };
            if value_start != usize::MAX {
                if found.is_some() {
                    return None;
                }
                let start = pos + 4 + value_start.min(rest.len());
                found = Some((start, pos + len));
            }
        }
        pos += len + 1;
    }
    found
}

/// Whether a chunk carries nothing for the client besides the usage: `choices`
/// absent or empty, or every choice a content-less delta without a finish reason.
fn is_usage_only(json: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct Chunk {
        #[serde(default)]
        choices: Vec<serde_json::Map<String, serde_json::Value>>,
    }
    let Ok(chunk) = serde_json::from_slice::<Chunk>(json) else {
        return false;
    };
    chunk.choices.iter().all(|choice| {
        choice.iter().all(|(key, value)| match key.as_str() {
            "index" => true,
            "delta" => value
                .as_object()
                .is_none_or(|d| d.values().all(serde_json::Value::is_null)),
            _ => value.is_null(),
        })
    })
}

/// A top-level object member found in the raw JSON text.
struct Member {
    /// The value's bytes.
    value: std::ops::Range<usize>,
    /// What to remove so the object stays valid: the member and one adjacent comma.
    cut: std::ops::Range<usize>,
}

/// Finds `"key"` among the top-level members of a JSON object without building a
/// tree. `None` when absent or when the text is not an object this scanner follows.
fn top_level_member(json: &[u8], key: &[u8]) -> Option<Member> {
    let mut i = skip_ws(json, 0);
    if json.get(i) != Some(&b'{') {
        return None;
    }
    i += 1;
    let mut prev_value_end: Option<usize> = None;
    let mut found: Option<(usize, std::ops::Range<usize>)> = None;
    loop {
        i = skip_ws(json, i);
        match json.get(i)? {
            b'}' => break,
            b'"' => {}
            _ => return None,
        }
        let key_start = i;
        let key_end = skip_string(json, i)?;
        if let Some((member_start, value)) = found {
            // The member after the one we remove: cut up to this key.
            return Some(Member {
                value,
                cut: member_start..key_start,
            });
        }
        i = skip_ws(json, key_end);
        if json.get(i) != Some(&b':') {
            return None;
        }
        let value_start = skip_ws(json, i + 1);
        let value_end = skip_value(json, value_start)?;
        if &json[key_start + 1..key_end - 1] == key {
            if let Some(prev) = prev_value_end {
                return Some(Member {
                    value: value_start..value_end,
                    cut: prev..value_end,
                });
            }
            found = Some((key_start, value_start..value_end));
        }
        prev_value_end = Some(value_end);
        i = skip_ws(json, value_end);
        match json.get(i)? {
            b',' => i += 1,
            b'}' => break,
            _ => return None,
        }
    }
    // The only member.
    found.map(|(member_start, value)| Member {
        cut: member_start..value.end,
        value,
    })
}

fn skip_ws(json: &[u8], mut i: usize) -> usize {
    while json
        .get(i)
        .is_some_and(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
    {
        i += 1;
    }
    i
}

/// `i` is at an opening quote; returns the index after the closing one.
fn skip_string(json: &[u8], mut i: usize) -> Option<usize> {
    i += 1;
    loop {
        match json.get(i)? {
            b'"' => return Some(i + 1),
            b'\\' => i += 2,
            _ => i += 1,
        }
    }
}

/// Returns the index after the value starting at `i`.
fn skip_value(json: &[u8], i: usize) -> Option<usize> {
    match json.get(i)? {
        b'"' => skip_string(json, i),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut j = i;
            loop {
                match json.get(j)? {
                    b'"' => {
                        j = skip_string(json, j)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(j + 1);
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
        }
        _ => {
            let len = json[i..]
                .iter()
                .position(|b| matches!(b, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r'))
                .unwrap_or(json.len() - i);
            (len > 0).then_some(i + len)
        }
    }
}

fn memfind(hay: &[u8], needle: &[u8]) -> Option<usize> {
    memchr::memmem::find(hay, needle)
}

#[cfg(test)]
mod tests;
