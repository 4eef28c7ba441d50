//! Writes. Called only by the `TokenRegistry` actor. Multi-statement changes run in
//! one `BEGIN IMMEDIATE` transaction ([`crate::db::begin_write`]).

use chrono::{DateTime, Utc};
use entity::{projects, tokens};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DatabaseConnection, DbErr, EntityTrait,
    QueryFilter,
};
use uuid::Uuid;

use crate::db::begin_write;

pub struct Mutation;

impl Mutation {
    pub async fn insert_project(
        db: &DatabaseConnection,
        row: projects::ActiveModel,
    ) -> Result<projects::Model, DbErr> {
        row.insert(db).await
    }

    pub async fn update_project(
        db: &DatabaseConnection,
        row: projects::ActiveModel,
    ) -> Result<projects::Model, DbErr> {
        row.update(db).await
    }

    /// Soft-deletes the project and revokes all of its live tokens, atomically.
    pub async fn delete_project(
        db: &DatabaseConnection,
        id: Uuid,
        now: DateTime<Utc>,
    ) -> Result<u64, DbErr> {
        let txn = begin_write(db).await?;
        projects::Entity::update_many()
            .col_expr(projects::Column::DeletedAt, Expr::value(now))
            .col_expr(projects::Column::UpdatedAt, Expr::value(now))
            .filter(projects::Column::Id.eq(id))
            .exec(&txn)
            .await?;
        let revoked = revoke_tokens_of(&txn, id, now).await?;
        txn.commit().await?;
        Ok(revoked)
    }

    pub async fn revoke_project_tokens(
        db: &DatabaseConnection,
        id: Uuid,
        now: DateTime<Utc>,
    ) -> Result<u64, DbErr> {
        revoke_tokens_of(db, id, now).await
    }

    pub async fn insert_token(
        db: &DatabaseConnection,
        row: tokens::ActiveModel,
    ) -> Result<tokens::Model, DbErr> {
        row.insert(db).await
    }

    pub async fn update_token(
        db: &DatabaseConnection,
        row: tokens::ActiveModel,
    ) -> Result<tokens::Model, DbErr> {
        row.update(db).await
    }

    /// Writes back the request counters the registry kept in memory, one
    /// transaction per batch.
    pub async fn flush_usage(
        db: &DatabaseConnection,
        batch: &[(Uuid, i64, Option<DateTime<Utc>>)],
    ) -> Result<(), DbErr> {
        if batch.is_empty() {
            return Ok(());
        }
        let txn = begin_write(db).await?;
        for (id, count, last_used) in batch {
            tokens::Entity::update_many()
                .col_expr(tokens::Column::RequestCount, Expr::value(*count))
                .col_expr(tokens::Column::LastUsedAt, Expr::value(*last_used))
                .filter(tokens::Column::Id.eq(*id))
                .exec(&txn)
                .await?;
        }
        txn.commit().await
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
