use sea_orm::entity::prelude::*;

/// A tenant of the gateway. Soft-deleted (`deleted_at`) so that its tokens keep
/// answering `token_revoked` instead of becoming unknown.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "projects")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub name: String,
    pub description: Option<String>,
    pub is_active: bool,
    /// AES-256-GCM ciphertext (versioned, base64); never the plaintext key.
    pub upstream_api_key_enc: Option<String>,
    /// JSON array of model names or `*` globs; empty = all.
    pub allowed_models: Json,
    /// JSON array of CIDRs; empty = any address.
    pub allowed_cidrs: Json,
    pub rate_limit_rpm: Option<i64>,
    /// JSON array of provider names tried in this order; empty = by priority.
    pub providers: Json,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
    pub deleted_at: Option<DateTimeUtc>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    #[sea_orm(has_many = "super::tokens::Entity")]
    Tokens,
}

impl Related<super::tokens::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Tokens.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
