//! Rows → cache snapshots. Malformed stored lists are logged; the allowlists among
//! them fail closed (see [`allowlist`]) while the management API keeps working, so
//! the operator can write them again.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use entity::{projects, tokens};
use ipnet::IpNet;
use serde::Serialize;
use serde::de::DeserializeOwned;
use uuid::Uuid;

use super::cache::{ProjectState, TokenCounters, TokenState};
use super::parse_hash;
use crate::crypto::KeyCipher;
use crate::ids::{ProjectId, TokenId};
use crate::policy::{CidrList, ModelList};
use crate::secret::TokenHash;

pub fn json_list<T: Serialize>(items: &[T]) -> serde_json::Value {
    serde_json::to_value(items).unwrap_or_else(|_| serde_json::Value::Array(Vec::new()))
}

pub fn read_list<T: DeserializeOwned>(value: &serde_json::Value, what: &str) -> Vec<T> {
    match serde_json::from_value(value.clone()) {
        Ok(v) => v,
        Err(e) => {
            tracing::error!(field = what, error = %e, "stored list is malformed; treating it as empty");
            Vec::new()
        }
    }
}

/// Whose stored allowlist is being read, for the log.
#[derive(Clone, Copy)]
enum Owner {
    Project(Uuid),
    Token(Uuid),
}

/// A stored allowlist (`allowed_models`, `allowed_cidrs`) as it will be enforced.
///
/// `[]` means "no restriction", so a value that does not parse (hand-edited row,
/// bad migration, corruption) must not become `[]`. It fails closed: `None`, which
/// the callers turn into a list that allows nothing ([`ModelList::nothing`],
/// [`CidrList::nothing`]). Every request through that token or project is then
/// refused (`model_not_allowed`, `ip_not_allowed`) until an operator writes the
/// field again: a `PATCH` replaces it wholesale, so fixing it needs no reading of
/// the old value, and the management API is not behind these lists. An ERROR log
/// names the token or project id and the field; the row holds only the token's
/// hash and hint, and neither is logged.
fn allowlist<T: DeserializeOwned>(
    value: &serde_json::Value,
    owner: Owner,
    field: &'static str,
) -> Option<Vec<T>> {
    let err = match serde_json::from_value(value.clone()) {
        Ok(v) => return Some(v),
        Err(e) => e,
    };
    const WHAT: &str = "stored allowlist is malformed; it allows nothing until it is set again";
    match owner {
        Owner::Project(id) => tracing::error!(project_id = %id, field, error = %err, "{WHAT}"),
        Owner::Token(id) => tracing::error!(token_id = %id, field, error = %err, "{WHAT}"),
    }
    None
}

fn models(value: &serde_json::Value, owner: Owner) -> ModelList {
    allowlist(value, owner, "allowed_models").map_or_else(ModelList::nothing, ModelList::new)
}

fn cidrs(value: &serde_json::Value, owner: Owner) -> CidrList {
    allowlist::<IpNet>(value, owner, "allowed_cidrs").map_or_else(CidrList::nothing, CidrList::new)
}

pub fn project_state(p: &projects::Model, cipher: Option<&KeyCipher>) -> ProjectState {
    let upstream_api_key = match (&p.upstream_api_key_enc, cipher) {
        (None, _) => None,
        (Some(enc), Some(c)) => match c.decrypt(enc) {
            Ok(k) => Some(k),
            Err(e) => {
                tracing::error!(project_id = %p.id, error = %e, "cannot decrypt the project's upstream key; its requests will fail until it is set again");
                Some(crate::secret::Secret::default())
            }
        },
        (Some(_), None) => {
            tracing::error!(project_id = %p.id, "the project has an upstream key but auth.encryption_key is not set; its requests will fail");
            Some(crate::secret::Secret::default())
        }
    };
    ProjectState {
        id: ProjectId(p.id),
        is_active: p.is_active,
        deleted: p.deleted_at.is_some(),
        upstream_api_key,
        allowed_models: models(&p.allowed_models, Owner::Project(p.id)),
        allowed_cidrs: cidrs(&p.allowed_cidrs, Owner::Project(p.id)),
        rate_limit_rpm: p.rate_limit_rpm,
        providers: read_list::<String>(&p.providers, "providers").into(),
    }
}

/// The pre-rotation hash and the end of its grace.
pub type PreviousHash = (TokenHash, DateTime<Utc>);

