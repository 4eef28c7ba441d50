//! Users, refresh tokens and revoked access-token ids. Written straight from the
//! handlers (there is no cache to keep in step: every check reads the database,
//! so a deletion or logout applies on the next request, on every instance).

use chrono::{DateTime, Utc};
use entity::{refresh_tokens, revoked_jtis, users};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, DatabaseConnection, DbErr, EntityTrait,
    PaginatorTrait, QueryFilter, QueryOrder, QuerySelect,
};
use uuid::Uuid;

pub struct Sessions;

impl Sessions {
    pub async fn live_user_count(db: &DatabaseConnection) -> Result<u64, DbErr> {
        users::Entity::find()
            .filter(users::Column::DeletedAt.is_null())
            .count(db)
            .await
    }

    pub async fn user_by_name(
        db: &DatabaseConnection,
        username: &str,
    ) -> Result<Option<users::Model>, DbErr> {
        users::Entity::find()
            .filter(users::Column::Username.eq(username.to_lowercase()))
            .filter(users::Column::DeletedAt.is_null())
            .one(db)
            .await
    }

    pub async fn live_user(
        db: &DatabaseConnection,
        id: Uuid,
    ) -> Result<Option<users::Model>, DbErr> {
        users::Entity::find_by_id(id)
            .filter(users::Column::DeletedAt.is_null())
            .one(db)
            .await
    }

    pub async fn insert_user(
        db: &DatabaseConnection,
        username: &str,
        password_hash: String,
        role: &str,
        now: DateTime<Utc>,
    ) -> Result<users::Model, DbErr> {
        let out = users::ActiveModel {
            id: Set(Uuid::now_v7()),
            username: Set(username.to_lowercase()),
            password_hash: Set(password_hash),
            role: Set(role.to_owned()),
            created_at: Set(now),
            deleted_at: Set(None),
        }
        .insert(db)
        .await;
        crate::db::reported(out)
    }

    pub async fn list_users(
        db: &DatabaseConnection,
        page: super::Page,
    ) -> Result<super::Paged<users::Model>, DbErr> {
        let mut q = users::Entity::find()
            .filter(users::Column::DeletedAt.is_null())
            .order_by_asc(users::Column::Id)
            .limit(page.limit + 1);
        if let Some(after) = page.after {
            q = q.filter(users::Column::Id.gt(after));
        }
        let rows = q.all(db).await?;
        Ok(super::Paged::from_overfetch(rows, page.limit, |u| u.id))
    }

    /// Soft-deletes a live user and revokes all of their refresh families. The
    /// update is conditional (`deleted_at IS NULL`) inside the transaction, so two
    /// instances deleting the same user at once delete it once: the loser gets
    /// `None`, as for a user that was never there.
    pub async fn delete_user(
        db: &DatabaseConnection,
        id: Uuid,
        now: DateTime<Utc>,
    ) -> Result<Option<users::Model>, DbErr> {
        let Some(user) = Self::live_user(db, id).await? else {
            return Ok(None);
        };
        let deleted = crate::db::write(db, async |txn| {
            let n = users::Entity::update_many()
                .col_expr(users::Column::DeletedAt, Expr::value(now))
                .filter(users::Column::Id.eq(id))
                .filter(users::Column::DeletedAt.is_null())
                .exec(txn)
                .await?
                .rows_affected;
            if n == 0 {
                return Ok(false);
            }
            refresh_tokens::Entity::update_many()
                .col_expr(refresh_tokens::Column::RevokedAt, Expr::value(now))
                .filter(refresh_tokens::Column::UserId.eq(id))
                .filter(refresh_tokens::Column::RevokedAt.is_null())
                .exec(txn)
                .await?;
            Ok(true)
        })
        .await?;
        Ok(deleted.then_some(user))
    }

