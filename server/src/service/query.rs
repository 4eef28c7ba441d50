//! Read-only queries. All take `&DatabaseConnection` and return `Result<_, DbErr>`.

use entity::{projects, tokens};
use sea_orm::{
    ColumnTrait, DatabaseConnection, DbErr, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
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

    /// Liveness probe for `/ready`.
    pub async fn ping(db: &DatabaseConnection) -> Result<(), DbErr> {
        db.ping().await
    }
}
