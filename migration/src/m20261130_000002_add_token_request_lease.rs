use sea_orm_migration::prelude::*;

/// `tokens.request_lease`: the request count up to which a running gateway may
/// admit a quota'd token's requests without asking the database again. Written
/// before the requests it covers are admitted, so a crash never lets a token
/// exceed `max_requests`; cleared at a clean shutdown. `NULL`: no lease held.
#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Tokens::Table)
                    .add_column(ColumnDef::new(Tokens::RequestLease).big_integer().null())
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Tokens::Table)
                    .drop_column(Tokens::RequestLease)
                    .to_owned(),
            )
            .await
    }
}

#[derive(DeriveIden)]
enum Tokens {
    Table,
    RequestLease,
}
