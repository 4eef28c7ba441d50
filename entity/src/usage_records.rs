use sea_orm::entity::prelude::*;

/// One proxied request. Token counts are the upstream's, or Palisade's estimate
/// (`usage_estimated`) when the upstream reported none; `None` when neither exists
/// (failed requests, endpoints that count no tokens).
#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "usage_records")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub timestamp: DateTimeUtc,
    pub request_id: String,
    pub project_id: Uuid,
    pub token_id: Uuid,
    pub model: Option<String>,
    pub provider: String,
    pub endpoint: String,
    pub status: i32,
    pub streamed: bool,
    pub prompt_tokens: Option<i64>,
    pub completion_tokens: Option<i64>,
    pub total_tokens: Option<i64>,
    pub latency_ms: f64,
    pub ttfb_ms: Option<f64>,
    pub client_closed: bool,
    pub usage_estimated: bool,
    /// The instance that wrote it (`server.instance_id`); none on older rows.
    pub instance: Option<String>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
