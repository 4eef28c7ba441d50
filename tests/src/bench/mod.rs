//! The `bench` binary's parts: processes under test, load generators, statistics
//! and reports. See `src/bin/bench.rs` for the flow.

pub mod audit_ab;
pub mod checks;
pub mod instructions;
pub mod load;
pub mod login_flood;
pub mod procs;
pub mod report;
pub mod resp;
pub mod scale_out;
pub mod scale_out_report;
pub mod sides;
pub mod stats;
pub mod stream;
