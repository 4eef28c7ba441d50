//! What instances sharing one database need to keep their registry caches in step
//! (`actors::token_registry::sync`): the registry revision, and a token looked up by
//! its secret's hash.

use entity::tokens;
use sea_orm::{
    ColumnTrait, Condition, ConnectionTrait, DatabaseBackend, DatabaseConnection, DbErr,
    EntityTrait, QueryFilter, Statement,
};

use crate::db::reported;

/// The channel PostgreSQL instances are told of registry changes on.
pub const CHANNEL: &str = "palisade_registry";

/// The registry's revision: it goes up with every change to projects or tokens.
pub async fn revision(db: &DatabaseConnection) -> Result<i64, DbErr> {
    let row = db
        .query_one_raw(Statement::from_string(
            db.get_database_backend(),
            "SELECT revision FROM registry_revision WHERE id = 1",
        ))
        .await?
        .ok_or_else(|| DbErr::RecordNotFound("registry_revision".to_owned()))?;
    row.try_get_by_index(0)
}

/// Counts a change to the registry and returns the new revision; on PostgreSQL
/// also notifies the other instances ([`CHANNEL`]) in the same transaction, so
/// the notice is sent exactly when the new revision is visible.
pub async fn bump_revision(db: &DatabaseConnection) -> Result<i64, DbErr> {
    let backend = db.get_database_backend();
    let out = async {
        let txn = crate::db::begin_write(db).await?;
        let row = txn
            .query_one_raw(Statement::from_string(
                backend,
                "UPDATE registry_revision SET revision = revision + 1 WHERE id = 1 RETURNING revision",
            ))
            .await?
            .ok_or_else(|| DbErr::RecordNotFound("registry_revision".to_owned()))?;
        let revision: i64 = row.try_get_by_index(0)?;
        if backend == DatabaseBackend::Postgres {
            txn.execute_raw(Statement::from_sql_and_values(
                backend,
                "SELECT pg_notify($1, $2)",
                [CHANNEL.into(), revision.to_string().into()],
            ))
            .await?;
        }
        txn.commit().await?;
        Ok(revision)
    }
    .await;
    reported(out)
}

/// The token whose current or pre-rotation secret hashes to `hex`.
pub async fn token_by_hash(
    db: &DatabaseConnection,
    hex: &str,
) -> Result<Option<tokens::Model>, DbErr> {
    tokens::Entity::find()
        .filter(
            Condition::any()
                .add(tokens::Column::TokenHash.eq(hex))
                .add(tokens::Column::PreviousTokenHash.eq(hex)),
        )
        .one(db)
        .await
}
