//! Where records go: the JSON-lines file and the database, and the retention purge.
//!
//! A batch is converted once ([`Batch::new`]) and then written to both places
//! independently until both have it ([`write_batch`]): a database failure does not
//! append the file again, and a file failure does not insert the rows again.

use std::time::Duration;

use sea_orm::DatabaseConnection;
use tokio::time::Instant;

use super::jsonl::AuditFile;
use super::sink::{AUDIT, Queued, Slots, USAGE};
use super::{AuditEvent, AuditSettings, RETENTION_BATCH, Record};
use crate::service::mutation::{Mutation, Table};
use crate::usage::UsageRow;

/// One batch in the writer's hands.
pub(super) struct Batch {
    audits: Vec<AuditEvent>,
    usage: Vec<UsageRow>,
    /// The audit events as JSON lines, while the file still lacks them.
    lines: Option<Vec<u8>>,
    /// The database still lacks the batch.
    db_pending: bool,
    /// Records per kind, for the slots and counters.
    pub(super) counts: [usize; 2],
    /// When the oldest record was queued.
    pub(super) oldest: Option<Instant>,
}

impl Batch {
    pub(super) fn new(records: Vec<Queued>, settings: &AuditSettings, file: bool) -> Self {
        let mut b = Batch {
            audits: Vec::new(),
            usage: Vec::new(),
            lines: None,
            db_pending: false,
            counts: [0, 0],
            oldest: records.iter().map(|q| q.at).min(),
        };
        for q in records {
            b.counts[q.record.kind()] += 1;
            match q.record {
                Record::Audit(mut a) => {
                    a.instance = Some(settings.instance.clone());
                    b.audits.push(*a);
                }
                Record::Usage(mut u) => {
                    u.instance = Some(settings.instance.clone());
                    b.usage.push(crate::usage::finish(*u));
                }
            }
        }
        if file && !b.audits.is_empty() {
            let mut buf = Vec::with_capacity(b.audits.len() * 256);
            for e in &b.audits {
                // Serializing plain data cannot fail; skip the line if it ever does.
                if serde_json::to_writer(&mut buf, e).is_ok() {
                    buf.push(b'\n');
                }
            }
            b.lines = Some(buf);
        }
        if !settings.store_in_db {
            b.audits.clear();
        }
        b.db_pending = !(b.audits.is_empty() && b.usage.is_empty());
        b
    }

    pub(super) fn len(&self) -> usize {
        self.counts[AUDIT] + self.counts[USAGE]
    }

    /// One attempt at whatever is still missing; `Err` says what failed.
    async fn attempt(
        &mut self,
        db: &DatabaseConnection,
        file: Option<&std::sync::Mutex<AuditFile>>,
    ) -> Result<(), String> {
        let mut failed = Vec::new();
        if let (Some(lines), Some(file)) = (&self.lines, file) {
            let mut f = file
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            match f.append(lines) {
                Ok(()) => self.lines = None,
                Err(e) => failed.push(format!("audit file {}: {e}", f.path().display())),
            }
        }
        if self.db_pending {
            match Mutation::insert_records(db, &self.audits, &self.usage).await {
                Ok(()) => self.db_pending = false,
                Err(e) => failed.push(format!("database: {e}")),
            }
        }
        if failed.is_empty() {
            Ok(())
        } else {
            Err(failed.join("; "))
        }
    }
}

/// Writes one batch to the file and the database, retrying with backoff until
/// both have it. While it fails, `slots` says so (producers facing a full buffer
/// are refused instead of waiting) and the batch keeps its slots.
pub(super) async fn write_batch(
    db: &DatabaseConnection,
    file: Option<&std::sync::Mutex<AuditFile>>,
    slots: &Slots,
    mut batch: Batch,
) -> [usize; 2] {
    slots.set_oldest(batch.oldest);
    let (audits, usage) = (batch.counts[AUDIT], batch.counts[USAGE]);
    let mut failing_since = None;
    super::retry::until_ok(
        async || batch.attempt(db, file).await,
        |e, n| {
            slots.set_failing(true);
            if n == 1 {
                failing_since = Some(Instant::now());
                tracing::error!(error = %e, audits, usage, "writing audit batch failed; retrying (the batch is kept)");
            } else {
                tracing::warn!(error = %e, audits, usage, attempt = n, "audit batch still not written; retrying");
            }
        },
    )
    .await;
    if let Some(since) = failing_since {
        let after: Duration = since.elapsed();
        tracing::warn!(audits, usage, after = ?after, "audit batch written after retrying");
    }
    slots.set_failing(false);
    slots.set_oldest(None);
    batch.counts
}

/// Deletes at most [`RETENTION_BATCH`] rows past their retention from each table;
/// `true` while some table may have more.
pub(super) async fn purge_step(db: &DatabaseConnection, settings: &AuditSettings) -> bool {
    let now = crate::time::now();
    let mut more = false;
    for (table, keep) in [
        (Table::AuditEvents, settings.audit_retention),
        (Table::UsageRecords, settings.usage_retention),
    ] {
        let Some(keep) = keep else { continue };
        match Mutation::delete_older_than(db, table, now - keep, RETENTION_BATCH).await {
            Ok(n) => more |= n >= RETENTION_BATCH,
            Err(e) => tracing::error!(error = %e, "retention purge failed; will retry"),
        }
    }
    more
}
