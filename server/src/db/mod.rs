//! Database connection: SQLite tuned for a concurrent server (and the private
//! data directory it lives in), or PostgreSQL for several instances (SPEC §5).
//!
//! SQLite:
//! * WAL + `synchronous=NORMAL`: readers never block the writer.
//! * `busy_timeout` and foreign keys are connect options, so they hold on every
//!   pooled connection, and the pool has more than one connection.
//! * Every write transaction is opened `BEGIN IMMEDIATE` ([`begin_write`]): a
//!   deferred transaction that upgrades from read to write gets `SQLITE_BUSY` at once,
//!   without waiting for the busy timeout.
//! * Writes go through [`write`] (or report to [`health()`] themselves): a failed
//!   write makes [`WriteHealth`] say so (`/ready`, `/metrics`) and keeps every
//!   connection that may have seen it out of the pool ([`keep_on_release`]).
//! * A connection is given [`ACQUIRE_TIMEOUT`] at most: a request that cannot get
//!   one fails fast instead of queueing behind a stuck pool.
//!
//! PostgreSQL (`postgres://`, see [`postgres`]): the same pool size and acquire
//! timeout; every connection runs `SET statement_timeout` when it opens; TLS as the
//! URL's `sslmode` says (rustls with ring, the system's CA certificates or the
//! URL's `sslrootcert`). Transactions are the server's default (read committed);
//! read-then-write paths lock their rows (`SELECT … FOR UPDATE`) or update
//! conditionally, so they hold on both backends.
//!
//! On both, [`reach`] pings the database every second: `/ready`, a metric and one
//! WARN line when it stops answering.

mod health;
mod postgres;
pub mod reach;

use std::path::{Path, PathBuf};
use std::time::Duration;

use migration::{Migrator, MigratorTrait};
use sea_orm::sqlx::pool::PoolConnectionMetadata;
use sea_orm::sqlx::sqlite::{SqliteConnection, SqliteJournalMode, SqliteSynchronous};
use sea_orm::{
    ConnectOptions, Database, DatabaseConnection, DatabaseTransaction, DbErr,
    SqliteTransactionMode, TransactionOptions, TransactionTrait,
};

pub use self::health::health;
use crate::config::{DatabaseConfig, InitError};

/// How long a caller waits for a pooled connection before failing (503 on the
/// management API). Connections are only ever held for one statement or one
/// short transaction, so a longer wait means something is stuck.
pub const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);

/// Opens the pool (creating the data directory `0700` and the file `0600` first).
pub async fn connect(cfg: &DatabaseConfig) -> Result<DatabaseConnection, InitError> {
    open(cfg, None).await
}

/// A one-connection pool of its own for a background writer, or `None` for an
/// in-memory database (where another connection would be another database).
///
/// SQLite serialises writers anyway, and sqlx runs each connection on a thread
/// spawned by whoever opens it: opened from a low-priority thread, the connection's
/// thread inherits that priority (see `actors::audit_writer`).
pub async fn connect_dedicated(
    cfg: &DatabaseConfig,
) -> Option<Result<DatabaseConnection, InitError>> {
    sqlite_file_path(cfg.url.expose())?;
    Some(open(cfg, Some(1)).await)
}

