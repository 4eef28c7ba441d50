//! Whether the database answers at all, apart from whether writes go through
//! ([`super::health`]). SQLite is a file and answers while the process runs;
//! PostgreSQL is a server that can go away. A ping every [`EVERY`] (and every
//! `/ready`) records the answer: `/ready` is 503 and `palisade_database_up` 0 while
//! it fails, and one WARN line says when it stopped and one when it came back.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sea_orm::DatabaseConnection;

/// How often the watcher pings.
pub const EVERY: Duration = Duration::from_secs(1);
/// Longest wait for a ping's answer: longer counts as unreachable. Below the pool's
/// acquire timeout, which retries a refused connection until it runs out.
pub const PING_TIMEOUT: Duration = Duration::from_millis(1000);

pub struct Reach {
    up: AtomicBool,
}

/// The process's database reachability.
pub fn reach() -> &'static Reach {
    static REACH: OnceLock<Reach> = OnceLock::new();
    REACH.get_or_init(|| Reach {
        up: AtomicBool::new(true),
    })
}

impl Reach {
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// Records a ping's outcome; logs the transitions only. `error` is the
    /// driver's message, which names no password (the URL is never part of it).
    pub fn record(&self, outcome: Result<(), String>) {
        match outcome {
            Ok(()) => {
                if !self.up.swap(true, Ordering::AcqRel) {
                    tracing::warn!("the database answers again");
                }
            }
            Err(error) => {
                if self.up.swap(false, Ordering::AcqRel) {
                    tracing::warn!(%error, "the database does not answer; /ready reports 503 until it does");
                }
            }
        }
    }
}

/// Pings with [`PING_TIMEOUT`], records the outcome and returns it.
pub async fn check(db: &DatabaseConnection) -> bool {
    let outcome = match tokio::time::timeout(PING_TIMEOUT, db.ping()).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {PING_TIMEOUT:?}")),
    };
    let ok = outcome.is_ok();
    reach().record(outcome);
    ok
}

/// Pings every [`EVERY`] for as long as the server runs (spawned in `app.rs`).
pub async fn watch_forever(db: DatabaseConnection) {
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        check(&db).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn down_from_a_failed_ping_until_one_succeeds() {
        let r = Reach {
            up: AtomicBool::new(true),
        };
        r.record(Err("connection refused".into()));
        r.record(Err("connection refused".into()));
        assert!(!r.is_up());
        r.record(Ok(()));
        assert!(r.is_up());
    }
}
