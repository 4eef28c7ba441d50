//! Palisade: a secure, OpenAI-compatible LLM gateway.
//!
//! Where each route lives:
//!
//! | route | handler |
//! |---|---|
//! | `POST /v1/{allowed path}` | [`proxy`] `forward` (`proxy/mod.rs`) |
//! | `GET /v1/models` | `proxy/models.rs` |
//! | `/manage/projects…` | `manage/projects.rs` |
//! | `/manage/tokens…` | `manage/tokens.rs` |
//! | `GET /manage/audit` | `manage/audit.rs` |
//! | `GET /manage/usage` | `manage/usage.rs` |
//! | `GET /manage/providers` | `manage/providers.rs` |
//! | `GET /manage/queue` | `manage/queue.rs` |
//! | `/manage/users…` | `manage/users.rs` |
//! | `POST /manage/auth/login`, `/refresh`, `/logout` | `manage/session.rs` (rules: [`sessions`]) |
//! | `GET /health`, `GET /ready` | [`ops`] |
//! | `GET /metrics` | [`metrics`] |
//!
//! Routing and middleware order: [`app`]; host, IP-list, CORS and security-header
//! checks every request meets first: [`edge`]. State and its single writers:
//! [`actors::token_registry`] (projects, tokens), [`actors::provider_supervisor`]
//! (breakers, health checks), [`actors::request_queue`] (admission),
//! [`actors::audit_writer`] (audit trail, usage). Rate limits: [`rate_limit`].
//! Retries and failover: `proxy/attempts.rs`; routing: [`providers::routing`].
//! Database access: [`service`]. Errors and their envelopes: [`error`].

pub mod actors;
pub mod app;
pub mod cli;
pub mod config;
pub mod crypto;
pub mod db;
pub mod error;
pub mod http;
pub mod ids;
pub mod limits;
pub mod metrics;
pub mod net;
pub mod policy;
pub mod preflight;
pub mod providers;
pub mod rate_limit;
pub mod records;
pub mod secret;
pub mod service;
pub mod sessions;
pub mod state;
pub mod storage;
pub mod telemetry;
pub mod time;
pub mod tls;
pub mod usage;
