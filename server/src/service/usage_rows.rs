//! Usage rows on their way into the database: the hottest write there is (one row
//! per proxied request).
//!
//! On SQLite a batch is bound as ONE JSON document and expanded by `json_each`
//! inside SQLite, instead of a SeaORM multi-row insert that builds, binds and
//! copies sixteen values per row in Rust. The text the columns receive is exactly
//! what sqlx would have bound (RFC 3339 timestamps with `AutoSi` fractions, UUIDs as
//! 16-byte blobs, booleans as integers), so SeaORM reads these rows back like any
//! other; a unit test holds the two paths to the same result.

use chrono::SecondsFormat;
use entity::usage_records;
use sea_orm::ActiveValue::Set;
use sea_orm::{DbBackend, Statement};
use serde::Serialize;

use crate::usage::UsageRow;

const SQLITE_INSERT: &str = "INSERT INTO usage_records (id, timestamp, request_id, project_id, token_id, model, provider, endpoint, status, streamed, prompt_tokens, completion_tokens, total_tokens, latency_ms, ttfb_ms, client_closed) \
SELECT unhex(value->>'id'), value->>'ts', value->>'rid', unhex(value->>'p'), unhex(value->>'t'), value->>'m', value->>'pv', value->>'e', value->>'s', value->>'st', value->>'pt', value->>'ct', value->>'tt', value->>'l', value->>'f', value->>'cc' \
FROM json_each($1)";

#[derive(Serialize)]
struct JsonRow<'a> {
    id: uuid::fmt::Simple,
    ts: String,
    rid: &'a str,
    p: uuid::fmt::Simple,
    t: uuid::fmt::Simple,
    m: Option<&'a str>,
    pv: &'a str,
    e: &'a str,
    s: u16,
    st: bool,
    pt: Option<i64>,
    ct: Option<i64>,
    tt: Option<i64>,
    l: f64,
    f: Option<f64>,
    cc: bool,
}

/// One `INSERT … SELECT … FROM json_each(?)` for a chunk of rows.
pub fn sqlite_insert(rows: &[UsageRow]) -> Statement {
    let doc: Vec<JsonRow<'_>> = rows
        .iter()
        .map(|u| {
            let r = &u.record;
            let t = u.tokens.unwrap_or_default();
            JsonRow {
                id: r.id.simple(),
                ts: r.timestamp.to_rfc3339_opts(SecondsFormat::AutoSi, false),
                rid: &r.request_id,
                p: r.project_id.simple(),
                t: r.token_id.simple(),
                m: r.model.as_deref(),
                pv: &r.provider,
                e: &r.endpoint,
                s: r.status,
                st: r.streamed,
                pt: t.prompt_tokens,
                ct: t.completion_tokens,
                tt: t.total_tokens,
                l: r.latency_ms,
                f: r.ttfb_ms,
                cc: r.client_closed,
            }
        })
        .collect();
    // Serialising plain strings, numbers and options cannot fail.
    let json = serde_json::to_string(&doc).unwrap_or_else(|_| "[]".to_owned());
    Statement::from_sql_and_values(DbBackend::Sqlite, SQLITE_INSERT, [json.into()])
}

