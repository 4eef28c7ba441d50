use sea_orm_migration::prelude::*;

/// `registry_revision`: one row whose `revision` goes up with every change to
/// projects or tokens, so an instance sharing the database can tell, with one
/// small read, that another instance changed the registry and reload it
/// (`actors::token_registry::sync`). Also indexes `tokens.previous_token_hash`:
/// a secret unknown to an instance's cache is looked up by either hash.
#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(RegistryRevision::Table)
                    .col(
                        ColumnDef::new(RegistryRevision::Id)
                            .integer()
                            .not_null()
                            .primary_key(),
                    )
                    .col(
                        ColumnDef::new(RegistryRevision::Revision)
                            .big_integer()
                            .not_null(),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .exec_stmt(
                Query::insert()
                    .into_table(RegistryRevision::Table)
                    .columns([RegistryRevision::Id, RegistryRevision::Revision])
                    .values_panic([1.into(), 0.into()])
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_tokens_previous_hash")
                    .table(Tokens::Table)
                    .col(Tokens::PreviousTokenHash)
                    .if_not_exists()
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_index(
                Index::drop()
                    .name("idx_tokens_previous_hash")
                    .table(Tokens::Table)
                    .to_owned(),
            )
            .await?;
        manager
            .drop_table(Table::drop().table(RegistryRevision::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
enum RegistryRevision {
    Table,
    Id,
    Revision,
}

#[derive(DeriveIden)]
enum Tokens {
    Table,
    PreviousTokenHash,
}
