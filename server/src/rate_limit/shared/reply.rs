//! The admission script's reply, turned into the limiter's own types. Kept apart
//! from the connection so it is tested without a Redis.

use std::num::NonZeroU32;
use std::time::Duration;

use super::super::rpm::{Limited, RateKey};
use crate::limits::RateState;

/// What the script decided for one request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Outcome {
    /// Counted against every limit that applies. `rate` is the tighter of the
    /// two rpm states (for the `x-ratelimit-*` headers); `used` is the token's
    /// quota count after this request (`None`: the token has no quota).
    Admitted {
        rate: Option<RateState>,
        used: Option<i64>,
    },
    /// An rpm limit is spent: nothing was taken.
    Limited(Limited),
    /// The lifetime quota is used up (`used` of `max`): nothing was taken.
    QuotaExceeded { max: i64, used: i64 },
    /// The client IP's `/v1` limit is spent, fleet-wide: nothing was taken.
    IpLimited { retry_after: Duration },
}

/// The limits one request was checked against (what the script was given).
#[derive(Debug, Clone, Copy)]
pub struct Asked {
    pub token: Option<(RateKey, NonZeroU32)>,
    pub project: Option<(RateKey, NonZeroU32)>,
    pub max_requests: Option<i64>,
    /// Whether the client IP's limit was asked for.
    pub per_ip: bool,
}

/// The script answered something it never sends (a different script under the
/// same hash, a proxy in the way): treated like an unreachable Redis.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unexpected reply from the admission script: {0:?}")]
pub struct BadReply(pub Vec<i64>);

fn micros(us: i64) -> Duration {
    Duration::from_micros(u64::try_from(us).unwrap_or(0))
}

fn allowed(limit: Option<(RateKey, NonZeroU32)>, remaining: i64, reset: i64) -> Option<RateState> {
    let (_, rpm) = limit?;
    (remaining >= 0).then(|| RateState {
        limit: rpm.get(),
        remaining: u32::try_from(remaining).unwrap_or(0),
        reset: micros(reset),
    })
}

fn limited(limit: Option<(RateKey, NonZeroU32)>, wait: i64, reset: i64) -> Option<Outcome> {
    let (key, rpm) = limit?;
    Some(Outcome::Limited(Limited {
        key,
        state: RateState {
            limit: rpm.get(),
            remaining: 0,
            reset: micros(reset),
        },
        retry_after: micros(wait),
    }))
}

/// Parses the script's reply (see `admit.lua`).
pub fn parse(asked: &Asked, reply: &[i64]) -> Result<Outcome, BadReply> {
    let bad = || BadReply(reply.to_vec());
    let outcome = match *reply {
        [0, t_rem, t_reset, p_rem, p_reset, used] => {
            let token = allowed(asked.token, t_rem, t_reset);
            let project = allowed(asked.project, p_rem, p_reset);
            // The tighter limit is the one the client lives under (as in-process).
            let rate = match (token, project) {
                (Some(t), Some(p)) => Some(if p.remaining < t.remaining { p } else { t }),
                (t, p) => t.or(p),
            };
            Outcome::Admitted {
                rate,
                used: (used >= 0).then_some(used),
            }
        }
        [1, wait, reset] => limited(asked.token, wait, reset).ok_or_else(bad)?,
        [2, wait, reset] => limited(asked.project, wait, reset).ok_or_else(bad)?,
        [3, used] => Outcome::QuotaExceeded {
            max: asked.max_requests.ok_or_else(bad)?,
            used,
        },
        [4, wait] if asked.per_ip => Outcome::IpLimited {
            retry_after: micros(wait),
        },
        _ => return Err(bad()),
    };
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{ProjectId, TokenId};

    fn asked(token: Option<u32>, project: Option<u32>, max: Option<i64>) -> Asked {
        let rpm = |n: u32| NonZeroU32::new(n).unwrap();
        Asked {
            token: token.map(|n| (RateKey::Token(TokenId::new()), rpm(n))),
            project: project.map(|n| (RateKey::Project(ProjectId::new()), rpm(n))),
            max_requests: max,
            per_ip: false,
        }
    }

    #[test]
    fn admitted_reports_the_tighter_limit_and_the_quota_count() {
        let a = asked(Some(60), Some(10), Some(50));
        let out = parse(&a, &[0, 59, 1_000_000, 9, 6_000_000, 7]).unwrap();
        assert_eq!(
            out,
            Outcome::Admitted {
                rate: Some(RateState {
                    limit: 10,
                    remaining: 9,
                    reset: Duration::from_secs(6)
                }),
                used: Some(7)
            }
        );
        // Token only, no quota.
        let a = asked(Some(60), None, None);
        let out = parse(&a, &[0, 3, 57_000_000, -1, 0, -1]).unwrap();
        assert_eq!(
            out,
            Outcome::Admitted {
                rate: Some(RateState {
                    limit: 60,
                    remaining: 3,
                    reset: Duration::from_secs(57)
                }),
                used: None
            }
        );
        // No limit at all.
        let a = asked(None, None, None);
        assert_eq!(
            parse(&a, &[0, -1, 0, -1, 0, -1]).unwrap(),
            Outcome::Admitted {
                rate: None,
                used: None
            }
        );
    }

    #[test]
    fn denials_name_the_spent_limit_with_retry_after() {
        let a = asked(Some(60), Some(4), Some(5));
        match parse(&a, &[1, 250_000, 59_250_000]).unwrap() {
            Outcome::Limited(l) => {
                assert!(matches!(l.key, RateKey::Token(_)));
                assert_eq!(l.retry_after, Duration::from_millis(250));
                assert_eq!(l.state.limit, 60);
                assert_eq!(l.state.remaining, 0);
                assert_eq!(l.state.reset, Duration::from_micros(59_250_000));
            }
            other => panic!("{other:?}"),
        }
        match parse(&a, &[2, 15_000_000, 60_000_000]).unwrap() {
            Outcome::Limited(l) => {
                assert!(matches!(l.key, RateKey::Project(_)));
                assert_eq!(l.retry_after, Duration::from_secs(15));
                assert_eq!(l.state.limit, 4);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            parse(&a, &[3, 5]).unwrap(),
            Outcome::QuotaExceeded { max: 5, used: 5 }
        );
        let a = Asked { per_ip: true, ..a };
        assert_eq!(
            parse(&a, &[4, 1_500_000]).unwrap(),
            Outcome::IpLimited {
                retry_after: Duration::from_millis(1500)
            }
        );
    }

    #[test]
    fn replies_the_script_never_sends_are_errors() {
        let a = asked(None, Some(4), None);
        // A token denial for a request with no token limit, a quota denial
        // without a quota, wrong shapes.
        assert!(parse(&a, &[1, 1, 1]).is_err());
        assert!(parse(&a, &[3, 1]).is_err());
        assert!(parse(&a, &[]).is_err());
        assert!(parse(&a, &[0, 1]).is_err());
        assert!(parse(&a, &[9, 0, 0]).is_err());
        // A per-IP denial when no per-IP limit was asked for.
        assert!(parse(&a, &[4, 1]).is_err());
    }
}
