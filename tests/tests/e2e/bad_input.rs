//! Hostile and malformed input against every route: always a clear 4xx in the
//! route's envelope, never a 5xx, never a panic.

use serde_json::{Value, json};

use crate::harness::{MANAGEMENT_TOKEN, Mock, assert_manage_error, gateway};

fn assert_envelope(route: &str, status: u16, body: &str) {
    assert!(
        (400..500).contains(&status),
        "{route}: status {status}: {body}"
    );
    let v: Value =
        serde_json::from_str(body).unwrap_or_else(|_| panic!("{route}: not JSON: {body}"));
    assert!(
        v["error"]["code"].is_string(),
        "{route}: no error code: {body}"
    );
    assert!(
        v["error"]["message"].is_string(),
        "{route}: no message: {body}"
    );
}

#[tokio::test]
async fn bad_input_never_yields_5xx_or_panics() {
    let mock = Mock::start("up");
    let gw = gateway()
        .provider(&mock, "[\"*\"]")
        .yaml("auth: { management_token: \"${E2E_MANAGEMENT_TOKEN}\", jwt_secret: \"bad-input-jwt-secret-0123456789abcdef\", bcrypt_cost: 4 }\nrate_limits: { auth_failures_per_minute: 0, auth_per_ip_rpm: 100000 }")
        .start();
    let (pid, tid, t) = gw.project_and_token(json!({}), json!({})).await;
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let huge = format!("{{\"name\": \"{}\"}}", "x".repeat(60_000));
    let bodies: Vec<Vec<u8>> = vec![
        b"{".to_vec(),
        b"null".to_vec(),
        b"[]".to_vec(),
        b"\"str\"".to_vec(),
        deep.clone().into_bytes(),
        huge.into_bytes(),
        vec![0xff, 0xfe, 0x00, 0x7b],
        br#"{"name": 5, "description": [], "is_active": "yes", "allowed_models": "gpt", "allowed_cidrs": [1], "rate_limit_rpm": 1e309}"#.to_vec(),
        br#"{"name": "'; DROP TABLE projects; --", "rate_limit_rpm": 99999999999999999999}"#.to_vec(),
        br#"{"project_id": "../../etc/passwd", "max_requests": -5, "expires_in_seconds": 1e3}"#.to_vec(),
        br#"{"grace_seconds": -1}"#.to_vec(),
        br#"{"grace_seconds": 18446744073709551616}"#.to_vec(),
        br#"{"username": "' OR 1=1 --", "password": 123, "role": ["admin"]}"#.to_vec(),
        br#"{"username": "a", "password": "x", "refresh_token": {"$ne": null}}"#.to_vec(),
    ];
    let manage_routes = [
        ("POST", "/manage/projects".to_owned()),
        ("PATCH", format!("/manage/projects/{pid}")),
        ("POST", "/manage/tokens".to_owned()),
        ("PATCH", format!("/manage/tokens/{tid}")),
        ("POST", format!("/manage/tokens/{tid}/rotate")),
        ("POST", "/manage/users".to_owned()),
        ("POST", "/manage/auth/login".to_owned()),
        ("POST", "/manage/auth/refresh".to_owned()),
    ];
    let c = gw.client();
    for (method, path) in &manage_routes {
        for body in &bodies {
            let resp = c
                .request(method.parse().unwrap(), format!("{}{path}", gw.url))
                .bearer_auth(MANAGEMENT_TOKEN)
                .header("content-type", "application/json")
                .body(body.clone())
                .send()
                .await
                .unwrap();
            let status = resp.status().as_u16();
            let text = resp.text().await.unwrap();
            assert_envelope(&format!("{method} {path}"), status, &text);
        }
    }
    for path in [
        "/manage/projects/%00",
        "/manage/tokens/..%2F..%2F",
        "/manage/projects/' OR 1=1 --",
        "/manage/tokens?limit=-1",
        "/manage/tokens?limit=99999999999999999999999",
        "/manage/projects?cursor=%FF%FE",
        "/manage/audit?since=yesterday&until=%00",
        "/manage/audit?project_id=../../x&result=maybe&limit=0",
        "/manage/usage?group_by=';--&since=9999999999999999999",
        "/manage/usage?token_id=not-a-uuid",
        "/manage/providers/../../etc/passwd",
        "/manage/users/not-a-uuid",
        "/manage/users?limit=-3",
    ] {
        let resp = c
            .get(format!("{}{path}", gw.url))
            .bearer_auth(MANAGEMENT_TOKEN)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        assert_envelope(path, status, &resp.text().await.unwrap());
    }
    for body in &bodies {
        let resp = gw
            .post("/v1/chat/completions")
            .bearer_auth(&t)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        assert_envelope(
            "POST /v1/chat/completions",
            status,
            &resp.text().await.unwrap(),
        );
    }
    // Garbage credentials of every shape.
    for key in [
        "tok-",
        "tok-\u{7f}",
        &"tok-a".repeat(2000),
        "Bearer",
        "tok-🦀",
    ] {
        let resp = gw
            .post("/v1/chat/completions")
            .header("x-api-key", key.as_bytes())
            .json(&json!({"model": "m"}))
            .send()
            .await;
        if let Ok(resp) = resp {
            let status = resp.status().as_u16();
            assert_envelope("x-api-key", status, &resp.text().await.unwrap());
        }
    }
    let logs = gw.logs();
    assert!(!logs.contains("panicked"), "{logs}");
    assert!(!logs.contains("\"level\":\"ERROR\""), "{logs}");
}

