//! Access tokens: JWT, HS256 only (the algorithm list is pinned, so `alg: none`,
//! RS256 headers and any other algorithm are refused), with issuer, audience,
//! expiry (5 s leeway), a unique `jti` and the refresh family it belongs to.
//! A header with `crit` is refused: it names extensions this server does not
//! implement (RFC 7515 §4.1.11), and `jsonwebtoken` would silently ignore it.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub const ISSUER: &str = "palisade";
pub const AUDIENCE: &str = "palisade-manage";
const LEEWAY_SECS: u64 = 5;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub aud: String,
    /// The user id.
    pub sub: Uuid,
    /// The role when issued; the database's current role is what counts.
    pub role: String,
    pub jti: Uuid,
    /// The refresh-token family (login) this token was issued in.
    pub fam: Uuid,
    pub iat: i64,
    pub exp: i64,
}

pub fn issue(
    secret: &[u8],
    user: Uuid,
    role: &str,
    family: Uuid,
    now: DateTime<Utc>,
    ttl: std::time::Duration,
) -> Result<(String, Claims), String> {
    let claims = Claims {
        iss: ISSUER.to_owned(),
        aud: AUDIENCE.to_owned(),
        sub: user,
        role: role.to_owned(),
        jti: Uuid::now_v7(),
        fam: family,
        iat: now.timestamp(),
        exp: now.timestamp() + i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX / 2),
    };
    let token = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret),
    )
    .map_err(|e| e.to_string())?;
    Ok((token, claims))
}

/// Signature, algorithm, issuer, audience and expiry; revocation is checked by
/// the caller against the database.
pub fn validate(secret: &[u8], token: &str) -> Option<Claims> {
    if !header_is_plain(token) {
        return None;
    }
    let mut v = Validation::new(Algorithm::HS256);
    v.algorithms = vec![Algorithm::HS256];
    v.set_issuer(&[ISSUER]);
    v.set_audience(&[AUDIENCE]);
    v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    v.leeway = LEEWAY_SECS;
    jsonwebtoken::decode::<Claims>(token, &DecodingKey::from_secret(secret), &v)
        .ok()
        .map(|d| d.claims)
}

/// The header is a base64url JSON object without `crit`: every critical extension
/// is one we do not understand, so its presence alone refuses the token.
fn header_is_plain(token: &str) -> bool {
    let head = token.split('.').next().unwrap_or_default();
    URL_SAFE_NO_PAD
        .decode(head)
        .ok()
        .and_then(|bytes| {
            serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(&bytes).ok()
        })
        .is_some_and(|header| !header.contains_key("crit"))
}

/// A bearer credential shaped like a JWT (three base64url parts).
pub fn looks_like_jwt(s: &str) -> bool {
    s.starts_with("eyJ") && s.bytes().filter(|b| *b == b'.').count() == 2
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn fresh() -> String {
        let (t, _) = issue(
            SECRET,
            Uuid::now_v7(),
            "admin",
            Uuid::now_v7(),
            Utc::now(),
            std::time::Duration::from_secs(60),
        )
        .unwrap();
        t
    }

    #[test]
    fn valid_token_passes_and_attacks_fail() {
        let t = fresh();
        assert!(validate(SECRET, &t).is_some());
        // Another secret.
        assert!(validate(b"another-secret-another-secret-xx", &t).is_none());
        let parts: Vec<&str> = t.split('.').collect();
        // alg: none, signature stripped.
        let none = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
        assert!(validate(SECRET, &format!("{none}.{}.", parts[1])).is_none());
        // RS256 header on the same payload and signature.
        let rs = URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256","typ":"JWT"}"#);
        assert!(validate(SECRET, &format!("{rs}.{}.{}", parts[1], parts[2])).is_none());
        // Tampered payload.
        let mut claims: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
        claims["role"] = "superuser".into();
        let forged = URL_SAFE_NO_PAD.encode(claims.to_string());
        assert!(validate(SECRET, &format!("{}.{forged}.{}", parts[0], parts[2])).is_none());
        // Expired (beyond the leeway).
        let (old, _) = issue(
            SECRET,
            Uuid::now_v7(),
            "admin",
            Uuid::now_v7(),
            Utc::now() - chrono::Duration::seconds(120),
            std::time::Duration::from_secs(60),
        )
        .unwrap();
        assert!(validate(SECRET, &old).is_none());
        // A `crit` header, correctly signed.
        let crit = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT","crit":["exp"],"exp":1}"#);
        let message = format!("{crit}.{}", parts[1]);
        let sig = jsonwebtoken::crypto::sign(
            message.as_bytes(),
            &EncodingKey::from_secret(SECRET),
            Algorithm::HS256,
        )
        .unwrap();
        assert!(validate(SECRET, &format!("{message}.{sig}")).is_none());
        let plain = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
        let message = format!("{plain}.{}", parts[1]);
        let sig = jsonwebtoken::crypto::sign(
            message.as_bytes(),
            &EncodingKey::from_secret(SECRET),
            Algorithm::HS256,
        )
        .unwrap();
        assert!(validate(SECRET, &format!("{message}.{sig}")).is_some());
        assert!(looks_like_jwt(&t));
        assert!(!looks_like_jwt("e2e-management-token-0123456789abcdef"));
    }
}
