//! `AuditWriter`: the fourth actor of SPEC §1. It owns the audit trail and the
//! per-request usage records. It has no messages: it is not an actix actor but a
//! bounded channel and a semaphore of slots in front of its own threads.
//!
//! Producers (management handlers, the proxy) take one of `audit.buffer` slots per
//! record ([`AuditSink::record`], [`AuditSink::reserve`]): a free slot costs one
//! semaphore `try_acquire`; with none free the producer waits (counted in
//! `waited`), so nothing is ever dropped. A proxied request reserves its usage
//! record's slot at admission, so `audit.buffer` also bounds how many proxied
//! requests can be in flight before admission waits for the writer. The actor
//! runs as threads that take turns: an idle-priority one while it keeps up, a
//! nice-10 one while it is behind, and a normal-priority one for records that
//! waited two `audit.flush_interval`s with no commit, which bounds a record's
//! wait on a host whose cores are all busy (`scheduling` says why, and what the
//! bound is). The one on duty takes records in batches (`audit.batch_size`, or
//! whatever arrived within `audit.flush_interval` of the first), appends the
//! audit events to `audit.file` as JSON lines (`jsonl`), writes the batch to the
//! database in one transaction, and only then frees its slots. A failed write
//! (file or database) is retried with backoff until it succeeds (`store`,
//! `retry`); the batch keeps its slots meanwhile, pushing back on producers
//! instead of losing records, and while the buffer is full producers are refused
//! at once instead of waiting (`sink`).
//!
//! Shutdown: [`AuditHandle::drain`] refuses new records after the HTTP server has
//! drained, writes everything queued or still reserved, and returns what it could
//! not write in time ([`DrainReport`]).

mod jsonl;
mod queue;
mod retry;
mod scheduling;
mod sink;
mod store;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;

use sea_orm::DatabaseConnection;

use tokio::sync::{mpsc, oneshot, watch};

use self::jsonl::AuditFile;
use self::queue::Queue;
use self::scheduling::Role;
use self::sink::{AUDIT, Slots, USAGE};
pub use self::sink::{AuditSink, StorageFailing, UsageSlot};
pub use crate::records::{AuditEvent, AuditResult};
pub use crate::usage::UsageRecord;

// === Records ===

#[derive(Debug)]
pub enum Record {
    Audit(Box<AuditEvent>),
    Usage(Box<UsageRecord>),
}

// === Actor ===

pub struct AuditSettings {
    pub file: Option<PathBuf>,
    pub store_in_db: bool,
    pub batch_size: usize,
    pub flush_interval: Duration,
    pub buffer: usize,
    /// `None` keeps rows forever.
    pub audit_retention: Option<chrono::Duration>,
    pub usage_retention: Option<chrono::Duration>,
    /// Where each writer thread opens its own low-priority connection; `None` (or
    /// an in-memory database) shares the server's pool.
    pub database: Option<crate::config::DatabaseConfig>,
    /// `server.instance_id` (resolved), stamped on every record.
    pub instance: String,
}

/// How often old rows are looked for, and how many go per delete statement, so a
/// large purge never holds the write lock for long.
const RETENTION_EVERY: Duration = Duration::from_secs(3600);
const RETENTION_BATCH: u64 = 1000;
/// While lingering, how often the queue is checked for a full batch.
const LINGER_POLL: Duration = Duration::from_millis(10);
/// What the writer threads share.
struct Shared {
    queue: Queue,
    /// Held while a batch (or a retention purge step) is written, so one thread
    /// writes at a time and the file gets whole batches in order.
    writing: tokio::sync::Mutex<()>,
    slots: Arc<Slots>,
    settings: AuditSettings,
    /// Only used under `writing`, so never contended.
    file: Option<std::sync::Mutex<AuditFile>>,
}

/// One writer thread (see `scheduling` for why there are three).
pub struct AuditWriter {
    role: Role,
    db: DatabaseConnection,
    shared: Arc<Shared>,
    close: watch::Receiver<bool>,
    done: Option<oneshot::Sender<()>>,
}

/// Handle kept by the server: the sink for producers and the drain switch.
pub struct AuditHandle {
    pub sink: AuditSink,
    close: watch::Sender<bool>,
    done: Vec<oneshot::Receiver<()>>,
}

