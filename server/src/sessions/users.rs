//! Admin users: the username rule and creating a user, shared by
//! `POST /manage/users` and `palisade user create`.

use crate::secret::Secret;
use crate::service::sessions::Sessions;
use crate::sessions::{Role, passwords};

/// Why a user was not created; the HTTP layer and the CLI each say it their way.
#[derive(Debug)]
pub enum UserError {
    /// The (lower-cased) name is taken.
    Exists(String),
    Hash(passwords::HashError),
    Storage(sea_orm::DbErr),
}

impl From<sea_orm::DbErr> for UserError {
    fn from(e: sea_orm::DbErr) -> Self {
        Self::Storage(e)
    }
}

impl std::fmt::Display for UserError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Exists(name) => write!(f, "a user named {name:?} exists"),
            Self::Hash(passwords::HashError::Busy(_)) => f.write_str("the password hasher is busy"),
            Self::Hash(passwords::HashError::Failed(why)) => write!(f, "password hashing: {why}"),
            Self::Storage(e) => write!(f, "storage: {e}"),
        }
    }
}

/// Letters, digits and `._-@`, 1–64 characters.
pub fn username_ok(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'@'))
}

/// Creates a user; the password is hashed on the bcrypt pool.
pub async fn create_user(
    db: &sea_orm::DatabaseConnection,
    username: &str,
    password: Secret,
    role: Role,
    hasher: &passwords::Hasher,
) -> Result<entity::users::Model, UserError> {
    if Sessions::user_by_name(db, username).await?.is_some() {
        return Err(UserError::Exists(username.to_lowercase()));
    }
    let hash = hasher.hash(password).await.map_err(UserError::Hash)?;
    match Sessions::insert_user(db, username, hash, role.as_str(), crate::time::now()).await {
        // Created by a concurrent request (another instance) since the check:
        // the unique index on live names decides, on SQLite and PostgreSQL alike.
        Err(e)
            if matches!(
                e.sql_err(),
                Some(sea_orm::SqlErr::UniqueConstraintViolation(_))
            ) =>
        {
            Err(UserError::Exists(username.to_lowercase()))
        }
        out => Ok(out?),
    }
}
