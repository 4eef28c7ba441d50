//! Schema migrations, applied at start-up by `palisade serve` and on demand by
//! `palisade migrate`. Built with sea-query so the same files run on SQLite and
//! PostgreSQL.

pub use sea_orm_migration::prelude::*;

mod m20261123_000001_create_projects;
mod m20261123_000002_create_tokens;
mod m20261123_000003_create_audit_and_usage;
mod m20261126_000001_add_project_providers;
mod m20261126_000002_create_users_and_sessions;
mod m20261126_000003_index_audit_actor_and_result;
mod m20261130_000001_add_usage_estimated;
mod m20261130_000002_add_token_request_lease;
mod m20261130_000003_add_instance;
mod m20261130_000004_create_registry_revision;

pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261123_000001_create_projects::Migration),
            Box::new(m20261123_000002_create_tokens::Migration),
            Box::new(m20261123_000003_create_audit_and_usage::Migration),
            Box::new(m20261126_000001_add_project_providers::Migration),
            Box::new(m20261126_000002_create_users_and_sessions::Migration),
            Box::new(m20261126_000003_index_audit_actor_and_result::Migration),
            Box::new(m20261130_000001_add_usage_estimated::Migration),
            Box::new(m20261130_000002_add_token_request_lease::Migration),
            Box::new(m20261130_000003_add_instance::Migration),
            Box::new(m20261130_000004_create_registry_revision::Migration),
        ]
    }
}
