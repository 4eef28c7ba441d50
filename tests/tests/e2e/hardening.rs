//! Edge protections end to end: security headers on every kind of response, CORS
//! closed by default and exact when opened, trusted hosts, global IP lists, and
//! the connection limits (slowloris head timeout, keep-alive timeout, maximum
//! connections, header size and count).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::time::Instant;

use crate::harness::{
    Gateway, MANAGEMENT_TOKEN, WAIT, assert_manage_error, assert_proxy_error, chat_body, error_of,
    start,
};

/// `server:` for the harness with extra fields.
fn server(extra: &str) -> String {
    format!("server: {{ listen: \"127.0.0.1:0\", workers: 1, shutdown_grace: 5s, {extra} }}")
}

fn assert_security_headers(resp: &reqwest::Response, manage: bool) {
    let h = resp.headers();
    let get = |n: &str| h.get(n).map(|v| v.to_str().unwrap().to_owned());
    let at = resp.url().path().to_owned();
    assert_eq!(
        get("x-content-type-options").as_deref(),
        Some("nosniff"),
        "{at}"
    );
    assert_eq!(get("x-frame-options").as_deref(), Some("DENY"), "{at}");
    assert_eq!(
        get("content-security-policy").as_deref(),
        Some("default-src 'none'; frame-ancestors 'none'"),
        "{at}"
    );
    assert_eq!(
        get("referrer-policy").as_deref(),
        Some("no-referrer"),
        "{at}"
    );
    assert_eq!(
        get("cross-origin-opener-policy").as_deref(),
        Some("same-origin"),
        "{at}"
    );
    assert!(get("server").is_none(), "{at}: a server banner");
    // Plaintext: HSTS would be meaningless.
    assert!(get("strict-transport-security").is_none(), "{at}");
    if manage {
        assert_eq!(get("cache-control").as_deref(), Some("no-store"), "{at}");
    }
    assert!(get("x-request-id").is_some(), "{at}");
}

#[tokio::test]
async fn hardening_security_headers_on_every_response() {
    let (_mock, gw) = start("");
    let (_, _, token) = gw.project_and_token(json!({}), json!({})).await;
    let url = |p: &str| format!("{}{p}", gw.url);
    let ok = gw.chat(&token, chat_body("gpt-4o-mini")).await;
    assert_eq!(ok.status(), 200);
    assert_security_headers(&ok, false);
    let denied = gw.chat("tok-nope", chat_body("gpt-4o-mini")).await;
    assert_eq!(denied.status(), 401);
    assert_security_headers(&denied, false);
    let unknown = gw.client().post(url("/v1/nope")).send().await.unwrap();
    assert_security_headers(&unknown, false);
    let manage = gw
        .client()
        .get(url("/manage/projects"))
        .bearer_auth(MANAGEMENT_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(manage.status(), 200);
    assert_security_headers(&manage, true);
    let unauthorized = gw
        .client()
        .get(url("/manage/projects"))
        .send()
        .await
        .unwrap();
    assert_eq!(unauthorized.status(), 401);
    assert_security_headers(&unauthorized, true);
    for p in ["/health", "/ready", "/nowhere"] {
        let r = gw.client().get(url(p)).send().await.unwrap();
        assert_security_headers(&r, false);
    }
}

async fn chat_from(gw: &Gateway, token: &str, origin: &str) -> reqwest::Response {
    gw.post("/v1/chat/completions")
        .bearer_auth(token)
        .header("origin", origin)
        .json(&chat_body("gpt-4o-mini"))
        .send()
        .await
        .unwrap()
}

async fn preflight(gw: &Gateway, path: &str, origin: &str) -> reqwest::Response {
    gw.client()
        .request(reqwest::Method::OPTIONS, format!("{}{path}", gw.url))
        .header("origin", origin)
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization, content-type, x-stainless-os",
        )
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn hardening_cors_is_closed_by_default() {
    let (_mock, gw) = start("");
    let (_, _, token) = gw.project_and_token(json!({}), json!({})).await;
    let r = preflight(&gw, "/v1/chat/completions", "https://app.example.com").await;
    assert!(r.status().is_client_error(), "{}", r.status());
    assert!(r.headers().get("access-control-allow-origin").is_none());
    let r = chat_from(&gw, &token, "https://app.example.com").await;
    assert_eq!(r.status(), 200);
    assert!(r.headers().get("access-control-allow-origin").is_none());
}

#[tokio::test]
async fn hardening_cors_opens_exact_origins_only() {
    let (_mock, gw) = start(&server(
        "cors: { allowed_origins: [\"https://app.example.com\"] }",
    ));
    let (_, _, token) = gw.project_and_token(json!({}), json!({})).await;
    // A listed origin's preflight is answered without credentials.
    let r = preflight(&gw, "/v1/chat/completions", "https://app.example.com").await;
    assert!(r.status().is_success(), "{}", r.status());
    let h = r.headers();
    assert_eq!(h["access-control-allow-origin"], "https://app.example.com");
    assert!(h.get("access-control-allow-credentials").is_none());
    let methods = h["access-control-allow-methods"].to_str().unwrap();
    assert!(
        methods.contains("POST") && !methods.contains('*'),
        "{methods}"
    );
    let headers = h["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .to_lowercase();
    assert!(
        headers.contains("authorization") && !headers.contains('*'),
        "{headers}"
    );
    // The management API too, still without credentials for the preflight.
    let r = preflight(&gw, "/manage/projects", "https://app.example.com").await;
    assert!(r.status().is_success(), "{}", r.status());
    // Other origins, including look-alikes, get nothing.
    for origin in [
        "https://evil.example.com",
        "https://app.example.com.evil.com",
        "http://app.example.com",
    ] {
        let r = preflight(&gw, "/v1/chat/completions", origin).await;
        assert!(
            r.headers().get("access-control-allow-origin").is_none(),
            "{origin}"
        );
    }
    // A refused preflight is answered in the route's JSON envelope.
    for path in ["/v1/chat/completions", "/manage/projects"] {
        let r = preflight(&gw, path, "https://evil.example.com").await;
        let status = r.status().as_u16();
        let body: Value = r.json().await.unwrap();
        assert_eq!(status, 400, "{path}: {body}");
        assert_eq!(body["error"]["code"], "cors_refused", "{path}: {body}");
        assert!(body["error"]["message"].is_string(), "{path}: {body}");
    }
    let r = gw
        .client()
        .request(
            reqwest::Method::OPTIONS,
            format!("{}/v1/chat/completions", gw.url),
        )
        .header("origin", "https://app.example.com")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "x-not-allowed")
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let body: Value = r.json().await.unwrap();
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["type"], "invalid_request_error", "{body}");
    assert_eq!(body["error"]["code"], "cors_refused", "{body}");
    // The real request from the listed origin can read the answer and its headers.
    let r = chat_from(&gw, &token, "https://app.example.com").await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "https://app.example.com"
    );
    let exposed = r.headers()["access-control-expose-headers"]
        .to_str()
        .unwrap()
        .to_lowercase();
    assert!(exposed.contains("x-request-id"), "{exposed}");
}

