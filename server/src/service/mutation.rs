//! Writes: the `TokenRegistry` actor's, the audit writer's batches, and request
//! leases (`actors::token_registry::lease`). Multi-statement changes run in one
//! `BEGIN IMMEDIATE` transaction ([`crate::db::write`]); every outcome is reported
//! to the write health ([`crate::db::reported`]), which keeps connections that saw a
//! failure out of the pool.

use chrono::{DateTime, Utc};
use entity::{audit_events, projects, tokens};
use sea_orm::ExprTrait;
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, ConnectionTrait, DatabaseConnection, DbErr,
    EntityTrait, QueryFilter, QuerySelect,
};
use uuid::Uuid;

use crate::db::{begin_write, reported, write};
use crate::records::AuditEvent;
use crate::usage::UsageRow;

pub struct Mutation;

impl Mutation {
    pub async fn insert_project(
        db: &DatabaseConnection,
        row: projects::ActiveModel,
    ) -> Result<projects::Model, DbErr> {
        reported(row.insert(db).await)
    }

    pub async fn update_project(
        db: &DatabaseConnection,
        row: projects::ActiveModel,
    ) -> Result<projects::Model, DbErr> {
        reported(row.update(db).await)
    }

    /// Soft-deletes the project and revokes all of its live tokens, atomically.
    pub async fn delete_project(
        db: &DatabaseConnection,
        id: Uuid,
        now: DateTime<Utc>,
    ) -> Result<u64, DbErr> {
        write(db, async |txn| {
            projects::Entity::update_many()
                .col_expr(projects::Column::DeletedAt, Expr::value(now))
                .col_expr(projects::Column::UpdatedAt, Expr::value(now))
                .filter(projects::Column::Id.eq(id))
                .exec(txn)
                .await?;
            revoke_tokens_of(txn, id, now).await
        })
        .await
    }

    /// Re-encrypts every stored project upstream key from `old` to `new` in one
    /// transaction: all or nothing. Offline only (`palisade rotate-encryption-key`
    /// with the server stopped): a running server holds the keys decrypted in its
    /// cache and would go on encrypting new ones under the old key.
    pub async fn reencrypt_project_keys(
        db: &DatabaseConnection,
        old: &crate::crypto::KeyCipher,
        new: &crate::crypto::KeyCipher,
    ) -> Result<u64, String> {
        let txn = begin_write(db).await.map_err(|e| e.to_string())?;
        // PostgreSQL: `FOR UPDATE` holds the rows against another instance's
        // write until the commit (SQLite's `BEGIN IMMEDIATE` already does).
        let rows = projects::Entity::find()
            .filter(projects::Column::UpstreamApiKeyEnc.is_not_null())
            .lock_exclusive()
            .all(&txn)
            .await
            .map_err(|e| e.to_string())?;
        let mut n = 0;
        for row in rows {
            let Some(enc) = row.upstream_api_key_enc.as_deref() else {
                continue;
            };
            let plain = old
                .decrypt(enc)
                .map_err(|e| format!("project {}: {e}; nothing was changed", row.id))?;
            projects::Entity::update_many()
                .col_expr(
                    projects::Column::UpstreamApiKeyEnc,
                    Expr::value(new.encrypt(&plain)),
                )
                .filter(projects::Column::Id.eq(row.id))
                .exec(&txn)
                .await
                .map_err(|e| e.to_string())?;
            n += 1;
        }
        txn.commit().await.map_err(|e| e.to_string())?;
        Ok(n)
    }

    pub async fn revoke_project_tokens(
        db: &DatabaseConnection,
        id: Uuid,
        now: DateTime<Utc>,
    ) -> Result<u64, DbErr> {
        reported(revoke_tokens_of(db, id, now).await)
    }

    pub async fn insert_token(
        db: &DatabaseConnection,
        row: tokens::ActiveModel,
    ) -> Result<tokens::Model, DbErr> {
        reported(row.insert(db).await)
    }

    pub async fn update_token(
        db: &DatabaseConnection,
        row: tokens::ActiveModel,
    ) -> Result<tokens::Model, DbErr> {
        reported(row.update(db).await)
    }

    /// Adds the requests the registry counted since its last flush to each
    /// token's `request_count` (`request_count = request_count + delta`, so the
    /// counts of several instances add up) and moves `last_used_at` forward, one
    /// transaction per batch; with `release_leases` (a clean shutdown, all counts
    /// final) also clears every token's request lease in the same transaction.
    pub async fn flush_usage(
        db: &DatabaseConnection,
        batch: &[(Uuid, i64, Option<DateTime<Utc>>)],
        release_leases: bool,
    ) -> Result<(), DbErr> {
        if batch.is_empty() && !release_leases {
            return Ok(());
        }
        write(db, async |txn| {
            for (id, delta, last_used) in batch {
                // Several instances add their own counts; the latest use wins
                // whichever instance writes last.
                let latest = Expr::case(
                    Expr::col(tokens::Column::LastUsedAt)
                        .is_null()
                        .or(Expr::col(tokens::Column::LastUsedAt).lt(*last_used)),
                    Expr::value(*last_used),
                )
                .finally(Expr::col(tokens::Column::LastUsedAt));
                let mut update = tokens::Entity::update_many()
                    .col_expr(
                        tokens::Column::RequestCount,
                        Expr::col(tokens::Column::RequestCount).add(*delta),
                    )
                    .filter(tokens::Column::Id.eq(*id));
                if last_used.is_some() {
                    update = update.col_expr(tokens::Column::LastUsedAt, latest.into());
                }
                update.exec(txn).await?;
            }
            if release_leases {
                tokens::Entity::update_many()
                    .col_expr(
                        tokens::Column::RequestLease,
                        Expr::value(Option::<i64>::None),
                    )
                    .filter(tokens::Column::RequestLease.is_not_null())
                    .exec(txn)
                    .await?;
            }
            Ok(())
        })
        .await
    }

