//! Types that hold secrets. None of them can reach a log line by accident: `Debug`,
//! `Display` and `Serialize` all redact, and the value is only reachable through an
//! explicit `expose()` call that is easy to grep for.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

const REDACTED: &str = "[redacted]";

/// A configuration or stored secret (management token, provider key, JWT secret).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_empty() { "\"\"" } else { REDACTED })
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_empty() { "" } else { REDACTED })
    }
}

/// Serializes as `[redacted]` (or `""` when unset) so `check-config` can show
/// whether a secret is set without showing it.
impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(if self.0.is_empty() { "" } else { REDACTED })
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Option::<String>::deserialize(d).map(|v| Self(v.unwrap_or_default()))
    }
}

/// A freshly minted `tok-` secret. It exists only between generation and the one
/// HTTP response that shows it; everything else handles its SHA-256.
pub struct TokenSecret(String);

impl TokenSecret {
    /// Random part length: 40 base62 characters, about 238 bits of entropy.
    pub const RANDOM_LEN: usize = 40;
    pub const PREFIX: &'static str = "tok-";

    pub fn generate() -> Self {
        use rand::Rng;
        use rand::distr::Alphanumeric;
        let random: String = rand::rng()
            .sample_iter(&Alphanumeric)
            .take(Self::RANDOM_LEN)
            .map(char::from)
            .collect();
        Self(format!("{}{random}", Self::PREFIX))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn hash(&self) -> TokenHash {
        TokenHash::of(&self.0)
    }

    /// `tok-` + first 4 + `****` + last 4 of the random part.
    pub fn hint(&self) -> String {
        let random = &self.0[Self::PREFIX.len()..];
        let n = random.len();
        format!(
            "{}{}****{}",
            Self::PREFIX,
            &random[..4.min(n)],
            &random[n.saturating_sub(4)..]
        )
    }
}

impl fmt::Debug for TokenSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

/// SHA-256 of a presented or stored token secret. Tokens are high-entropy, so a
/// fast hash is the right choice (bcrypt is for passwords); equality of hashes of
/// random secrets leaks nothing useful through timing, and the map lookup is by hash.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenHash([u8; 32]);

impl TokenHash {
    pub fn of(secret: &str) -> Self {
        use sha2::{Digest, Sha256};
        Self(Sha256::digest(secret.as_bytes()).into())
    }

    pub fn to_hex(self) -> String {
        hex::encode(self.0)
    }

    pub fn from_hex(s: &str) -> Option<Self> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).ok()?;
        Some(Self(out))
    }
}

impl fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TokenHash({}…)", &hex::encode(&self.0[..4]))
    }
}

/// Constant-time equality for secrets of possibly different lengths: both sides
/// are hashed first so neither the content nor the length leaks through timing.
pub fn constant_time_eq(a: &str, b: &str) -> bool {
    use sha2::{Digest, Sha256};
    use subtle::ConstantTimeEq;
    let ha = Sha256::digest(a.as_bytes());
    let hb = Sha256::digest(b.as_bytes());
    ha.ct_eq(&hb).into()
}

/// The credential of an `Authorization: Bearer …` header (scheme case-insensitive as
/// commonly sent: `Bearer` or `bearer`), trimmed; `None` when absent or empty.
pub fn bearer(headers: &actix_web::http::header::HeaderMap) -> Option<&str> {
    headers
        .get(actix_web::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_secret_has_prefix_length_and_hint() {
        let t = TokenSecret::generate();
        assert!(t.expose().starts_with("tok-"));
        assert_eq!(t.expose().len(), 44);
        assert!(t.expose()[4..].chars().all(|c| c.is_ascii_alphanumeric()));
        let hint = t.hint();
        assert_eq!(hint.len(), 4 + 4 + 4 + 4);
        assert_eq!(&hint[4..8], &t.expose()[4..8]);
        assert_eq!(&hint[12..], &t.expose()[40..]);
        assert_eq!(format!("{t:?}"), "[redacted]");
    }

    #[test]
    fn secret_never_prints() {
        let s = Secret::new("super-secret-value");
        assert!(!format!("{s:?} {s}").contains("super"));
        assert_eq!(serde_json::to_string(&s).unwrap(), "\"[redacted]\"");
    }

    #[test]
    fn hash_round_trips_hex() {
        let h = TokenHash::of("tok-abc");
        assert_eq!(TokenHash::from_hex(&h.to_hex()), Some(h));
        assert!(constant_time_eq("a", "a"));
        assert!(!constant_time_eq("a", "ab"));
    }
}
