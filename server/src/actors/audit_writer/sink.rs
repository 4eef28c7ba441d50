//! The producer side: a bounded number of slots, each one a record on its way to
//! the database.
//!
//! A slot is taken before a record is queued and given back only once the writer
//! has committed it, so `audit.buffer` bounds records queued, reserved by requests
//! in flight and in the writer's hands together (memory, and what
//! `palisade_audit_backlog` reports), including a batch held while a failed write
//! is retried.
//!
//! While the writer cannot write (its batch failed and is being retried) and no
//! slot is free, waiting would only hang the client: [`AuditSink::reserve`] then
//! refuses at once ([`StorageFailing`], a 503 on `/v1`), and so does a producer
//! already waiting when the writer starts failing. A full buffer with a writer
//! that works is ordinary backpressure: producers wait.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::time::Instant;

use super::Record;

/// A record on its way to the writer, with the moment it was handed over (for
/// `palisade_audit_oldest_record_seconds`).
pub(super) struct Queued {
    pub(super) at: Instant,
    pub(super) record: Record,
}

/// Records cannot be kept now: storage is failing and the buffer is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StorageFailing;

/// Index of a record's kind in the per-kind counters.
pub(super) const AUDIT: usize = 0;
pub(super) const USAGE: usize = 1;

impl Record {
    pub(super) fn kind(&self) -> usize {
        match self {
            Record::Audit(_) => AUDIT,
            Record::Usage(_) => USAGE,
        }
    }
}

/// State shared by producers and the writer.
pub(super) struct Slots {
    pub(super) free: Arc<Semaphore>,
    pub(super) capacity: usize,
    waited: AtomicU64,
    /// The writer is behind: the catch-up thread writes (see `scheduling`).
    behind: AtomicBool,
    /// Until when `behind` stays set whatever the backlog (nanoseconds after
    /// `base`; 0: not held), after the idle thread was found starved.
    held_until: AtomicU64,
    /// Wakes the writer threads when `behind` flips.
    pub(super) turn: Notify,
    /// Records handed to the writer, and records written, per kind ([`AUDIT`],
    /// [`USAGE`]): the difference is what waits in the queue or in a batch
    /// (reservations not counted).
    sent: [AtomicU64; 2],
    written: [AtomicU64; 2],
    /// The writer's last attempt failed; it holds the batch and retries.
    failing: AtomicBool,
    /// Failed attempts so far.
    failures: AtomicU64,
    /// Wakes producers waiting for a slot when `failing` is set.
    failing_now: Notify,
    /// Audit events given up on because storage was failing and the buffer full.
    dropped: AtomicU64,
    /// When the oldest record in the writer's hands was queued (nanoseconds
    /// after `base`, plus one; 0: none).
    oldest: AtomicU64,
    base: Instant,
}

