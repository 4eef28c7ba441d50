//! Which database errors mean "the storage cannot take this now" (a full disk, a
//! lock, a lost connection) rather than a constraint or a bug: the line between a
//! 503 with `retry-after` and a 4xx/500, drawn once for every layer.

use sea_orm::sqlx::postgres::PgDatabaseError;
use sea_orm::{DbErr, RuntimeErr};

/// Whether `e` says the storage cannot take writes now (as opposed to a constraint
/// or a bug): what the management API answers 503 for.
pub fn is_storage_failure(e: &DbErr) -> bool {
    let sqlx = match e {
        DbErr::ConnectionAcquire(_) => return true,
        DbErr::Conn(r) | DbErr::Exec(r) | DbErr::Query(r) => match r {
            RuntimeErr::SqlxError(s) => s,
            RuntimeErr::Internal(_) => return false,
        },
        _ => return false,
    };
    use sea_orm::sqlx::Error as S;
    match &**sqlx {
        S::Io(_) | S::PoolTimedOut | S::PoolClosed | S::WorkerCrashed => true,
        S::Database(d) if d.try_downcast_ref::<PgDatabaseError>().is_some() => {
            d.code().is_some_and(|c| pg_storage_failure(&c))
        }
        S::Database(d) => d
            .code()
            .and_then(|c| c.parse::<i32>().ok())
            .is_some_and(|code| STORAGE_CODES.contains(&(code & 0xff))),
        _ => false,
    }
}

/// PostgreSQL SQLSTATEs that mean the same: a lost connection (class 08), no
/// resources (53: disk full, out of memory, too many connections), the server
/// shutting down or starting (57P01–57P03), a statement cancelled by
/// `statement_timeout` (57014), lock waits given up (55P03), a read-only server
/// (25006, a standby), an I/O error (58), a serialization failure or deadlock (40).
fn pg_storage_failure(code: &str) -> bool {
    ["08", "53", "58", "40"].iter().any(|c| code.starts_with(c))
        || ["57P01", "57P02", "57P03", "57014", "55P03", "25006"].contains(&code)
}

/// SQLite primary result codes that mean "the storage cannot take this now":
/// BUSY, LOCKED, NOMEM, READONLY, IOERR, CORRUPT, FULL, CANTOPEN, PROTOCOL.
const STORAGE_CODES: [i32; 9] = [5, 6, 7, 8, 10, 11, 13, 14, 15];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_states_that_mean_the_server_cannot_take_it_now() {
        for code in ["08006", "53100", "57P01", "57014", "40001", "25006"] {
            assert!(pg_storage_failure(code), "{code}");
        }
        // Unique and foreign-key violations are the caller's business.
        for code in ["23505", "23503", "42P01"] {
            assert!(!pg_storage_failure(code), "{code}");
        }
    }
}
