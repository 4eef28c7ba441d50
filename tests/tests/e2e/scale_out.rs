//! Several instances on one PostgreSQL database (issue 18, SPEC §5): each test
//! starts two real `palisade` processes on a [`PgDatabase`] of its own.

use serde_json::json;

use crate::harness::*;

fn instance(mock: &Mock, db: &PgDatabase, id: &str) -> Gateway {
    gateway()
        .provider(mock, "[\"*\"]")
        .database_url(&db.url)
        .yaml(&format!("server: {{ listen: \"127.0.0.1:0\", workers: 2, shutdown_grace: 5s, instance_id: {id} }}"))
        .start()
}

#[tokio::test]
async fn scale_out_a_token_made_before_b_starts_works_on_both() {
    let mock = Mock::start("up");
    let db = PgDatabase::create().await;
    let a = instance(&mock, &db, "a");
    let (_, _, t) = a.project_and_token(json!({}), json!({})).await;
    let b = instance(&mock, &db, "b");
    assert_eq!(a.chat(&t, chat_body("gpt-4o-mini")).await.status(), 200);
    assert_eq!(b.chat(&t, chat_body("gpt-4o-mini")).await.status(), 200);
    // Both instances' usage rows land in the shared database, each with its instance.
    let usage = a
        .wait_for("/manage/usage?group_by=day", |v: &serde_json::Value| {
            v["data"][0]["requests"] == json!(2)
        })
        .await;
    assert_eq!(usage["data"].as_array().unwrap().len(), 1, "{usage}");
}
