//! The `/v1` answers to domain errors: each maps to one [`ProxyError`] (its
//! status, code, message and headers live in `error.rs`).

use crate::actors::request_queue::AdmissionError;
use crate::actors::token_registry::{ConsumeError, Denial};
use crate::error::ProxyError;
use crate::providers::routing::RoutingError;
use crate::rate_limit::ip::LockedOut;
use crate::rate_limit::rpm::{Limited, RateKey};
use crate::rate_limit::unauthenticated::Failure;

impl From<Denial> for ProxyError {
    fn from(d: Denial) -> Self {
        match d {
            Denial::InvalidApiKey => Self::InvalidApiKey,
            Denial::TokenRevoked => Self::TokenRevoked,
            Denial::TokenExpired => Self::TokenExpired,
            Denial::TokenInactive => Self::TokenInactive,
            Denial::ProjectInactive => Self::ProjectInactive,
            Denial::QuotaExceeded(max) => Self::QuotaExceeded(max),
        }
    }
}

impl From<ConsumeError> for ProxyError {
    fn from(e: ConsumeError) -> Self {
        match e {
            ConsumeError::Denied(d) => d.into(),
            ConsumeError::StorageUnavailable => Self::StorageUnavailable,
        }
    }
}

impl From<Failure> for ProxyError {
    fn from(f: Failure) -> Self {
        match f {
            Failure::MissingApiKey => Self::MissingApiKey,
            Failure::InvalidApiKey => Self::InvalidApiKey,
        }
    }
}

/// An unauthenticated client IP past its allowance of failures.
impl From<LockedOut> for ProxyError {
    fn from(LockedOut { retry_after }: LockedOut) -> Self {
        Self::IpRateLimited { retry_after }
    }
}

impl From<Limited> for ProxyError {
    fn from(l: Limited) -> Self {
        Self::RateLimited {
            scope: match l.key {
                RateKey::Token(_) => "API key",
                RateKey::Project(_) => "project",
            },
            state: l.state,
            retry_after: l.retry_after,
        }
    }
}

impl From<RoutingError> for ProxyError {
    fn from(e: RoutingError) -> Self {
        match e {
            RoutingError::ModelNotFound(model) => Self::ModelNotFound(model),
            RoutingError::NoHealthyProvider { model, retry_after } => {
                Self::NoHealthyProvider { model, retry_after }
            }
        }
    }
}

impl From<AdmissionError> for ProxyError {
    fn from(e: AdmissionError) -> Self {
        match e {
            AdmissionError::Full { retry_after } => Self::QueueFull { retry_after },
            AdmissionError::Timeout {
                waited,
                retry_after,
            } => Self::QueueTimeout {
                waited,
                retry_after,
            },
            AdmissionError::Stopped => Self::Unavailable("request queue stopped".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::ids::{ProjectId, TokenId};
    use crate::limits::RateState;

    /// Every domain error's `/v1` code, variant for variant.
    #[test]
    fn each_domain_error_keeps_its_code() {
        let cases: Vec<(ProxyError, &str)> = vec![
            (Denial::InvalidApiKey.into(), "invalid_api_key"),
            (Denial::TokenRevoked.into(), "token_revoked"),
            (Denial::TokenExpired.into(), "token_expired"),
            (Denial::TokenInactive.into(), "token_inactive"),
            (Denial::ProjectInactive.into(), "project_inactive"),
            (Denial::QuotaExceeded(3).into(), "quota_exceeded"),
            (
                ConsumeError::Denied(Denial::QuotaExceeded(3)).into(),
                "quota_exceeded",
            ),
            (
                ConsumeError::StorageUnavailable.into(),
                "service_unavailable",
            ),
            (Failure::MissingApiKey.into(), "missing_api_key"),
            (Failure::InvalidApiKey.into(), "invalid_api_key"),
            (LockedOut { retry_after: 2 }.into(), "rate_limit_exceeded"),
            (
                RoutingError::ModelNotFound("m".into()).into(),
                "model_not_found",
            ),
            (
                RoutingError::NoHealthyProvider {
                    model: "m".into(),
                    retry_after: 5,
                }
                .into(),
                "no_healthy_provider",
            ),
            (AdmissionError::Full { retry_after: 1 }.into(), "queue_full"),
            (
                AdmissionError::Timeout {
                    waited: Duration::from_secs(5),
                    retry_after: 1,
                }
                .into(),
                "queue_timeout",
            ),
            (AdmissionError::Stopped.into(), "service_unavailable"),
        ];
        for (e, code) in cases {
            assert_eq!(e.code(), code, "{e:?}");
        }
        // The audit reason of an unauthenticated failure is its answer's code.
        for f in [Failure::MissingApiKey, Failure::InvalidApiKey] {
            assert_eq!(ProxyError::from(f).code(), f.reason());
        }
    }

    #[test]
    fn values_carry_over() {
        assert!(matches!(
            ProxyError::from(Denial::QuotaExceeded(7)),
            ProxyError::QuotaExceeded(7)
        ));
        assert!(matches!(
            ProxyError::from(LockedOut { retry_after: 2 }),
            ProxyError::IpRateLimited { retry_after: 2 }
        ));
        let unhealthy = RoutingError::NoHealthyProvider {
            model: "m".into(),
            retry_after: 5,
        };
        assert!(matches!(
            ProxyError::from(unhealthy),
            ProxyError::NoHealthyProvider { model, retry_after: 5 } if model == "m"
        ));
        let timeout = AdmissionError::Timeout {
            waited: Duration::from_secs(5),
            retry_after: 1,
        };
        assert!(matches!(
            ProxyError::from(timeout),
            ProxyError::QueueTimeout { waited, retry_after: 1 } if waited == Duration::from_secs(5)
        ));
        assert!(matches!(
            ProxyError::from(AdmissionError::Stopped),
            ProxyError::Unavailable(d) if d == "request queue stopped"
        ));
        let state = RateState {
            limit: 2,
            remaining: 0,
            reset: Duration::from_secs(30),
        };
        let retry_after = Duration::from_secs(30);
        for (key, scope) in [
            (RateKey::Token(TokenId::new()), "API key"),
            (RateKey::Project(ProjectId::new()), "project"),
        ] {
            let limited = Limited {
                key,
                state,
                retry_after,
            };
            match ProxyError::from(limited) {
                ProxyError::RateLimited {
                    scope: s,
                    state: st,
                    retry_after: r,
                } => assert_eq!((s, st, r), (scope, state, retry_after)),
                other => panic!("{other:?}"),
            }
        }
    }
}
