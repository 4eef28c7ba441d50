//! `AuditWriter`: the fourth actor of SPEC §1. It owns the audit trail and the
//! per-request usage records.
//!
//! Producers (management handlers, the proxy) put records on a bounded channel with
//! [`AuditSink::record`]: a free slot costs one `try_send`; a full buffer makes the
//! producer wait for room (counted in `waited`), so nothing is ever dropped. A
//! proxied request reserves its usage record's slot at admission
//! ([`AuditSink::reserve`]), so `audit.buffer` also bounds how many proxied
//! requests can be in flight before admission waits for the writer. The
//! actor drains the channel in batches (`audit.batch_size`, or whatever arrived
//! within `audit.flush_interval`), appends the audit events to `audit.file` as JSON
//! lines and writes the batch to the database in one transaction. A failed database
//! write is retried with backoff until it succeeds; the batch is held meanwhile and
//! the channel fills, pushing back on producers instead of losing records.
//!
//! Shutdown: [`AuditWriter::drain`] closes the channel after the HTTP server has
//! drained, writes everything still queued, and returns.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use actix::prelude::*;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use sea_orm::DatabaseConnection;
use serde::Serialize;
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use crate::config::WriterPriority;
use crate::service::mutation::Mutation;

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

// === Sink (producer side) ===

#[derive(Clone)]
pub struct AuditSink {
    tx: mpsc::Sender<Record>,
    waited: Arc<AtomicU64>,
    /// Records the writer has taken off the channel and not yet written (a batch
    /// being written, or held while a failed write is retried).
    in_writer: Arc<AtomicUsize>,
}

impl AuditSink {
    /// Queues a record; waits for room when the buffer is full, never drops.
    pub async fn record(&self, record: Record) {
        match self.tx.try_send(record) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(record)) => {
                self.waited.fetch_add(1, Ordering::Relaxed);
                if self.tx.send(record).await.is_err() {
                    tracing::error!("audit writer is closed; record not written");
                }
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                tracing::error!("audit writer is closed; record not written");
            }
        }
    }

    /// Reserves the place of one usage record, waiting for room when the buffer is
    /// full. The proxy takes it at admission and fills it when the response ends
    /// (often in a `Drop`, which cannot wait): so a record can never be dropped,
    /// and when the writer falls behind it is new requests that wait, not records
    /// that vanish. `None` once the writer is closed.
    pub async fn reserve(&self) -> Option<mpsc::OwnedPermit<Record>> {
        match self.tx.clone().try_reserve_owned() {
            Ok(permit) => Some(permit),
            Err(mpsc::error::TrySendError::Full(tx)) => {
                self.waited.fetch_add(1, Ordering::Relaxed);
                tx.reserve_owned().await.ok()
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                tracing::error!("audit writer is closed; usage will not be recorded");
                None
            }
        }
    }

    /// How many times a producer had to wait for buffer room.
    pub fn waited(&self) -> u64 {
        self.waited.load(Ordering::Relaxed)
    }

    /// Records queued, reserved (by requests in flight) or in the writer's hands,
    /// and not yet written.
    pub fn backlog(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity() + self.in_writer.load(Ordering::Relaxed)
    }
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
/// Niceness of the writer's threads with [`WriterPriority::Low`] (0 is normal, 19
/// the lowest).
const WRITER_NICE: i32 = 10;
/// While lingering, how often the queue is checked for a full batch.
const LINGER_POLL: Duration = Duration::from_millis(10);