    pub async fn insert_refresh(
        db: &DatabaseConnection,
        user: Uuid,
        family: Uuid,
        token_hash: String,
        expires_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<(), DbErr> {
        let out = refresh_tokens::ActiveModel {
            id: Set(Uuid::now_v7()),
            user_id: Set(user),
            family_id: Set(family),
            token_hash: Set(token_hash),
            expires_at: Set(expires_at),
            spent_at: Set(None),
            revoked_at: Set(None),
            created_at: Set(now),
        }
        .insert(db)
        .await;
        crate::db::reported(out).map(|_| ())
    }

    pub async fn refresh_by_hash(
        db: &DatabaseConnection,
        token_hash: &str,
    ) -> Result<Option<refresh_tokens::Model>, DbErr> {
        refresh_tokens::Entity::find()
            .filter(refresh_tokens::Column::TokenHash.eq(token_hash))
            .one(db)
            .await
    }

    /// Marks a refresh token spent, only if it still was not: `false` when another
    /// request spent it first (a race counts as reuse).
    pub async fn spend_refresh(
        db: &DatabaseConnection,
        id: Uuid,
        now: DateTime<Utc>,
    ) -> Result<bool, DbErr> {
        let r = refresh_tokens::Entity::update_many()
            .col_expr(refresh_tokens::Column::SpentAt, Expr::value(now))
            .filter(refresh_tokens::Column::Id.eq(id))
            .filter(refresh_tokens::Column::SpentAt.is_null())
            .filter(refresh_tokens::Column::RevokedAt.is_null())
            .exec(db)
            .await;
        Ok(crate::db::reported(r)?.rows_affected == 1)
    }

    pub async fn revoke_family(
        db: &DatabaseConnection,
        family: Uuid,
        now: DateTime<Utc>,
    ) -> Result<u64, DbErr> {
        let r = refresh_tokens::Entity::update_many()
            .col_expr(refresh_tokens::Column::RevokedAt, Expr::value(now))
            .filter(refresh_tokens::Column::FamilyId.eq(family))
            .filter(refresh_tokens::Column::RevokedAt.is_null())
            .exec(db)
            .await;
        Ok(crate::db::reported(r)?.rows_affected)
    }

    pub async fn family_revoked(db: &DatabaseConnection, family: Uuid) -> Result<bool, DbErr> {
        Ok(refresh_tokens::Entity::find()
            .filter(refresh_tokens::Column::FamilyId.eq(family))
            .filter(refresh_tokens::Column::RevokedAt.is_not_null())
            .count(db)
            .await?
            > 0)
    }

    pub async fn revoke_jti(
        db: &DatabaseConnection,
        jti: Uuid,
        expires_at: DateTime<Utc>,
    ) -> Result<(), DbErr> {
        let row = revoked_jtis::ActiveModel {
            jti: Set(jti),
            expires_at: Set(expires_at),
        };
        let out = match revoked_jtis::Entity::insert(row)
            .on_conflict_do_nothing()
            .exec(db)
            .await
        {
            Ok(_) | Err(DbErr::RecordNotInserted) => Ok(()),
            Err(e) => Err(e),
        };
        crate::db::reported(out)
    }

    pub async fn jti_revoked(db: &DatabaseConnection, jti: Uuid) -> Result<bool, DbErr> {
        Ok(revoked_jtis::Entity::find_by_id(jti)
            .one(db)
            .await?
            .is_some())
    }

    /// Drops revoked ids past their expiry and refresh tokens expired a day ago.
    pub async fn cleanup(db: &DatabaseConnection, now: DateTime<Utc>) -> Result<u64, DbErr> {
        crate::db::reported(Self::cleanup_in(db, now).await)
    }

    async fn cleanup_in(db: &DatabaseConnection, now: DateTime<Utc>) -> Result<u64, DbErr> {
        let a = revoked_jtis::Entity::delete_many()
            .filter(revoked_jtis::Column::ExpiresAt.lt(now))
            .exec(db)
            .await?;
        let b = refresh_tokens::Entity::delete_many()
            .filter(refresh_tokens::Column::ExpiresAt.lt(now - chrono::Duration::days(1)))
            .exec(db)
            .await?;
        Ok(a.rows_affected + b.rows_affected)
    }
}
