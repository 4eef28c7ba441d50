//! TLS termination: served over rustls with HSTS, `server.tls.min_version`
//! enforced against a client that offers less, and start-up refusing a key that
//! does not belong to its certificate.

use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::json;

use crate::harness::{Gateway, chat_body, palisade_bin, start};

/// Writes a self-signed certificate for 127.0.0.1 and its key; returns the PEM of
/// the certificate (for the client to trust).
fn write_cert(dir: &Path, name: &str) -> String {
    let ck =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .unwrap();
    let cert = ck.cert.pem();
    std::fs::write(dir.join(format!("{name}.crt")), &cert).unwrap();
    std::fs::write(
        dir.join(format!("{name}.key")),
        ck.signing_key.serialize_pem(),
    )
    .unwrap();
    cert
}

fn tls_client(cert_pem: &str, max: Option<reqwest::tls::Version>) -> reqwest::Client {
    crate::harness::init();
    let mut b = reqwest::Client::builder()
        .no_proxy()
        .tls_certs_only([reqwest::Certificate::from_pem(cert_pem.as_bytes()).unwrap()]);
    if let Some(v) = max {
        b = b.tls_version_max(v);
    }
    b.build().unwrap()
}

fn tls_gateway(min_version: &str) -> (tempfile::TempDir, String, crate::harness::Mock, Gateway) {
    let certs = tempfile::tempdir().unwrap();
    let pem = write_cert(certs.path(), "gw");
    let (mock, gw) = start(&format!(
        "server: {{ listen: \"127.0.0.1:0\", workers: 1, shutdown_grace: 5s, tls: {{ cert_file: \"{0}/gw.crt\", key_file: \"{0}/gw.key\", min_version: \"{min_version}\" }} }}",
        certs.path().display()
    ));
    (certs, pem, mock, gw)
}

#[tokio::test]
async fn tls_serves_https_with_hsts_and_proxies() {
    let (_certs, pem, _mock, gw) = tls_gateway("1.2");
    assert!(gw.url.starts_with("https://"), "{}", gw.url);
    let client = tls_client(&pem, None);
    let r = client
        .get(format!("{}/health", gw.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["strict-transport-security"]
            .to_str()
            .unwrap()
            .starts_with("max-age="),
    );
    // TLS 1.2 is accepted at min_version 1.2.
    let old = tls_client(&pem, Some(reqwest::tls::Version::TLS_1_2));
    let r = old.get(format!("{}/health", gw.url)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    // The management API and the proxy work over it.
    let p = client
        .post(format!("{}/manage/projects", gw.url))
        .bearer_auth(crate::harness::MANAGEMENT_TOKEN)
        .json(&json!({ "name": "tls" }))
        .send()
        .await
        .unwrap();
    assert_eq!(p.status(), 201);
    let pid = p.json::<serde_json::Value>().await.unwrap()["id"].clone();
    let t: serde_json::Value = client
        .post(format!("{}/manage/tokens", gw.url))
        .bearer_auth(crate::harness::MANAGEMENT_TOKEN)
        .json(&json!({ "project_id": pid }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let r = client
        .post(format!("{}/v1/chat/completions", gw.url))
        .bearer_auth(t["token"].as_str().unwrap())
        .json(&chat_body("gpt-4o-mini"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn tls_min_version_refuses_older_clients() {
    let (_certs, pem, _mock, gw) = tls_gateway("1.3");
    let old = tls_client(&pem, Some(reqwest::tls::Version::TLS_1_2));
    let err = old
        .get(format!("{}/health", gw.url))
        .send()
        .await
        .expect_err("a TLS 1.2-only client must be refused at min_version 1.3");
    assert!(err.is_connect() || err.is_request(), "{err}");
    let ok = tls_client(&pem, None);
    let r = ok.get(format!("{}/health", gw.url)).send().await.unwrap();
    assert_eq!(r.status(), 200);
}

#[test]
fn tls_start_up_refuses_a_key_of_another_certificate() {
    let dir = tempfile::tempdir().unwrap();
    write_cert(dir.path(), "a");
    write_cert(dir.path(), "b");
    let config = dir.path().join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "server: {{ listen: \"127.0.0.1:0\", tls: {{ cert_file: \"{0}/a.crt\", key_file: \"{0}/b.key\" }} }}\n\
             database: {{ url: \"sqlite::memory:\" }}\naudit: {{ file: \"\" }}\n\
             auth: {{ management_token: \"{1}\" }}\n\
             providers: [{{ name: a, base_url: \"http://127.0.0.1:9/v1\", health_check: {{ enabled: false }} }}]\n",
            dir.path().display(),
            crate::harness::MANAGEMENT_TOKEN
        ),
    )
    .unwrap();
    let out = Command::new(palisade_bin())
        .args(["serve", "--config"])
        .arg(&config)
        .stdout(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(
        stderr.contains("a.crt") && stderr.contains("b.key"),
        "{stderr}"
    );
}
