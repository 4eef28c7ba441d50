//! Unauthenticated `/v1` failures: no credential (`missing_api_key`) or one that
//! matches no token (`invalid_api_key`). Anyone can send these at wire speed, so
//! each one must cost next to nothing and leave next to nothing behind:
//!
//! * **Counted**, every one: `palisade_unauthenticated_requests_total{reason}`.
//! * **Limited per client IP** (on by default, `rate_limits.unauthenticated_per_minute`
//!   and `unauthenticated_burst`): each failure takes a cell from the IP's bucket;
//!   once it is empty, that IP's failures are answered 429 `rate_limit_exceeded`
//!   with `retry-after` instead of 401. A *valid* token from the same IP is never
//!   refused by this limit: tokens carry 238 random bits, so there is nothing to
//!   guess, and refusing good credentials would let one client behind a shared
//!   address (NAT, corporate proxy) lock its neighbours out.
//! * **Audited in aggregate** ([`Tally`]): the first failure of a (client IP,
//!   reason) pair is filed at once as a `proxy.denied` event with `count: 1`, so a
//!   single mistake is visible immediately; the rest are counted, and every
//!   `audit.unauthenticated_window` one event per pair carries their `count`
//!   (`details: {reason, count, window_seconds, aggregated: true}`). A pair quiet
//!   for a whole window is forgotten. Summing `details.count` over these events
//!   gives every failure. Distinct pairs are capped at [`MAX_KEYS`] (about a
//!   megabyte); failures from further addresses are folded into one bucket per
//!   reason with `client_ip: null` and `other_addresses: true`. The counts left
//!   at shutdown are filed before the audit writer drains.
//!
//! Failures of a *known* token (expired, revoked, inactive, its project inactive)
//! and denials after authentication stay one event per request, with the token:
//! the token's owner is accountable for them.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use serde_json::json;
use tokio::time::Instant;
use uuid::Uuid;

use super::ip::{AuthFailures, LockedOut};
use crate::actors::audit_writer::{AuditEvent, AuditResult};

/// Distinct (client IP, reason) pairs tallied at once; beyond, the "other" bucket.
pub const MAX_KEYS: usize = 10_000;

/// An unauthenticated failure (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// No credential at all.
    MissingApiKey,
    /// A credential that matches no token.
    InvalidApiKey,
}

impl Failure {
    /// The reason in metrics and audit events: the code the client is answered.
    pub fn reason(self) -> &'static str {
        match self {
            Self::MissingApiKey => "missing_api_key",
            Self::InvalidApiKey => "invalid_api_key",
        }
    }
}

pub struct Unauthenticated {
    limiter: AuthFailures<IpAddr>,
    tally: Tally,
}

/// What became of one failure.
pub struct Refusal {
    /// `Some` once the IP's allowance is spent: answer 429 instead of the
    /// failure itself.
    pub locked_out: Option<LockedOut>,
    /// The first of its (IP, reason) pair in this window: file it now.
    pub file_now: bool,
}

impl Unauthenticated {
    /// `per_minute` 0 turns the per-IP limit off (the tally always runs).
    pub fn new(per_minute: u32, burst: u32, window: Duration) -> Self {
        Self {
            limiter: AuthFailures::new(per_minute, burst),
            tally: Tally::new(window, MAX_KEYS),
        }
    }

    /// Whether `ip` has spent its allowance of failures (without counting one).
    pub fn is_locked_out(&self, ip: IpAddr) -> bool {
        self.limiter.locked_for(&ip).is_some()
    }

    /// Counts one unauthenticated `failure` from `ip`.
    pub fn refuse(&self, ip: IpAddr, failure: Failure) -> Refusal {
        let reason = failure.reason();
        crate::metrics::global().unauthenticated(reason);
        let file_now = self.tally.note(ip, reason);
        let locked_out = self
            .limiter
            .failed(&ip)
            .map(|retry_after| LockedOut { retry_after });
        Refusal {
            locked_out,
            file_now,
        }
    }

