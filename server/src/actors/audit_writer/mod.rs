//! `AuditWriter`: the fourth actor of SPEC §1. It owns the audit trail and the
//! per-request usage records.
//!
//! Producers (management handlers, the proxy) take one of `audit.buffer` slots per
//! record ([`AuditSink::record`], [`AuditSink::reserve`]): a free slot costs one
//! semaphore `try_acquire`; with none free the producer waits (counted in
//! `waited`), so nothing is ever dropped. A proxied request reserves its usage
//! record's slot at admission, so `audit.buffer` also bounds how many proxied
//! requests can be in flight before admission waits for the writer. The actor
//! takes records in batches (`audit.batch_size`, or whatever arrived within
//! `audit.flush_interval`), appends the audit events to `audit.file` as JSON lines,
//! writes the batch to the database in one transaction, and only then frees its
//! slots. A failed database write is retried with backoff until it succeeds; the
//! batch keeps its slots meanwhile, pushing back on producers instead of losing
//! records.
//!
//! Shutdown: [`AuditHandle::drain`] refuses new records after the HTTP server has
//! drained, writes everything queued or still reserved, and returns.

mod scheduling;
mod sink;
mod store;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use sea_orm::DatabaseConnection;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use self::sink::Slots;
pub use self::sink::{AuditSink, UsageSlot};
use crate::config::WriterPriority;

// === Records ===

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AuditResult {
    Success,
    Failure,
    Denied,
    Error,
}

impl AuditResult {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Failure => "failure",
            Self::Denied => "denied",
            Self::Error => "error",
        }
    }
}

/// One audit event, exactly the SPEC §3 shape. Built only from ids, hints and
/// non-secret fields.
#[derive(Debug, Clone, Serialize)]
pub struct AuditEvent {
    pub id: Uuid,
    pub timestamp: DateTime<Utc>,
    pub action: &'static str,
    pub actor: String,
    pub client_ip: Option<String>,
    pub project_id: Option<Uuid>,
    pub token_id: Option<Uuid>,
    pub token_hint: Option<String>,
    pub request_id: Option<String>,
    pub result: AuditResult,
    pub details: serde_json::Value,
}

/// One proxied request. The raw tail of the response body rides along so token
/// counts are parsed on the writer's thread, not on the request path.
#[derive(Debug, Clone)]
pub struct UsageRecord {
    pub id: Uuid,
    pub timestamp: DateTime<Utc>,
    pub request_id: String,
    pub project_id: Uuid,
    pub token_id: Uuid,
    pub model: Option<String>,
    pub provider: String,
    pub endpoint: String,
    pub status: u16,
    pub streamed: bool,
    pub latency_ms: f64,
    pub ttfb_ms: Option<f64>,
    pub client_closed: bool,
    /// Non-streamed: the whole body (if small enough). Streamed: the last chunks.
    pub body_tail: Vec<Bytes>,
}

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
    /// Where the writer opens its own low-priority connection; `None` (or an
    /// in-memory database) shares the server's pool.
    pub database: Option<crate::config::DatabaseConfig>,
    pub priority: WriterPriority,
}

/// How often old rows are looked for, and how many go per delete statement, so a
/// large purge never holds the write lock for long.
const RETENTION_EVERY: Duration = Duration::from_secs(3600);
const RETENTION_BATCH: u64 = 1000;
/// While lingering, how often the queue is checked for a full batch.
const LINGER_POLL: Duration = Duration::from_millis(10);

pub struct AuditWriter {
    db: DatabaseConnection,
    settings: Arc<AuditSettings>,
    rx: Option<mpsc::UnboundedReceiver<Record>>,
    slots: Arc<Slots>,
    close: Option<oneshot::Receiver<()>>,
    done: Option<oneshot::Sender<()>>,
}

/// Handle kept by the server: the sink for producers and the drain switch.
pub struct AuditHandle {
    pub sink: AuditSink,
    close: oneshot::Sender<()>,
    done: oneshot::Receiver<()>,
}

