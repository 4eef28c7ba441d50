//! Why a registry write failed. The management API maps each variant to its
//! envelope (`http/manage/errors.rs`); the messages are the ones it answers.

use std::collections::BTreeMap;

use sea_orm::{DbErr, SqlErr};

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The project or token does not exist (`"project"`, `"token"`).
    #[error("{0} not found")]
    NotFound(&'static str),
    /// The write contradicts what is stored (a duplicate name, a rotation of a
    /// revoked token).
    #[error("{0}")]
    Conflict(String),
    /// A token for an inactive project.
    #[error("the project is inactive")]
    ProjectInactive,
    /// Fields the write cannot take, with why.
    #[error("validation failed")]
    Invalid(BTreeMap<String, String>),
    /// The actor did not answer (its mailbox is gone).
    #[error("service unavailable: {0}")]
    Unavailable(String),
    /// The database cannot take the write now (disk full, I/O error, locked):
    /// nothing was changed. The detail is for the log only.
    #[error("service unavailable: storage is failing; retry shortly")]
    Storage(String),
    #[error("internal error")]
    Internal(String),
}

impl RegistryError {
    pub fn field(name: &str, why: impl Into<String>) -> Self {
        Self::Invalid(BTreeMap::from([(name.to_owned(), why.into())]))
    }
}

impl From<DbErr> for RegistryError {
    fn from(e: DbErr) -> Self {
        if crate::storage::is_storage_failure(&e) {
            Self::Storage(format!("database: {e}"))
        } else {
            Self::Internal(format!("database: {e}"))
        }
    }
}

/// `Conflict(what)` for a unique-constraint violation, else as any database error.
pub(super) fn conflict_or(e: DbErr, what: &str) -> RegistryError {
    match e.sql_err() {
        Some(SqlErr::UniqueConstraintViolation(_)) => RegistryError::Conflict(what.to_owned()),
        _ => e.into(),
    }
}
