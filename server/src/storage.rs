//! Which database errors mean "the storage cannot take this now" (a full disk, a
//! lock, a lost connection) rather than a constraint or a bug: the line between a
//! 503 with `retry-after` and a 4xx/500, drawn once for every layer.

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
        S::Database(d) => d
            .code()
            .and_then(|c| c.parse::<i32>().ok())
            .is_some_and(|code| STORAGE_CODES.contains(&(code & 0xff))),
        _ => false,
    }
}

/// SQLite primary result codes that mean "the storage cannot take this now":
/// BUSY, LOCKED, NOMEM, READONLY, IOERR, CORRUPT, FULL, CANTOPEN, PROTOCOL.
const STORAGE_CODES: [i32; 9] = [5, 6, 7, 8, 10, 11, 13, 14, 15];
