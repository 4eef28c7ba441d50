//! A rate limit's state as clients see it: the `x-ratelimit-*-requests` headers
//! and `retry-after`. The limiters that produce it live in `rate_limit`; the
//! error envelopes that carry it, in `error`.

use std::time::Duration;

use actix_web::http::header::{HeaderName, HeaderValue};

/// A limit's state after a request, as the `x-ratelimit-*` headers report it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateState {
    pub limit: u32,
    pub remaining: u32,
    /// Until the bucket is full again.
    pub reset: Duration,
}

/// `x-ratelimit-reset-requests` in OpenAI's style: `1s`, `0.5s`, `6m0s`.
pub fn format_reset(d: Duration) -> String {
    let ms = d.as_millis();
    if ms >= 60_000 {
        format!("{}m{}s", ms / 60_000, (ms % 60_000) / 1000)
    } else if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        let s = format!("{:.3}", d.as_secs_f64());
        format!("{}s", s.trim_end_matches('0').trim_end_matches('.'))
    }
}

/// `retry-after` in whole seconds, never 0 (a client would retry at once).
pub fn retry_after_secs(d: Duration) -> u64 {
    (d.as_secs() + u64::from(d.subsec_nanos() > 0)).max(1)
}

/// The OpenAI-style `x-ratelimit-*-requests` headers for `state`.
pub fn headers(state: &RateState) -> [(HeaderName, HeaderValue); 3] {
    [
        (
            HeaderName::from_static("x-ratelimit-limit-requests"),
            HeaderValue::from(state.limit),
        ),
        (
            HeaderName::from_static("x-ratelimit-remaining-requests"),
            HeaderValue::from(state.remaining),
        ),
        (
            HeaderName::from_static("x-ratelimit-reset-requests"),
            HeaderValue::from_str(&format_reset(state.reset))
                .unwrap_or(HeaderValue::from_static("0s")),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_format() {
        assert_eq!(format_reset(Duration::ZERO), "0s");
        assert_eq!(format_reset(Duration::from_millis(500)), "0.5s");
        assert_eq!(format_reset(Duration::from_millis(1250)), "1.25s");
        assert_eq!(format_reset(Duration::from_secs(1)), "1s");
        assert_eq!(format_reset(Duration::from_secs(360)), "6m0s");
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(10)), 1);
        assert_eq!(retry_after_secs(Duration::from_secs(2)), 2);
        assert_eq!(retry_after_secs(Duration::from_millis(2001)), 3);
    }
}
