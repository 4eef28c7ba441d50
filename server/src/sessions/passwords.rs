//! Passwords: bcrypt at `auth.bcrypt_cost`, always off the HTTP worker threads
//! (`web::block`), since one hash costs tens to hundreds of milliseconds.

use std::sync::OnceLock;

use crate::secret::Secret;

/// At least this many characters; at most 72 bytes, where bcrypt stops reading
/// (longer passwords are refused instead of silently truncated).
pub const MIN_CHARS: usize = 12;
pub const MAX_BYTES: usize = 72;

pub fn check_policy(password: &str) -> Result<(), String> {
    if password.chars().count() < MIN_CHARS {
        return Err(format!("must be at least {MIN_CHARS} characters"));
    }
    if password.len() > MAX_BYTES {
        return Err(format!(
            "must be at most {MAX_BYTES} bytes (bcrypt's limit)"
        ));
    }
    Ok(())
}

/// Hashes on a blocking thread.
pub async fn hash(password: Secret, cost: u32) -> Result<String, String> {
    actix_web::web::block(move || bcrypt::hash(password.expose(), cost))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())
}

/// Verifies on a blocking thread. `stored = None` (no such user) verifies against
/// a fixed dummy hash of the same cost, so an unknown user takes as long to
/// refuse as a wrong password, and always fails.
pub async fn verify(password: Secret, stored: Option<String>, cost: u32) -> bool {
    let known = stored.is_some();
    let result = actix_web::web::block(move || {
        let hash = stored.unwrap_or_else(|| dummy_hash(cost).to_owned());
        bcrypt::verify(password.expose(), &hash).unwrap_or(false)
    })
    .await
    .unwrap_or(false);
    known && result
}

/// A hash of a random password, made once per process at the configured cost.
fn dummy_hash(cost: u32) -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| {
        let random = crate::secret::TokenSecret::generate();
        bcrypt::hash(random.expose(), cost).unwrap_or_default()
    })
}

/// Computes the dummy hash ahead of the first login (start-up, blocking thread),
/// so the first unknown-user login is not slower than the rest.
pub async fn warm_up(cost: u32) {
    let _ = actix_web::web::block(move || {
        dummy_hash(cost);
    })
    .await;
}
