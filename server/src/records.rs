//! Audit events (SPEC §3): the types live here, below both the writer that files
//! them (`actors::audit_writer`) and the queries that store and read them
//! (`service`). Usage records live with the accounting that finishes them
//! ([`crate::usage::UsageRecord`]), at the same level.

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

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
    /// `server.instance_id`, filled in by the audit writer (producers leave it
    /// `None`).
    pub instance: Option<String>,
}

#[cfg(test)]
impl AuditEvent {
    /// A minimal successful event for unit tests.
    pub fn sample(action: &'static str, at: DateTime<Utc>) -> Self {
        Self {
            id: Uuid::now_v7(),
            timestamp: at,
            action,
            actor: "t".into(),
            client_ip: None,
            project_id: None,
            token_id: None,
            token_hint: None,
            request_id: None,
            result: AuditResult::Success,
            details: serde_json::json!({}),
            instance: None,
        }
    }
}
