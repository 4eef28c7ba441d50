//! Accounting for streamed chat completions that the client did not ask to be
//! accounted: Palisade sets `stream_options.include_usage` upstream, then removes
//! what that adds (the usage-only chunk and each chunk's `"usage":null`), so the
//! client sees the stream it would have seen. Frames are re-cut on the blank line
//! that ends each SSE event; a partial frame waits for its end, nothing else does.

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

/// Removes the accounting Palisade added from a stream, frame by frame.
#[derive(Default)]
pub struct UsageStripper {
    pending: BytesMut,
}

const USAGE_NULL: &[u8] = b",\"usage\":null";

impl UsageStripper {
    /// Feeds upstream bytes; returns what the client should get now (maybe empty).
    pub fn push(&mut self, chunk: &[u8]) -> Bytes {
        self.pending.extend_from_slice(chunk);
        let mut out = BytesMut::with_capacity(self.pending.len());
        while let Some(end) = find(&self.pending, b"\n\n") {
            let frame = self.pending.split_to(end + 2);
            if is_usage_only(&frame) {
                continue;
            }
            strip_usage_null(&frame, &mut out);
        }
        out.freeze()
    }

    /// Whatever is left when the upstream ends (an unterminated last frame).
    pub fn finish(&mut self) -> Bytes {
        std::mem::take(&mut self.pending).freeze()
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn is_usage_only(frame: &[u8]) -> bool {
    frame.starts_with(b"data: {")
        && find(frame, b"\"choices\":[]").is_some()
        && find(frame, b"\"usage\":{").is_some()
}

fn strip_usage_null(frame: &[u8], out: &mut BytesMut) {
    let mut rest = frame;
    while let Some(i) = find(rest, USAGE_NULL) {
        out.extend_from_slice(&rest[..i]);
        rest = &rest[i + USAGE_NULL.len()..];
    }
    out.extend_from_slice(rest);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_gets_include_usage_unless_present() {
        let b = request_usage(br#"{"model":"m","stream":true}"#)
            .unwrap()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["stream_options"]["include_usage"], true);
        assert!(
            request_usage(br#"{"stream_options":{"include_usage":true}}"#)
                .unwrap()
                .is_none()
        );
        let b = request_usage(br#"{"stream_options":{"include_usage":false,"x":1}}"#)
            .unwrap()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(
            v["stream_options"],
            serde_json::json!({"include_usage": true, "x": 1})
        );
    }

    #[test]
    fn stripper_restores_the_plain_stream_across_split_chunks() {
        let with = "data: {\"id\":\"a\",\"choices\":[{\"delta\":{}}],\"usage\":null}\n\n\
                    data: {\"id\":\"a\",\"choices\":[],\"usage\":{\"prompt_tokens\":1}}\n\n\
                    data: [DONE]\n\n";
        let plain = "data: {\"id\":\"a\",\"choices\":[{\"delta\":{}}]}\n\ndata: [DONE]\n\n";
        for split in [1, 7, 30, with.len()] {
            let mut s = UsageStripper::default();
            let mut out = Vec::new();
            for chunk in with.as_bytes().chunks(split) {
                out.extend_from_slice(&s.push(chunk));
            }
            out.extend_from_slice(&s.finish());
            assert_eq!(String::from_utf8(out).unwrap(), plain, "split {split}");
        }
    }
}
