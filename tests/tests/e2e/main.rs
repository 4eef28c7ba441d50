#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

//! End-to-end tests: the real `palisade` binary on an ephemeral port, a real SQLite
//! file in a temporary directory, and the `mock-upstream` binary over TCP. One test
//! binary, one module per area; tests are named `area_condition_expectation`.

mod harness;

mod access_log;
mod admin_sessions;
mod admission;
mod audit_trail;
mod audit_writer;
mod backends;
mod bad_input;
mod dialect_node_sdk;
mod dialect_passthrough;
mod dialect_sdk;
mod failover;
mod floods;
mod hardening;
mod key_rotation;
mod manage_projects;
mod manage_tokens;
mod metrics;
mod node_sdk;
mod provider_health;
mod proxy_forwarding;
mod proxy_policy;
mod proxy_streaming;
mod python_sdk;
mod quota_crash;
mod rate_limits;
mod scale_out;
mod secrets;
mod shared_limits;
mod shutdown;
mod slow_clients;
mod storage_faults;
mod third_party_upstream;
mod tls;
mod upstream_dialects;
mod upstream_errors;
mod upstream_timeouts;
mod usage_estimates;
mod usage_records;
