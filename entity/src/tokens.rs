use sea_orm::entity::prelude::*;

/// A `tok-` credential. Only the SHA-256 of the secret is stored (`token_hash`,
/// lowercase hex); `previous_token_hash` keeps the pre-rotation secret valid until
/// `previous_valid_until`.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "tokens")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub project_id: Uuid,
    pub name: Option<String>,
    #[sea_orm(unique)]
    pub token_hash: String,
    pub token_hint: String,
    pub previous_token_hash: Option<String>,
    pub previous_valid_until: Option<DateTimeUtc>,
    pub is_active: bool,
    pub revoked_at: Option<DateTimeUtc>,
    pub expires_at: DateTimeUtc,
    pub max_requests: Option<i64>,
    pub request_count: i64,
    /// The count a running gateway may admit up to without asking again; written
    /// before those requests are admitted (crash-safe quotas). `None`: no lease.
    pub request_lease: Option<i64>,
    pub rate_limit_rpm: Option<i64>,
    pub allowed_models: Json,
    pub allowed_cidrs: Json,
    pub last_used_at: Option<DateTimeUtc>,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    #[sea_orm(
        belongs_to = "super::projects::Entity",
        from = "Column::ProjectId",
        to = "super::projects::Column::Id",
        on_update = "NoAction",
        on_delete = "Cascade"
    )]
    Projects,
}

impl Related<super::projects::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Projects.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
