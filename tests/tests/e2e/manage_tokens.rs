//! `/manage/tokens` per SPEC §3 and the registry's guarantees: revocation before the
//! response, rotation grace, atomic quotas, counters that survive a restart.

use serde_json::{Value, json};

use crate::harness::{
    Gateway, Mock, WAIT, assert_manage_error, assert_proxy_error, chat_body, error_of, eventually,
    gateway,
};

const TOKEN_FIELDS: &[&str] = &[
    "id",
    "project_id",
    "name",
    "token_hint",
    "is_active",
    "revoked_at",
    "expires_at",
    "max_requests",
    "request_count",
    "rate_limit_rpm",
    "allowed_models",
    "allowed_cidrs",
    "last_used_at",
    "created_at",
];

/// Sends chat completions with `token` until one is not answered 200; that
/// answer's status and body.
async fn first_refusal(gw: &Gateway, token: &str, what: &str) -> (u16, Value) {
    eventually(what, WAIT, async || {
        let resp = gw.chat(token, chat_body("gpt-4o-mini")).await;
        if resp.status() == 200 {
            return None;
        }
        Some(error_of(resp).await)
    })
    .await
}

#[tokio::test]
async fn tokens_create_shows_secret_once_with_spec_fields() {
    let mock = Mock::start("up");
    let gw = gateway().provider(&mock, "[\"*\"]").start();
    let p = gw.create_project(json!({"name": "t"})).await;
    let pid = p["id"].as_str().unwrap();
    let (status, t) = gw
        .manage("POST", "/manage/tokens", Some(json!({"project_id": pid, "name": "ci", "max_requests": 10, "rate_limit_rpm": 30, "allowed_models": ["gpt-4o-mini"], "allowed_cidrs": ["127.0.0.1"]})))
        .await;
    assert_eq!(status, 201, "{t}");
    for f in TOKEN_FIELDS {
        assert!(t.get(*f).is_some(), "{f} missing: {t}");
    }
    let secret = t["token"].as_str().unwrap();
    assert!(secret.starts_with("tok-") && secret.len() == 44, "{secret}");
    assert!(secret[4..].chars().all(|c| c.is_ascii_alphanumeric()));
    assert_eq!(
        t["token_hint"],
        format!("tok-{}****{}", &secret[4..8], &secret[40..])
    );
    assert_eq!(t["allowed_cidrs"], json!(["127.0.0.1/32"]));
    assert_eq!(t["request_count"], 0);
    assert!(t["revoked_at"].is_null() && t["last_used_at"].is_null());
    // Default TTL is 30 days.
    let exp = chrono::DateTime::parse_from_rfc3339(t["expires_at"].as_str().unwrap()).unwrap();
    let days = (exp.with_timezone(&chrono::Utc) - chrono::Utc::now()).num_hours();
    assert!((29 * 24..=30 * 24).contains(&days), "{days}");

    let id = t["id"].as_str().unwrap();
    let (_, got) = gw
        .manage("GET", &format!("/manage/tokens/{id}"), None)
        .await;
    assert!(got.get("token").is_none(), "secret shown again: {got}");
    assert!(!got.to_string().contains(secret));
    let (_, list) = gw
        .manage("GET", &format!("/manage/tokens?project_id={pid}"), None)
        .await;
    assert_eq!(list["data"].as_array().unwrap().len(), 1);
    assert!(!list.to_string().contains(secret));
}

