//! The live state of one provider, shared lock-free between request handlers and
//! the `ProviderSupervisor`.
//!
//! Ownership: the supervisor alone moves the breaker (`state`, `consecutive_failures`,
//! `open_until`), the health flag, the count of failed health checks and the
//! diagnostics. Handlers only read them, take half-open probe permits with a
//! compare-and-swap, count `in_flight`, and stamp `last_success` (one relaxed
//! store) when an upstream answered. That is the "published routing snapshot": no
//! lock and no mailbox on the request path.

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
        }
    }

    fn from_u8(v: u8) -> Self {
        match v {
            1 => Self::Open,
            2 => Self::HalfOpen,
            _ => Self::Closed,
        }
    }

    fn to_u8(self) -> u8 {
        match self {
            Self::Closed => 0,
            Self::Open => 1,
            Self::HalfOpen => 2,
        }
    }
}

/// What `/manage/providers` shows besides the counters.
#[derive(Debug, Clone, Default)]
pub struct Diagnostics {
    pub last_error: Option<String>,
    pub last_check_at: Option<DateTime<Utc>>,
    /// Why the last refresh of a `*` provider's model list failed; `None` once
    /// one succeeds (so the WARN is logged once per change of state).
    pub models_error: Option<String>,
}

#[derive(Debug)]
pub struct ProviderStatus {
    state: AtomicU8,
    healthy: AtomicBool,
    consecutive_failures: AtomicU64,
    /// When an open breaker turns half-open, in milliseconds after `epoch`
    /// (monotonic tokio time, like `last_success`).
    open_until: AtomicU64,
    probes_left: AtomicU64,
    in_flight: AtomicU64,
    /// Consecutive failed health checks that counted (see `providers::health`).
    check_failures: AtomicU64,
    /// When an upstream last answered a request (not a health check), in
    /// milliseconds after `epoch`, plus one; 0 = never. Monotonic (tokio) time, so
    /// tests can pause it.
    last_success: AtomicU64,
    epoch: Instant,
    diagnostics: Mutex<Diagnostics>,
}

impl Default for ProviderStatus {
    fn default() -> Self {
        Self {
            state: AtomicU8::new(BreakerState::Closed.to_u8()),
            // Optimistic until the first health check says otherwise.
            healthy: AtomicBool::new(true),
            consecutive_failures: AtomicU64::new(0),
            open_until: AtomicU64::new(0),
            probes_left: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            check_failures: AtomicU64::new(0),
            last_success: AtomicU64::new(0),
            epoch: Instant::now(),
            diagnostics: Mutex::new(Diagnostics::default()),
        }
    }
}

impl ProviderStatus {
    // --- read by anyone ---

    pub fn state(&self) -> BreakerState {
        BreakerState::from_u8(self.state.load(Ordering::Acquire))
    }

    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
    }

    pub fn consecutive_failures(&self) -> u64 {
        self.consecutive_failures.load(Ordering::Relaxed)
    }

    /// How long until an open breaker turns half-open; zero once it is due (and
    /// when the breaker is not open).
    pub fn half_open_in(&self) -> Duration {
        let until = self.open_until.load(Ordering::Relaxed);
        Duration::from_millis(until.saturating_sub(self.millis_since_epoch()))
    }

    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub fn check_failures(&self) -> u64 {
        self.check_failures.load(Ordering::Relaxed)
    }

    /// How long ago an upstream last answered a request; `None`: never.
    pub fn since_last_success(&self) -> Option<Duration> {
        let stamp = self.last_success.load(Ordering::Relaxed).checked_sub(1)?;
        let now = self.millis_since_epoch();
        Some(Duration::from_millis(now.saturating_sub(stamp)))
    }

    /// Whether an upstream answered a request within `window`.
    pub fn succeeded_within(&self, window: Duration) -> bool {
        self.since_last_success().is_some_and(|age| age <= window)
    }

    fn millis_since_epoch(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX - 1)
    }

    pub fn diagnostics(&self) -> Diagnostics {
        self.diagnostics
            .lock()
            .map(|d| d.clone())
            .unwrap_or_default()
    }

    // --- request handlers ---

    /// Takes a half-open probe permit; always true when the breaker is closed.
    pub fn try_admit(&self) -> bool {
        match self.state() {
            BreakerState::Closed => true,
            BreakerState::Open => false,
            BreakerState::HalfOpen => self
                .probes_left
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
                .is_ok(),
        }
    }

    /// The upstream answered a request with something other than a retryable
    /// failure: live proof of health. One clock read and one relaxed store.
    pub fn note_success(&self) {
        let stamp = self.millis_since_epoch().saturating_add(1);
        self.last_success.store(stamp, Ordering::Relaxed);
    }

    /// Gives back a probe permit whose attempt ended without a verdict.
    pub fn return_probe(&self) {
        if self.state() == BreakerState::HalfOpen {
            self.probes_left.fetch_add(1, Ordering::AcqRel);
        }
    }

    // --- the supervisor only ---

    /// Moves the breaker to `state`; `open_for` is the cooldown when it opens
    /// (zero otherwise), `probes` the permits when it turns half-open.
    pub(crate) fn set_state(&self, state: BreakerState, open_for: Duration, probes: u64) {
        let open_for = u64::try_from(open_for.as_millis()).unwrap_or(u64::MAX);
        let until = self.millis_since_epoch().saturating_add(open_for);
        self.probes_left.store(probes, Ordering::Release);
        self.open_until.store(until, Ordering::Relaxed);
        self.state.store(state.to_u8(), Ordering::Release);
    }

    pub(crate) fn set_failures(&self, n: u64) {
        self.consecutive_failures.store(n, Ordering::Relaxed);
    }

    pub(crate) fn set_healthy(&self, healthy: bool) {
        self.healthy.store(healthy, Ordering::Release);
    }

    pub(crate) fn set_check_failures(&self, n: u64) {
        self.check_failures.store(n, Ordering::Relaxed);
    }

    /// Updates the diagnostics under their lock (never taken on the request path).
    pub(crate) fn note<R>(&self, f: impl FnOnce(&mut Diagnostics) -> R) -> Option<R> {
        self.diagnostics.lock().ok().map(|mut d| f(&mut d))
    }
}

/// One request in flight at a provider (`/manage/providers` `in_flight`), counted
/// until the response body ends and this is dropped.
pub struct InFlight(Arc<super::Provider>);

impl InFlight {
    pub fn new(provider: &Arc<super::Provider>) -> Self {
        provider.status.in_flight.fetch_add(1, Ordering::Relaxed);
        Self(Arc::clone(provider))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.status.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}
