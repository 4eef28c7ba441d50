//! `/manage/projects` per SPEC §3: fields, statuses, envelopes, pagination.

use serde_json::{Value, json};

use crate::harness::{
    ENCRYPTION_KEY, Mock, assert_manage_error, assert_proxy_error, chat_body, error_of, gateway,
};

const PROJECT_FIELDS: &[&str] = &[
    "id",
    "name",
    "description",
    "is_active",
    "has_upstream_api_key",
    "allowed_models",
    "allowed_cidrs",
    "rate_limit_rpm",
    "providers",
    "created_at",
    "updated_at",
];

fn assert_project_shape(p: &Value) {
    let obj = p.as_object().unwrap();
    let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
    keys.sort_unstable();
    let mut want = PROJECT_FIELDS.to_vec();
    want.sort_unstable();
    assert_eq!(keys, want, "{p}");
    let id = uuid::Uuid::parse_str(p["id"].as_str().unwrap()).unwrap();
    assert_eq!(id.get_version_num(), 7);
    assert!(p["created_at"].as_str().unwrap().ends_with('Z'));
}

#[tokio::test]
async fn projects_create_get_patch_delete_roundtrip() {
    let mock = Mock::start("up");
    let gw = gateway().provider(&mock, "[\"*\"]").start();
    let p = gw
        .create_project(json!({"name": "alpha", "description": "first", "allowed_models": ["gpt-4o*"], "allowed_cidrs": ["10.0.0.0/8"], "rate_limit_rpm": 60}))
        .await;
    assert_project_shape(&p);
    assert_eq!(p["name"], "alpha");
    assert_eq!(p["is_active"], true);
    assert_eq!(p["has_upstream_api_key"], false);
    assert_eq!(p["allowed_models"], json!(["gpt-4o*"]));
    assert_eq!(p["allowed_cidrs"], json!(["10.0.0.0/8"]));
    assert_eq!(p["rate_limit_rpm"], 60);
    let id = p["id"].as_str().unwrap();

    let (status, got) = gw
        .manage("GET", &format!("/manage/projects/{id}"), None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(got, p);

    let (status, patched) = gw
        .manage("PATCH", &format!("/manage/projects/{id}"), Some(json!({"description": null, "upstream_api_key": "sk-project-own", "rate_limit_rpm": null, "allowed_models": []})))
        .await;
    assert_eq!(status, 200, "{patched}");
    assert_eq!(patched["description"], Value::Null);
    assert_eq!(patched["has_upstream_api_key"], true);
    assert_eq!(patched["rate_limit_rpm"], Value::Null);
    assert_eq!(patched["allowed_models"], json!([]));
    assert_eq!(patched["name"], "alpha");
    assert!(!patched.to_string().contains("sk-project-own"));

    let (_, cleared) = gw
        .manage(
            "PATCH",
            &format!("/manage/projects/{id}"),
            Some(json!({"upstream_api_key": null})),
        )
        .await;
    assert_eq!(cleared["has_upstream_api_key"], false);

    let (status, body) = gw
        .manage("DELETE", &format!("/manage/projects/{id}"), None)
        .await;
    assert_eq!(status, 204, "{body}");
    let (status, body) = gw
        .manage("GET", &format!("/manage/projects/{id}"), None)
        .await;
    assert_manage_error(status, &body, 404, "not_found");
    // The name of a deleted project can be used again.
    gw.create_project(json!({"name": "alpha"})).await;
}

#[tokio::test]
async fn projects_duplicate_name_conflicts() {
    let mock = Mock::start("up");
    let gw = gateway().provider(&mock, "[\"*\"]").start();
    gw.create_project(json!({"name": "dup"})).await;
    let (status, body) = gw
        .manage("POST", "/manage/projects", Some(json!({"name": "dup"})))
        .await;
    assert_manage_error(status, &body, 409, "conflict");
    let other = gw.create_project(json!({"name": "other"})).await;
    let (status, body) = gw
        .manage(
            "PATCH",
            &format!("/manage/projects/{}", other["id"].as_str().unwrap()),
            Some(json!({"name": "dup"})),
        )
        .await;
    assert_manage_error(status, &body, 409, "conflict");
}

#[tokio::test]
async fn projects_invalid_input_gets_field_errors() {
    let mock = Mock::start("up");
    let gw = gateway().provider(&mock, "[\"*\"]").start();
    let long = "x".repeat(101);
    let (status, body) = gw
        .manage("POST", "/manage/projects", Some(json!({"name": long, "allowed_cidrs": ["nope"], "rate_limit_rpm": 0, "colour": "red"})))
        .await;
    assert_manage_error(status, &body, 422, "validation_failed");
    let fields = body["error"]["fields"].as_object().unwrap();
    for f in ["name", "allowed_cidrs", "rate_limit_rpm", "colour"] {
        assert!(fields.contains_key(f), "{f} missing in {body}");
    }
    let (status, body) = gw.manage("POST", "/manage/projects", Some(json!({}))).await;
    assert_manage_error(status, &body, 422, "validation_failed");
    assert_eq!(body["error"]["fields"]["name"], "is required");

    // Not JSON at all.
    let resp = gw
        .client()
        .post(format!("{}/manage/projects", gw.url))
        .bearer_auth(crate::harness::MANAGEMENT_TOKEN)
        .body("{\"name\": ")
        .send()
        .await
        .unwrap();
    let (status, body) = error_of(resp).await;
    assert_manage_error(status, &body, 400, "invalid_json");
}

#[tokio::test]
async fn projects_list_paginates_and_filters() {
    let mock = Mock::start("up");
    let gw = gateway().provider(&mock, "[\"*\"]").start();
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(
            gw.create_project(json!({"name": format!("p{i}")})).await["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    gw.manage(
        "PATCH",
        &format!("/manage/projects/{}", ids[1]),
        Some(json!({"is_active": false})),
    )
    .await;

    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/manage/projects?limit=2&cursor={c}"),
            None => "/manage/projects?limit=2".to_owned(),
        };
        let (status, page) = gw.manage("GET", &path, None).await;
        assert_eq!(status, 200, "{page}");
        assert!(page["data"].as_array().unwrap().len() <= 2);
        seen.extend(
            page["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p["id"].as_str().unwrap().to_owned()),
        );
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => {
                assert!(page["next_cursor"].is_null());
                break;
            }
        }
    }
    assert_eq!(seen, ids);

    let (_, inactive) = gw
        .manage("GET", "/manage/projects?active=false", None)
        .await;
    assert_eq!(inactive["data"].as_array().unwrap().len(), 1);
    assert_eq!(inactive["data"][0]["id"], ids[1].as_str());
    let (_, active) = gw
        .manage("GET", "/manage/projects?active=true&limit=500", None)
        .await;
    assert_eq!(active["data"].as_array().unwrap().len(), 4);

    for bad in [
        "limit=0",
        "limit=501",
        "limit=x",
        "cursor=garbage",
        "active=maybe",
    ] {
        let (status, body) = gw
            .manage("GET", &format!("/manage/projects?{bad}"), None)
            .await;
        assert_manage_error(status, &body, 422, "validation_failed");
    }
}

