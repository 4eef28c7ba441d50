//! How the writer shares the CPU with the request path.
//!
//! Two writer threads take turns on the same queue, each with its own SQLite
//! connection (whose thread inherits its creator's scheduling):
//!
//! - `audit-writer` runs under `SCHED_IDLE`: it gets the CPU only when no other
//!   thread wants it, and a request that wakes up preempts it at once. It writes
//!   while the writer keeps up. At nice 10 instead, a request waking up while the
//!   writer ran was not always given the CPU at once, and `bench --audit-off`
//!   showed it: recording had the higher open-loop p99 in 23 of 30 alternating
//!   rounds (+160 µs at the median, sign test p = 0.01); with `SCHED_IDLE`, 14 of
//!   30 and no difference.
//! - `audit-catchup` runs at nice 10 and writes only while the writer is behind
//!   (half the buffer taken, producers waiting for a slot, or records waiting
//!   `flush_interval` + 1 s with no commit at all: the idle thread is starved
//!   by other work, as on a host whose cores are all busy). A saturated core
//!   leaves an idle-priority thread only the gaps between requests: it was
//!   preempted about 15,000 times a second, the request path's own cost per
//!   request rose by half, and throughput fell to about 12k RPS against 21k at
//!   nice 10. A host whose other processes keep every core busy would starve it
//!   outright. The catch-up thread has a share of the CPU in both cases.
//!
//! A thread cannot raise its own priority again without privileges, hence two
//! threads rather than one that changes policy.

/// Niceness of the catch-up thread (0 is normal, 19 the lowest).
const CATCH_UP_NICE: i32 = 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Role {
    /// Writes while the writer keeps up; also runs the retention purge.
    Background,
    /// Writes while the writer is behind.
    CatchUp,
}

impl Role {
    /// Whether this thread takes batches now.
    pub(super) fn on_duty(self, behind: bool) -> bool {
        match self {
            Role::Background => !behind,
            Role::CatchUp => behind,
        }
    }

    /// Names the calling thread and sets its scheduling, once, at start-up.
    pub(super) fn apply_to_this_thread(self) {
        let (name, set) = match self {
            Role::Background => (
                c"audit-writer",
                thread_priority::set_thread_priority_and_policy(
                    thread_priority::thread_native_id(),
                    thread_priority::ThreadPriority::Min,
                    thread_priority::ThreadSchedulePolicy::Normal(
                        thread_priority::NormalThreadSchedulePolicy::Idle,
                    ),
                )
                .map_err(|e| format!("{e:?}")),
            ),
            Role::CatchUp => (
                c"audit-catchup",
                rustix::process::setpriority_process(Some(rustix::thread::gettid()), CATCH_UP_NICE)
                    .map_err(|e| e.to_string()),
            ),
        };
        if let Err(e) = set {
            tracing::warn!(error = %e, role = ?self, "cannot lower the audit writer's priority");
        }
        if let Err(e) = rustix::thread::set_name(name) {
            tracing::debug!(error = %e, "cannot name the audit writer's thread");
        }
    }
}