    /// Files the counts gathered since the last flush, and forgets limiter state
    /// of addresses whose buckets have refilled.
    pub async fn flush(&self, mut file: impl AsyncFnMut(AuditEvent)) {
        self.limiter.prune();
        for event in self.tally.drain() {
            file(event).await;
        }
    }

    /// Flushes every window, forever (the server runs it; and once more at
    /// shutdown, see `app.rs`).
    pub async fn flush_every_window(&self, mut file: impl AsyncFnMut(AuditEvent)) {
        let mut tick = tokio::time::interval(self.tally.window);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            self.flush(&mut file).await;
        }
    }
}

// === Tally ===

#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
struct Key {
    /// `None`: the bucket for addresses beyond [`MAX_KEYS`].
    ip: Option<IpAddr>,
    reason: &'static str,
}

struct State {
    since: Instant,
    /// Failures not yet filed, per pair; a pair at 0 was filed (or just seen).
    counts: HashMap<Key, u64>,
}

/// Failure counts per (client IP, reason), drained once per window.
pub struct Tally {
    window: Duration,
    max_keys: usize,
    state: Mutex<State>,
}

impl Tally {
    pub fn new(window: Duration, max_keys: usize) -> Self {
        Self {
            window,
            max_keys,
            state: Mutex::new(State {
                since: Instant::now(),
                counts: HashMap::new(),
            }),
        }
    }

    /// Counts one failure; `true` when it is the first of its pair (not counted:
    /// the caller files it at once).
    pub fn note(&self, ip: IpAddr, reason: &'static str) -> bool {
        let Ok(mut s) = self.state.lock() else {
            return false;
        };
        let key = Key {
            ip: Some(ip),
            reason,
        };
        if let Some(n) = s.counts.get_mut(&key) {
            *n += 1;
            return false;
        }
        if s.counts.len() < self.max_keys {
            s.counts.insert(key, 0);
            return true;
        }
        *s.counts.entry(Key { ip: None, reason }).or_insert(0) += 1;
        false
    }

    /// One summary event per pair with failures since the last drain; pairs with
    /// none are forgotten.
    pub fn drain(&self) -> Vec<AuditEvent> {
        let Ok(mut s) = self.state.lock() else {
            return Vec::new();
        };
        let now = Instant::now();
        let window = now.duration_since(s.since).as_secs();
        s.since = now;
        s.counts.retain(|_, n| *n > 0);
        let timestamp = crate::time::now();
        s.counts
            .iter_mut()
            .map(|(key, n)| summary(key, std::mem::take(n), window, timestamp))
            .collect()
    }
}