#[tokio::test]
async fn hardening_trusted_hosts_reject_other_host_headers() {
    let (_mock, gw) = start(&server("trusted_hosts: [\"gateway.test\", \"*.gw.test\"]"));
    let with_host = |path: &str, host: &str| {
        gw.client()
            .get(format!("{}{path}", gw.url))
            .header("host", host)
            .bearer_auth(MANAGEMENT_TOKEN)
    };
    for host in ["gateway.test", "gateway.test:8080", "eu.gw.test"] {
        let r = with_host("/manage/projects", host).send().await.unwrap();
        assert_eq!(r.status(), 200, "{host}");
    }
    for host in ["evil.test", "gw.test", "gateway.test.evil.test"] {
        let r = with_host("/manage/projects", host).send().await.unwrap();
        let status = r.status().as_u16();
        let body: Value = r.json().await.unwrap();
        assert_manage_error(status, &body, 400, "invalid_host");
    }
    let r = gw
        .client()
        .post(format!("{}/v1/chat/completions", gw.url))
        .header("host", "evil.test")
        .json(&chat_body("gpt-4o-mini"))
        .send()
        .await
        .unwrap();
    let (status, body) = error_of(r).await;
    assert_proxy_error(status, &body, 400, "invalid_host");
}

#[tokio::test]
async fn hardening_global_ip_lists_deny_wins_and_probes_stay_open() {
    let (_mock, gw) = start(&server(
        "ip_allowlist: [\"127.0.0.0/8\"], ip_denylist: [\"127.0.0.1/32\"]",
    ));
    let r = gw.chat("tok-anything", chat_body("gpt-4o-mini")).await;
    let (status, body) = error_of(r).await;
    assert_proxy_error(status, &body, 403, "ip_not_allowed");
    let (status, body) = gw.manage("GET", "/manage/projects", None).await;
    assert_manage_error(status, &body, 403, "forbidden");
    let r = gw.get("/health").send().await.unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn hardening_ip_allowlist_refuses_unlisted_clients() {
    let (_mock, gw) = start(&server("ip_allowlist: [\"10.0.0.0/8\", \"::1/128\"]"));
    let (status, body) = gw.manage("GET", "/manage/projects", None).await;
    assert_manage_error(status, &body, 403, "forbidden");
    // Behind a trusted proxy, the forwarded client is the one checked.
    let (_mock2, gw2) = start(&server(
        "trusted_proxies: [\"127.0.0.1/32\"], ip_allowlist: [\"10.0.0.0/8\"]",
    ));
    let r = gw2
        .client()
        .get(format!("{}/manage/projects", gw2.url))
        .header("x-forwarded-for", "10.1.2.3")
        .bearer_auth(MANAGEMENT_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

fn host_port(gw: &Gateway) -> String {
    gw.url.trim_start_matches("http://").to_owned()
}

/// Reads until the server closes the connection; returns what it sent and when
/// it closed (or `None` if it was still open after `limit`).
fn read_until_closed(s: &mut TcpStream, limit: Duration) -> (String, Option<Duration>) {
    read_until(s, limit, |_| false)
}

/// Reads from `s` until it is closed or `done(what was read)` holds, for up to
/// `limit`; what was read, and when it ended (`None`: at the limit).
///
/// (Blocking reads inside async tests are fine here: the gateway is another
/// process, so nothing on this runtime needs to make progress meanwhile.)
fn read_until(
    s: &mut TcpStream,
    limit: Duration,
    done: impl Fn(&str) -> bool,
) -> (String, Option<Duration>) {
    let start = Instant::now();
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while start.elapsed() < limit {
        match s.read(&mut buf) {
            Ok(0) => return (String::from_utf8_lossy(&got).into(), Some(start.elapsed())),
            Ok(n) => {
                got.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&got);
                if done(&text) {
                    return (text.into(), Some(start.elapsed()));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return (String::from_utf8_lossy(&got).into(), Some(start.elapsed()));
            }
            Err(_) => {}
        }
    }
    (String::from_utf8_lossy(&got).into(), None)
}

#[tokio::test]
async fn hardening_slow_request_heads_and_idle_connections_are_cut() {
    let (_mock, gw) = start(&server("client_header_timeout: 1s, keep_alive: 1s"));
    let addr = host_port(&gw);
    // Slowloris: half a request head, then nothing.
    let mut slow = TcpStream::connect(&addr).unwrap();
    slow.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .unwrap();
    let (_, closed) = read_until_closed(&mut slow, Duration::from_secs(4));
    let closed = closed.expect("a slow request head is cut");
    assert!(
        closed >= Duration::from_millis(700) && closed < Duration::from_millis(3000),
        "cut after {closed:?}"
    );
    // Keep-alive: an idle connection after a complete exchange is closed too.
    let mut idle = TcpStream::connect(&addr).unwrap();
    idle.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let (got, closed) = read_until_closed(&mut idle, Duration::from_secs(4));
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    let closed = closed.expect("an idle keep-alive connection is closed");
    assert!(
        closed < Duration::from_millis(3000),
        "closed after {closed:?}"
    );
}

#[tokio::test]
async fn hardening_connections_beyond_the_maximum_wait_to_be_accepted() {
    let (_mock, gw) = start(&server("max_connections: 2"));
    let addr = host_port(&gw);
    // Two connections the gateway has accepted: each answered a request and is
    // kept alive.
    let held: Vec<TcpStream> = (0..2)
        .map(|_| {
            let mut s = TcpStream::connect(&addr).unwrap();
            s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
                .unwrap();
            // The `/health` body ends the answer; the connection stays open.
            let (got, _) = read_until(&mut s, WAIT, |got| got.ends_with('}'));
            assert!(got.starts_with("HTTP/1.1 200"), "{got}");
            s
        })
        .collect();
    let mut third = TcpStream::connect(&addr).unwrap();
    third
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let (got, _) = read_until_closed(&mut third, Duration::from_millis(600));
    assert!(got.is_empty(), "served beyond max_connections: {got}");
    drop(held);
    let (got, _) = read_until_closed(&mut third, Duration::from_secs(3));
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
}

#[tokio::test]
async fn hardening_oversized_or_too_many_headers_are_refused() {
    let (_mock, gw) = start("");
    let big = "a".repeat(200 * 1024);
    let r = gw
        .client()
        .get(format!("{}/health", gw.url))
        .header("x-big", big)
        .send()
        .await;
    match r {
        Ok(r) => assert_eq!(r.status(), 431),
        Err(e) => assert!(e.is_request() || e.is_connect() || e.is_body(), "{e}"),
    }
    let mut req = gw.client().get(format!("{}/health", gw.url));
    for i in 0..120 {
        req = req.header(format!("x-h-{i}"), "v");
    }
    let r = req.send().await.unwrap();
    assert!(r.status().is_client_error(), "{}", r.status());
    // Normal requests are unaffected afterwards.
    let started = Instant::now();
    let r = gw.get("/health").send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(started.elapsed() < Duration::from_secs(2));
}