/// Names (projects, tokens, users) refuse control characters and invisible
/// format characters, with the field named; a plain Unicode name is accepted.
#[tokio::test]
async fn bad_input_names_refuse_control_and_invisible_characters() {
    let mock = Mock::start("up");
    let gw = gateway().provider(&mock, "[\"*\"]").yaml("auth: { management_token: \"${E2E_MANAGEMENT_TOKEN}\", jwt_secret: \"bad-input-jwt-secret-0123456789abcdef\", bcrypt_cost: 4 }").start();
    let (pid, tid, _) = gw.project_and_token(json!({}), json!({})).await;
    let bad = [
        "zero\u{200B}width",
        "non\u{200C}joiner",
        "joi\u{200D}ner",
        "word\u{2060}joiner",
        "\u{FEFF}bom",
        "bidi\u{202E}override",
        "iso\u{2066}late\u{2069}",
        "bell\u{0007}",
        "new\nline",
    ];
    for name in bad {
        for (method, path, body, field) in [
            (
                "POST",
                "/manage/projects".to_owned(),
                json!({ "name": name }),
                "name",
            ),
            (
                "PATCH",
                format!("/manage/projects/{pid}"),
                json!({ "name": name }),
                "name",
            ),
            (
                "POST",
                "/manage/tokens".to_owned(),
                json!({ "project_id": pid, "name": name }),
                "name",
            ),
            (
                "PATCH",
                format!("/manage/tokens/{tid}"),
                json!({ "name": name }),
                "name",
            ),
            (
                "POST",
                "/manage/users".to_owned(),
                json!({ "username": name, "password": "a long enough password", "role": "viewer" }),
                "username",
            ),
        ] {
            let (status, body) = gw.manage(method, &path, Some(body)).await;
            assert_manage_error(status, &body, 422, "validation_failed");
            assert!(
                body["error"]["fields"][field].is_string(),
                "{method} {path} {name:?}: {body}"
            );
        }
    }
    let (status, body) = gw
        .manage(
            "POST",
            "/manage/projects",
            Some(json!({ "name": "caf\u{e9} \u{4e2d}\u{6587} 1" })),
        )
        .await;
    assert_eq!(status, 201, "{body}");
}

/// `/manage` refuses a body that repeats a key, as `/v1` does: 400
/// `invalid_json` in the manage envelope, and nothing is created.
#[tokio::test]
async fn bad_input_manage_refuses_duplicate_json_keys() {
    let mock = Mock::start("up");
    let gw = gateway().provider(&mock, "[\"*\"]").start();
    let c = gw.client();
    for body in [
        r#"{"name":"first","name":"second"}"#,
        r#"{"name":"ok","allowed_cidrs":["10.0.0.0/8"],"description":"a","description":"b"}"#,
    ] {
        let resp = c
            .post(format!("{}/manage/projects", gw.url))
            .bearer_auth(MANAGEMENT_TOKEN)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let v: Value = resp.json().await.unwrap();
        assert_manage_error(status, &v, 400, "invalid_json");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("duplicate key"),
            "{v}"
        );
    }
    let (status, list) = gw.manage("GET", "/manage/projects", None).await;
    assert_eq!(status, 200);
    assert_eq!(list["data"].as_array().map(Vec::len), Some(0), "{list}");
}
