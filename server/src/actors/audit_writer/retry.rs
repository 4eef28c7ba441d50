//! Retrying a batch until it is written: exponential backoff from [`FIRST`] to
//! [`MAX`], so a recovered disk is noticed within [`MAX`] and a failing one costs
//! one attempt every [`MAX`].

use std::time::Duration;

pub(super) const FIRST: Duration = Duration::from_millis(100);
pub(super) const MAX: Duration = Duration::from_secs(2);

pub(super) struct Backoff {
    next: Duration,
}

impl Backoff {
    pub(super) fn new() -> Self {
        Self { next: FIRST }
    }

    /// The wait before the next attempt; each call doubles it, up to [`MAX`].
    pub(super) fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (d * 2).min(MAX);
        d
    }
}

/// Calls `attempt` until it succeeds, waiting [`Backoff`] delays between tries;
/// `failed(error, attempt number)` sees each failure. Never gives up: a batch
/// holds its records' slots until written (shutdown abandons it after its own
/// deadline and reports it, see `AuditHandle::drain`).
pub(super) async fn until_ok<E>(
    mut attempt: impl AsyncFnMut() -> Result<(), E>,
    mut failed: impl FnMut(&E, u32),
) {
    let mut backoff = Backoff::new();
    let mut n = 0u32;
    loop {
        match attempt().await {
            Ok(()) => return,
            Err(e) => {
                n = n.saturating_add(1);
                failed(&e, n);
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::Instant;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let mut b = Backoff::new();
        let delays: Vec<u64> = (0..7).map(|_| b.next_delay().as_millis() as u64).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1600, 2000, 2000]);
    }

    #[tokio::test(start_paused = true)]
    async fn retries_with_backoff_until_the_attempt_succeeds() {
        let start = Instant::now();
        let mut calls = Vec::new();
        let mut failures = Vec::new();
        until_ok(
            async || {
                calls.push(start.elapsed().as_millis());
                if calls.len() < 5 {
                    Err("disk full")
                } else {
                    Ok(())
                }
            },
            |e, n| failures.push((*e, n)),
        )
        .await;
        // Attempts at 0, then after 100, 200, 400 and 800 ms of waiting.
        assert_eq!(calls, [0, 100, 300, 700, 1500]);
        assert_eq!(failures.len(), 4);
        assert_eq!(failures[3], ("disk full", 4));
        assert_eq!(start.elapsed(), Duration::from_millis(1500));
    }

    #[tokio::test(start_paused = true)]
    async fn a_long_outage_is_retried_every_max_and_never_given_up() {
        let start = Instant::now();
        let mut n = 0;
        until_ok(
            async || {
                n += 1;
                // Storage comes back after a minute.
                if start.elapsed() < Duration::from_secs(60) {
                    Err(())
                } else {
                    Ok(())
                }
            },
            |_, _| {},
        )
        .await;
        let waited = start.elapsed();
        assert!(waited >= Duration::from_secs(60), "{waited:?}");
        assert!(waited <= Duration::from_secs(60) + MAX, "{waited:?}");
        // 0.1 + 0.2 + 0.4 + 0.8 + 1.6 = 3.1 s, then one try every 2 s.
        assert_eq!(n, 5 + 29 + 1);
    }
}