/// What the rescue thread last saw of the writer's progress.
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
            held_until: AtomicU64::new(0),
            turn: Notify::new(),
            sent: Default::default(),
            written: Default::default(),
            failing: AtomicBool::new(false),
            failures: AtomicU64::new(0),
            failing_now: Notify::new(),
            dropped: AtomicU64::new(0),
            oldest: AtomicU64::new(0),
            base: Instant::now(),
        }
    }

    fn total(counters: &[AtomicU64; 2]) -> u64 {
        counters.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// Records handed to the writer and not yet written, per kind.
    pub(super) fn unwritten(&self) -> [u64; 2] {
        [AUDIT, USAGE].map(|k| {
            self.sent[k]
                .load(Ordering::Relaxed)
                .saturating_sub(self.written[k].load(Ordering::Relaxed))
        })
    }

    /// The writer's attempt failed (`true`) or a batch was written (`false`).
    pub(super) fn set_failing(&self, failing: bool) {
        if failing {
            self.failures.fetch_add(1, Ordering::Relaxed);
        }
        if self.failing.swap(failing, Ordering::AcqRel) != failing && failing {
            self.failing_now.notify_waiters();
        }
    }

    /// Failed attempts so far (file or database).
    pub(super) fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    pub(super) fn is_failing(&self) -> bool {
        self.failing.load(Ordering::Acquire)
    }

    /// The batch now in the writer's hands was queued first at `at` (`None`: no
    /// batch in hand).
    pub(super) fn set_oldest(&self, at: Option<Instant>) {
        let v = at.map_or(0, |at| {
            u64::try_from(at.saturating_duration_since(self.base).as_nanos())
                .unwrap_or(u64::MAX - 1)
                + 1
        });
        self.oldest.store(v, Ordering::Relaxed);
    }

    /// How long the oldest record in the writer's hands has waited.
    pub(super) fn oldest_age(&self) -> Duration {
        match self.oldest.load(Ordering::Relaxed) {
            0 => Duration::ZERO,
            v => (self.base + Duration::from_nanos(v - 1)).elapsed(),
        }
    }

    /// Whether records have waited `after` with no commit at all: the idle-priority
    /// thread gets no CPU (every core busy with other work), so being "behind" by
    /// count would never be noticed. Called by the rescue thread's poll.
    pub(super) fn starved(&self, watch: &mut StallWatch, after: std::time::Duration) -> bool {
        let written = Self::total(&self.written);
        if Self::total(&self.sent) <= written {
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
    /// below a sixteenth (and once a hold has ended). On a saturated core the
    /// catch-up thread then stays on (each return to idle priority costs a
    /// stretch of being preempted in every gap until half the buffer is taken
    /// again), while after a burst on a core with room it drains the backlog in
    /// moments and hands back.
    pub(super) fn update_pace(&self) {
        let taken = self.taken();
        if taken >= self.capacity / 2 {
            self.set_behind(true);
        } else if taken < self.capacity / 16 && !self.is_held() {
            self.set_behind(false);
        }
    }

    /// Behind, and kept so for `hold` whatever the backlog: the idle thread was
    /// found starved, and would starve again with the next batch.
    pub(super) fn hold_behind(&self, hold: Duration) {
        let until = self.since_base().saturating_add(hold);
        let nanos = u64::try_from(until.as_nanos()).unwrap_or(u64::MAX).max(1);
        self.held_until.store(nanos, Ordering::Relaxed);
        self.set_behind(true);
    }

    /// What is left of a hold (`None`: not held).
    pub(super) fn hold_left(&self) -> Option<Duration> {
        let until = self.held_until.load(Ordering::Relaxed);
        let left = Duration::from_nanos(until).checked_sub(self.since_base())?;
        (until != 0 && !left.is_zero()).then_some(left)
    }

    fn is_held(&self) -> bool {
        let until = self.held_until.load(Ordering::Relaxed);
        until != 0 && self.since_base() < Duration::from_nanos(until)
    }

    fn since_base(&self) -> Duration {
        Instant::now().saturating_duration_since(self.base)
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

    /// Gives back the slots of written records (`counts` per kind).
    pub(super) fn release(&self, counts: [usize; 2]) {
        for k in [AUDIT, USAGE] {
            self.written[k].fetch_add(counts[k] as u64, Ordering::Relaxed);
        }
        self.free.add_permits(counts[AUDIT] + counts[USAGE]);
    }
}

#[derive(Clone)]
pub struct AuditSink {
    pub(super) tx: mpsc::UnboundedSender<Queued>,
    pub(super) slots: Arc<Slots>,
}

/// The place of one record, taken at admission and filled when the response ends
/// (often in a `Drop`, which cannot wait). Dropped unfilled, it frees its slot.
pub struct UsageSlot {
    tx: mpsc::UnboundedSender<Queued>,
    permit: OwnedSemaphorePermit,
    slots: Arc<Slots>,
}

impl UsageSlot {
    pub fn send(self, record: Record) {
        // The slot now belongs to the record; the writer frees it after the commit.
        self.permit.forget();
        self.slots.sent[record.kind()].fetch_add(1, Ordering::Relaxed);
        let queued = Queued {
            at: Instant::now(),
            record,
        };
        if self.tx.send(queued).is_err() {
            tracing::error!("audit writer is gone; record not written");
        }
    }
}

impl AuditSink {
    /// Queues a record; waits for a free slot when the buffer is full. While
    /// storage fails with the buffer full, the record is given up on (counted in
    /// `palisade_audit_dropped_total`, logged): only audit events of refused
    /// requests get here then, since `/v1` and management writes are refused
    /// first ([`Self::check_room`]).
    pub async fn record(&self, record: Record) {
        match self.reserve().await {
            Ok(Some(slot)) => slot.send(record),
            Ok(None) => {}
            Err(StorageFailing) => {
                let n = self.slots.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                // The first one, then one line per thousand.
                if n % 1000 == 1 {
                    tracing::error!(
                        dropped = n,
                        "storage is failing and the audit buffer is full; audit event not kept"
                    );
                }
            }
        }
    }

    /// Reserves the place of one record, waiting when the buffer is full: so a
    /// record can never be dropped, and when the writer falls behind it is new
    /// requests that wait, not records that vanish. `Ok(None)` once the writer is
    /// closed; [`StorageFailing`] at once, instead of waiting, while the writer
    /// cannot write and no slot is free.
    pub async fn reserve(&self) -> Result<Option<UsageSlot>, StorageFailing> {
        let free = &self.slots.free;
        let permit = match Arc::clone(free).try_acquire_owned() {
            Ok(p) => p,
            Err(tokio::sync::TryAcquireError::NoPermits) => {
                if self.slots.is_failing() {
                    return Err(StorageFailing);
                }
                self.slots.waited.fetch_add(1, Ordering::Relaxed);
                self.slots.set_behind(true);
                let failing = self.slots.failing_now.notified();
                tokio::pin!(failing);
                // Registered before the check: a flip in between still wakes us.
                failing.as_mut().enable();
                if self.slots.is_failing() {
                    return Err(StorageFailing);
                }
                tokio::select! {
                    got = Arc::clone(free).acquire_owned() => match got {
                        Ok(p) => p,
                        Err(_) => return Ok(closed()),
                    },
                    () = failing => return Err(StorageFailing),
                }
            }
            Err(tokio::sync::TryAcquireError::Closed) => return Ok(closed()),
        };
        Ok(Some(UsageSlot {
            tx: self.tx.clone(),
            permit,
            slots: Arc::clone(&self.slots),
        }))
    }

    /// `Err` while the writer cannot write and no slot is free: a request that
    /// would need a record is refused before it does anything.
    pub fn check_room(&self) -> Result<(), StorageFailing> {
        if self.slots.is_failing() && self.slots.free.available_permits() == 0 {
            return Err(StorageFailing);
        }
        Ok(())
    }

    /// Whether the writer's last attempt failed (it holds the batch and retries).
    pub fn is_failing(&self) -> bool {
        self.slots.is_failing()
    }

    /// Records handed to the writer and not yet written (audit events and usage
    /// records; reservations of running requests not counted).
    pub fn waiting(&self) -> u64 {
        self.slots.unwritten().iter().sum()
    }

    /// How long the oldest record in the writer's hands has waited.
    pub fn oldest_age(&self) -> Duration {
        self.slots.oldest_age()
    }

    /// Audit events given up on while storage failed with the buffer full.
    pub fn dropped(&self) -> u64 {
        self.slots.dropped.load(Ordering::Relaxed)
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
        slots.sent[USAGE].fetch_add(2, Ordering::Relaxed);
        assert!(
            !slots.starved(&mut watch, after),
            "first sight starts the clock"
        );
        tokio::time::advance(Duration::from_millis(900)).await;
        assert!(!slots.starved(&mut watch, after));
        // A commit is progress: the clock starts again.
        slots.release([0, 1]);
        assert!(!slots.starved(&mut watch, after));
        tokio::time::advance(Duration::from_millis(900)).await;
        assert!(!slots.starved(&mut watch, after));
        tokio::time::advance(Duration::from_millis(100)).await;
        assert!(
            slots.starved(&mut watch, after),
            "one record waited a second"
        );
        // Everything written: not starved, whatever the time.
        slots.release([0, 1]);
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(!slots.starved(&mut watch, after));
    }

    /// Polls as the rescue thread does until it finds the records starved; how
    /// long that took (`None`: not within `limit`).
    async fn rescue_finds_starved(slots: &Slots, limit: Duration) -> Option<Duration> {
        use super::super::scheduling::{rescue_every, starved_after};
        let flush = Duration::from_millis(200);
        let mut watch = StallWatch::default();
        let start = Instant::now();
        while start.elapsed() < limit {
            tokio::time::sleep(rescue_every(flush)).await;
            if slots.starved(&mut watch, starved_after(flush)) {
                return Some(start.elapsed());
            }
        }
        None
    }

    #[tokio::test(start_paused = true)]
    async fn the_rescue_writes_a_record_left_two_intervals_and_a_quarter_at_most() {
        // A record queued, and no commit: found within 2 × 200 ms, plus the
        // quarter interval between two looks.
        let slots = Slots::new(64);
        slots.sent[AUDIT].fetch_add(1, Ordering::Relaxed);
        let found = rescue_finds_starved(&slots, Duration::from_secs(5)).await;
        let found = found.expect("never found starved");
        assert!(
            found >= Duration::from_millis(400) && found <= Duration::from_millis(450),
            "{found:?}"
        );
        // A writer that commits one interval after each record is never taken over.
        let slots = Slots::new(64);
        let writer = async {
            for _ in 0..20 {
                slots.sent[AUDIT].fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(200)).await;
                slots.release([1, 0]);
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
        };
        let ((), found) =
            tokio::join!(writer, rescue_finds_starved(&slots, Duration::from_secs(4)));
        assert_eq!(found, None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_hold_keeps_the_catch_up_thread_on_duty_until_it_ends() {
        let slots = Slots::new(64);
        slots.hold_behind(Duration::from_secs(10));
        assert!(slots.is_behind());
        // Nothing taken: without the hold a commit would hand back at once.
        slots.update_pace();
        assert!(slots.is_behind(), "handed back during the hold");
        tokio::time::advance(Duration::from_secs(9)).await;
        slots.update_pace();
        assert!(slots.is_behind());
        assert_eq!(slots.hold_left(), Some(Duration::from_secs(1)));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(slots.hold_left(), None);
        slots.update_pace();
        assert!(!slots.is_behind(), "still held after it ended");
        // Without a hold, a small backlog hands back at the next commit.
        slots.set_behind(true);
        slots.update_pace();
        assert!(!slots.is_behind());
    }

    fn sink(capacity: usize) -> (AuditSink, mpsc::UnboundedReceiver<Queued>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let slots = Arc::new(Slots::new(capacity));
        (AuditSink { tx, slots }, rx)
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_buffer_with_a_working_writer_makes_producers_wait() {
        let (sink, _rx) = sink(1);
        let held = sink.reserve().await.unwrap().unwrap();
        assert!(sink.check_room().is_ok(), "full but not failing");
        let waiting = sink.reserve();
        tokio::pin!(waiting);
        let waited = tokio::time::timeout(Duration::from_secs(30), waiting.as_mut()).await;
        assert!(waited.is_err(), "still waiting for the slot");
        assert_eq!(sink.waited(), 1);
        drop(held);
        assert!(waiting.await.unwrap().is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_buffer_while_storage_fails_refuses_at_once_and_wakes_waiters() {
        let (sink, _rx) = sink(1);
        let held = sink.reserve().await.unwrap().unwrap();
        let waiting = sink.reserve();
        tokio::pin!(waiting);
        assert!(
            tokio::time::timeout(Duration::from_millis(10), waiting.as_mut())
                .await
                .is_err()
        );
        // The writer's batch fails: the waiter is refused, new ones at once.
        sink.slots.set_failing(true);
        assert_eq!(waiting.await.err(), Some(StorageFailing));
        assert_eq!(sink.reserve().await.err(), Some(StorageFailing));
        assert_eq!(sink.check_room(), Err(StorageFailing));
        // With a free slot, records are still taken while failing (they wait in
        // the buffer); audit events beyond it are dropped and counted.
        drop(held);
        assert!(sink.check_room().is_ok());
        sink.record(Record::Audit(Box::new(event()))).await;
        assert_eq!(sink.dropped(), 0);
        assert_eq!(sink.waiting(), 1);
        sink.record(Record::Audit(Box::new(event()))).await;
        assert_eq!(sink.dropped(), 1);
        // Written again: producers wait instead of being refused.
        sink.slots.set_failing(false);
        assert!(sink.check_room().is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn the_oldest_record_age_counts_from_when_it_was_queued() {
        let slots = Slots::new(4);
        assert_eq!(slots.oldest_age(), Duration::ZERO);
        let at = Instant::now();
        tokio::time::advance(Duration::from_secs(3)).await;
        slots.set_oldest(Some(at));
        assert_eq!(slots.oldest_age(), Duration::from_secs(3));
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(slots.oldest_age(), Duration::from_secs(5));
        slots.set_oldest(None);
        assert_eq!(slots.oldest_age(), Duration::ZERO);
    }

    fn event() -> super::super::AuditEvent {
        super::super::AuditEvent::sample("token.revoke", crate::time::now())
    }
}
