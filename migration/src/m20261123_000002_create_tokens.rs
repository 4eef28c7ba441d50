use sea_orm_migration::prelude::*;

use super::m20261123_000001_create_projects::Projects;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Tokens::Table)
                    .if_not_exists()
                    .col(ColumnDef::new(Tokens::Id).uuid().not_null().primary_key())
                    .col(ColumnDef::new(Tokens::ProjectId).uuid().not_null())
                    .col(ColumnDef::new(Tokens::Name).string_len(100).null())
                    .col(ColumnDef::new(Tokens::TokenHash).string_len(64).not_null())
                    .col(ColumnDef::new(Tokens::TokenHint).string_len(16).not_null())
                    .col(
                        ColumnDef::new(Tokens::PreviousTokenHash)
                            .string_len(64)
                            .null(),
                    )
                    .col(
                        ColumnDef::new(Tokens::PreviousValidUntil)
                            .timestamp_with_time_zone()
                            .null(),
                    )
                    .col(ColumnDef::new(Tokens::IsActive).boolean().not_null())
                    .col(
                        ColumnDef::new(Tokens::RevokedAt)
                            .timestamp_with_time_zone()
                            .null(),
                    )
                    .col(
                        ColumnDef::new(Tokens::ExpiresAt)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .col(ColumnDef::new(Tokens::MaxRequests).big_integer().null())
                    .col(
                        ColumnDef::new(Tokens::RequestCount)
                            .big_integer()
                            .not_null()
                            .default(0),
                    )
                    .col(ColumnDef::new(Tokens::RateLimitRpm).big_integer().null())
                    .col(ColumnDef::new(Tokens::AllowedModels).json().not_null())
                    .col(ColumnDef::new(Tokens::AllowedCidrs).json().not_null())
                    .col(
                        ColumnDef::new(Tokens::LastUsedAt)
                            .timestamp_with_time_zone()
                            .null(),
                    )
                    .col(
                        ColumnDef::new(Tokens::CreatedAt)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(Tokens::UpdatedAt)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_tokens_project")
                            .from(Tokens::Table, Tokens::ProjectId)
                            .to(Projects::Table, Projects::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_tokens_hash")
                    .table(Tokens::Table)
                    .col(Tokens::TokenHash)
                    .unique()
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;
        // Listing a project's tokens and revoking them all filter on project_id.
        manager
            .create_index(
                Index::create()
                    .name("idx_tokens_project")
                    .table(Tokens::Table)
                    .col(Tokens::ProjectId)
                    .col(Tokens::Id)
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(Tokens::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
enum Tokens {
    Table,
    Id,
    ProjectId,
    Name,
    TokenHash,
    TokenHint,
    PreviousTokenHash,
    PreviousValidUntil,
    IsActive,
    RevokedAt,
    ExpiresAt,
    MaxRequests,
    RequestCount,
    RateLimitRpm,
    AllowedModels,
    AllowedCidrs,
    LastUsedAt,
    CreatedAt,
    UpdatedAt,
}