    /// Records that a token may be admitted up to `lease` requests. One statement
    /// (its own transaction), committed before any request it covers is admitted.
    pub async fn write_request_lease(
        db: &DatabaseConnection,
        id: Uuid,
        lease: i64,
    ) -> Result<(), DbErr> {
        reported(
            tokens::Entity::update_many()
                .col_expr(tokens::Column::RequestLease, Expr::value(lease))
                .filter(tokens::Column::Id.eq(id))
                .exec(db)
                .await
                .map(drop),
        )
    }
}

impl Mutation {
    /// One audit-writer batch, in one transaction.
    pub async fn insert_records(
        db: &DatabaseConnection,
        audits: &[AuditEvent],
        usage: &[UsageRow],
    ) -> Result<(), DbErr> {
        write(db, async |txn| insert_records_in(txn, audits, usage).await).await
    }
}

async fn insert_records_in(
    txn: &sea_orm::DatabaseTransaction,
    audits: &[AuditEvent],
    usage: &[UsageRow],
) -> Result<(), DbErr> {
    for chunk in audits.chunks(200) {
        audit_events::Entity::insert_many(chunk.iter().map(|e| audit_events::ActiveModel {
            id: Set(e.id),
            timestamp: Set(e.timestamp),
            action: Set(e.action.to_owned()),
            actor: Set(e.actor.clone()),
            client_ip: Set(e.client_ip.clone()),
            project_id: Set(e.project_id),
            token_id: Set(e.token_id),
            token_hint: Set(e.token_hint.clone()),
            request_id: Set(e.request_id.clone()),
            result: Set(e.result.as_str().to_owned()),
            details: Set(e.details.clone()),
            instance: Set(e.instance.clone()),
        }))
        .exec_without_returning(txn)
        .await?;
    }
    let backend = txn.get_database_backend();
    for chunk in usage.chunks(super::usage_rows::ROWS_PER_STATEMENT) {
        txn.execute_raw(super::usage_rows::insert(backend, chunk))
            .await?;
    }
    Ok(())
}

#[derive(Debug, Clone, Copy)]
pub enum Table {
    AuditEvents,
    UsageRecords,
}

impl Mutation {
    /// Deletes at most `limit` rows older than `cutoff`; returns how many went.
    pub async fn delete_older_than(
        db: &DatabaseConnection,
        table: Table,
        cutoff: DateTime<Utc>,
        limit: u64,
    ) -> Result<u64, DbErr> {
        // `DELETE … LIMIT` is not portable; delete by the ids of the oldest rows.
        let sql = match table {
            Table::AuditEvents => {
                "DELETE FROM audit_events WHERE id IN (SELECT id FROM audit_events WHERE timestamp < $1 ORDER BY timestamp LIMIT $2)"
            }
            Table::UsageRecords => {
                "DELETE FROM usage_records WHERE id IN (SELECT id FROM usage_records WHERE timestamp < $1 ORDER BY timestamp LIMIT $2)"
            }
        };
        let stmt = sea_orm::Statement::from_sql_and_values(
            db.get_database_backend(),
            sql,
            [
                cutoff.into(),
                i64::try_from(limit).unwrap_or(i64::MAX).into(),
            ],
        );
        Ok(reported(db.execute_raw(stmt).await)?.rows_affected())
    }
}

async fn revoke_tokens_of<C: ConnectionTrait>(
    db: &C,
    project: Uuid,
    now: DateTime<Utc>,
) -> Result<u64, DbErr> {
    let res = tokens::Entity::update_many()
        .col_expr(tokens::Column::RevokedAt, Expr::value(now))
        .col_expr(tokens::Column::UpdatedAt, Expr::value(now))
        .filter(tokens::Column::ProjectId.eq(project))
        .filter(tokens::Column::RevokedAt.is_null())
        .exec(db)
        .await?;
    Ok(res.rows_affected)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sea_orm::{Database, PaginatorTrait};

    fn event(at: DateTime<Utc>) -> AuditEvent {
        AuditEvent::sample("project.create", at)
    }

    #[actix_rt::test]
    async fn retention_deletes_only_old_rows_in_batches() {
        let db = Database::connect("sqlite::memory:").await.unwrap();
        crate::db::migrate(&db).await.unwrap();
        let now = crate::time::now();
        let old: Vec<_> = (0..5)
            .map(|i| event(now - chrono::Duration::days(40 + i)))
            .collect();
        let new: Vec<_> = (0..3).map(|_| event(now)).collect();
        Mutation::insert_records(&db, &[old, new].concat(), &[])
            .await
            .unwrap();
        let cutoff = now - chrono::Duration::days(30);
        assert_eq!(
            Mutation::delete_older_than(&db, Table::AuditEvents, cutoff, 2)
                .await
                .unwrap(),
            2
        );
        assert_eq!(
            Mutation::delete_older_than(&db, Table::AuditEvents, cutoff, 10)
                .await
                .unwrap(),
            3
        );
        assert_eq!(
            Mutation::delete_older_than(&db, Table::AuditEvents, cutoff, 10)
                .await
                .unwrap(),
            0
        );
        assert_eq!(audit_events::Entity::find().count(&db).await.unwrap(), 3);
    }
}
