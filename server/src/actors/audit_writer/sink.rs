//! The producer side: a bounded number of slots, each one a record on its way to
//! the database.
//!
//! A slot is taken before a record is queued and given back only once the writer
//! has committed it, so `audit.buffer` bounds records queued, reserved by requests
//! in flight and in the writer's hands together (memory, and what
//! `palisade_audit_backlog` reports), including a batch held while a failed write
//! is retried.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc};

use super::Record;

/// State shared by producers and the writer.
pub(super) struct Slots {
    pub(super) free: Arc<Semaphore>,
    pub(super) capacity: usize,
    waited: AtomicU64,
    /// The writer is behind: the catch-up thread writes (see `scheduling`).
    behind: AtomicBool,
    /// Wakes the writer threads when `behind` flips.
    pub(super) turn: Notify,
    /// Records handed to the writer, and records committed: the difference is
    /// what waits in the queue or in a batch (reservations not counted).
    sent: AtomicU64,
    written: AtomicU64,
}

/// What the catch-up thread last saw of the writer's progress.
#[derive(Default)]
pub(super) struct StallWatch {
    seen: Option<(u64, tokio::time::Instant)>,
}

impl Slots {
    pub(super) fn new(capacity: usize) -> Self {
        Self {
            free: Arc::new(Semaphore::new(capacity)),
            capacity,
            waited: AtomicU64::new(0),
            behind: AtomicBool::new(false),
            turn: Notify::new(),
            sent: AtomicU64::new(0),
            written: AtomicU64::new(0),
        }
    }

    /// Whether records have waited `after` with no commit at all: the idle-priority
    /// thread gets no CPU (every core busy with other work), so being "behind" by
    /// count would never be noticed. Called by the catch-up thread's poll.
    pub(super) fn starved(&self, watch: &mut StallWatch, after: std::time::Duration) -> bool {
        let written = self.written.load(Ordering::Relaxed);
        if self.sent.load(Ordering::Relaxed) <= written {
            watch.seen = None;
            return false;
        }
        match watch.seen {
            Some((w, since)) if w == written => since.elapsed() >= after,
            _ => {
                watch.seen = Some((written, tokio::time::Instant::now()));
                false
            }
        }
    }

    pub(super) fn is_behind(&self) -> bool {
        self.behind.load(Ordering::Relaxed)
    }

    /// After a commit: behind from half the buffer taken, caught up again only
    /// below a sixteenth. On a saturated core the catch-up thread then stays on
    /// (each return to idle priority costs a stretch of being preempted in every
    /// gap until half the buffer is taken again), while after a burst on a core
    /// with room it drains the backlog in moments and hands back.
    pub(super) fn update_pace(&self) {
        let taken = self.taken();
        if taken >= self.capacity / 2 {
            self.set_behind(true);
        } else if taken < self.capacity / 16 {
            self.set_behind(false);
        }
    }

    pub(super) fn set_behind(&self, behind: bool) {
        if self.behind.swap(behind, Ordering::Relaxed) != behind {
            if behind {
                tracing::info!("audit writer is behind; the catch-up thread writes");
            } else {
                tracing::info!("audit writer caught up; back to idle priority");
            }
            self.turn.notify_waiters();
        }
    }

    /// Records queued, reserved or being written.
    pub(super) fn taken(&self) -> usize {
        self.capacity.saturating_sub(self.free.available_permits())
    }

    /// Gives back the slots of committed records.
    pub(super) fn release(&self, n: usize) {
        self.written.fetch_add(n as u64, Ordering::Relaxed);
        self.free.add_permits(n);
    }
}

#[derive(Clone)]
pub struct AuditSink {
    pub(super) tx: mpsc::UnboundedSender<Record>,
    pub(super) slots: Arc<Slots>,
}

/// The place of one record, taken at admission and filled when the response ends
/// (often in a `Drop`, which cannot wait). Dropped unfilled, it frees its slot.
pub struct UsageSlot {
    tx: mpsc::UnboundedSender<Record>,
    permit: OwnedSemaphorePermit,
    slots: Arc<Slots>,
}

impl UsageSlot {
    pub fn send(self, record: Record) {
        // The slot now belongs to the record; the writer frees it after the commit.
        self.permit.forget();
        self.slots.sent.fetch_add(1, Ordering::Relaxed);
        if self.tx.send(record).is_err() {
            tracing::error!("audit writer is gone; record not written");
        }
    }
}

impl AuditSink {
    /// Queues a record; waits for a free slot when the buffer is full, never drops.
    pub async fn record(&self, record: Record) {
        if let Some(slot) = self.reserve().await {
            slot.send(record);
        }
    }

    /// Reserves the place of one record, waiting when the buffer is full: so a
    /// record can never be dropped, and when the writer falls behind it is new
    /// requests that wait, not records that vanish. `None` once the writer is
    /// closed.
    pub async fn reserve(&self) -> Option<UsageSlot> {
        let free = &self.slots.free;
        let permit = match Arc::clone(free).try_acquire_owned() {
            Ok(p) => p,
            Err(tokio::sync::TryAcquireError::NoPermits) => {
                self.slots.waited.fetch_add(1, Ordering::Relaxed);
                self.slots.set_behind(true);
                match Arc::clone(free).acquire_owned().await {
                    Ok(p) => p,
                    Err(_) => return closed(),
                }
            }
            Err(tokio::sync::TryAcquireError::Closed) => return closed(),
        };
        Some(UsageSlot {
            tx: self.tx.clone(),
            permit,
            slots: Arc::clone(&self.slots),
        })
    }

    /// How many times a producer had to wait for a free slot.
    pub fn waited(&self) -> u64 {
        self.slots.waited.load(Ordering::Relaxed)
    }

    /// Records queued, reserved (by requests in flight) or in the writer's hands,
    /// and not yet written.
    pub fn backlog(&self) -> usize {
        self.slots.taken()
    }
}

fn closed() -> Option<UsageSlot> {
    tracing::error!("audit writer is closed; record not written");
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn starved_only_when_sent_records_see_no_commit_for_the_whole_bound() {
        let slots = Slots::new(8);
        let mut watch = StallWatch::default();
        let after = Duration::from_secs(1);
        assert!(!slots.starved(&mut watch, after), "nothing sent");
        slots.sent.fetch_add(2, Ordering::Relaxed);
        assert!(
            !slots.starved(&mut watch, after),
            "first sight starts the clock"
        );
        tokio::time::advance(Duration::from_millis(900)).await;
        assert!(!slots.starved(&mut watch, after));
        // A commit is progress: the clock starts again.
        slots.release(1);
        assert!(!slots.starved(&mut watch, after));
        tokio::time::advance(Duration::from_millis(900)).await;
        assert!(!slots.starved(&mut watch, after));
        tokio::time::advance(Duration::from_millis(100)).await;
        assert!(
            slots.starved(&mut watch, after),
            "one record waited a second"
        );
        // Everything written: not starved, whatever the time.
        slots.release(1);
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(!slots.starved(&mut watch, after));
    }
}
