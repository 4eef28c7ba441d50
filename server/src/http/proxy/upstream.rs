//! Building and sending the upstream request: credential substitution, header
//! hygiene and the first-byte timeout.
//!
//! Encoding: Palisade reads every body it relays (usage accounting, the SSE
//! usage strip), so it asks upstream for `Accept-Encoding: identity` whatever the
//! client sent. Compressing a loopback or LAN hop costs CPU on both ends and makes
//! a stock gzip middleware buffer SSE events; the client side is Palisade's own
//! and is not compressed either. An upstream that compresses anyway (gzip,
//! deflate, brotli) is decoded by the client (reqwest's decoders) before anything
//! reads the body; any other encoding passes through untouched and is logged.

use actix_web::HttpRequest;
use actix_web::web::Bytes;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};

use crate::error::ProxyError;
use crate::http::request_id::RequestId;
use crate::providers::{Provider, without_url};
use crate::secret::Secret;

/// Request headers never forwarded: hop-by-hop ones, the client's credentials and
/// cookies, and client-address claims the upstream has no business trusting.
const STRIPPED: &[&str] = &[
    "host",
    "content-length",
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "expect",
    "authorization",
    "x-api-key",
    "cookie",
    "forwarded",
    "x-real-ip",
    "x-request-id",
    // Replaced by `identity`: see the module comment.
    "accept-encoding",
];

fn is_stripped(name: &str, connection_listed: &[String]) -> bool {
    STRIPPED.contains(&name)
        || name.starts_with("x-forwarded-")
        || connection_listed.iter().any(|c| c == name)
}

/// Header names the client listed in `Connection` (they are hop-by-hop too).
fn connection_listed(req: &HttpRequest) -> Vec<String> {
    req.headers()
        .get_all("connection")
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|s| s.trim().to_ascii_lowercase())
        .filter(|s| !s.is_empty())
        .collect()
}

pub fn forward_headers(
    req: &HttpRequest,
    key: &Secret,
    request_id: Option<&RequestId>,
) -> HeaderMap {
    let listed = connection_listed(req);
    let mut out = HeaderMap::with_capacity(req.headers().len() + 2);
    for (name, value) in req.headers() {
        if is_stripped(name.as_str(), &listed) {
            continue;
        }
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_str().as_bytes()),
            HeaderValue::from_bytes(value.as_bytes()),
        ) {
            out.append(n, v);
        }
    }
    if !key.is_empty()
        && let Ok(mut v) = HeaderValue::from_str(&format!("Bearer {}", key.expose()))
    {
        v.set_sensitive(true);
        out.insert(reqwest::header::AUTHORIZATION, v);
    }
    if let Some(id) = request_id
        && let Ok(v) = HeaderValue::from_bytes(id.0.as_bytes())
    {
        out.insert(HeaderName::from_static("x-request-id"), v);
    }
    out.insert(
        reqwest::header::ACCEPT_ENCODING,
        HeaderValue::from_static("identity"),
    );
    out
}

/// Sends the request and waits for the response head, at most `first_byte` long.
pub async fn send(
    req: &HttpRequest,
    provider: &Provider,
    tail: &str,
    key: &Secret,
    request_id: Option<&RequestId>,
    body: Bytes,
) -> Result<reqwest::Response, ProxyError> {
    let request = provider
        .client
        .post(provider.url_for(tail, req.query_string()))
        .headers(forward_headers(req, key, request_id))
        .body(body)
        .build()
        .map_err(|e| ProxyError::UpstreamError(without_url(&e)))?;
    match tokio::time::timeout(
        provider.first_byte_timeout,
        provider.client.execute(request),
    )
    .await
    {
        Err(_) => Err(ProxyError::UpstreamTimeout),
        Ok(Err(e)) => Err(ProxyError::UpstreamError(format!(
            "provider {}: {}",
            provider.name,
            without_url(&e)
        ))),
        Ok(Ok(resp)) => Ok(resp),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    #[test]
    fn strips_credentials_and_hop_by_hop_keeps_the_rest() {
        let req = TestRequest::default()
            .insert_header(("authorization", "Bearer tok-client"))
            .insert_header(("x-api-key", "tok-client"))
            .insert_header(("cookie", "a=b"))
            .insert_header(("x-forwarded-for", "1.2.3.4"))
            .insert_header(("forwarded", "for=1.2.3.4"))
            .insert_header(("x-real-ip", "1.2.3.4"))
            .insert_header(("connection", "keep-alive, x-secret-hop"))
            .insert_header(("x-secret-hop", "1"))
            .insert_header(("openai-organization", "org-1"))
            .insert_header(("content-type", "application/json"))
            .insert_header(("accept-encoding", "gzip, deflate, br"))
            .to_http_request();
        let h = forward_headers(&req, &Secret::new("sk-up"), None);
        assert_eq!(h.get("authorization").unwrap(), "Bearer sk-up");
        for gone in [
            "x-api-key",
            "cookie",
            "x-forwarded-for",
            "forwarded",
            "x-real-ip",
            "connection",
            "x-secret-hop",
        ] {
            assert!(h.get(gone).is_none(), "{gone} leaked");
        }
        assert_eq!(h.get("openai-organization").unwrap(), "org-1");
        assert_eq!(h.get("content-type").unwrap(), "application/json");
        assert_eq!(h.get_all("accept-encoding").iter().count(), 1);
        assert_eq!(h.get("accept-encoding").unwrap(), "identity");
    }
}