#[tokio::test]
async fn manage_without_valid_credentials_is_unauthorized() {
    let mock = Mock::start("up");
    let gw = gateway().provider(&mock, "[\"*\"]").start();
    let c = gw.client();
    for auth in [None, Some("Bearer wrong-token"), Some("Basic abc")] {
        let mut req = c.get(format!("{}/manage/projects", gw.url));
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let (status, body) = error_of(req.send().await.unwrap()).await;
        assert_manage_error(status, &body, 401, "unauthorized");
    }
    // Even unknown management routes say nothing before auth.
    let (status, body) = error_of(
        c.get(format!("{}/manage/nothing-here", gw.url))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_manage_error(status, &body, 401, "unauthorized");
}

#[tokio::test]
async fn projects_malformed_or_unknown_ids_are_not_found() {
    let mock = Mock::start("up");
    let gw = gateway().provider(&mock, "[\"*\"]").start();
    for id in [
        "not-a-uuid",
        "01a206c3-edcb-7513-b99e-be726adf585b",
        "..%2F..%2Fetc",
        "1%27%20OR%201%3D1",
    ] {
        for method in ["GET", "PATCH", "DELETE"] {
            let body = (method == "PATCH").then(|| json!({"name": "x"}));
            let (status, resp) = gw
                .manage(method, &format!("/manage/projects/{id}"), body)
                .await;
            assert_manage_error(status, &resp, 404, "not_found");
        }
    }
}

#[tokio::test]
async fn projects_revoke_all_tokens_and_delete_revoke_tokens() {
    let mock = Mock::start("up");
    let gw = gateway().provider(&mock, "[\"*\"]").start();
    let (pid, _, t1) = gw.project_and_token(json!({}), json!({})).await;
    let (_, t2) = gw.create_token(&pid, json!({})).await;
    assert_eq!(gw.chat(&t1, chat_body("gpt-4o-mini")).await.status(), 200);

    let (status, body) = gw
        .manage(
            "POST",
            &format!("/manage/projects/{pid}/tokens/revoke"),
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(body, json!({"revoked": 2}));
    for t in [&t1, &t2] {
        let (status, body) = error_of(gw.chat(t, chat_body("gpt-4o-mini")).await).await;
        assert_proxy_error(status, &body, 401, "token_revoked");
    }

    let (pid2, _, t3) = gw.project_and_token(json!({}), json!({})).await;
    let (status, _) = gw
        .manage("DELETE", &format!("/manage/projects/{pid2}"), None)
        .await;
    assert_eq!(status, 204);
    let (status, body) = error_of(gw.chat(&t3, chat_body("gpt-4o-mini")).await).await;
    assert_proxy_error(status, &body, 401, "token_revoked");
}

#[tokio::test]
async fn projects_deactivated_project_blocks_its_tokens() {
    let mock = Mock::start("up");
    let gw = gateway().provider(&mock, "[\"*\"]").start();
    let (pid, _, t) = gw.project_and_token(json!({}), json!({})).await;
    gw.manage(
        "PATCH",
        &format!("/manage/projects/{pid}"),
        Some(json!({"is_active": false})),
    )
    .await;
    let (status, body) = error_of(gw.chat(&t, chat_body("gpt-4o-mini")).await).await;
    assert_proxy_error(status, &body, 403, "project_inactive");
    // And no new token can be issued for it.
    let (status, body) = gw
        .manage("POST", "/manage/tokens", Some(json!({"project_id": pid})))
        .await;
    assert_manage_error(status, &body, 403, "project_inactive");
    gw.manage(
        "PATCH",
        &format!("/manage/projects/{pid}"),
        Some(json!({"is_active": true})),
    )
    .await;
    assert_eq!(gw.chat(&t, chat_body("gpt-4o-mini")).await.status(), 200);
}

/// The documented default of `auth.encryption_key` is `${PALISADE_ENCRYPTION_KEY:-}`:
/// a config that names only the management token still stores (encrypted) and
/// uses a project's upstream key when the variable is exported.
#[tokio::test]
async fn projects_upstream_key_with_encryption_key_only_in_the_environment() {
    let mock = Mock::start("up");
    let gw = gateway()
        .provider(&mock, "[\"*\"]")
        .yaml("auth: { management_token: \"${E2E_MANAGEMENT_TOKEN}\" }")
        .env("PALISADE_ENCRYPTION_KEY", ENCRYPTION_KEY)
        .start();
    let (status, p) = gw
        .manage(
            "POST",
            "/manage/projects",
            Some(json!({"name": "env-key", "upstream_api_key": "sk-project-env-key"})),
        )
        .await;
    assert_eq!(status, 201, "{p}");
    assert_eq!(p["has_upstream_api_key"], true);
    let (_, t) = gw.create_token(p["id"].as_str().unwrap(), json!({})).await;
    assert_eq!(gw.chat(&t, chat_body("gpt-4o-mini")).await.status(), 200);
    assert_eq!(
        mock.last_request().await["headers"]["authorization"],
        "Bearer sk-project-env-key"
    );
}