#[tokio::test]
async fn tokens_validation_and_lookup_errors() {
    let mock = Mock::start("up");
    let gw = gateway()
        .provider(&mock, "[\"*\"]")
        .yaml("tokens: { default_ttl: 1d, max_ttl: 7d, usage_flush_interval: 200ms }")
        .start();
    let pid = gw.create_project(json!({"name": "v"})).await["id"]
        .as_str()
        .unwrap()
        .to_owned();

    let (status, body) = gw
        .manage(
            "POST",
            "/manage/tokens",
            Some(json!({"project_id": "01a206c3-edcb-7513-b99e-be726adf585b"})),
        )
        .await;
    assert_manage_error(status, &body, 404, "not_found");

    let cases: Vec<(Value, &str)> = vec![
        (
            json!({"project_id": pid, "expires_in_seconds": 8 * 86400}),
            "expires_in_seconds",
        ),
        (
            json!({"project_id": pid, "expires_at": "2099-01-01T00:00:00Z"}),
            "expires_at",
        ),
        (
            json!({"project_id": pid, "expires_at": "2001-01-01T00:00:00Z"}),
            "expires_at",
        ),
        (
            json!({"project_id": pid, "expires_at": "soon"}),
            "expires_at",
        ),
        (
            json!({"project_id": pid, "expires_in_seconds": 60, "expires_at": "2099-01-01T00:00:00Z"}),
            "expires_at",
        ),
        (
            json!({"project_id": pid, "max_requests": -1}),
            "max_requests",
        ),
        (
            json!({"project_id": pid, "max_requests": "5"}),
            "max_requests",
        ),
        (json!({"project_id": "nope"}), "project_id"),
        (json!({}), "project_id"),
        (json!({"project_id": pid, "secret": "x"}), "secret"),
    ];
    for (body, field) in cases {
        let (status, resp) = gw
            .manage("POST", "/manage/tokens", Some(body.clone()))
            .await;
        assert_manage_error(status, &resp, 422, "validation_failed");
        assert!(
            resp["error"]["fields"].get(field).is_some(),
            "{body} -> {resp}"
        );
        if field == "expires_in_seconds" {
            // As configured: humantime printed `7days` (and `365d` in its months).
            assert_eq!(
                resp["error"]["fields"][field],
                "the lifetime must not exceed tokens.max_ttl (7d)"
            );
        }
    }
    // Within max_ttl is fine, and default TTL applies.
    let (status, t) = gw
        .manage(
            "POST",
            "/manage/tokens",
            Some(json!({"project_id": pid, "expires_in_seconds": 7 * 86400})),
        )
        .await;
    assert_eq!(status, 201, "{t}");

    for id in ["x", "01a206c3-edcb-7513-b99e-be726adf585b"] {
        let (status, body) = gw
            .manage("GET", &format!("/manage/tokens/{id}"), None)
            .await;
        assert_manage_error(status, &body, 404, "not_found");
        let (status, body) = gw
            .manage("POST", &format!("/manage/tokens/{id}/rotate"), None)
            .await;
        assert_manage_error(status, &body, 404, "not_found");
    }
}

#[tokio::test]
async fn tokens_expired_token_is_rejected() {
    let mock = Mock::start("up");
    let gw = gateway().provider(&mock, "[\"*\"]").start();
    let (_, _, t) = gw
        .project_and_token(json!({}), json!({"expires_in_seconds": 1}))
        .await;
    assert_eq!(gw.chat(&t, chat_body("gpt-4o-mini")).await.status(), 200);
    let (status, body) = first_refusal(&gw, &t, "the token to expire").await;
    assert_proxy_error(status, &body, 401, "token_expired");
}

#[tokio::test]
async fn tokens_revoke_applies_to_the_very_next_request() {
    let mock = Mock::start("up");
    let gw = gateway().provider(&mock, "[\"*\"]").start();
    let (_, tid, t) = gw.project_and_token(json!({}), json!({})).await;
    {
        assert_eq!(gw.chat(&t, chat_body("gpt-4o-mini")).await.status(), 200);
        let (status, _) = gw
            .manage("DELETE", &format!("/manage/tokens/{tid}"), None)
            .await;
        assert_eq!(status, 204);
        let (status, body) = error_of(gw.chat(&t, chat_body("gpt-4o-mini")).await).await;
        assert_proxy_error(status, &body, 401, "token_revoked");
        // Deleting again is idempotent; the token can be recreated only as a new one.
        let (status, _) = gw
            .manage("DELETE", &format!("/manage/tokens/{tid}"), None)
            .await;
        assert_eq!(status, 204);
        let (_, got) = gw
            .manage("GET", &format!("/manage/tokens/{tid}"), None)
            .await;
        assert!(got["revoked_at"].is_string(), "{got}");
    }
    let (status, body) = gw
        .manage("POST", &format!("/manage/tokens/{tid}/rotate"), None)
        .await;
    assert_manage_error(status, &body, 409, "conflict");
}