impl AuditWriter {
    pub fn start(db: DatabaseConnection, settings: AuditSettings) -> std::io::Result<AuditHandle> {
        if let Some(path) = &settings.file {
            store::prepare_private_file(path)?;
        }
        // Unbounded only in name: nothing is sent without a slot.
        let (tx, rx) = mpsc::unbounded_channel();
        let slots = Arc::new(Slots::new(settings.buffer.max(1)));
        let (done_tx, done_rx) = oneshot::channel();
        let (close_tx, close_rx) = oneshot::channel();
        let actor = AuditWriter {
            db,
            settings: Arc::new(settings),
            rx: Some(rx),
            slots: Arc::clone(&slots),
            close: Some(close_rx),
            done: Some(done_tx),
        };
        let arbiter = Arbiter::new();
        AuditWriter::start_in_arbiter(&arbiter.handle(), move |_| actor);
        Ok(AuditHandle {
            sink: AuditSink { tx, slots },
            close: close_tx,
            done: done_rx,
        })
    }
}

impl AuditHandle {
    /// Stops accepting records, writes everything queued or reserved, then returns.
    pub async fn drain(self, timeout: Duration) {
        let AuditHandle { sink, close, done } = self;
        drop(sink);
        let _ = close.send(());
        if tokio::time::timeout(timeout, done).await.is_err() {
            tracing::error!("audit writer did not finish draining in time");
        }
    }
}

impl Actor for AuditWriter {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let (Some(rx), Some(close), Some(done)) =
            (self.rx.take(), self.close.take(), self.done.take())
        else {
            return;
        };
        scheduling::lower_thread_priority(self.settings.priority);
        let shared = self.db.clone();
        let settings = Arc::clone(&self.settings);
        let slots = Arc::clone(&self.slots);
        ctx.spawn(
            async move {
                let db = match &settings.database {
                    Some(cfg) => match crate::db::connect_dedicated(cfg).await {
                        Some(Ok(db)) => db,
                        Some(Err(e)) => {
                            tracing::warn!(error = %e, "audit writer uses the shared pool");
                            shared
                        }
                        None => shared,
                    },
                    None => shared,
                };
                run(rx, close, db, settings, &slots, done).await;
            }
            .into_actor(self),
        );
    }
}

/// The writer's loop: wait for a first record, linger up to `flush_interval` so a
/// batch can form (cut short once `batch_size` records, or half the buffer, are
/// queued), write, free the batch's slots, repeat; after `close`, write what is
/// queued or still reserved, and finish.
///
/// Lingering matters more than it looks: woken on every record, the writer would
/// commit one-row transactions and context-switch once per request, which on a
/// busy core costs the proxy more than the rows themselves.
async fn run(
    mut rx: mpsc::UnboundedReceiver<Record>,
    mut close: oneshot::Receiver<()>,
    db: DatabaseConnection,
    settings: Arc<AuditSettings>,
    slots: &Slots,
    done: oneshot::Sender<()>,
) {
    let mut batch = Vec::with_capacity(settings.batch_size);
    let full = settings.batch_size.min(slots.capacity / 2).max(1);
    let due = |rx: &mpsc::UnboundedReceiver<Record>, held: usize| rx.len() + held >= full;
    let mut closing = false;
    let mut next_retention = tokio::time::Instant::now();
    let mut purging = false;
    loop {
        if tokio::time::Instant::now() >= next_retention {
            next_retention += RETENTION_EVERY;
            purging = true;
        }
        // One delete batch per table, then records again: a large first purge
        // (retention just switched on over a big table) takes longer, but never
        // makes producers wait behind it. With nothing queued it keeps going.
        if purging && !closing {
            purging = store::purge_step(&db, &settings).await;
            if purging && rx.is_empty() {
                continue;
            }
        }
        if closing && rx.is_empty() && slots.taken() == 0 {
            break;
        }
        if !due(&rx, batch.len()) {
            if rx.is_empty() {
                // Wait for a first record. Once closing, poll instead: the last
                // records come from reservations still held by finishing requests.
                tokio::select! {
                    biased;
                    _ = &mut close, if !closing => {
                        // Refuse new records; queued and reserved ones still come.
                        slots.free.close();
                        closing = true;
                        continue;
                    }
                    got = rx.recv() => match got {
                        Some(r) => batch.push(r),
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
                        _ = &mut close => {
                            slots.free.close();
                            closing = true;
                            break;
                        }
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
            let n = batch.len();
            store::write_batch(&db, &settings, std::mem::take(&mut batch)).await;
            slots.release(n);
        }
    }
    let _ = done.send(());
}
