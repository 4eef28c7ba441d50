//! The `/manage` answers to domain errors: each maps to one [`ManageError`] (its
//! status, code, message and headers live in `error.rs`).

use crate::actors::token_registry::RegistryError;
use crate::error::ManageError;
use crate::rate_limit::ip::LockedOut;
use crate::sessions::passwords::HashError;
use crate::sessions::users::UserError;

/// A client IP (or login username) past its allowance of failed
/// authentications.
impl From<LockedOut> for ManageError {
    fn from(LockedOut { retry_after }: LockedOut) -> Self {
        Self::RateLimited { retry_after }
    }
}

impl From<RegistryError> for ManageError {
    fn from(e: RegistryError) -> Self {
        match e {
            RegistryError::NotFound(what) => Self::NotFound(what),
            RegistryError::Conflict(why) => Self::Conflict(why),
            RegistryError::ProjectInactive => Self::ProjectInactive,
            RegistryError::Invalid(fields) => Self::Validation(fields),
            RegistryError::Unavailable(detail) => Self::Unavailable(detail),
            RegistryError::Storage(detail) => Self::Storage(detail),
            RegistryError::Internal(detail) => Self::Internal(detail),
        }
    }
}

impl From<UserError> for ManageError {
    fn from(e: UserError) -> Self {
        match e {
            UserError::Exists(name) => Self::Conflict(format!("a user named {name:?} exists")),
            UserError::Hash(HashError::Busy(b)) => super::session::busy(b),
            UserError::Hash(HashError::Failed(why)) => Self::Internal(why),
            UserError::Storage(e) => e.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use actix_web::ResponseError;
    use sea_orm::{ConnAcquireErr, DbErr};

    use super::*;

    /// Same variant, same payload, and the same text as before the registry had
    /// its own error type.
    #[test]
    fn registry_errors_map_variant_for_variant() {
        let cases = [
            (
                RegistryError::NotFound("token"),
                "not_found",
                "token not found",
            ),
            (RegistryError::Conflict("taken".into()), "conflict", "taken"),
            (
                RegistryError::ProjectInactive,
                "project_inactive",
                "the project is inactive",
            ),
            (
                RegistryError::field("upstream_api_key", "why"),
                "validation_failed",
                "validation failed",
            ),
            (
                RegistryError::Unavailable("token registry: gone".into()),
                "service_unavailable",
                "service unavailable: token registry: gone",
            ),
            (
                RegistryError::Storage("database: full".into()),
                "service_unavailable",
                "service unavailable: storage is failing; retry shortly",
            ),
            (
                RegistryError::Internal("database: bug".into()),
                "internal_error",
                "internal error",
            ),
        ];
        for (e, code, message) in cases {
            let shown = e.to_string();
            let m = ManageError::from(e);
            assert_eq!((m.code(), m.to_string().as_str()), (code, message));
            assert_eq!(shown, message, "the log line stays the same");
        }
        assert!(matches!(
            ManageError::from(RegistryError::field("name", "must not be empty")),
            ManageError::Validation(f) if f.get("name").map(String::as_str) == Some("must not be empty")
        ));
        assert!(matches!(
            ManageError::from(RegistryError::Storage("d".into())),
            ManageError::Storage(d) if d == "d"
        ));
        assert!(matches!(
            ManageError::from(RegistryError::Internal("d".into())),
            ManageError::Internal(d) if d == "d"
        ));
        assert!(matches!(
            ManageError::from(RegistryError::Unavailable("d".into())),
            ManageError::Unavailable(d) if d == "d"
        ));
    }

    #[test]
    fn a_locked_out_key_is_429_with_its_wait() {
        assert!(matches!(
            ManageError::from(LockedOut { retry_after: 3 }),
            ManageError::RateLimited { retry_after: 3 }
        ));
    }

    /// Storage failures (the registry's, a session lookup's) are 503, not 500.
    #[test]
    fn storage_failures_are_503() {
        let storage = || DbErr::ConnectionAcquire(ConnAcquireErr::Timeout);
        assert!(matches!(
            RegistryError::from(storage()),
            RegistryError::Storage(_)
        ));
        let answer = ManageError::from(storage());
        assert_eq!(answer.status_code().as_u16(), 503, "{answer:?}");
        assert_eq!(answer.code(), "service_unavailable");
        let answer = ManageError::from(RegistryError::from(storage()));
        assert_eq!(answer.status_code().as_u16(), 503, "{answer:?}");
    }
}
