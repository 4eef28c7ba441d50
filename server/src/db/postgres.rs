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
