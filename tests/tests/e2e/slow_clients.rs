//! Slow and broken clients over raw TCP (docs/slow-clients.md): a second request
//! head dripped on a keep-alive connection and a dripped body are cut at their
//! timeouts with a 408 JSON answer; one address holding many slow connections
//! is capped (`server.max_connections_per_ip`) and cannot make `/health`
//! unreachable; a malformed request line gets a JSON 400 with a request id and
//! is not logged at ERROR.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;

use crate::harness::{Gateway, MANAGEMENT_TOKEN, gateway, start};

const JWT_SECRET: &str = "jwt-secret-for-e2e-0123456789abcdef-xyz";
/// Drip cadence: well under every timeout below, so only a total deadline cuts.
const DRIP: Duration = Duration::from_millis(250);

fn addr(gw: &Gateway) -> SocketAddr {
    gw.url.trim_start_matches("http://").parse().unwrap()
}

/// A connection from a chosen loopback address (127.0.0.x all reach the gateway).
async fn connect_from(gw: &Gateway, local: &str) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{local}:0").parse().unwrap()).unwrap();
    socket.connect(addr(gw)).await.unwrap()
}

struct Answer {
    status: u16,
    head: String,
    body: Value,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// Reads one response (head and `content-length` body); `None` when the
/// connection ends (or is reset) first.
async fn read_answer<R: AsyncRead + Unpin>(s: &mut R) -> Option<Answer> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let status = head.get(9..12)?.parse().ok()?;
    let mut answer = Answer {
        status,
        head,
        body: Value::Null,
    };
    let len: usize = answer.header("content-length")?.parse().ok()?;
    while buf.len() < end + len {
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    answer.body = serde_json::from_slice(&buf[end..end + len]).unwrap_or(Value::Null);
    Some(answer)
}

/// Drips `bytes` one at a time while waiting for the answer; returns it and how
/// long after the first byte it came. Fails if the connection is still open after
/// `give_up`.
async fn drip_until_answered(
    s: TcpStream,
    bytes: &[u8],
    give_up: Duration,
) -> (Option<Answer>, Duration) {
    let (mut rd, mut wr) = s.into_split();
    let bytes = bytes.to_vec();
    let started = Instant::now();
    let drip = async move {
        for b in bytes {
            if wr.write_all(&[b]).await.is_err() {
                return;
            }
            tokio::time::sleep(DRIP).await;
        }
        // Keep the write half open: ending it would end the request.
        std::future::pending::<()>().await;
    };
    let answer = async {
        let a = read_answer(&mut rd).await;
        // Then the gateway closes the connection.
        let mut rest = [0u8; 64];
        while matches!(rd.read(&mut rest).await, Ok(n) if n > 0) {}
        a
    };
    let got = tokio::time::timeout(give_up, async {
        tokio::select! {
            a = answer => a,
            () = drip => unreachable!(),
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the connection was still open after {give_up:?}"));
    (got, started.elapsed())
}

fn assert_timed_out(answer: Option<Answer>, took: Duration, timeout: Duration) -> Answer {
    assert!(
        took >= timeout - Duration::from_millis(100),
        "cut too early: {took:?}"
    );
    let a = answer.expect("a 408 answer before the close");
    assert_eq!(a.status, 408, "{}\n{}", a.head, a.body);
    assert_eq!(a.body["error"]["code"], "request_timeout", "{}", a.body);
    assert!(a.header("x-request-id").is_some(), "{}", a.head);
    assert!(
        a.header("content-type")
            .is_some_and(|v| v.starts_with("application/json")),
        "{}",
        a.head
    );
    a
}

#[tokio::test]
async fn slow_clients_second_head_on_keep_alive_is_cut_at_header_timeout() {
    let (_mock, gw) = start(
        "server: { listen: \"127.0.0.1:0\", workers: 1, shutdown_grace: 5s, client_header_timeout: 1500ms, keep_alive: 30s }\n",
    );
    let mut s = TcpStream::connect(addr(&gw)).await.unwrap();
    s.write_all(b"GET /health HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    let first = read_answer(&mut s).await.expect("the first answer");
    assert_eq!(first.status, 200, "{}", first.head);
    // Idle keep-alive time is not head time.
    tokio::time::sleep(Duration::from_millis(1_800)).await;
    let timeout = Duration::from_millis(1_500);
    let (answer, took) = drip_until_answered(
        s,
        b"GET /health HTTP/1.1\r\nhost: 127.0.0.1\r\nx-padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n",
        timeout * 4,
    )
    .await;
    let a = assert_timed_out(answer, took, timeout);
    assert_eq!(
        a.body["error"]["type"], "invalid_request_error",
        "{}",
        a.body
    );
}

/// Sends a request head with `content-length: 200`, drips the body and expects
/// a 408 in time.
async fn slow_body(gw: &Gateway, head: &str, timeout: Duration) -> Answer {
    let mut s = TcpStream::connect(addr(gw)).await.unwrap();
    s.write_all(format!("{head}content-type: application/json\r\ncontent-length: 200\r\nhost: 127.0.0.1\r\n\r\n{{").as_bytes())
        .await
        .unwrap();
    let (answer, took) = drip_until_answered(s, &[b' '; 199], timeout * 4).await;
    assert_timed_out(answer, took, timeout)
}

#[tokio::test]
async fn slow_clients_slow_body_is_cut_at_body_timeout_with_408_json() {
    let mock = crate::harness::Mock::start("up");
    let gw = gateway()
        .provider(&mock, "[\"*\"]")
        .yaml(&format!(
            "server: {{ listen: \"127.0.0.1:0\", workers: 2, shutdown_grace: 5s, client_body_timeout: 1500ms }}\n\
             auth: {{ management_token: \"${{E2E_MANAGEMENT_TOKEN}}\", encryption_key: \"${{E2E_ENCRYPTION_KEY}}\", jwt_secret: \"{JWT_SECRET}\", bcrypt_cost: 4 }}\n"
        ))
        .start();
    let (_, _, token) = gw.project_and_token(json!({}), json!({})).await;
    let timeout = Duration::from_millis(1_500);

    let v1 = slow_body(
        &gw,
        &format!("POST /v1/chat/completions HTTP/1.1\r\nauthorization: Bearer {token}\r\n"),
        timeout,
    )
    .await;
    // The OpenAI envelope on /v1.
    assert_eq!(
        v1.body["error"]["type"], "invalid_request_error",
        "{}",
        v1.body
    );
    assert!(v1.body["error"].get("param").is_some(), "{}", v1.body);

    let manage = slow_body(
        &gw,
        &format!("POST /manage/projects HTTP/1.1\r\nauthorization: Bearer {MANAGEMENT_TOKEN}\r\n"),
        timeout,
    )
    .await;
    assert_eq!(
        manage.body,
        json!({ "error": { "message": "the request body was not received in time", "code": "request_timeout" } })
    );

    // No credentials needed to hold a login open: the deadline applies there too.
    let login = slow_body(&gw, "POST /manage/auth/login HTTP/1.1\r\n", timeout).await;
    assert_eq!(
        login.body["error"]["code"], "request_timeout",
        "{}",
        login.body
    );
    assert_eq!(
        gw.metric("palisade_client_errors_total{reason=\"body_timeout\"}")
            .await,
        3.0
    );
}

#[tokio::test]
async fn slow_clients_many_slow_connections_from_one_ip_leave_health_reachable() {
    // The reproduction's `max_connections: 50`, one worker: 200 slow heads from
    // one address used to take every slot.
    let (_mock, gw) = start(
        "server: { listen: \"127.0.0.1:0\", workers: 1, shutdown_grace: 5s, max_connections: 50, max_connections_per_ip: 40, client_header_timeout: 60s }\n",
    );
    let mut slow = Vec::new();
    for _ in 0..200 {
        let mut s = connect_from(&gw, "127.0.0.1").await;
        let _ = s.write_all(b"GET /health HTTP/1.1\r\nhost: 127").await;
        slow.push(s);
    }
    // Over the cap, a connection is refused at once (503 JSON, or a reset if
    // the request crossed the refusal), never held. (Connections complete in the
    // kernel before the gateway accepts them: poll until it caught up.)
    let (mut refused, mut answered_503) = (0, 0);
    let deadline = Instant::now() + Duration::from_secs(10);
    while slow.len() > 40 && Instant::now() < deadline {
        let mut open = Vec::new();
        for mut s in slow {
            match tokio::time::timeout(Duration::from_millis(20), read_answer(&mut s)).await {
                Ok(Some(a)) => {
                    assert_eq!(a.status, 503, "{}", a.head);
                    assert_eq!(
                        a.body["error"]["code"], "too_many_connections",
                        "{}",
                        a.body
                    );
                    answered_503 += 1;
                    refused += 1;
                }
                Ok(None) => refused += 1,
                Err(_) => open.push(s),
            }
        }
        slow = open;
    }
    assert_eq!(
        (slow.len(), refused),
        (40, 160),
        "40 held, the rest refused ({answered_503} with a 503)"
    );
    // Another client is served while those 40 are held.
    let mut other = connect_from(&gw, "127.0.0.2").await;
    other
        .write_all(b"GET /health HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    let health = tokio::time::timeout(Duration::from_secs(5), read_answer(&mut other))
        .await
        .expect("/health answered while one address holds slow connections")
        .expect("an answer");
    assert_eq!(health.status, 200, "{}", health.head);
    drop(slow);
    // The held connections close with their sockets; refusals were counted.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = gw
            .get("/metrics")
            .bearer_auth(MANAGEMENT_TOKEN)
            .send()
            .await;
        if let Ok(r) = r {
            let text = r.text().await.unwrap();
            let line = text
                .lines()
                .find(|l| l.starts_with("palisade_connections_refused_total{reason=\"per_ip\"}"));
            if let Some(line) = line {
                let n: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
                assert!(n >= 160.0, "{line}");
                break;
            }
        }
        assert!(Instant::now() < deadline, "no per_ip refusals in /metrics");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn slow_clients_malformed_request_line_gets_json_400_not_an_error_log() {
    let (_mock, gw) = start("");
    for _ in 0..20 {
        let mut s = TcpStream::connect(addr(&gw)).await.unwrap();
        s.write_all(b"GARBAGE\x01 NOT HTTP\r\n\r\n").await.unwrap();
        let a = read_answer(&mut s)
            .await
            .expect("an answer to a malformed request");
        assert_eq!(a.status, 400, "{}", a.head);
        assert_eq!(a.body["error"]["code"], "malformed_request", "{}", a.body);
        assert!(
            a.header("x-request-id").is_some_and(|v| !v.is_empty()),
            "{}",
            a.head
        );
        assert_eq!(a.header("connection"), Some("close"), "{}", a.head);
    }
    // Logged at WARN, once a second at most, never at ERROR.
    let logs = gw.logs();
    let warned = logs
        .lines()
        .filter(|l| l.contains("request refused by the HTTP parser"))
        .collect::<Vec<_>>();
    assert!(!warned.is_empty() && warned.len() < 20, "{logs}");
    assert!(
        warned.iter().all(|l| l.contains("\"level\":\"WARN\"")),
        "{logs}"
    );
    assert!(!logs.contains("\"level\":\"ERROR\""), "{logs}");
    assert_eq!(
        gw.metric("palisade_client_errors_total{reason=\"malformed_request\"}")
            .await,
        20.0
    );
}

/// Over TLS the guard sits above the TLS stream: the 408 goes out encrypted.
#[tokio::test]
async fn slow_clients_second_head_over_tls_is_cut_with_408() {
    use std::io::{Read, Write};
    crate::harness::init();
    let certs = tempfile::tempdir().unwrap();
    let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
    std::fs::write(certs.path().join("gw.crt"), ck.cert.pem()).unwrap();
    std::fs::write(certs.path().join("gw.key"), ck.signing_key.serialize_pem()).unwrap();
    let (_mock, gw) = start(&format!(
        "server: {{ listen: \"127.0.0.1:0\", workers: 1, shutdown_grace: 5s, client_header_timeout: 1500ms, tls: {{ cert_file: \"{0}/gw.crt\", key_file: \"{0}/gw.key\" }} }}\n",
        certs.path().display()
    ));
    let addr: SocketAddr = gw.url.trim_start_matches("https://").parse().unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ck.cert.der().clone()).unwrap();
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let timeout = Duration::from_millis(1_500);
    let (got, took) = tokio::task::spawn_blocking(move || {
        let tcp = std::net::TcpStream::connect(addr).unwrap();
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
        let conn = rustls::ClientConnection::new(std::sync::Arc::new(config), name).unwrap();
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        tls.write_all(b"GET /health HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n")
            .unwrap();
        let mut first = [0u8; 4096];
        let n = tls.read(&mut first).unwrap();
        assert!(first[..n].starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&first[..n]));
        // Drip the next head; the read timeout is the drip cadence.
        tls.sock.set_read_timeout(Some(DRIP)).unwrap();
        let head = b"GET /health HTTP/1.1\r\nhost: 127.0.0.1\r\nx-padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
        let started = Instant::now();
        let mut got = Vec::new();
        for b in head.iter().chain(std::iter::repeat(&b' ')) {
            let _ = tls.write_all(&[*b]);
            let mut buf = [0u8; 4096];
            match tls.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                Err(_) => break,
            }
            assert!(started.elapsed() < timeout * 4, "the connection was still open");
        }
        (String::from_utf8_lossy(&got).into_owned(), started.elapsed())
    })
    .await
    .unwrap();
    assert!(
        took >= timeout - Duration::from_millis(100),
        "cut too early: {took:?}"
    );
    assert!(got.starts_with("HTTP/1.1 408 Request Timeout\r\n"), "{got}");
    assert!(got.contains("\"code\":\"request_timeout\""), "{got}");
}
