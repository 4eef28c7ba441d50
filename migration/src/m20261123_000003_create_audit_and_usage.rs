use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(AuditEvents::Table)
                    .if_not_exists()
                    .col(
                        ColumnDef::new(AuditEvents::Id)
                            .uuid()
                            .not_null()
                            .primary_key(),
                    )
                    .col(
                        ColumnDef::new(AuditEvents::Timestamp)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(AuditEvents::Action)
                            .string_len(64)
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(AuditEvents::Actor)
                            .string_len(128)
                            .not_null(),
                    )
                    .col(ColumnDef::new(AuditEvents::ClientIp).string_len(64).null())
                    .col(ColumnDef::new(AuditEvents::ProjectId).uuid().null())
                    .col(ColumnDef::new(AuditEvents::TokenId).uuid().null())
                    .col(ColumnDef::new(AuditEvents::TokenHint).string_len(16).null())
                    .col(
                        ColumnDef::new(AuditEvents::RequestId)
                            .string_len(128)
                            .null(),
                    )
                    .col(
                        ColumnDef::new(AuditEvents::Result)
                            .string_len(16)
                            .not_null(),
                    )
                    .col(ColumnDef::new(AuditEvents::Details).json().not_null())
                    .to_owned(),
            )
            .await?;
        // Newest-first listing pages by id (UUIDv7 = time order); filters narrow it.
        for (name, col) in [
            ("idx_audit_action", AuditEvents::Action),
            ("idx_audit_project", AuditEvents::ProjectId),
            ("idx_audit_token", AuditEvents::TokenId),
            ("idx_audit_timestamp", AuditEvents::Timestamp),
        ] {
            manager
                .create_index(
                    Index::create()
                        .name(name)
                        .table(AuditEvents::Table)
                        .col(col)
                        .col(AuditEvents::Id)
                        .if_not_exists()
                        .to_owned(),
                )
                .await?;
        }
        manager
            .create_table(
                Table::create()
                    .table(UsageRecords::Table)
                    .if_not_exists()
                    .col(
                        ColumnDef::new(UsageRecords::Id)
                            .uuid()
                            .not_null()
                            .primary_key(),
                    )
                    .col(
                        ColumnDef::new(UsageRecords::Timestamp)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(UsageRecords::RequestId)
                            .string_len(128)
                            .not_null(),
                    )
                    .col(ColumnDef::new(UsageRecords::ProjectId).uuid().not_null())
                    .col(ColumnDef::new(UsageRecords::TokenId).uuid().not_null())
                    .col(ColumnDef::new(UsageRecords::Model).string_len(256).null())
                    .col(
                        ColumnDef::new(UsageRecords::Provider)
                            .string_len(128)
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(UsageRecords::Endpoint)
                            .string_len(64)
                            .not_null(),
                    )
                    .col(ColumnDef::new(UsageRecords::Status).integer().not_null())
                    .col(ColumnDef::new(UsageRecords::Streamed).boolean().not_null())
                    .col(
                        ColumnDef::new(UsageRecords::PromptTokens)
                            .big_integer()
                            .null(),
                    )
                    .col(
                        ColumnDef::new(UsageRecords::CompletionTokens)
                            .big_integer()
                            .null(),
                    )
                    .col(
                        ColumnDef::new(UsageRecords::TotalTokens)
                            .big_integer()
                            .null(),
                    )
                    .col(ColumnDef::new(UsageRecords::LatencyMs).double().not_null())
                    .col(ColumnDef::new(UsageRecords::TtfbMs).double().null())
                    .col(
                        ColumnDef::new(UsageRecords::ClientClosed)
                            .boolean()
                            .not_null(),
                    )
                    .to_owned(),
            )
            .await?;
        for (name, col) in [
            ("idx_usage_timestamp", UsageRecords::Timestamp),
            ("idx_usage_project", UsageRecords::ProjectId),
            ("idx_usage_token", UsageRecords::TokenId),
        ] {
            manager
                .create_index(
                    Index::create()
                        .name(name)
                        .table(UsageRecords::Table)
                        .col(col)
                        .col(UsageRecords::Timestamp)
                        .if_not_exists()
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(UsageRecords::Table).to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table(AuditEvents::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden, Clone, Copy)]
enum AuditEvents {
    Table,
    Id,
    Timestamp,
    Action,
    Actor,
    ClientIp,
    ProjectId,
    TokenId,
    TokenHint,
    RequestId,
    Result,
    Details,
}

#[derive(DeriveIden, Clone, Copy)]
enum UsageRecords {
    Table,
    Id,
    Timestamp,
    RequestId,
    ProjectId,
    TokenId,
    Model,
    Provider,
    Endpoint,
    Status,
    Streamed,
    PromptTokens,
    CompletionTokens,
    TotalTokens,
    LatencyMs,
    TtfbMs,
    ClientClosed,
}
