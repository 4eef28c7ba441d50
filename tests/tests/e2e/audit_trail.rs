//! The audit trail (SPEC §3): one event per management action, denials, filters,
//! pagination, and the JSON-lines copy.

use sea_orm::sqlx::Connection;
use serde_json::{Value, json};

use crate::harness::{Mock, assert_manage_error, chat_body, gateway, setup};

fn events(body: &Value) -> &Vec<Value> {
    body["data"].as_array().unwrap()
}

#[tokio::test]
async fn audit_each_management_action_records_exactly_one_event() {
    let mock = Mock::start("up");
    let gw = gateway().provider(&mock, "[\"*\"]").start();
    let p = gw
        .create_project(json!({"name": "audited", "upstream_api_key": "sk-never-logged"}))
        .await;
    let pid = p["id"].as_str().unwrap().to_owned();
    gw.manage(
        "PATCH",
        &format!("/manage/projects/{pid}"),
        Some(json!({"description": "d"})),
    )
    .await;
    let (tid, _) = gw.create_token(&pid, json!({"name": "t"})).await;
    gw.manage(
        "PATCH",
        &format!("/manage/tokens/{tid}"),
        Some(json!({"max_requests": 9})),
    )
    .await;
    gw.manage(
        "POST",
        &format!("/manage/tokens/{tid}/rotate"),
        Some(json!({"grace_seconds": 5})),
    )
    .await;
    gw.manage("DELETE", &format!("/manage/tokens/{tid}"), None)
        .await;
    gw.manage(
        "POST",
        &format!("/manage/projects/{pid}/tokens/revoke"),
        None,
    )
    .await;
    gw.manage("DELETE", &format!("/manage/projects/{pid}"), None)
        .await;

    let expected = [
        ("project.create", true),
        ("project.update", true),
        ("token.create", false),
        ("token.update", false),
        ("token.rotate", false),
        ("token.revoke", false),
        ("project.tokens_revoke", true),
        ("project.delete", true),
    ];
    let all = gw
        .wait_for("/manage/audit?limit=500", |b| {
            events(b).len() >= expected.len()
        })
        .await;
    assert_eq!(events(&all).len(), expected.len(), "{all}");
    // Newest first.
    let actions: Vec<&str> = events(&all)
        .iter()
        .rev()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        expected.iter().map(|(a, _)| *a).collect::<Vec<_>>()
    );
    for e in events(&all) {
        assert_eq!(e["actor"], "management-token", "{e}");
        assert_eq!(e["result"], "success", "{e}");
        assert_eq!(e["project_id"], pid.as_str(), "{e}");
        assert_eq!(e["client_ip"], "127.0.0.1", "{e}");
        assert!(e["request_id"].is_string(), "{e}");
        let is_token_action = e["action"].as_str().unwrap().starts_with("token.");
        if is_token_action {
            assert_eq!(e["token_id"], tid.as_str(), "{e}");
            assert!(e["token_hint"].as_str().unwrap().contains("****"), "{e}");
        }
    }
    let update = events(&all)
        .iter()
        .find(|e| e["action"] == "project.update")
        .unwrap();
    assert_eq!(update["details"]["before"]["description"], Value::Null);
    assert_eq!(update["details"]["after"]["description"], "d");
    assert!(!all.to_string().contains("sk-never-logged"));

    // The JSON-lines file holds the same events.
    let ids_in = |file: &str| -> Vec<String> {
        file.lines()
            .map(|l| {
                serde_json::from_str::<Value>(l).unwrap()["id"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect()
    };
    let all_in_file = |file: &str| {
        let ids = ids_in(file);
        events(&all)
            .iter()
            .all(|e| ids.iter().any(|id| e["id"] == id.as_str()))
    };
    let file = gw.wait_for_file("data/audit.jsonl", all_in_file).await;
    let ids = ids_in(&file);
    for e in events(&all) {
        assert!(
            ids.contains(&e["id"].as_str().unwrap().to_owned()),
            "{e} missing from the file"
        );
    }
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(gw.dir.path().join("data/audit.jsonl"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
}

#[tokio::test]
async fn audit_failures_denials_filters_and_pages() {
    let (_mock, gw, t) = setup().await;
    // A failed action is still one event, with result failure.
    gw.create_project(json!({"name": "dup"})).await;
    let (status, body) = gw
        .manage("POST", "/manage/projects", Some(json!({"name": "dup"})))
        .await;
    assert_manage_error(status, &body, 409, "conflict");
    // Bad management credentials.
    gw.client()
        .get(format!("{}/manage/projects", gw.url))
        .bearer_auth("nope")
        .send()
        .await
        .unwrap();
    // Proxy denials: unknown key and a model outside the allowlist.
    gw.chat("tok-unknown", chat_body("gpt-4o-mini")).await;
    let (_, tid, limited) = gw
        .project_and_token(json!({}), json!({"allowed_models": ["gpt-4o"]}))
        .await;
    gw.chat(&limited, chat_body("gpt-4o-mini")).await;
    assert_eq!(gw.chat(&t, chat_body("gpt-4o-mini")).await.status(), 200);

    let failed = gw
        .wait_for("/manage/audit?action=project.create&result=failure", |b| {
            !events(b).is_empty()
        })
        .await;
    assert_eq!(events(&failed).len(), 1);
    assert_eq!(events(&failed)[0]["details"]["error"], "conflict");
    let auth = gw
        .wait_for("/manage/audit?action=auth.failure", |b| {
            !events(b).is_empty()
        })
        .await;
    assert_eq!(events(&auth)[0]["result"], "denied");
    let denied = gw
        .wait_for("/manage/audit?action=proxy.denied", |b| {
            events(b).len() >= 2
        })
        .await;
    let reasons: Vec<&str> = events(&denied)
        .iter()
        .map(|e| e["details"]["reason"].as_str().unwrap())
        .collect();
    assert_eq!(reasons, vec!["model_not_allowed", "invalid_api_key"]);
    let by_token = gw
        .wait_for(
            &format!("/manage/audit?action=proxy.denied&token_id={tid}"),
            |b| !events(b).is_empty(),
        )
        .await;
    assert_eq!(events(&by_token).len(), 1);
    assert!(
        events(&by_token)[0]["token_hint"]
            .as_str()
            .unwrap()
            .starts_with("tok-")
    );

    // Pagination, newest first, no overlaps.
    let mut seen = Vec::new();
    let mut cursor = String::new();
    loop {
        let (_, page) = gw
            .manage("GET", &format!("/manage/audit?limit=2{cursor}"), None)
            .await;
        seen.extend(
            events(&page)
                .iter()
                .map(|e| e["id"].as_str().unwrap().to_owned()),
        );
        match page["next_cursor"].as_str() {
            Some(c) => cursor = format!("&cursor={c}"),
            None => break,
        }
    }
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.reverse();
    sorted.dedup();
    assert_eq!(seen, sorted);
    let since = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let (_, none) = gw
        .manage(
            "GET",
            &format!("/manage/audit?since={}", urlencode(&since)),
            None,
        )
        .await;
    assert!(events(&none).is_empty());
    for bad in [
        "action=nope",
        "result=maybe",
        "since=yesterday",
        "token_id=x",
    ] {
        let (status, body) = gw
            .manage("GET", &format!("/manage/audit?{bad}"), None)
            .await;
        assert_manage_error(status, &body, 422, "validation_failed");
    }
}

fn urlencode(s: &str) -> String {
    s.replace('+', "%2B").replace(':', "%3A")
}

/// A token Palisade recognised but refused (revoked, deactivated) is denied in
/// its own name: an operator finds who still uses it by `token_id`.
#[tokio::test]
async fn audit_refused_known_tokens_are_denied_with_their_identity() {
    let mock = Mock::start("up");
    let gw = gateway().provider(&mock, "[\"*\"]").start();
    let (pid, revoked_id, revoked) = gw.project_and_token(json!({}), json!({})).await;
    let (inactive_id, inactive) = gw.create_token(&pid, json!({})).await;
    let (status, _) = gw
        .manage("DELETE", &format!("/manage/tokens/{revoked_id}"), None)
        .await;
    assert_eq!(status, 204);
    let (status, body) = gw
        .manage(
            "PATCH",
            &format!("/manage/tokens/{inactive_id}"),
            Some(json!({"is_active": false})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    for (id, secret, reason) in [
        (&revoked_id, &revoked, "token_revoked"),
        (&inactive_id, &inactive, "token_inactive"),
    ] {
        assert_eq!(
            gw.chat(secret, chat_body("gpt-4o-mini")).await.status(),
            401
        );
        let found = gw
            .wait_for(
                &format!("/manage/audit?action=proxy.denied&token_id={id}"),
                |b| !events(b).is_empty(),
            )
            .await;
        let e = &events(&found)[0];
        assert_eq!(e["actor"], format!("token:{id}"), "{e}");
        assert_eq!(e["project_id"], pid.as_str(), "{e}");
        assert!(e["token_hint"].as_str().unwrap().starts_with("tok-"), "{e}");
        assert_eq!(e["details"]["reason"], reason, "{e}");
        assert_eq!(e["result"], "denied", "{e}");
    }
}

/// SPEC §5: `server.instance_id` is recorded as `instance` on the audit events (API
/// and JSON lines) and the usage records this instance writes; by default it is the
/// host name.
#[tokio::test]
async fn audit_and_usage_carry_the_instance_that_wrote_them() {
    let mock = Mock::start("up");
    let gw = gateway()
        .yaml("server: { listen: \"127.0.0.1:0\", workers: 1, shutdown_grace: 5s, instance_id: gw-a }\naudit: { flush_interval: 50ms, file: data/audit.jsonl }\n")
        .provider(&mock, "[\"*\"]")
        .start();
    let (pid, _tid, secret) = gw.project_and_token(json!({}), json!({"name": "t"})).await;
    assert_eq!(
        gw.chat(&secret, chat_body("gpt-4o-mini")).await.status(),
        200
    );
    let body = gw
        .wait_for(
            &format!("/manage/audit?action=token.create&project_id={pid}"),
            |b| !events(b).is_empty(),
        )
        .await;
    assert_eq!(events(&body)[0]["instance"], "gw-a", "{body}");
    let lines = gw
        .wait_for_file("data/audit.jsonl", |t| t.contains("token.create"))
        .await;
    for line in lines.lines() {
        let event: Value = serde_json::from_str(line).unwrap();
        assert_eq!(event["instance"], "gw-a", "{line}");
    }
    gw.wait_for("/manage/usage?group_by=day", |b| {
        b["data"][0]["requests"] == json!(1)
    })
    .await;
    let url = format!("sqlite://{}", gw.db_path().display());
    let mut conn = sea_orm::sqlx::SqliteConnection::connect(&url)
        .await
        .unwrap();
    let instances: Vec<(Option<String>,)> =
        sea_orm::sqlx::query_as("SELECT instance FROM usage_records")
            .fetch_all(&mut conn)
            .await
            .unwrap();
    assert_eq!(instances, vec![(Some("gw-a".to_owned()),)]);

    // Without `instance_id`: the host name.
    let other = gateway().provider(&mock, "[\"*\"]").start();
    let p = other.create_project(json!({"name": "named-by-host"})).await;
    let body = other
        .wait_for(
            &format!(
                "/manage/audit?action=project.create&project_id={}",
                p["id"].as_str().unwrap()
            ),
            |b| !events(b).is_empty(),
        )
        .await;
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert_eq!(events(&body)[0]["instance"], host.trim(), "{body}");
}
