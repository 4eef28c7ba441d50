//! Where records go: the JSON-lines file and the database, and the retention purge.

use std::path::Path;
use std::time::Duration;

use sea_orm::DatabaseConnection;
use tokio::io::AsyncWriteExt;

use super::{AuditEvent, AuditSettings, RETENTION_BATCH, Record};
use crate::service::mutation::{Mutation, Table};

/// Writes one batch: JSONL first (audit events only), then the database, retried
/// until it succeeds.
pub(super) async fn write_batch(
    db: &DatabaseConnection,
    settings: &AuditSettings,
    batch: Vec<Record>,
) {
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

pub(super) fn prepare_private_file(path: &Path) -> std::io::Result<()> {
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
