//! Palisade: a secure, OpenAI-compatible LLM gateway.
//!
//! The library exists for the `palisade` binary (`main.rs`), which needs only
//! [`cli`]; everything else is private, so the compiler reports dead code.
//!
//! Layers (each module mentions only its own level or lower; `server/tests/layers.rs`
//! checks it, docs/architecture.md explains it):
//!
//! | level | modules |
//! |---|---|
//! | entry | `cli`, `app` (build state, spawn background work, bind, shut down) |
//! | http | `http`: the one route table, `/v1` (`http/proxy`), `/manage` (`http/manage`), probes, `/metrics`, edge checks, request ids, the access log |
//! | state | `state`: `AppState`, handles only |
//! | domain | `actors` (token registry, provider supervisor, request queue, audit writer), `providers`, `rate_limit`, `sessions` |
//! | data | `service` (queries), `db`, `preflight`, `tls` |
//! | base | `error` (envelopes), `config`, `telemetry`, `storage` |
//! | core | `ids`, `time`, `secret`, `policy`, `crypto`, `net`, `usage`, `records`, `limits`, `metrics` |

mod actors;
mod app;
pub mod cli;
mod config;
mod crypto;
mod db;
mod error;
mod http;
mod ids;
mod limits;
mod metrics;
mod net;
mod policy;
mod preflight;
mod providers;
mod rate_limit;
mod records;
mod secret;
mod service;
mod sessions;
mod state;
mod storage;
mod telemetry;
mod time;
mod tls;
mod usage;
