//! `palisade rotate-encryption-key`: project upstream keys re-encrypted under a
//! new key, all or nothing, and still used for the project's requests after a
//! restart with the new key.

use serde_json::json;

use crate::harness::{ENCRYPTION_KEY, Gateway, Mock, chat_body, start};

/// base64 of 32 bytes 32..63; only for tests.
const NEW_KEY: &str = "ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8=";
const PROJECT_KEY: &str = "sk-project-own-key-rotated";

/// A chat completion goes through, carrying the project's own upstream key.
async fn assert_project_key_reaches_upstream(mock: &Mock, gw: &Gateway, token: &str) {
    assert_eq!(gw.chat(token, chat_body("gpt-4o-mini")).await.status(), 200);
    let seen = mock.last_request().await;
    assert_eq!(
        seen["headers"]["authorization"],
        format!("Bearer {PROJECT_KEY}")
    );
}

#[tokio::test]
async fn key_rotation_reencrypts_project_keys_all_or_nothing() {
    let (mock, mut gw) = start("");
    let (_, _, token) = gw
        .project_and_token(json!({ "upstream_api_key": PROJECT_KEY }), json!({}))
        .await;
    assert_project_key_reaches_upstream(&mock, &gw, &token).await;
    assert_eq!(gw.terminate(), Some(0));

    // A wrong "current" key changes nothing.
    let wrong = gw.run_command(
        &["rotate-encryption-key"],
        &[
            ("E2E_ENCRYPTION_KEY", NEW_KEY),
            ("PALISADE_NEW_ENCRYPTION_KEY", ENCRYPTION_KEY),
        ],
    );
    assert_eq!(wrong.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("nothing was changed"));
    // No new key: refused.
    let missing = gw.run_command(&["rotate-encryption-key"], &[]);
    assert_eq!(missing.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("PALISADE_NEW_ENCRYPTION_KEY"));

    let out = gw.run_command(
        &["rotate-encryption-key"],
        &[("PALISADE_NEW_ENCRYPTION_KEY", NEW_KEY)],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("re-encrypted 1 project"), "{stdout}");
    // Neither the database nor its write-ahead log holds the key in plaintext.
    let db = gw.db_path();
    for file in [db.clone(), db.with_extension("db-wal")] {
        let bytes = std::fs::read(&file).unwrap_or_default();
        assert!(
            !bytes
                .windows(PROJECT_KEY.len())
                .any(|w| w == PROJECT_KEY.as_bytes()),
            "{} holds the project key in plaintext",
            file.display()
        );
    }

    // Started with the new key, the project's requests still carry its own key.
    gw.set_env("E2E_ENCRYPTION_KEY", NEW_KEY);
    gw.start_again();
    assert_project_key_reaches_upstream(&mock, &gw, &token).await;
}