pub struct AuditWriter {
    db: DatabaseConnection,
    settings: Arc<AuditSettings>,
    rx: Option<mpsc::Receiver<Record>>,
    in_writer: Arc<AtomicUsize>,
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
            prepare_private_file(path)?;
        }
        let (tx, rx) = mpsc::channel(settings.buffer.max(1));
        let (done_tx, done_rx) = oneshot::channel();
        let (close_tx, close_rx) = oneshot::channel();
        let in_writer = Arc::new(AtomicUsize::new(0));
        let actor = AuditWriter {
            db,
            settings: Arc::new(settings),
            rx: Some(rx),
            in_writer: Arc::clone(&in_writer),
            close: Some(close_rx),
            done: Some(done_tx),
        };
        let arbiter = Arbiter::new();
        AuditWriter::start_in_arbiter(&arbiter.handle(), move |_| actor);
        Ok(AuditHandle {
            sink: AuditSink {
                tx,
                waited: Arc::new(AtomicU64::new(0)),
                in_writer,
            },
            close: close_tx,
            done: done_rx,
        })
    }
}

impl AuditHandle {
    /// Stops accepting records, writes everything queued, then returns.
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
        lower_thread_priority(self.settings.priority);
        let shared = self.db.clone();
        let settings = Arc::clone(&self.settings);
        let in_writer = Arc::clone(&self.in_writer);
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
                run(rx, close, db, settings, &in_writer, done).await;
            }
            .into_actor(self),
        );
    }
}

/// Records are written in the CPU time request handling leaves over: the writer's
/// thread, and the SQLite connection thread it opens afterwards (threads inherit
/// their creator's scheduling), run at [`WriterPriority`].
///
/// Why `SCHED_IDLE` by default: at nice 10 a request that wakes up while the
/// writer runs is not always given the CPU at once (the kernel lets the running
/// thread finish part of its slice), and `bench --audit-off` showed it: audit on had the higher open-loop p99 in 23 of 30 alternating rounds
/// (+160 µs at the median, sign test p = 0.01); with `SCHED_IDLE`, 14 of 30 and no
/// difference. Switching to an idle policy needs no privilege; switching back
/// would, so the choice is made once, here.
///
/// The thread is also named `audit-writer`, so `top -H` and the bench can tell its
/// CPU time from the request path's.
fn lower_thread_priority(priority: WriterPriority) {
    let set = match priority {
        WriterPriority::Idle => thread_priority::set_thread_priority_and_policy(
            thread_priority::thread_native_id(),
            thread_priority::ThreadPriority::Min,
            thread_priority::ThreadSchedulePolicy::Normal(
                thread_priority::NormalThreadSchedulePolicy::Idle,
            ),
        )
        .map_err(|e| format!("{e:?}")),
        WriterPriority::Low => {
            rustix::process::setpriority_process(Some(rustix::thread::gettid()), WRITER_NICE)
                .map_err(|e| e.to_string())
        }
    };
    if let Err(e) = set {
        tracing::warn!(error = %e, ?priority, "cannot lower the audit writer's priority");
    }
    if let Err(e) = rustix::thread::set_name(c"audit-writer") {
        tracing::debug!(error = %e, "cannot name the audit writer's thread");
    }
}