/// Whether `url` names a PostgreSQL database (else SQLite).
pub fn is_postgres(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

async fn open(cfg: &DatabaseConfig, size: Option<u32>) -> Result<DatabaseConnection, InitError> {
    let url = cfg.url.expose();
    if is_postgres(url) {
        return postgres::open(cfg).await;
    }
    let memory = url.contains(":memory:") || url.contains("mode=memory");
    if let Some(path) = sqlite_file_path(url) {
        prepare_private_file(&path)?;
    }
    let busy = cfg.busy_timeout.0;
    let mut opts = ConnectOptions::new(url.to_owned());
    opts.max_connections(match size {
        // Every connection to `:memory:` is its own empty database.
        _ if memory => 1,
        Some(n) => n,
        None => u32::try_from(cfg.max_connections).unwrap_or(u32::MAX),
    })
    .min_connections(1)
    .acquire_timeout(ACQUIRE_TIMEOUT)
    .sqlx_logging(false)
    // `statement_timeout` does not apply: SQLite runs in-process and has no
    // statement timer; what it waits for is the write lock (`busy_timeout`).
    .map_sqlx_sqlite_opts(move |o| {
        o.journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(busy)
            .foreign_keys(true)
    })
    .map_sqlx_sqlite_pool_opts(|o| {
        o.after_release(|conn, meta| Box::pin(async move { Ok(keep_on_release(conn, &meta)) }))
    });
    Database::connect(opts)
        .await
        .map_err(|e| InitError::Database(format!("cannot open the database: {e}")))
}

pub async fn migrate(db: &DatabaseConnection) -> Result<(), InitError> {
    Migrator::up(db, None)
        .await
        .map_err(|e| InitError::Database(format!("migrations failed: {e}")))
}

/// Whether a connection handed back to the pool may be used again ([`health`]
/// explains both rules). Runs on every release: two atomic loads.
pub fn keep_on_release(conn: &SqliteConnection, meta: &PoolConnectionMetadata) -> bool {
    use sea_orm::sqlx::Connection;
    if conn.is_in_transaction() {
        tracing::warn!("closing a database connection left inside a transaction");
        return false;
    }
    if health().predates_last_failure(meta.age) {
        tracing::debug!("closing a database connection that may have seen a failed write");
        return false;
    }
    true
}

/// Starts a write transaction that holds the write lock from its first statement.
/// Prefer [`write`], which also reports the outcome to [`health()`].
pub async fn begin_write(db: &DatabaseConnection) -> Result<DatabaseTransaction, DbErr> {
    db.begin_with_options(TransactionOptions {
        sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
        ..Default::default()
    })
    .await
}

/// Runs `f` in one `BEGIN IMMEDIATE` transaction and commits it; the outcome
/// (begin, statements and commit alike) goes to [`health()`]. On an error the
/// transaction is dropped, which rolls it back and hands its connection to
/// [`keep_on_release`].
pub async fn write<T>(
    db: &DatabaseConnection,
    f: impl AsyncFnOnce(&DatabaseTransaction) -> Result<T, DbErr>,
) -> Result<T, DbErr> {
    let out = async {
        let txn = begin_write(db).await?;
        let v = f(&txn).await?;
        txn.commit().await?;
        Ok(v)
    }
    .await;
    reported(out)
}

/// While writes are failing, checks at most once per [`PROBE_EVERY`] whether they
/// work again, with a write that changes nothing yet needs the storage. Without it,
/// an unready gateway that gets no traffic (taken out of its load balancer by
/// `/ready`) would never write again, and so never learn that storage recovered.
///
/// SQLite: rewriting `PRAGMA user_version` with its own value dirties the header
/// page, so the commit writes a WAL frame. PostgreSQL: a transaction that takes a
/// transaction id (`txid_current()` assigns one) and commits needs the server to
/// write its WAL, and touches no table.
pub async fn probe_if_failing(db: &DatabaseConnection) {
    if !health().is_failing() || !health().probe_due(PROBE_EVERY) {
        return;
    }
    let out = write(db, async |txn| {
        use sea_orm::ConnectionTrait;
        let backend = txn.get_database_backend();
        if backend == sea_orm::DbBackend::Postgres {
            return txn
                .execute_unprepared("SELECT txid_current()")
                .await
                .map(drop);
        }
        let v: i64 = txn
            .query_one_raw(sea_orm::Statement::from_string(
                backend,
                "PRAGMA user_version",
            ))
            .await?
            .map(|r| r.try_get_by_index(0))
            .transpose()?
            .unwrap_or(0);
        txn.execute_unprepared(&format!("PRAGMA user_version = {v}"))
            .await
            .map(|_| ())
    })
    .await;
    if let Err(e) = out {
        tracing::debug!(error = %e, "database write probe failed");
    }
}

/// How often [`probe_if_failing`] may write.
const PROBE_EVERY: Duration = Duration::from_secs(1);

/// Reports a single-statement write's outcome to [`health()`] and passes it on.
pub fn reported<T>(out: Result<T, DbErr>) -> Result<T, DbErr> {
    match &out {
        Ok(_) => health().succeeded(),
        Err(e) => health().failed(e),
    }
    out
}

/// The file behind a `sqlite:` URL, or `None` for in-memory databases.
pub fn sqlite_file_path(url: &str) -> Option<PathBuf> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next().unwrap_or_default();
    if path.is_empty() || path.contains(":memory:") || url.contains("mode=memory") {
        return None;
    }
    Some(PathBuf::from(path))
}

/// Data files hold token hashes and encrypted keys: owner-only from the first byte.
fn prepare_private_file(path: &Path) -> Result<(), InitError> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
    let io = |what: &str, e: std::io::Error| {
        InitError::Database(format!("{what} {}: {e}", path.display()))
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
        && !dir.exists()
    {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| io("cannot create the directory of", e))?;
    }
    if !path.exists() {
        std::fs::OpenOptions::new()
            .create_new(true)
            .write(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| io("cannot create", e))?;
    } else if let Ok(meta) = std::fs::metadata(path)
        && meta.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(
            path = %path.display(),
            "database file is readable by other users; chmod 600 it"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_paths() {
        assert_eq!(
            sqlite_file_path("sqlite://data/palisade.db?mode=rwc"),
            Some(PathBuf::from("data/palisade.db"))
        );
        assert_eq!(
            sqlite_file_path("sqlite:///tmp/x.db"),
            Some(PathBuf::from("/tmp/x.db"))
        );
        assert_eq!(sqlite_file_path("sqlite::memory:"), None);
    }

    #[actix_rt::test]
    async fn a_probe_write_clears_failing_once_the_database_takes_writes() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = DatabaseConfig {
            url: crate::secret::Secret::new(format!(
                "sqlite://{}?mode=rwc",
                dir.path().join("p.db").display()
            )),
            ..Default::default()
        };
        let db = connect(&cfg).await.unwrap();
        migrate(&db).await.unwrap();
        let io = DbErr::Exec(sea_orm::RuntimeErr::SqlxError(std::sync::Arc::new(
            sea_orm::sqlx::Error::Io(std::io::Error::other("disk full")),
        )));
        health().failed(&io);
        assert!(health().is_failing());
        probe_if_failing(&db).await;
        assert!(!health().is_failing(), "the probe's write went through");
        // The connection that existed at the failure was closed, not reused:
        // the pool still serves.
        db.ping().await.unwrap();
    }
}