/// A token snapshot, its current hash and its pre-rotation hash (if still in grace).
pub fn token_state(
    t: &tokens::Model,
    counters: Option<Arc<TokenCounters>>,
) -> (TokenState, Option<TokenHash>, Option<PreviousHash>) {
    let counters = counters.unwrap_or_else(|| {
        Arc::new(TokenCounters::new(
            t.request_count,
            t.request_lease,
            t.last_used_at,
        ))
    });
    let previous = t
        .previous_token_hash
        .as_deref()
        .and_then(parse_hash)
        .zip(t.previous_valid_until);
    let state = TokenState {
        id: TokenId(t.id),
        project_id: ProjectId(t.project_id),
        hint: t.token_hint.clone(),
        is_active: t.is_active,
        revoked: t.revoked_at.is_some(),
        expires_at: t.expires_at,
        max_requests: t.max_requests,
        rate_limit_rpm: t.rate_limit_rpm,
        allowed_models: models(&t.allowed_models, Owner::Token(t.id)),
        allowed_cidrs: cidrs(&t.allowed_cidrs, Owner::Token(t.id)),
        counters,
    };
    (state, parse_hash(&t.token_hash), previous)
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use serde_json::json;

    use super::*;

    /// Collects what the fmt subscriber writes, to read the log back.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn logged<R>(f: impl FnOnce() -> R) -> (R, String) {
        let out = Captured::default();
        let writer = out.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        let r = tracing::subscriber::with_default(subscriber, f);
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        (r, text)
    }

    fn token(models: serde_json::Value, cidrs: serde_json::Value) -> tokens::Model {
        let now = Utc::now();
        tokens::Model {
            id: Uuid::now_v7(),
            project_id: Uuid::now_v7(),
            name: None,
            token_hash: "00".repeat(32),
            token_hint: "pal_…abcd".to_owned(),
            previous_token_hash: None,
            previous_valid_until: None,
            is_active: true,
            revoked_at: None,
            expires_at: now,
            max_requests: None,
            request_count: 0,
            request_lease: None,
            rate_limit_rpm: None,
            allowed_models: models,
            allowed_cidrs: cidrs,
            last_used_at: None,
            created_at: now,
            updated_at: now,
        }
    }

    fn project(models: serde_json::Value, cidrs: serde_json::Value) -> projects::Model {
        let now = Utc::now();
        projects::Model {
            id: Uuid::now_v7(),
            name: "p".to_owned(),
            description: None,
            is_active: true,
            upstream_api_key_enc: None,
            allowed_models: models,
            allowed_cidrs: cidrs,
            rate_limit_rpm: None,
            providers: json!([]),
            created_at: now,
            updated_at: now,
            deleted_at: None,
        }
    }

    #[test]
    fn token_allowlists_read_as_stored() {
        let t = token(json!(["gpt-4o*"]), json!(["10.0.0.0/8"]));
        let (state, _, _) = token_state(&t, None);
        assert!(state.allowed_models.allows("gpt-4o-mini"));
        assert!(!state.allowed_models.allows("claude"));
        assert!(state.allowed_cidrs.allows("10.1.2.3".parse().unwrap()));
        assert!(!state.allowed_cidrs.allows("192.0.2.1".parse().unwrap()));
        let (state, _, _) = token_state(&token(json!([]), json!([])), None);
        assert!(state.allowed_models.is_empty() && state.allowed_cidrs.is_empty());
    }

    #[test]
    fn token_allowlists_malformed_allow_nothing_and_log_the_token_and_field() {
        let t = token(json!("gpt-4o"), json!(["not a cidr"]));
        let ((state, _, _), log) = logged(|| token_state(&t, None));
        assert!(!state.allowed_models.is_empty(), "a restriction, not none");
        assert!(!state.allowed_models.allows("gpt-4o"));
        assert!(!state.allowed_cidrs.is_empty());
        assert!(!state.allowed_cidrs.allows("127.0.0.1".parse().unwrap()));
        assert!(log.contains("ERROR"), "{log}");
        assert!(log.contains(&format!("token_id={}", t.id)), "{log}");
        assert!(log.contains("field=\"allowed_models\""), "{log}");
        assert!(log.contains("field=\"allowed_cidrs\""), "{log}");
        assert!(!log.contains(&t.token_hash), "{log}");
    }

    #[test]
    fn project_allowlists_malformed_allow_nothing_and_log_the_project_and_field() {
        let p = project(json!({"models": ["gpt-4o"]}), json!(42));
        let (state, log) = logged(|| project_state(&p, None));
        assert!(!state.allowed_models.is_empty());
        assert!(!state.allowed_models.allows("gpt-4o"));
        assert!(!state.allowed_cidrs.is_empty());
        assert!(!state.allowed_cidrs.allows("::1".parse().unwrap()));
        assert!(log.contains(&format!("project_id={}", p.id)), "{log}");
        assert!(log.contains("field=\"allowed_cidrs\""), "{log}");
    }
}