/// The writer's loop: wait for a first record, linger up to `flush_interval` so a
/// batch can form (cut short when `batch_size` records are already queued), write,
/// repeat; after `close`, drain and finish.
///
/// Lingering matters more than it looks: woken on every record, the writer would
/// commit one-row transactions and context-switch once per request, which on a
/// busy core costs the proxy more than the rows themselves.
async fn run(
    mut rx: mpsc::Receiver<Record>,
    mut close: oneshot::Receiver<()>,
    db: DatabaseConnection,
    settings: Arc<AuditSettings>,
    in_writer: &AtomicUsize,
    done: oneshot::Sender<()>,
) {
    let mut batch = Vec::with_capacity(settings.batch_size);
    // Stop lingering at a full batch, or once half the buffer is taken, so
    // producers never wait on a writer that is only biding its time.
    let full = settings.batch_size.min(rx.max_capacity() / 2).max(1);
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
            purging = purge_step(&db, &settings).await;
            if purging && rx.is_empty() {
                continue;
            }
        }
        // A full batch already waiting is written at once; otherwise wait for the
        // first record, then let the rest of the batch gather.
        if rx.len() < full {
            let first = tokio::select! {
                biased;
                _ = &mut close, if !closing => {
                    // Refuse new records; everything already queued is still received.
                    rx.close();
                    closing = true;
                    continue;
                }
                got = rx.recv() => got,
            };
            let Some(first) = first else { break };
            batch.push(first);
            in_writer.store(batch.len(), Ordering::Relaxed);
            if !closing {
                let linger = tokio::time::sleep(settings.flush_interval);
                tokio::pin!(linger);
                loop {
                    tokio::select! {
                        biased;
                        _ = &mut close, if !closing => {
                            rx.close();
                            closing = true;
                            break;
                        }
                        () = &mut linger => break,
                        // Polls the queue length coarsely instead of being woken
                        // per record.
                        () = tokio::time::sleep(LINGER_POLL) => {
                            if rx.len() + batch.len() >= full {
                                break;
                            }
                        }
                    }
                }
            }
        }
        // One call takes what is queued and frees its slots at once: waiting
        // producers are woken once per batch, not once per record (each wake-up
        // preempts this thread).
        let room = settings.batch_size.saturating_sub(batch.len());
        if room > 0 && !rx.is_empty() {
            rx.recv_many(&mut batch, room).await;
            in_writer.store(batch.len(), Ordering::Relaxed);
        }
        if !batch.is_empty() {
            write_batch(&db, &settings, std::mem::take(&mut batch)).await;
            in_writer.store(0, Ordering::Relaxed);
        }
    }
    let _ = done.send(());
}

/// Writes one batch: JSONL first (audit events only), then the database, retried
/// until it succeeds.
async fn write_batch(db: &DatabaseConnection, settings: &AuditSettings, batch: Vec<Record>) {
    let mut audits = Vec::new();
    let mut usage = Vec::new();
    for r in batch {
        match r {
            Record::Audit(a) => audits.push(*a),
            Record::Usage(u) => usage.push(crate::usage::finish(*u)),
        }
    }
    if let Some(path) = &settings.file
        && !audits.is_empty()
        && let Err(e) = append_jsonl(path, &audits).await
    {
        tracing::error!(error = %e, path = %path.display(), "cannot append to the audit file");
    }
    if !settings.store_in_db {
        audits.clear();
    }
    if audits.is_empty() && usage.is_empty() {
        return;
    }
    let mut delay = Duration::from_millis(100);
    loop {
        match Mutation::insert_records(db, &audits, &usage).await {
            Ok(()) => return,
            Err(e) => {
                tracing::error!(error = %e, audits = audits.len(), usage = usage.len(), "writing audit batch failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Deletes at most [`RETENTION_BATCH`] rows past their retention from each table;
/// `true` while some table may have more.
async fn purge_step(db: &DatabaseConnection, settings: &AuditSettings) -> bool {
    let now = crate::time::now();
    let mut more = false;
    for (table, keep) in [
        (
            crate::service::mutation::Table::AuditEvents,
            settings.audit_retention,
        ),
        (
            crate::service::mutation::Table::UsageRecords,
            settings.usage_retention,
        ),
    ] {
        let Some(keep) = keep else { continue };
        match Mutation::delete_older_than(db, table, now - keep, RETENTION_BATCH).await {
            Ok(n) => more |= n >= RETENTION_BATCH,
            Err(e) => tracing::error!(error = %e, "retention purge failed; will retry"),
        }
    }
    more
}

async fn append_jsonl(path: &Path, events: &[AuditEvent]) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(events.len() * 256);
    for e in events {
        serde_json::to_writer(&mut buf, e).map_err(std::io::Error::other)?;
        buf.push(b'\n');
    }
    let mut f = tokio::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)
        .await?;
    f.write_all(&buf).await?;
    f.flush().await
}

fn prepare_private_file(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
        && !dir.exists()
    {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)?;
    Ok(())
}
