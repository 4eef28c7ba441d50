//! The actors that own Palisade's mutable state (SPEC §1). Each runs on its own
//! arbiter thread so a slow database write never stalls an HTTP worker.

pub mod audit_writer;
pub mod provider_supervisor;
pub mod request_queue;
pub mod token_registry;