/// The portable path (other backends).
pub fn active_model(u: &UsageRow) -> usage_records::ActiveModel {
    let r = &u.record;
    let t = u.tokens.unwrap_or_default();
    usage_records::ActiveModel {
        id: Set(r.id),
        timestamp: Set(r.timestamp),
        request_id: Set(r.request_id.clone()),
        project_id: Set(r.project_id),
        token_id: Set(r.token_id),
        model: Set(r.model.clone()),
        provider: Set(r.provider.clone()),
        endpoint: Set(r.endpoint.clone()),
        status: Set(i32::from(r.status)),
        streamed: Set(r.streamed),
        prompt_tokens: Set(t.prompt_tokens),
        completion_tokens: Set(t.completion_tokens),
        total_tokens: Set(t.total_tokens),
        latency_ms: Set(r.latency_ms),
        ttfb_ms: Set(r.ttfb_ms),
        client_closed: Set(r.client_closed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::actors::audit_writer::UsageRecord;
    use crate::usage::Tokens;
    use sea_orm::{ConnectionTrait, Database, EntityTrait, QueryOrder};

    fn row(i: u16, tokens: Option<Tokens>) -> UsageRow {
        UsageRow {
            record: UsageRecord {
                id: uuid::Uuid::now_v7(),
                timestamp: crate::time::now(),
                request_id: format!("req-{i}"),
                project_id: uuid::Uuid::now_v7(),
                token_id: uuid::Uuid::now_v7(),
                model: i.is_multiple_of(2).then(|| "gpt-4o-mini".to_owned()),
                provider: "p\"q".to_owned(),
                endpoint: "/chat/completions".to_owned(),
                status: 200 + i,
                streamed: !i.is_multiple_of(2),
                latency_ms: 1.25 * f64::from(i),
                ttfb_ms: i.is_multiple_of(3).then_some(0.5),
                client_closed: i == 1,
                body_tail: Vec::new(),
            },
            tokens,
        }
    }

    #[actix_rt::test]
    async fn json_each_rows_read_back_like_seaorm_inserted_ones() {
        let db = Database::connect("sqlite::memory:").await.unwrap();
        crate::db::migrate(&db).await.unwrap();
        let known = Some(Tokens {
            prompt_tokens: Some(3),
            completion_tokens: Some(4),
            total_tokens: Some(7),
        });
        let a = vec![row(0, known), row(1, None), row(2, known)];
        let b = vec![row(3, None), row(4, known)];
        db.execute_raw(sqlite_insert(&a)).await.unwrap();
        usage_records::Entity::insert_many(b.iter().map(active_model))
            .exec_without_returning(&db)
            .await
            .unwrap();
        let got = usage_records::Entity::find()
            .order_by_asc(usage_records::Column::Id)
            .all(&db)
            .await
            .unwrap();
        let want: Vec<usage_records::Model> = a
            .iter()
            .chain(&b)
            .map(|u| {
                let m = active_model(u);
                usage_records::Model {
                    id: m.id.unwrap(),
                    timestamp: m.timestamp.unwrap(),
                    request_id: m.request_id.unwrap(),
                    project_id: m.project_id.unwrap(),
                    token_id: m.token_id.unwrap(),
                    model: m.model.unwrap(),
                    provider: m.provider.unwrap(),
                    endpoint: m.endpoint.unwrap(),
                    status: m.status.unwrap(),
                    streamed: m.streamed.unwrap(),
                    prompt_tokens: m.prompt_tokens.unwrap(),
                    completion_tokens: m.completion_tokens.unwrap(),
                    total_tokens: m.total_tokens.unwrap(),
                    latency_ms: m.latency_ms.unwrap(),
                    ttfb_ms: m.ttfb_ms.unwrap(),
                    client_closed: m.client_closed.unwrap(),
                }
            })
            .collect();
        assert_eq!(got, want);
        // Same stored text for timestamps, so range filters treat both alike.
        let ts = db
            .query_all_raw(Statement::from_string(
                DbBackend::Sqlite,
                "SELECT typeof(id), typeof(timestamp), timestamp FROM usage_records",
            ))
            .await
            .unwrap();
        let texts: Vec<String> = ts
            .iter()
            .map(|r| r.try_get_by_index::<String>(2).unwrap())
            .collect();
        assert!(texts.iter().all(|t| t.ends_with("+00:00")), "{texts:?}");
        let kinds: Vec<(String, String)> = ts
            .iter()
            .map(|r| {
                (
                    r.try_get_by_index(0).unwrap(),
                    r.try_get_by_index(1).unwrap(),
                )
            })
            .collect();
        assert!(
            kinds.iter().all(|k| k == &("blob".into(), "text".into())),
            "{kinds:?}"
        );
    }
}
