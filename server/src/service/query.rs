//! Read-only queries. All take `&DatabaseConnection` and return `Result<_, DbErr>`.

use chrono::{DateTime, Utc};
use entity::{audit_events, projects, tokens, usage_records};
use sea_orm::sea_query::{Expr, NullOrdering, Order};
use sea_orm::{
    ColumnTrait, DatabaseConnection, DbBackend, DbErr, EntityTrait, FromQueryResult, QueryFilter,
    QueryOrder, QuerySelect,
};
use uuid::Uuid;

use super::{Page, Paged};

pub struct Query;

impl Query {
    /// A live (not deleted) project.
    pub async fn project(
        db: &DatabaseConnection,
        id: Uuid,
    ) -> Result<Option<projects::Model>, DbErr> {
        projects::Entity::find_by_id(id)
            .filter(projects::Column::DeletedAt.is_null())
            .one(db)
            .await
    }

    pub async fn projects(
        db: &DatabaseConnection,
        active: Option<bool>,
        page: Page,
    ) -> Result<Paged<projects::Model>, DbErr> {
        let mut q = projects::Entity::find().filter(projects::Column::DeletedAt.is_null());
        if let Some(active) = active {
            q = q.filter(projects::Column::IsActive.eq(active));
        }
        if let Some(after) = page.after {
            q = q.filter(projects::Column::Id.gt(after));
        }
        let rows = q
            .order_by_asc(projects::Column::Id)
            .limit(page.limit + 1)
            .all(db)
            .await?;
        Ok(Paged::from_overfetch(rows, page.limit, |p| p.id))
    }

    /// Every project, deleted ones included: the registry needs them to answer
    /// `token_revoked` for their tokens.
    pub async fn all_projects(db: &DatabaseConnection) -> Result<Vec<projects::Model>, DbErr> {
        projects::Entity::find().all(db).await
    }

    pub async fn all_tokens(db: &DatabaseConnection) -> Result<Vec<tokens::Model>, DbErr> {
        tokens::Entity::find().all(db).await
    }

    pub async fn token(db: &DatabaseConnection, id: Uuid) -> Result<Option<tokens::Model>, DbErr> {
        tokens::Entity::find_by_id(id).one(db).await
    }

    pub async fn tokens(
        db: &DatabaseConnection,
        project_id: Option<Uuid>,
        active: Option<bool>,
        page: Page,
    ) -> Result<Paged<tokens::Model>, DbErr> {
        let mut q = tokens::Entity::find();
        if let Some(project_id) = project_id {
            q = q.filter(tokens::Column::ProjectId.eq(project_id));
        }
        if let Some(active) = active {
            q = q.filter(tokens::Column::IsActive.eq(active));
        }
        if let Some(after) = page.after {
            q = q.filter(tokens::Column::Id.gt(after));
        }
        let rows = q
            .order_by_asc(tokens::Column::Id)
            .limit(page.limit + 1)
            .all(db)
            .await?;
        Ok(Paged::from_overfetch(rows, page.limit, |t| t.id))
    }
}

#[derive(Debug, Default)]
pub struct AuditFilter {
    pub action: Option<String>,
    pub actor: Option<String>,
    pub project_id: Option<Uuid>,
    pub token_id: Option<Uuid>,
    pub result: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
}

