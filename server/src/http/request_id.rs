//! `x-request-id` on every response of every route: the client's value when it is
//! 1–128 characters of `[A-Za-z0-9._-]`, else a fresh UUIDv7. Stored in the request
//! extensions so the proxy forwards the same id upstream and logs carry it.

use actix_web::HttpMessage;
use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};

use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;

pub const HEADER: HeaderName = HeaderName::from_static("x-request-id");

#[derive(Clone, Debug)]
pub struct RequestId(pub HeaderValue);

impl RequestId {
    pub fn as_str(&self) -> &str {
        self.0.to_str().unwrap_or_default()
    }
}

pub fn is_valid(v: &[u8]) -> bool {
    (1..=128).contains(&v.len())
        && v.iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn fresh() -> HeaderValue {
    let mut buf = uuid::Uuid::encode_buffer();
    let s = uuid::Uuid::now_v7().hyphenated().encode_lower(&mut buf);
    HeaderValue::from_str(s).unwrap_or(HeaderValue::from_static("invalid"))
}

pub async fn middleware(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let id = match req.headers().get(&HEADER) {
        Some(v) if is_valid(v.as_bytes()) => v.clone(),
        _ => fresh(),
    };
    req.extensions_mut().insert(RequestId(id.clone()));
    // Inner middleware answers rejections with `Ok(response)` rather than `Err`, so
    // every response passes through here and gets the header.
    let mut res = next.call(req).await?.map_into_boxed_body();
    res.headers_mut().insert(HEADER, id);
    Ok(res)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation() {
        assert!(is_valid(b"abc-123_.X"));
        assert!(!is_valid(b""));
        assert!(!is_valid(&[b'a'; 129]));
        assert!(!is_valid(b"a b"));
        assert!(!is_valid(b"a/b"));
    }
}
