//! A PostgreSQL database of a test's own on the machine's server
//! (`PALISADE_TEST_POSTGRES`, default `postgres://postgres@127.0.0.1:5432`, trust
//! auth; `.ci/run` starts it), created empty and dropped when the value is dropped,
//! so tests run in parallel and assume nothing about the server's contents.

use std::sync::atomic::{AtomicU32, Ordering};

use sea_orm::{ConnectionTrait, Database};

fn server() -> String {
    std::env::var("PALISADE_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_owned())
}

pub struct PgDatabase {
    name: String,
    pub url: String,
}

impl PgDatabase {
    /// A new, empty database named after the process and a counter.
    pub async fn create() -> PgDatabase {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "palisade_e2e_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let admin = Database::connect(format!("{}/postgres", server()))
            .await
            .expect("PostgreSQL must be reachable (.ci/run starts it)");
        admin
            .execute_unprepared(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .await
            .unwrap();
        admin
            .execute_unprepared(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap();
        admin.close().await.unwrap();
        let url = format!("{}/{name}", server());
        PgDatabase { name, url }
    }

    /// Its name (unique among the tests running now).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A connection to it (for checks the API does not offer).
    pub async fn connect(&self) -> sea_orm::DatabaseConnection {
        Database::connect(&self.url).await.unwrap()
    }
}

impl Drop for PgDatabase {
    /// Dropped on a thread of its own with its own runtime: `Drop` runs inside
    /// the test's runtime, which cannot be blocked on.
    fn drop(&mut self) {
        let name = self.name.clone();
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let admin = Database::connect(format!("{}/postgres", server())).await?;
                admin
                    .execute_unprepared(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .await?;
                admin.close().await
            })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("could not drop the test database {}", self.name);
        }
    }
}
