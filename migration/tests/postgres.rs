#![allow(clippy::unwrap_used, clippy::expect_used)]

//! The one migration set applies to PostgreSQL as well as SQLite (issue 18, scope 1):
//! every migration up, then every one down, on a database of its own on the
//! machine's PostgreSQL (`PALISADE_TEST_POSTGRES`, default
//! `postgres://postgres@127.0.0.1:5432`), dropped at the end.

use sea_orm_migration::MigratorTrait;
use sea_orm_migration::sea_orm::{ConnectionTrait, Database};

fn server() -> String {
    std::env::var("PALISADE_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_owned())
}

#[tokio::test]
async fn every_migration_applies_and_reverts_on_postgresql() {
    let admin = Database::connect(format!("{}/postgres", server()))
        .await
        .expect("PostgreSQL must be reachable (.ci/run starts it)");
    let name = format!("palisade_migration_{}", std::process::id());
    admin
        .execute_unprepared(&format!("DROP DATABASE IF EXISTS {name}"))
        .await
        .unwrap();
    admin
        .execute_unprepared(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap();
    let db = Database::connect(format!("{}/{name}", server()))
        .await
        .unwrap();
    let outcome = async {
        migration::Migrator::up(&db, None).await?;
        let applied = migration::Migrator::get_applied_migrations(&db)
            .await?
            .len();
        assert_eq!(applied, migration::Migrator::migrations().len());
        migration::Migrator::down(&db, None).await
    }
    .await;
    db.close().await.unwrap();
    admin
        .execute_unprepared(&format!("DROP DATABASE {name}"))
        .await
        .unwrap();
    outcome.unwrap();
}
