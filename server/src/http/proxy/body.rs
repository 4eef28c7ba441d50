//! Request bodies: read once with the size limit, then peek at `model` and `stream`
//! without building a DOM (the body is forwarded as the same bytes).

use std::borrow::Cow;

use actix_web::HttpRequest;
use actix_web::http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use actix_web::web::{self, Bytes, BytesMut};
use futures_util::StreamExt;
use serde::Deserialize;

use crate::error::ProxyError;

/// Reads the whole body; more than `limit` bytes is 413 (exactly `limit` is fine).
pub async fn read_limited(
    req: &HttpRequest,
    mut payload: web::Payload,
    limit: u64,
) -> Result<Bytes, ProxyError> {
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(ProxyError::PayloadTooLarge(limit));
    }
    let capacity = declared.map_or(8 * 1024, |n| usize::try_from(n).unwrap_or(0));
    let mut buf = BytesMut::with_capacity(capacity);
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| match e {
            e if crate::http::edge::conn::is_body_timeout(&e) => ProxyError::RequestTimeout,
            e => ProxyError::InvalidJson(format!("cannot read the request body: {e}")),
        })?;
        if (buf.len() + chunk.len()) as u64 > limit {
            return Err(ProxyError::PayloadTooLarge(limit));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

#[derive(Debug, Default)]
pub struct Peek {
    pub model: Option<String>,
    pub stream: bool,
}

#[derive(Deserialize)]
struct JsonPeek<'a> {
    #[serde(borrow, default)]
    model: Option<Cow<'a, str>>,
    #[serde(default)]
    stream: Option<bool>,
}

/// Endpoints whose OpenAI contract requires a `model`.
pub fn requires_model(tail: &str) -> bool {
    !matches!(tail, "/moderations" | "/images/generations")
}

pub fn peek(req: &HttpRequest, body: &[u8]) -> Result<Peek, ProxyError> {
    let content_type = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if content_type.len() >= 19 && content_type[..19].eq_ignore_ascii_case("multipart/form-data") {
        return Ok(Peek {
            model: boundary(content_type).and_then(|b| multipart_field(body, b, "model")),
            stream: false,
        });
    }
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    if first != Some(&b'{') {
        return Err(ProxyError::InvalidJson("expected a JSON object".into()));
    }
    let p: JsonPeek<'_> =
        serde_json::from_slice(body).map_err(|e| ProxyError::InvalidJson(e.to_string()))?;
    Ok(Peek {
        model: p.model.map(Cow::into_owned),
        stream: p.stream.unwrap_or(false),
    })
}

fn boundary(content_type: &str) -> Option<&str> {
    content_type.split(';').skip(1).find_map(|param| {
        let (k, v) = param.trim().split_once('=')?;
        k.eq_ignore_ascii_case("boundary")
            .then(|| v.trim_matches('"'))
    })
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || hay.len() < needle.len() {
        return None;
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The text value of a form field in a multipart body, if present and UTF-8.
fn multipart_field(body: &[u8], boundary: &str, field: &str) -> Option<String> {
    let delim = format!("--{boundary}");
    let wanted = format!("name=\"{field}\"");
    let mut rest = &body[find(body, delim.as_bytes())? + delim.len()..];
    loop {
        let end = find(rest, delim.as_bytes())?;
        let part = &rest[..end];
        let split = find(part, b"\r\n\r\n")?;
        let headers = String::from_utf8_lossy(&part[..split]);
        let is_field = headers.lines().any(|l| {
            l.to_ascii_lowercase().starts_with("content-disposition:") && l.contains(&wanted)
        });
        if is_field {
            let value = &part[split + 4..];
            let value = value.strip_suffix(b"\r\n").unwrap_or(value);
            return std::str::from_utf8(value).ok().map(str::to_owned);
        }
        rest = &rest[end + delim.len()..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    #[test]
    fn peeks_model_and_stream() {
        let req = TestRequest::default().to_http_request();
        let p = peek(
            &req,
            br#"{"messages":[{"a":{"b":1}}],"model":"m\u0031","stream":true}"#,
        )
        .unwrap();
        assert_eq!(p.model.as_deref(), Some("m1"));
        assert!(peek(&req, b"[1]").is_err());
        assert!(peek(&req, b"{").is_err());
        assert!(peek(&req, br#"{"model":1}"#).is_err());
    }

    #[test]
    fn multipart_model() {
        let body = b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\nContent-Type: audio/wav\r\n\r\nRIFF....\r\n--XyZ\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nwhisper-1\r\n--XyZ--\r\n";
        assert_eq!(
            multipart_field(body, "XyZ", "model").as_deref(),
            Some("whisper-1")
        );
        assert_eq!(multipart_field(body, "XyZ", "nope"), None);
        assert_eq!(
            boundary("multipart/form-data; boundary=\"XyZ\""),
            Some("XyZ")
        );
    }
}
