use sea_orm::entity::prelude::*;

/// One security-relevant action. Never holds a secret: tokens appear as their hint.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "audit_events")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub timestamp: DateTimeUtc,
    pub action: String,
    pub actor: String,
    pub client_ip: Option<String>,
    pub project_id: Option<Uuid>,
    pub token_id: Option<Uuid>,
    pub token_hint: Option<String>,
    pub request_id: Option<String>,
    pub result: String,
    pub details: Json,
    /// The instance that wrote it (`server.instance_id`); none on older rows.
    pub instance: Option<String>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
