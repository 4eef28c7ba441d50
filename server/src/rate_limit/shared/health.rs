//! Whether Redis answers: set by every call (the request path and a probe),
//! read by `/ready`, `/metrics` and admission. Each change is logged once, at
//! WARN, with what admission does now; never the URL (it may hold a password).

use std::sync::atomic::{AtomicU8, Ordering};

use crate::config::RedisOnError;

const UNKNOWN: u8 = 0;
const UP: u8 = 1;
const DOWN: u8 = 2;

#[derive(Debug)]
pub struct Health {
    state: AtomicU8,
    on_error: RedisOnError,
    expected_instances: u64,
}

/// What [`Health::mark`] changed, for the caller's tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    None,
    Up,
    Down,
}

impl Health {
    pub fn new(on_error: RedisOnError, expected_instances: u64) -> Self {
        Self {
            state: AtomicU8::new(UNKNOWN),
            on_error,
            expected_instances,
        }
    }

    /// Down only once a call failed; unknown (not yet tried) counts as up, so
    /// the first request tries Redis.
    pub fn is_down(&self) -> bool {
        self.state.load(Ordering::Acquire) == DOWN
    }

    /// Records a call's result; logs when that changes the state.
    pub fn mark(&self, up: bool, why: &dyn std::fmt::Display) -> Change {
        let next = if up { UP } else { DOWN };
        let before = self.state.swap(next, Ordering::AcqRel);
        match (before, next) {
            (b, n) if b == n => Change::None,
            (_, UP) => {
                if before == DOWN {
                    tracing::warn!(
                        "Redis is reachable again: requests are limited by the shared counters"
                    );
                } else {
                    tracing::info!("connected to Redis: rate limits and quotas are shared");
                }
                Change::Up
            }
            _ => {
                match self.on_error {
                    RedisOnError::FailClosed => tracing::warn!(
                        error = %why,
                        "Redis is unreachable: /v1 requests are refused with 503 (redis.on_error: fail_closed) until it answers again"
                    ),
                    RedisOnError::Local => tracing::warn!(
                        error = %why,
                        expected_instances = self.expected_instances,
                        "Redis is unreachable: limits are kept in this process, each divided by redis.expected_instances, quotas through database leases (redis.on_error: local)"
                    ),
                }
                Change::Down
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_are_reported_once() {
        let h = Health::new(RedisOnError::FailClosed, 1);
        assert!(!h.is_down(), "untried counts as up");
        assert_eq!(h.mark(false, &"refused"), Change::Down);
        assert_eq!(h.mark(false, &"refused"), Change::None);
        assert!(h.is_down());
        assert_eq!(h.mark(true, &""), Change::Up);
        assert_eq!(h.mark(true, &""), Change::None);
        assert!(!h.is_down());
    }
}
