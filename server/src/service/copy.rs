//! `palisade migrate-data`: copies every table of one Palisade database into
//! another, freshly migrated and empty one (SQLite to PostgreSQL, the move to
//! several instances). Rows keep their ids, token hashes, password hashes and
//! timestamps, so tokens, logins and refresh tokens keep working on the copy.
//!
//! The source is read inside one transaction (one consistent snapshot, even on a
//! SQLite file); the target is written inside one transaction, in batches of
//! `batch` rows: it ends with everything or with nothing. Tables go in foreign-key
//! order (projects before their tokens).

use entity::{audit_events, projects, refresh_tokens, revoked_jtis, tokens, usage_records, users};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DatabaseConnection, DbErr, EntityTrait,
    IntoActiveModel, ModelTrait, PaginatorTrait, QueryFilter, QueryOrder, QuerySelect,
    TransactionTrait,
};

/// Why nothing was copied.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error(
        "the target database is not empty ({0}); migrate-data copies into a freshly created database only"
    )]
    TargetNotEmpty(String),
    #[error("{0}")]
    Db(#[from] DbErr),
}

/// Rows copied, per table, in copy order.
pub type Copied = Vec<(&'static str, u64)>;

/// Copies every table of `from` into `to` (both migrated; `to` empty).
pub async fn copy_all(
    from: &DatabaseConnection,
    to: &DatabaseConnection,
    batch: u64,
) -> Result<Copied, CopyError> {
    let filled: Vec<String> = counts(to)
        .await?
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .map(|(t, n)| format!("{t}: {n} rows"))
        .collect();
    if !filled.is_empty() {
        return Err(CopyError::TargetNotEmpty(filled.join(", ")));
    }
    let src = from.begin().await?;
    let dst = to.begin().await?;
    let batch = batch.max(1);
    // Each table with its key, in foreign-key order.
    macro_rules! copy {
        ($($t:ident . $key:ident),*) => {
            vec![$((
                stringify!($t),
                table::<$t::Entity>(&src, &dst, $t::Column::$key, batch).await?,
            )),*]
        };
    }
    let copied = copy!(
        projects.Id,
        tokens.Id,
        users.Id,
        refresh_tokens.Id,
        revoked_jtis.Jti,
        audit_events.Id,
        usage_records.Id
    );
    dst.commit().await?;
    src.rollback().await?;
    Ok(copied)
}

/// Rows per table, in copy order (to check a target is empty, or a copy whole).
pub async fn counts(db: &DatabaseConnection) -> Result<Copied, DbErr> {
    macro_rules! count {
        ($($t:ident),*) => {
            vec![$((stringify!($t), $t::Entity::find().count(db).await?)),*]
        };
    }
    Ok(count!(
        projects,
        tokens,
        users,
        refresh_tokens,
        revoked_jtis,
        audit_events,
        usage_records
    ))
}

/// Copies one table in pages of `batch` rows, ordered by its (UUID) key.
async fn table<E>(
    src: &impl ConnectionTrait,
    dst: &impl ConnectionTrait,
    key: E::Column,
    batch: u64,
) -> Result<u64, DbErr>
where
    E: EntityTrait,
    E::Model: IntoActiveModel<E::ActiveModel>,
    E::ActiveModel: ActiveModelTrait<Entity = E> + Send,
{
    let mut after: Option<sea_orm::Value> = None;
    let mut n = 0;
    loop {
        let mut q = E::find().order_by_asc(key).limit(batch);
        if let Some(last) = after.take() {
            q = q.filter(key.gt(last));
        }
        let rows = q.all(src).await?;
        let Some(last) = rows.last() else {
            return Ok(n);
        };
        after = Some(last.get(key));
        let len = u64::try_from(rows.len()).unwrap_or(u64::MAX);
        E::insert_many(rows.into_iter().map(IntoActiveModel::into_active_model))
            .exec_without_returning(dst)
            .await?;
        n += len;
        if len < batch {
            return Ok(n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::AuditEvent;

    async fn memory() -> DatabaseConnection {
        let db = sea_orm::Database::connect("sqlite::memory:").await.unwrap();
        crate::db::migrate(&db).await.unwrap();
        db
    }

    #[actix_rt::test]
    async fn copies_every_row_in_batches_and_refuses_a_filled_target() {
        let from = memory().await;
        let now = crate::time::now();
        let events: Vec<_> = (0..7)
            .map(|_| AuditEvent::sample("project.create", now))
            .collect();
        crate::service::mutation::Mutation::insert_records(&from, &events, &[])
            .await
            .unwrap();
        let to = memory().await;
        let copied = copy_all(&from, &to, 3).await.unwrap();
        assert!(copied.contains(&("audit_events", 7)), "{copied:?}");
        assert_eq!(counts(&to).await.unwrap(), counts(&from).await.unwrap());
        let again = copy_all(&from, &to, 3).await.unwrap_err();
        assert!(
            again.to_string().contains("audit_events: 7 rows"),
            "{again}"
        );
    }
}