#[tokio::test]
async fn tokens_patch_deactivates_and_cannot_extend_expiry() {
    let mock = Mock::start("up");
    let gw = gateway().provider(&mock, "[\"*\"]").start();
    let (_, tid, t) = gw
        .project_and_token(json!({}), json!({"expires_in_seconds": 3600}))
        .await;
    let (status, p) = gw
        .manage(
            "PATCH",
            &format!("/manage/tokens/{tid}"),
            Some(json!({"is_active": false, "name": "renamed", "allowed_models": ["gpt-4o"]})),
        )
        .await;
    assert_eq!(status, 200, "{p}");
    assert_eq!(p["is_active"], false);
    assert_eq!(p["name"], "renamed");
    let (status, body) = error_of(gw.chat(&t, chat_body("gpt-4o-mini")).await).await;
    assert_proxy_error(status, &body, 401, "token_inactive");
    gw.manage(
        "PATCH",
        &format!("/manage/tokens/{tid}"),
        Some(json!({"is_active": true})),
    )
    .await;
    let (status, body) = error_of(gw.chat(&t, chat_body("gpt-4o-mini")).await).await;
    assert_proxy_error(status, &body, 403, "model_not_allowed");
    assert_eq!(gw.chat(&t, chat_body("gpt-4o")).await.status(), 200);

    let later = (chrono::Utc::now() + chrono::Duration::days(2)).to_rfc3339();
    let (status, body) = gw
        .manage(
            "PATCH",
            &format!("/manage/tokens/{tid}"),
            Some(json!({"expires_at": later})),
        )
        .await;
    assert_manage_error(status, &body, 422, "validation_failed");
    let sooner = (chrono::Utc::now() + chrono::Duration::minutes(5)).to_rfc3339();
    let (status, body) = gw
        .manage(
            "PATCH",
            &format!("/manage/tokens/{tid}"),
            Some(json!({"expires_at": sooner})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn tokens_rotate_with_grace_keeps_old_secret_until_grace_ends() {
    let mock = Mock::start("up");
    let gw = gateway().provider(&mock, "[\"*\"]").start();
    let (_, tid, old) = gw.project_and_token(json!({}), json!({})).await;
    let (status, r) = gw
        .manage(
            "POST",
            &format!("/manage/tokens/{tid}/rotate"),
            Some(json!({"grace_seconds": 2})),
        )
        .await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["id"], tid.as_str());
    let new = r["token"].as_str().unwrap().to_owned();
    assert_ne!(new, old);
    assert!(r["previous_valid_until"].is_string(), "{r}");
    assert_eq!(gw.chat(&old, chat_body("gpt-4o-mini")).await.status(), 200);
    assert_eq!(gw.chat(&new, chat_body("gpt-4o-mini")).await.status(), 200);
    let (status, body) = first_refusal(&gw, &old, "the grace period to end").await;
    assert_proxy_error(status, &body, 401, "invalid_api_key");
    assert_eq!(gw.chat(&new, chat_body("gpt-4o-mini")).await.status(), 200);

    // Without grace the old secret dies at once.
    let (_, r2) = gw
        .manage("POST", &format!("/manage/tokens/{tid}/rotate"), None)
        .await;
    let newer = r2["token"].as_str().unwrap();
    let (status, body) = error_of(gw.chat(&new, chat_body("gpt-4o-mini")).await).await;
    assert_proxy_error(status, &body, 401, "invalid_api_key");
    assert_eq!(gw.chat(newer, chat_body("gpt-4o-mini")).await.status(), 200);

    let (status, body) = gw
        .manage(
            "POST",
            &format!("/manage/tokens/{tid}/rotate"),
            Some(json!({"grace_seconds": 86401})),
        )
        .await;
    assert_manage_error(status, &body, 422, "validation_failed");
}

#[tokio::test]
async fn tokens_quota_of_five_admits_exactly_five_of_twenty_concurrent() {
    let mock = Mock::start("up");
    let gw = gateway().provider(&mock, "[\"*\"]").start();
    let (_, tid, t) = gw
        .project_and_token(json!({}), json!({"max_requests": 5}))
        .await;
    let requests = (0..20).map(|_| {
        gw.post("/v1/chat/completions")
            .bearer_auth(&t)
            .json(&chat_body("gpt-4o-mini"))
            .send()
    });
    let responses = futures_util::future::join_all(requests).await;
    let mut ok = 0;
    let mut quota = 0;
    for resp in responses {
        let resp = resp.unwrap();
        match resp.status().as_u16() {
            200 => ok += 1,
            429 => {
                assert!(
                    resp.headers().get("retry-after").is_none(),
                    "a lifetime quota never resets"
                );
                let (status, body) = error_of(resp).await;
                assert_proxy_error(status, &body, 429, "quota_exceeded");
                quota += 1;
            }
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!((ok, quota), (5, 15));
    assert_eq!(mock.count("/v1/chat/completions").await, 5);
    // The counters reach the row with the next usage flush.
    let got = gw
        .wait_for(&format!("/manage/tokens/{tid}"), |t| {
            t["request_count"] == 5 && t["last_used_at"].is_string()
        })
        .await;
    assert_eq!(got["request_count"], 5);
    assert!(got["last_used_at"].is_string());
}

#[tokio::test]
async fn tokens_request_counts_survive_a_restart() {
    let mock = Mock::start("up");
    let mut gw = gateway()
        .provider(&mock, "[\"*\"]")
        .yaml("tokens: { usage_flush_interval: 1h }")
        .start();
    let (_, tid, t) = gw
        .project_and_token(json!({}), json!({"max_requests": 3}))
        .await;
    for _ in 0..2 {
        assert_eq!(gw.chat(&t, chat_body("gpt-4o-mini")).await.status(), 200);
    }
    // The flush interval is an hour: only the shutdown flush can have written them.
    gw.restart();
    let (_, got) = gw
        .manage("GET", &format!("/manage/tokens/{tid}"), None)
        .await;
    assert_eq!(got["request_count"], 2, "{got}");
    assert_eq!(gw.chat(&t, chat_body("gpt-4o-mini")).await.status(), 200);
    let (status, body) = error_of(gw.chat(&t, chat_body("gpt-4o-mini")).await).await;
    assert_proxy_error(status, &body, 429, "quota_exceeded");
}
