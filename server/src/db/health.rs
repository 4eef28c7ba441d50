//! Write health: whether the database accepts writes, and which pooled connections
//! must not be used again.
//!
//! SQLite after a failed write (`SQLITE_FULL`, an I/O error) can leave a connection
//! inside an open transaction: the driver lowers its transaction depth only when
//! `COMMIT`/`ROLLBACK` succeed, so the next `BEGIN` on that connection becomes a
//! `SAVEPOINT` inside the stuck transaction, nothing it writes is ever committed,
//! and it holds the write lock against every other connection. Two rules keep such
//! a connection out of the pool (both applied when a connection is released, see
//! [`super::keep_on_release`]):
//!
//! 1. a connection the driver still counts as inside a transaction is closed
//!    (closing a SQLite connection rolls back whatever it held);
//! 2. after any failed write, every connection that existed at that moment is
//!    closed when it is next released: the one that saw the failure is among them,
//!    and which one it was is not known at release time. New connections replace
//!    them on demand.
//!
//! Only storage failures (disk full, I/O, read-only, busy or locked, a pool that
//! gives no connection) make writes count as failing; a constraint violation is the
//! caller's business, although its connection is replaced too.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use sea_orm::DbErr;
use tokio::time::Instant;

/// A connection opened this long after a failure is still treated as having seen
/// it: the clocks of the pool and of this module are read at slightly different
/// moments, and replacing a fresh connection costs little.
const MARGIN: Duration = Duration::from_millis(100);

pub struct WriteHealth {
    base: Instant,
    /// Nanoseconds after `base` of the last failed write, plus one; 0: none yet.
    last_failure: AtomicU64,
    /// The last write that ended did so on a storage failure.
    failing: AtomicBool,
    errors: AtomicU64,
    /// Nanoseconds after `base` of the last write probe (see `probe_if_failing`).
    last_probe: AtomicU64,
}

/// The process's write health (one database per process).
pub fn health() -> &'static WriteHealth {
    static HEALTH: OnceLock<WriteHealth> = OnceLock::new();
    HEALTH.get_or_init(WriteHealth::new)
}

impl WriteHealth {
    pub(crate) fn new() -> Self {
        Self {
            base: Instant::now(),
            last_failure: AtomicU64::new(0),
            failing: AtomicBool::new(false),
            errors: AtomicU64::new(0),
            last_probe: AtomicU64::new(0),
        }
    }

    /// Whether a write probe may run now (at most one per `every`); claims it.
    pub(super) fn probe_due(&self, every: Duration) -> bool {
        let now = u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let last = self.last_probe.load(Ordering::Acquire);
        if last != 0
            && now.saturating_sub(last) < u64::try_from(every.as_nanos()).unwrap_or(u64::MAX)
        {
            return false;
        }
        self.last_probe
            .compare_exchange(last, now.max(1), Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// A write (or its commit) failed with `e`.
    pub fn failed(&self, e: &DbErr) {
        let at = u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX - 1);
        self.last_failure.store(at + 1, Ordering::Release);
        if is_storage_failure(e) {
            self.errors.fetch_add(1, Ordering::Relaxed);
            if !self.failing.swap(true, Ordering::AcqRel) {
                tracing::error!(error = %e, "database writes are failing");
            }
        }
    }

    /// A write was committed.
    pub fn succeeded(&self) {
        if self.failing.swap(false, Ordering::AcqRel) {
            tracing::warn!("database writes work again");
        }
    }

    /// Whether the last write that ended failed on storage.
    pub fn is_failing(&self) -> bool {
        self.failing.load(Ordering::Acquire)
    }

    /// Storage failures of writes since start (`palisade_db_write_errors_total`).
    pub fn errors_total(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    /// Whether a connection opened `age` ago existed when the last write failed.
    pub fn predates_last_failure(&self, age: Duration) -> bool {
        match self.last_failure.load(Ordering::Acquire) {
            0 => false,
            at => {
                let failed = self.base + Duration::from_nanos(at - 1);
                age + MARGIN >= failed.elapsed()
            }
        }
    }
}

pub use crate::storage::is_storage_failure;

#[cfg(test)]
mod tests {
    use super::*;
    use sea_orm::RuntimeErr;

    fn full() -> DbErr {
        DbErr::Exec(RuntimeErr::SqlxError(std::sync::Arc::new(
            sea_orm::sqlx::Error::Io(std::io::Error::other("disk full")),
        )))
    }

    #[tokio::test(start_paused = true)]
    async fn failing_until_a_write_succeeds_and_connections_older_than_the_failure_go() {
        let h = WriteHealth::new();
        assert!(!h.is_failing());
        assert!(!h.predates_last_failure(Duration::from_secs(3600)));
        tokio::time::advance(Duration::from_secs(10)).await;
        h.failed(&full());
        assert!(h.is_failing());
        assert_eq!(h.errors_total(), 1);
        tokio::time::advance(Duration::from_secs(2)).await;
        // Opened 3 s ago: it existed when the write failed 2 s ago.
        assert!(h.predates_last_failure(Duration::from_secs(3)));
        // Opened a second ago, after the failure (beyond the margin).
        assert!(!h.predates_last_failure(Duration::from_secs(1)));
        h.succeeded();
        assert!(!h.is_failing());
        assert_eq!(h.errors_total(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn probes_run_at_most_once_per_interval() {
        let h = WriteHealth::new();
        tokio::time::advance(Duration::from_millis(1)).await;
        let every = Duration::from_secs(1);
        assert!(h.probe_due(every));
        assert!(!h.probe_due(every), "claimed already");
        tokio::time::advance(Duration::from_millis(999)).await;
        assert!(!h.probe_due(every));
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(h.probe_due(every));
    }

    #[test]
    fn constraint_violations_are_not_storage_failures() {
        let h = WriteHealth::new();
        h.failed(&DbErr::RecordNotInserted);
        assert!(!h.is_failing());
        assert_eq!(h.errors_total(), 0);
        // Yet connections that existed are still replaced.
        assert!(h.predates_last_failure(Duration::from_secs(1)));
        assert!(is_storage_failure(&DbErr::ConnectionAcquire(
            sea_orm::error::ConnAcquireErr::Timeout
        )));
    }
}
