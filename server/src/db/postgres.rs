//! The PostgreSQL pool: size and acquire timeout as for SQLite, a statement
//! timeout on every connection, TLS as the URL's `sslmode` asks.
//!
//! TLS is sqlx's rustls with ring (the one TLS stack of the binary); the server's
//! certificate is checked against the system's CA certificates or the URL's
//! `sslrootcert`, as libpq does for `verify-ca`/`verify-full`. `sslmode=require`
//! encrypts without checking the certificate (libpq's meaning too).

use std::time::Duration;

use sea_orm::sqlx::{AssertSqlSafe, Executor};
use sea_orm::{ConnectOptions, Database, DatabaseConnection};

use super::ACQUIRE_TIMEOUT;
use crate::config::{DatabaseConfig, InitError};

pub(super) async fn open(cfg: &DatabaseConfig) -> Result<DatabaseConnection, InitError> {
    let set = statement_timeout_sql(cfg.statement_timeout.0);
    let mut opts = ConnectOptions::new(cfg.url.expose().to_owned());
    opts.max_connections(u32::try_from(cfg.max_connections).unwrap_or(u32::MAX))
        .min_connections(1)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .sqlx_logging(false)
        .map_sqlx_postgres_pool_opts(move |o| {
            let set = set.clone();
            // Per connection, before the pool hands it out: a statement stuck on a
            // lock or a slow plan ends with an error instead of holding a pooled
            // connection (and a request) indefinitely.
            o.after_connect(move |conn, _meta| {
                let set = set.clone();
                // Our own text: a number of milliseconds.
                Box::pin(async move { conn.execute(AssertSqlSafe(set)).await.map(drop) })
            })
        });
    Database::connect(opts).await.map_err(|e| {
        InitError::Database(format!(
            "cannot open the PostgreSQL database {}: {e}",
            redacted(cfg.url.expose())
        ))
    })
}

/// `SET statement_timeout` in milliseconds (PostgreSQL's unit); 0 turns it off.
fn statement_timeout_sql(d: Duration) -> String {
    format!("SET statement_timeout = {}", d.as_millis())
}

/// The URL with any password replaced, for messages and logs.
pub fn redacted(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        Ok(u) => u.to_string(),
        Err(_) => "(unparsable URL)".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sea_orm::ConnectionTrait;

    /// The machine's PostgreSQL (`.ci/run` starts it); nothing is written to it.
    fn server_url() -> String {
        let base = std::env::var("PALISADE_TEST_POSTGRES")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_owned());
        format!("{base}/postgres")
    }

    #[actix_rt::test]
    async fn statement_timeout_holds_on_every_pooled_connection() {
        let cfg = DatabaseConfig {
            url: crate::secret::Secret::new(server_url()),
            max_connections: 2,
            statement_timeout: crate::config::HumanDuration(Duration::from_millis(200)),
            ..Default::default()
        };
        let db = super::super::connect(&cfg).await.unwrap();
        let shown = db
            .query_one_raw(sea_orm::Statement::from_string(
                db.get_database_backend(),
                "SHOW statement_timeout",
            ))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(shown.try_get_by_index::<String>(0).unwrap(), "200ms");
        // Two at once: both connections of the pool have it.
        let slow = || db.execute_unprepared("SELECT pg_sleep(2)");
        let (a, b) = tokio::join!(slow(), slow());
        for e in [a.unwrap_err(), b.unwrap_err()] {
            assert!(e.to_string().contains("statement timeout"), "{e}");
            // A cancelled statement is the storage's trouble: 503, not 500.
            assert!(crate::storage::is_storage_failure(&e), "{e}");
        }
    }

    #[actix_rt::test]
    async fn tls_is_built_in_and_refused_servers_say_so() {
        // The local server has no TLS: `sslmode=require` must fail on the
        // server's refusal, not on TLS missing from the build.
        let cfg = DatabaseConfig {
            url: crate::secret::Secret::new(format!("{}?sslmode=require", server_url())),
            ..Default::default()
        };
        match super::super::connect(&cfg).await {
            // A server with TLS turned on: fine too.
            Ok(_) => {}
            Err(e) => {
                let e = e.to_string();
                assert!(!e.contains("without TLS support"), "{e}");
                assert!(e.contains("TLS"), "{e}");
            }
        }
    }

    #[test]
    fn messages_never_carry_the_password() {
        assert_eq!(
            redacted("postgres://app:s3cret@db:5432/palisade?sslmode=require"),
            "postgres://app:***@db:5432/palisade?sslmode=require"
        );
        assert_eq!(redacted("postgres://db/p"), "postgres://db/p");
        assert_eq!(
            statement_timeout_sql(Duration::from_secs(30)),
            "SET statement_timeout = 30000"
        );
    }
}