impl AuditWriter {
    pub fn start(db: DatabaseConnection, settings: AuditSettings) -> std::io::Result<AuditHandle> {
        let file = match &settings.file {
            Some(path) => Some(std::sync::Mutex::new(AuditFile::open(path.clone())?)),
            None => None,
        };
        // Unbounded only in name: nothing is sent without a slot.
        let (tx, rx) = mpsc::unbounded_channel();
        let slots = Arc::new(Slots::new(settings.buffer.max(1)));
        let shared = Arc::new(Shared {
            queue: Queue::new(rx),
            writing: tokio::sync::Mutex::new(()),
            slots: Arc::clone(&slots),
            settings,
            file,
        });
        let (close_tx, close_rx) = watch::channel(false);
        let mut done = Vec::new();
        for role in [Role::Background, Role::CatchUp, Role::Rescue] {
            let (done_tx, done_rx) = oneshot::channel();
            done.push(done_rx);
            let actor = AuditWriter {
                role,
                db: db.clone(),
                shared: Arc::clone(&shared),
                close: close_rx.clone(),
                done: Some(done_tx),
            };
            AuditWriter::start_in_arbiter(&Arbiter::new().handle(), move |_| actor);
        }
        Ok(AuditHandle {
            sink: AuditSink { tx, slots },
            close: close_tx,
            done,
        })
    }
}

/// What a drain left unwritten (all zero: everything was written).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DrainReport {
    pub audit_events: u64,
    pub usage_records: u64,
    /// Places still reserved by requests that never filled them.
    pub reserved: u64,
}

impl DrainReport {
    pub fn is_complete(&self) -> bool {
        *self == Self::default()
    }
}

impl AuditHandle {
    /// Stops accepting records, writes everything queued or reserved, and returns
    /// what it could not write within `timeout` (storage failing to the end).
    pub async fn drain(self, timeout: Duration) -> DrainReport {
        let AuditHandle { sink, close, done } = self;
        let slots = Arc::clone(&sink.slots);
        // Refuse new records; queued and reserved ones still come.
        sink.slots.free.close();
        drop(sink);
        let _ = close.send(true);
        let all = futures_util::future::join_all(done);
        let finished = tokio::time::timeout(timeout, all).await.is_ok();
        let unwritten = slots.unwritten();
        let taken = slots.taken() as u64;
        let report = DrainReport {
            audit_events: unwritten[AUDIT],
            usage_records: unwritten[USAGE],
            reserved: taken.saturating_sub(unwritten[AUDIT] + unwritten[USAGE]),
        };
        if !finished && report.is_complete() {
            tracing::warn!("audit writer did not stop in time, with nothing left to write");
        }
        report
    }
}

impl Actor for AuditWriter {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let Some(done) = self.done.take() else {
            return;
        };
        // Before the connection opens: its thread inherits this thread's scheduling.
        self.role.apply_to_this_thread();
        let (role, pool) = (self.role, self.db.clone());
        let (shared, close) = (Arc::clone(&self.shared), self.close.clone());
        ctx.spawn(
            async move {
                let db = match &shared.settings.database {
                    Some(cfg) => match crate::db::connect_dedicated(cfg).await {
                        Some(Ok(db)) => db,
                        Some(Err(e)) => {
                            tracing::warn!(error = %e, "audit writer uses the shared pool");
                            pool
                        }
                        None => pool,
                    },
                    None => pool,
                };
                match role {
                    Role::Rescue => rescue(&db, &shared, close).await,
                    _ => run(role, &db, &shared, close).await,
                }
                let _ = done.send(());
            }
            .into_actor(self),
        );
    }
}