#[derive(Debug, Default)]
pub struct UsageFilter {
    pub project_id: Option<Uuid>,
    pub token_id: Option<Uuid>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsageGroup {
    Day,
    Model,
    Token,
}

#[derive(Debug, FromQueryResult)]
pub struct UsageBucket {
    pub key: Option<String>,
    pub requests: i64,
    pub errors: i64,
    pub prompt_tokens: Option<i64>,
    pub completion_tokens: Option<i64>,
    /// Requests whose tokens Palisade estimated (the upstream reported none).
    pub estimated_requests: i64,
}

impl Query {
    /// Newest first; the cursor is the last id of the previous page.
    pub async fn audit_events(
        db: &DatabaseConnection,
        f: &AuditFilter,
        page: Page,
    ) -> Result<Paged<audit_events::Model>, DbErr> {
        use audit_events::Column as C;
        let mut q = audit_events::Entity::find();
        if let Some(v) = &f.action {
            q = q.filter(C::Action.eq(v.as_str()));
        }
        if let Some(v) = &f.actor {
            q = q.filter(C::Actor.eq(v.as_str()));
        }
        if let Some(v) = f.project_id {
            q = q.filter(C::ProjectId.eq(v));
        }
        if let Some(v) = f.token_id {
            q = q.filter(C::TokenId.eq(v));
        }
        if let Some(v) = &f.result {
            q = q.filter(C::Result.eq(v.as_str()));
        }
        if let Some(v) = f.since {
            q = q.filter(C::Timestamp.gte(v));
        }
        if let Some(v) = f.until {
            q = q.filter(C::Timestamp.lt(v));
        }
        if let Some(after) = page.after {
            q = q.filter(C::Id.lt(after));
        }
        let rows = q.order_by_desc(C::Id).limit(page.limit + 1).all(db).await?;
        Ok(Paged::from_overfetch(rows, page.limit, |e| e.id))
    }

    /// Aggregates usage records. Keys: `YYYY-MM-DD` (UTC), the model name, or the
    /// token id (32 hex digits; the handler formats it), ordered by key bytewise with
    /// no key (a request without a model) first, on SQLite and PostgreSQL alike.
    pub async fn usage(
        db: &DatabaseConnection,
        f: &UsageFilter,
        group: UsageGroup,
    ) -> Result<Vec<UsageBucket>, DbErr> {
        use usage_records::Column as C;
        let pg = db.get_database_backend() == DbBackend::Postgres;
        let key = Expr::cust(group_key(group, pg));
        // PostgreSQL sorts text by the database's collation (`en_US`: "a" < "B");
        // SQLite compares bytes. "C" is bytewise on PostgreSQL too.
        let order = Expr::cust(if pg {
            format!("{} COLLATE \"C\"", group_key(group, pg))
        } else {
            group_key(group, pg).to_owned()
        });
        // `SUM` of a `bigint` is `numeric` on PostgreSQL: cast back to what is read.
        let sum = |col: &str| Expr::cust(format!("CAST(SUM({col}) AS BIGINT)"));
        let mut q = usage_records::Entity::find()
            .select_only()
            .column_as(key.clone(), "key")
            .column_as(Expr::cust("COUNT(*)"), "requests")
            .column_as(
                Expr::cust("COALESCE(SUM(CASE WHEN status >= 400 THEN 1 ELSE 0 END), 0)"),
                "errors",
            )
            .column_as(sum("prompt_tokens"), "prompt_tokens")
            .column_as(sum("completion_tokens"), "completion_tokens")
            .column_as(
                Expr::cust("COALESCE(SUM(CASE WHEN usage_estimated THEN 1 ELSE 0 END), 0)"),
                "estimated_requests",
            );
        if let Some(v) = f.project_id {
            q = q.filter(C::ProjectId.eq(v));
        }
        if let Some(v) = f.token_id {
            q = q.filter(C::TokenId.eq(v));
        }
        if let Some(v) = f.since {
            q = q.filter(C::Timestamp.gte(v));
        }
        if let Some(v) = f.until {
            q = q.filter(C::Timestamp.lt(v));
        }
        q.group_by(key)
            .order_by_with_nulls(order, Order::Asc, NullOrdering::First)
            .into_model::<UsageBucket>()
            .all(db)
            .await
    }
}

/// The SQL of a usage group's key. Timestamps are stored in UTC on both backends
/// (SQLite: RFC 3339 text ending `+00:00`), so the day is the UTC date.
fn group_key(group: UsageGroup, pg: bool) -> &'static str {
    match (group, pg) {
        (UsageGroup::Day, false) => "substr(\"timestamp\", 1, 10)",
        (UsageGroup::Day, true) => "to_char(\"timestamp\" AT TIME ZONE 'UTC', 'YYYY-MM-DD')",
        (UsageGroup::Model, _) => "model",
        (UsageGroup::Token, false) => "lower(hex(token_id))",
        (UsageGroup::Token, true) => "replace(token_id::text, '-', '')",
    }
}