fn summary(
    key: &Key,
    count: u64,
    window_seconds: u64,
    timestamp: chrono::DateTime<chrono::Utc>,
) -> AuditEvent {
    let mut details = json!({
        "reason": key.reason,
        "count": count,
        "window_seconds": window_seconds,
        "aggregated": true,
    });
    if key.ip.is_none() {
        details["other_addresses"] = json!(true);
    }
    AuditEvent {
        id: Uuid::now_v7(),
        timestamp,
        action: "proxy.denied",
        actor: "anonymous".to_owned(),
        client_ip: key.ip.map(|ip| ip.to_string()),
        project_id: None,
        token_id: None,
        token_hint: None,
        request_id: None,
        result: AuditResult::Denied,
        details,
        instance: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn counts(events: &[AuditEvent]) -> Vec<(Option<String>, String, u64)> {
        let mut v: Vec<_> = events
            .iter()
            .map(|e| {
                (
                    e.client_ip.clone(),
                    e.details["reason"].as_str().unwrap().to_owned(),
                    e.details["count"].as_u64().unwrap(),
                )
            })
            .collect();
        v.sort();
        v
    }

    #[tokio::test(start_paused = true)]
    async fn first_failure_is_filed_at_once_and_the_rest_once_per_window() {
        let t = Tally::new(Duration::from_secs(60), 100);
        let a = ip("192.0.2.1");
        assert!(t.note(a, "invalid_api_key"), "the first is filed at once");
        for _ in 0..999 {
            assert!(!t.note(a, "invalid_api_key"));
        }
        assert!(
            t.note(a, "missing_api_key"),
            "another reason is another pair"
        );
        tokio::time::advance(Duration::from_secs(60)).await;
        let events = t.drain();
        assert_eq!(
            counts(&events),
            vec![(Some("192.0.2.1".into()), "invalid_api_key".into(), 999)]
        );
        assert_eq!(events[0].details["window_seconds"], 60);
        assert_eq!(events[0].details["aggregated"], true);
        // Still flooding: no new "first" event, one summary per window.
        assert!(!t.note(a, "invalid_api_key"));
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(counts(&t.drain()).len(), 1);
        // A window with nothing: nothing filed, and the pair is forgotten.
        tokio::time::advance(Duration::from_secs(60)).await;
        assert!(t.drain().is_empty());
        assert!(t.note(a, "invalid_api_key"), "forgotten: first again");
    }

    #[tokio::test(start_paused = true)]
    async fn addresses_beyond_the_cap_share_one_bucket_per_reason() {
        let t = Tally::new(Duration::from_secs(10), 2);
        assert!(t.note(ip("192.0.2.1"), "invalid_api_key"));
        assert!(t.note(ip("192.0.2.2"), "invalid_api_key"));
        for i in 3..=9 {
            assert!(!t.note(ip(&format!("192.0.2.{i}")), "invalid_api_key"));
        }
        let events = t.drain();
        assert_eq!(counts(&events), vec![(None, "invalid_api_key".into(), 7)]);
        assert_eq!(events[0].details["other_addresses"], true);
        assert!(events[0].client_ip.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn the_flush_loop_files_once_per_window() {
        let u = Unauthenticated::new(0, 0, Duration::from_secs(5));
        let a = ip("198.51.100.7");
        assert!(u.refuse(a, Failure::InvalidApiKey).file_now);
        for _ in 0..41 {
            assert!(!u.refuse(a, Failure::InvalidApiKey).file_now);
        }
        let mut filed = Vec::new();
        tokio::select! {
            _ = u.flush_every_window(async |e| filed.push(e)) => unreachable!(),
            _ = tokio::time::sleep(Duration::from_millis(12_500)) => {}
        }
        // Two windows passed: the 41 in the first, nothing in the second.
        assert_eq!(
            counts(&filed),
            vec![(Some("198.51.100.7".into()), "invalid_api_key".into(), 41)]
        );
    }

    #[test]
    fn the_per_ip_limit_answers_429_once_the_burst_is_spent() {
        let u = Unauthenticated::new(60, 2, Duration::from_secs(60));
        let a = ip("203.0.113.9");
        let answers: Vec<_> = (0..3)
            .map(|_| u.refuse(a, Failure::MissingApiKey).locked_out)
            .collect();
        assert_eq!(answers, [None, None, Some(LockedOut { retry_after: 1 })]);
        // Another address has its own allowance.
        let other = u.refuse(ip("203.0.113.10"), Failure::MissingApiKey);
        assert_eq!(other.locked_out, None);
    }

    #[tokio::test(start_paused = true)]
    async fn the_per_ip_limit_gives_a_cell_back_after_exactly_one_interval() {
        // 30 a minute: a cell every 2 s.
        let u = Unauthenticated::new(30, 3, Duration::from_secs(60));
        let a = ip("203.0.113.9");
        let refuse = || u.refuse(a, Failure::InvalidApiKey).locked_out;
        let locked = |retry_after| Some(LockedOut { retry_after });
        for _ in 0..3 {
            assert_eq!(refuse(), None);
        }
        assert_eq!(refuse(), locked(2));
        tokio::time::advance(Duration::from_millis(1_999)).await;
        assert_eq!(refuse(), locked(1));
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(refuse(), None);
        assert_eq!(refuse(), locked(2));
    }
}
