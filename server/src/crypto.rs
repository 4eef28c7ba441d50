//! Encryption at rest for project upstream keys: AES-256-GCM with a random 96-bit
//! nonce per value, stored as `v1:` + base64(nonce ‖ ciphertext). The version prefix
//! lets a later key rotation tell old ciphertexts from new ones.

use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use crate::secret::Secret;

const PREFIX: &str = "v1:";
const NONCE_LEN: usize = 12;

#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("the encryption key must be base64 of exactly 32 bytes")]
    BadKey,
    #[error("stored ciphertext is malformed or was encrypted with another key")]
    Undecryptable,
}

#[derive(Clone)]
pub struct KeyCipher(Aes256Gcm);

impl std::fmt::Debug for KeyCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyCipher([redacted])")
    }
}

impl KeyCipher {
    pub fn from_base64(key: &str) -> Result<Self, CryptoError> {
        let bytes = STANDARD
            .decode(key.trim())
            .map_err(|_| CryptoError::BadKey)?;
        if bytes.len() != 32 {
            return Err(CryptoError::BadKey);
        }
        Aes256Gcm::new_from_slice(&bytes)
            .map(Self)
            .map_err(|_| CryptoError::BadKey)
    }

    pub fn encrypt(&self, plaintext: &Secret) -> String {
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        // Encryption with a valid key and nonce cannot fail for in-memory buffers.
        let sealed = self
            .0
            .encrypt(&nonce, plaintext.expose().as_bytes())
            .unwrap_or_default();
        let mut out = Vec::with_capacity(NONCE_LEN + sealed.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        format!("{PREFIX}{}", STANDARD.encode(out))
    }

    pub fn decrypt(&self, stored: &str) -> Result<Secret, CryptoError> {
        let body = stored
            .strip_prefix(PREFIX)
            .ok_or(CryptoError::Undecryptable)?;
        let raw = STANDARD
            .decode(body)
            .map_err(|_| CryptoError::Undecryptable)?;
        if raw.len() <= NONCE_LEN {
            return Err(CryptoError::Undecryptable);
        }
        let (nonce, sealed) = raw.split_at(NONCE_LEN);
        let plain = self
            .0
            .decrypt(Nonce::from_slice(nonce), sealed)
            .map_err(|_| CryptoError::Undecryptable)?;
        String::from_utf8(plain)
            .map(Secret::new)
            .map_err(|_| CryptoError::Undecryptable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

    #[test]
    fn round_trip_with_random_nonce() {
        let c = KeyCipher::from_base64(KEY).unwrap();
        let a = c.encrypt(&Secret::new("sk-upstream"));
        let b = c.encrypt(&Secret::new("sk-upstream"));
        assert_ne!(a, b);
        assert!(!a.contains("sk-upstream"));
        assert_eq!(c.decrypt(&a).unwrap().expose(), "sk-upstream");
    }

    #[test]
    fn wrong_key_or_garbage_fails() {
        let c = KeyCipher::from_base64(KEY).unwrap();
        let other = KeyCipher::from_base64(&STANDARD.encode([7u8; 32])).unwrap();
        let sealed = c.encrypt(&Secret::new("x"));
        assert!(other.decrypt(&sealed).is_err());
        assert!(c.decrypt("v1:!!").is_err());
        assert!(KeyCipher::from_base64("c2hvcnQ=").is_err());
    }
}
