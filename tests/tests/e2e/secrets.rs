//! No secret (token, management token, provider key, project upstream key,
//! encryption key) appears in any log line or in the database file, across a whole
//! flow including failures, at debug level.

use serde_json::json;

use crate::harness::{ENCRYPTION_KEY, MANAGEMENT_TOKEN, Mock, PROVIDER_KEY, chat_body, gateway};

const SCRAPE_TOKEN: &str = "scrape-token-never-logged-0123456789";

#[tokio::test]
async fn secrets_never_reach_logs_or_the_database() {
    let mock = Mock::start("up");
    let mut gw = gateway()
        .provider(&mock, "[\"*\"]")
        .yaml("logging: { level: trace, format: json }")
        .yaml(&format!("metrics: {{ token: \"{SCRAPE_TOKEN}\" }}"))
        .start();
    let project_key = "sk-project-upstream-key-e2e-secret";
    let (pid, tid, t1) = gw
        .project_and_token(
            json!({"upstream_api_key": project_key}),
            json!({"max_requests": 2}),
        )
        .await;
    let (_, _, t2) = gw.project_and_token(json!({}), json!({})).await;
    let mut secrets = vec![t1.clone(), t2.clone()];

    // Successes, streams, quota, bad credentials, management failures.
    for t in [&t1, &t2] {
        assert_eq!(gw.chat(t, chat_body("gpt-4o-mini")).await.status(), 200);
    }
    let resp = gw
        .post("/v1/chat/completions")
        .bearer_auth(&t2)
        .json(&json!({"model": "gpt-4o-mini", "stream": true, "messages": []}))
        .send()
        .await
        .unwrap();
    resp.bytes().await.unwrap();
    gw.chat(&t1, chat_body("gpt-4o-mini")).await;
    gw.chat(&t1, chat_body("gpt-4o-mini")).await; // quota exceeded
    gw.chat(&format!("{t1}x"), chat_body("gpt-4o-mini")).await;
    gw.post("/v1/chat/completions")
        .header("x-api-key", &t2)
        .body("{not json")
        .send()
        .await
        .unwrap();
    gw.client()
        .get(format!("{}/manage/projects", gw.url))
        .bearer_auth(format!("{MANAGEMENT_TOKEN}-wrong"))
        .send()
        .await
        .unwrap();
    let (_, rotated) = gw
        .manage(
            "POST",
            &format!("/manage/tokens/{tid}/rotate"),
            Some(json!({"grace_seconds": 60})),
        )
        .await;
    secrets.push(rotated["token"].as_str().unwrap().to_owned());
    gw.manage(
        "PATCH",
        &format!("/manage/projects/{pid}"),
        Some(json!({"upstream_api_key": format!("{project_key}-2")})),
    )
    .await;
    gw.manage("DELETE", &format!("/manage/tokens/{tid}"), None)
        .await;
    gw.chat(&t1, chat_body("gpt-4o-mini")).await;
    // Metrics scraped with the right and a wrong credential.
    for key in [SCRAPE_TOKEN.to_owned(), format!("{SCRAPE_TOKEN}-wrong")] {
        let body = gw.get("/metrics").bearer_auth(&key).send().await.unwrap();
        let text = body.text().await.unwrap();
        assert!(!text.contains(SCRAPE_TOKEN));
    }
    gw.restart();
    gw.chat(&t2, chat_body("gpt-4o-mini")).await;
    assert_eq!(gw.terminate(), Some(0));

    secrets.extend([
        MANAGEMENT_TOKEN.to_owned(),
        SCRAPE_TOKEN.to_owned(),
        PROVIDER_KEY.to_owned(),
        project_key.to_owned(),
        ENCRYPTION_KEY.to_owned(),
    ]);
    let logs = gw.logs();
    assert!(
        logs.lines().count() > 20,
        "expected a real debug log:\n{logs}"
    );
    assert!(
        logs.contains("\"level\":\"DEBUG\""),
        "debug level not active"
    );
    let mut db_bytes = std::fs::read(gw.db_path()).unwrap();
    if let Ok(wal) = std::fs::read(gw.db_path().with_extension("db-wal")) {
        db_bytes.extend(wal);
    }
    let db = String::from_utf8_lossy(&db_bytes);
    let audit_file = std::fs::read_to_string(gw.dir.path().join("data/audit.jsonl")).unwrap();
    assert!(
        audit_file.lines().count() >= 5,
        "audit file too short: {audit_file}"
    );
    for s in &secrets {
        assert!(
            !logs.contains(s.as_str()),
            "secret {}… found in logs",
            &s[..8]
        );
        assert!(
            !db.contains(s.as_str()),
            "secret {}… found in the database file",
            &s[..8]
        );
    }
}
