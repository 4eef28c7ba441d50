//! Admin users and their sessions (SPEC §3): who may call `/manage` besides the
//! management token, with which role, and for how long.
//!
//! * Passwords: bcrypt, off the worker threads ([`passwords`]).
//! * Access: a short-lived HS256 JWT ([`jwt`]) carrying the user, a unique `jti`
//!   and the refresh family it belongs to. Every request re-reads the user (a
//!   deleted user's token dies at once; the *current* role applies), the `jti`
//!   (logout) and the family (theft detection).
//! * Refresh: an opaque random secret, stored as SHA-256, spent on use and
//!   replaced by a new one in the same family. Presenting a spent one revokes the
//!   family: whoever holds its access tokens or its live refresh token is out.

pub mod jwt;
pub mod passwords;
pub mod users;

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use crate::config::AuthConfig;
use crate::secret::{Secret, TokenHash};
use crate::service::sessions::Sessions;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Admin,
    Viewer,
}

impl Role {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "admin" => Some(Self::Admin),
            "viewer" => Some(Self::Viewer),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::Viewer => "viewer",
        }
    }
}

/// Who is calling `/manage`, put in the request extensions by the auth middleware.
#[derive(Debug, Clone)]
pub struct Principal {
    pub role: Role,
    pub user: Option<SessionUser>,
}

#[derive(Debug, Clone)]
pub struct SessionUser {
    pub username: String,
    pub jti: Uuid,
    pub family: Uuid,
    pub expires_at: DateTime<Utc>,
}

impl Principal {
    pub fn management_token() -> Self {
        Self {
            role: Role::Admin,
            user: None,
        }
    }

    /// The audit trail's `actor`.
    pub fn actor(&self) -> String {
        match &self.user {
            Some(u) => format!("user:{}", u.username),
            None => "management-token".to_owned(),
        }
    }
}

/// A JWT's principal, if it is valid, unrevoked, and its user still exists.
/// `Err` when the database could not say: that is no verdict on the token, and
/// must not be answered or counted as bad credentials.
pub async fn authenticate(
    db: &sea_orm::DatabaseConnection,
    auth: &AuthConfig,
    token: &str,
) -> Result<Option<Principal>, sea_orm::DbErr> {
    let secret = auth.jwt_secret.expose();
    if secret.is_empty() {
        return Ok(None);
    }
    let Some(claims) = jwt::validate(secret.as_bytes(), token) else {
        return Ok(None);
    };
    if Sessions::jti_revoked(db, claims.jti).await?
        || Sessions::family_revoked(db, claims.fam).await?
    {
        return Ok(None);
    }
    let Some(user) = Sessions::live_user(db, claims.sub).await? else {
        return Ok(None);
    };
    let (Some(role), Some(expires_at)) = (
        Role::parse(&user.role),
        DateTime::from_timestamp(claims.exp, 0),
    ) else {
        return Ok(None);
    };
    Ok(Some(Principal {
        role,
        user: Some(SessionUser {
            username: user.username,
            jti: claims.jti,
            family: claims.fam,
            expires_at,
        }),
    }))
}

/// What login and refresh return (SPEC §3).
#[derive(Serialize)]
pub struct TokenPair {
    pub access_token: String,
    pub refresh_token: String,
    pub token_type: &'static str,
    pub expires_in: u64,
}

impl std::fmt::Debug for TokenPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenPair([redacted])")
    }
}

/// Why a session could not be issued or refreshed (a failure, not a refusal).
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// Storage failures among these become 503s, the rest 500s.
    #[error("database: {0}")]
    Database(#[from] sea_orm::DbErr),
    #[error("{0}")]
    Token(String),
}

