use sea_orm_migration::prelude::*;

/// `audit_events.instance` and `usage_records.instance`: which Palisade instance
/// (`server.instance_id`) wrote the row, once several share one database. Rows
/// written before have none.
#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [Tables::AuditEvents, Tables::UsageRecords] {
            manager
                .alter_table(
                    Table::alter()
                        .table(table)
                        .add_column(ColumnDef::new(Tables::Instance).string().null())
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [Tables::AuditEvents, Tables::UsageRecords] {
            manager
                .alter_table(
                    Table::alter()
                        .table(table)
                        .drop_column(Tables::Instance)
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }
}

#[derive(DeriveIden, Clone, Copy)]
enum Tables {
    AuditEvents,
    UsageRecords,
    Instance,
}
