//! `AuditWriter`: the fourth actor of SPEC §1. It owns the audit trail and the
//! per-request usage records.
//!
//! Producers (management handlers, the proxy) take one of `audit.buffer` slots per
//! record ([`AuditSink::record`], [`AuditSink::reserve`]): a free slot costs one
//! semaphore `try_acquire`; with none free the producer waits (counted in
//! `waited`), so nothing is ever dropped. A proxied request reserves its usage
//! record's slot at admission, so `audit.buffer` also bounds how many proxied
//! requests can be in flight before admission waits for the writer. The actor
//! runs as two threads that take turns, an idle-priority one while it keeps up and
//! a nice-10 one while it is behind (`scheduling` says why). The one on duty
//! takes records in batches (`audit.batch_size`, or whatever arrived within
//! `audit.flush_interval`), appends the audit events to `audit.file` as JSON
//! lines (`jsonl`), writes the batch to the database in one transaction, and only
//! then frees its slots. A failed write (file or database) is retried with backoff
//! until it succeeds (`store`, `retry`); the batch keeps its slots meanwhile,
//! pushing back on producers instead of losing records, and while the buffer is
//! full producers are refused at once instead of waiting (`sink`).
//!
//! Shutdown: [`AuditHandle::drain`] refuses new records after the HTTP server has
//! drained, writes everything queued or still reserved, and returns what it could
//! not write in time ([`DrainReport`]).

mod jsonl;
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
use self::scheduling::Role;
use self::sink::{AUDIT, Queued, Slots, USAGE};
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
}

/// How often old rows are looked for, and how many go per delete statement, so a
/// large purge never holds the write lock for long.
const RETENTION_EVERY: Duration = Duration::from_secs(3600);
const RETENTION_BATCH: u64 = 1000;
/// While lingering, how often the queue is checked for a full batch.
const LINGER_POLL: Duration = Duration::from_millis(10);
/// How much longer than `flush_interval` records may wait for the idle-priority
/// thread before the catch-up thread takes over.
const STARVED_GRACE: Duration = Duration::from_secs(1);

/// What both writer threads share. The receiver's lock is held for a whole batch
/// (linger, take, write), so one thread writes at a time.
struct Shared {
    rx: tokio::sync::Mutex<mpsc::UnboundedReceiver<Queued>>,
    slots: Arc<Slots>,
    settings: AuditSettings,
    /// Only used under the `rx` lock, so never contended.
    file: Option<std::sync::Mutex<AuditFile>>,
}

/// One writer thread (see `scheduling` for why there are two).
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
            rx: tokio::sync::Mutex::new(rx),
            slots: Arc::clone(&slots),
            settings,
            file,
        });
        let (close_tx, close_rx) = watch::channel(false);
        let mut done = Vec::new();
        for role in [Role::Background, Role::CatchUp] {
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
                run(role, &db, &shared, close).await;
                let _ = done.send(());
            }
            .into_actor(self),
        );
    }
}

/// One writer thread's loop: while on duty, wait for a first record, linger up to
/// `flush_interval` so a batch can form (cut short once `batch_size` records, or
/// half the buffer, are queued, or the duty changes hands), write, free the batch's
/// slots, repeat; after `close`, both threads write what is queued or still
/// reserved, and finish.
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
    let (settings, slots, file) = (&shared.settings, &*shared.slots, shared.file.as_ref());
    let full = settings.batch_size.min(slots.capacity / 2).max(1);
    let due = |rx: &mpsc::UnboundedReceiver<Queued>, held: usize| rx.len() + held >= full;
    let mut batch = Vec::with_capacity(settings.batch_size);
    let mut next_retention = tokio::time::Instant::now();
    let mut purging = false;
    // Records queued this long without any commit mean the idle-priority thread is
    // starved: the catch-up thread takes over (see `scheduling`).
    let starved_after = settings.flush_interval + STARVED_GRACE;
    let mut stall = sink::StallWatch::default();
    loop {
        // A dropped handle counts as a drain too.
        let closing = *close.borrow() || close.has_changed().is_err();
        if !closing && !role.on_duty(slots.is_behind()) {
            if role == Role::CatchUp && slots.starved(&mut stall, starved_after) {
                tracing::info!(
                    "audit writer got no CPU for {starved_after:?} with records waiting"
                );
                slots.set_behind(true);
                continue;
            }
            // Off duty: wait for the other thread to hand over (the poll covers a
            // hand-over between the check and the wait).
            tokio::select! {
                () = slots.turn.notified() => {}
                _ = close.changed() => {}
                () = tokio::time::sleep(LINGER_POLL) => {}
            }
            continue;
        }
        let mut rx = shared.rx.lock().await;
        if closing && rx.is_empty() && slots.taken() == 0 {
            break;
        }
        if role == Role::Background && !closing {
            if tokio::time::Instant::now() >= next_retention {
                next_retention += RETENTION_EVERY;
                purging = true;
            }
            // One delete batch per table, then records again: a large first purge
            // (retention just switched on over a big table) takes longer, but
            // never makes producers wait behind it. With nothing queued it keeps
            // going.
            if purging {
                purging = store::purge_step(db, settings).await;
                if purging && rx.is_empty() {
                    continue;
                }
            }
        }
        if !due(&rx, batch.len()) {
            if rx.is_empty() {
                // Wait for a first record. Once closing, poll instead: the last
                // records come from reservations still held by finishing requests.
                tokio::select! {
                    biased;
                    _ = close.changed(), if !closing => continue,
                    () = slots.turn.notified(), if !closing => continue,
                    got = rx.recv() => match got {
                        Some(r) => {
                            slots.set_oldest(Some(r.at));
                            batch.push(r);
                        }
                        None => break,
                    },
                    () = tokio::time::sleep(LINGER_POLL), if closing => continue,
                }
            }
            if !closing {
                let linger = tokio::time::sleep(settings.flush_interval);
                tokio::pin!(linger);
                loop {
                    tokio::select! {
                        biased;
                        _ = close.changed() => break,
                        () = slots.turn.notified() => break,
                        () = &mut linger => break,
                        // Polls the queue coarsely instead of being woken per record.
                        () = tokio::time::sleep(LINGER_POLL) => {
                            if due(&rx, batch.len()) {
                                break;
                            }
                        }
                    }
                }
            }
        }
        let room = settings.batch_size.saturating_sub(batch.len());
        if room > 0 && !rx.is_empty() {
            rx.recv_many(&mut batch, room).await;
        }
        if !batch.is_empty() {
            let b = store::Batch::new(std::mem::take(&mut batch), settings, file.is_some());
            let n = b.len();
            let counts = store::write_batch(db, file, slots, b).await;
            slots.release(counts);
            tracing::debug!(writer = ?role, records = n, "audit batch written");
            slots.update_pace();
        }
        drop(rx);
    }
}