/// A new access token and refresh token in `family`.
pub async fn issue_pair(
    db: &sea_orm::DatabaseConnection,
    auth: &AuthConfig,
    user: Uuid,
    role: Role,
    family: Uuid,
    now: DateTime<Utc>,
) -> Result<TokenPair, SessionError> {
    let ttl = auth.access_token_ttl.0;
    let (access, _) = jwt::issue(
        auth.jwt_secret.expose().as_bytes(),
        user,
        role.as_str(),
        family,
        now,
        ttl,
    )
    .map_err(SessionError::Token)?;
    let refresh = Secret::new(format!(
        "rt-{}",
        &crate::secret::TokenSecret::generate().expose()[4..]
    ));
    let expires = now
        + chrono::Duration::from_std(auth.refresh_token_ttl.0)
            .unwrap_or(chrono::Duration::days(30));
    Sessions::insert_refresh(
        db,
        user,
        family,
        TokenHash::of(refresh.expose()).to_hex(),
        expires,
        now,
    )
    .await?;
    Ok(TokenPair {
        access_token: access,
        refresh_token: refresh.expose().to_owned(),
        token_type: "Bearer",
        expires_in: ttl.as_secs(),
    })
}

/// Why a refresh was refused.
pub enum RefreshRefused {
    Unknown,
    Expired,
    /// Already spent (or its family revoked): the family is revoked now.
    Reused {
        user: Uuid,
        family: Uuid,
    },
}

/// Spends `presented` and issues the next pair of its family.
pub async fn refresh(
    db: &sea_orm::DatabaseConnection,
    auth: &AuthConfig,
    presented: &str,
    now: DateTime<Utc>,
) -> Result<Result<(TokenPair, Uuid), RefreshRefused>, SessionError> {
    let hash = TokenHash::of(presented).to_hex();
    let Some(row) = Sessions::refresh_by_hash(db, &hash).await? else {
        return Ok(Err(RefreshRefused::Unknown));
    };
    let reused = RefreshRefused::Reused {
        user: row.user_id,
        family: row.family_id,
    };
    if row.spent_at.is_some() || row.revoked_at.is_some() {
        Sessions::revoke_family(db, row.family_id, now).await?;
        return Ok(Err(reused));
    }
    if now >= row.expires_at {
        return Ok(Err(RefreshRefused::Expired));
    }
    if !Sessions::spend_refresh(db, row.id, now).await? {
        Sessions::revoke_family(db, row.family_id, now).await?;
        return Ok(Err(reused));
    }
    let Some(user) = Sessions::live_user(db, row.user_id).await? else {
        return Ok(Err(RefreshRefused::Unknown));
    };
    let role = Role::parse(&user.role)
        .ok_or_else(|| SessionError::Token("stored role is invalid".into()))?;
    let pair = issue_pair(db, auth, user.id, role, row.family_id, now).await?;
    Ok(Ok((pair, user.id)))
}

#[cfg(test)]
mod tests {
    use sea_orm::Database;

    use super::*;

    const JWT_SECRET: &str = "unit-test-jwt-secret-0123456789abcdef";

    /// A well-formed, signed token whose lookups cannot be answered is not a
    /// refusal: the caller answers 503 and counts nothing against the client.
    #[actix_rt::test]
    async fn authenticate_with_storage_failing_is_an_error_not_a_refusal() {
        let db = Database::connect("sqlite::memory:").await.unwrap();
        crate::db::migrate(&db).await.unwrap();
        let auth = AuthConfig {
            jwt_secret: Secret::new(JWT_SECRET),
            ..AuthConfig::default()
        };
        let (token, _) = jwt::issue(
            JWT_SECRET.as_bytes(),
            Uuid::now_v7(),
            "admin",
            Uuid::now_v7(),
            crate::time::now(),
            std::time::Duration::from_secs(60),
        )
        .unwrap();
        // Storage answers: a user that does not exist is a refusal.
        assert!(matches!(authenticate(&db, &auth, &token).await, Ok(None)));
        db.close_by_ref().await.unwrap();
        let err = authenticate(&db, &auth, &token).await.unwrap_err();
        // A storage failure, which the management API answers 503
        // `service_unavailable` (`http/manage/errors.rs`), not a 500.
        assert!(crate::storage::is_storage_failure(&err), "{err:?}");
    }
}