/// One writer thread's loop: while on duty, wait for a first record, linger until
/// it has waited `flush_interval` so a batch can form (cut short once `batch_size`
/// records, or half the buffer, are queued, or the duty changes hands), write,
/// free the batch's slots, repeat; after `close`, both threads write what is
/// queued or still reserved, and finish. A thread that goes off duty while
/// lingering leaves the batch to the other one.
///
/// Lingering matters more than it looks: woken on every record, the writer would
/// commit one-row transactions and context-switch once per request, which on a
/// busy core costs the proxy more than the rows themselves.
async fn run(
    role: Role,
    db: &DatabaseConnection,
    shared: &Shared,
    mut close: watch::Receiver<bool>,
) {
    let (settings, slots, queue) = (&shared.settings, &*shared.slots, &shared.queue);
    let full = settings.batch_size.min(slots.capacity / 2).max(1);
    let mut next_retention = tokio::time::Instant::now();
    let mut purging = false;
    loop {
        let closing_now = closing(&close);
        if !closing_now && !role.on_duty(slots.is_behind()) {
            // Off duty: wait for the other thread to hand over (the poll covers a
            // hand-over between the check and the wait).
            tokio::select! {
                () = slots.turn.notified() => {}
                _ = close.changed() => {}
                () = tokio::time::sleep(LINGER_POLL) => {}
            }
            continue;
        }
        if closing_now && queue.is_empty() && slots.taken() == 0 {
            break;
        }
        if role == Role::Background && !closing_now {
            if tokio::time::Instant::now() >= next_retention {
                next_retention += RETENTION_EVERY;
                purging = true;
            }
            // One delete batch per table, then records again: a large first purge
            // (retention just switched on over a big table) takes longer, but
            // never makes producers wait behind it. With nothing queued it keeps
            // going.
            if purging {
                let writing = shared.writing.lock().await;
                purging = store::purge_step(db, settings).await;
                drop(writing);
                if purging && queue.is_empty() {
                    continue;
                }
            }
        }
        if !queue.is_due(full) {
            if queue.is_empty() {
                // Wait for a first record. Once closing, poll instead: the last
                // records come from reservations still held by finishing requests.
                // A hold that ends with nothing queued hands back then: no commit
                // would come to do it.
                let hold_left = slots.hold_left();
                tokio::select! {
                    biased;
                    _ = close.changed(), if !closing_now => continue,
                    () = slots.turn.notified(), if !closing_now => continue,
                    () = tokio::time::sleep(hold_left.unwrap_or_default()), if hold_left.is_some() => {
                        slots.update_pace();
                        continue;
                    }
                    more = queue.first_record(slots) => if !more {
                        break;
                    },
                    () = tokio::time::sleep(LINGER_POLL), if closing_now => continue,
                }
            }
            if !closing_now {
                // Counted from the first record's arrival: a batch left by the
                // other thread has waited already.
                let first = queue
                    .first_queued()
                    .unwrap_or_else(tokio::time::Instant::now);
                let linger = tokio::time::sleep_until(first + settings.flush_interval);
                tokio::pin!(linger);
                loop {
                    tokio::select! {
                        biased;
                        _ = close.changed() => break,
                        () = slots.turn.notified() => break,
                        () = &mut linger => break,
                        // Polls the queue coarsely instead of being woken per record.
                        () = tokio::time::sleep(LINGER_POLL) => {
                            if queue.is_due(full) {
                                break;
                            }
                        }
                    }
                }
                // Off duty now (the catch-up thread took over): the batch is the
                // other thread's to write.
                if !closing(&close) && !role.on_duty(slots.is_behind()) {
                    continue;
                }
            }
        }
        write_queued(role, db, shared).await;
    }
}

/// The rescue thread's loop (normal priority, see `scheduling`): every quarter
/// `flush_interval`, look whether records have waited with no commit at all for
/// [`scheduling::starved_after`]; if so, write what is queued (after the write in
/// progress, if any), and if the idle thread had the duty, leave the next batches
/// to the catch-up thread for [`scheduling::STARVED_HOLD`]. It stops at `close`:
/// the two others drain.
async fn rescue(db: &DatabaseConnection, shared: &Shared, mut close: watch::Receiver<bool>) {
    let slots = &*shared.slots;
    let starved_after = scheduling::starved_after(shared.settings.flush_interval);
    let every = scheduling::rescue_every(shared.settings.flush_interval);
    let mut stall = sink::StallWatch::default();
    loop {
        tokio::select! {
            _ = close.changed() => {}
            () = tokio::time::sleep(every) => {}
        }
        if closing(&close) {
            break;
        }
        if slots.is_failing() || !slots.starved(&mut stall, starved_after) {
            continue;
        }
        let failures = slots.failures();
        let writing = shared.writing.lock().await;
        // A write that failed meanwhile (and was retried by whoever held it) is
        // storage trouble, not a lack of CPU.
        if slots.failures() != failures {
            continue;
        }
        tracing::info!(
            "audit records waited {starved_after:?} with no commit (the idle-priority writer gets no CPU, or its write is slow); writing them at normal priority"
        );
        // Had the idle thread the duty, it would starve again: the catch-up
        // thread takes the next batches for a while.
        if !slots.is_behind() {
            slots.hold_behind(scheduling::STARVED_HOLD);
        }
        write_locked(Role::Rescue, db, shared, writing).await;
    }
}

/// Takes the batch gathered so far and what is queued (up to `batch_size`),
/// writes it, and frees its slots; waits for a write in progress first.
async fn write_queued(role: Role, db: &DatabaseConnection, shared: &Shared) {
    let writing = shared.writing.lock().await;
    write_locked(role, db, shared, writing).await;
}

/// As [`write_queued`], with the write lock taken.
async fn write_locked(
    role: Role,
    db: &DatabaseConnection,
    shared: &Shared,
    _writing: tokio::sync::MutexGuard<'_, ()>,
) {
    let (settings, slots) = (&shared.settings, &*shared.slots);
    let file = shared.file.as_ref();
    let records = shared.queue.take(settings.batch_size);
    if records.is_empty() {
        return;
    }
    let b = store::Batch::new(records, settings, file.is_some());
    let n = b.len();
    let counts = store::write_batch(db, file, slots, b).await;
    slots.release(counts);
    tracing::debug!(writer = ?role, records = n, "audit batch written");
    slots.update_pace();
}

/// Whether the writer is draining (a dropped handle counts as a drain too).
fn closing(close: &watch::Receiver<bool>) -> bool {
    *close.borrow() || close.has_changed().is_err()
}
