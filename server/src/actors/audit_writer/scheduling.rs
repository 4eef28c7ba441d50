//! How the writer shares the CPU with the request path, and the bound on a
//! record's wait when other work takes it all.
//!
//! Three writer threads share one queue, each with its own SQLite connection
//! (whose thread inherits its creator's scheduling); one writes at a time:
//!
//! - `audit-writer` runs under `SCHED_IDLE`: it gets the CPU only when no other
//!   thread wants it, and a request that wakes up preempts it at once. It writes
//!   while the writer keeps up. At nice 10 instead, a request waking up while the
//!   writer ran was not always given the CPU at once, and `bench --audit-off`
//!   showed it: recording had the higher open-loop p99 in 23 of 30 alternating
//!   rounds (+160 µs at the median, sign test p = 0.01); with `SCHED_IDLE`, 14 of
//!   30 and no difference.
//! - `audit-catchup` runs at nice 10 and writes while the writer is behind (half
//!   the buffer taken, or producers waiting for a slot) and for
//!   [`STARVED_HOLD`] after the idle thread was found starved. A saturated core
//!   leaves an idle-priority thread only the gaps between requests: it was
//!   preempted about 15,000 times a second, the request path's own cost per
//!   request rose by half, and throughput fell to about 12k RPS against 21k at
//!   nice 10.
//! - `audit-rescue` keeps the process's normal priority and writes only records
//!   that have waited [`starved_after`] (two `flush_interval`s) with no commit at
//!   all, looking every quarter interval: on a host whose other processes keep
//!   every core busy, the idle thread gets almost nothing (measured on a 2-core
//!   machine with a busy loop per core: 0.2 to 3.3 s per record before this
//!   thread existed, most above 0.6 s), and a nice-10 thread only a small share.
//!
//! The bound, then: with every core busy, a record waits at most about
//! 2¼ `flush_interval`s before it is written at normal priority, and the batches
//! after it about one interval (the catch-up thread's turn). One exception per
//! starvation spell: a batch the idle thread had already begun writing finishes
//! first, since nothing else can write meanwhile (SQLite has one writer), and at
//! idle priority that write is slow (0.3 to 0.9 s for one record on that
//! machine); records queued meanwhile wait for it too. Neither thread holds
//! anything else across a wait: the batch being gathered belongs to the queue
//! (`queue`), so a thread that goes off duty while lingering leaves it to the
//! next.
//!
//! A thread cannot raise its own priority again without privileges
//! (`RLIMIT_NICE` is 0 by default, and leaving `SCHED_IDLE` needs it), hence
//! threads that already run at each priority rather than one that changes
//! policy.

use std::time::Duration;

/// Niceness of the catch-up thread (0 is normal, 19 the lowest).
const CATCH_UP_NICE: i32 = 10;

/// How many `flush_interval`s records may wait with no commit at all before the
/// rescue thread writes them. A writer that gets the CPU commits a batch one
/// `flush_interval` after its first record, plus the write: the second interval
/// is its margin.
const STARVED_AFTER_INTERVALS: u32 = 2;

/// How long records may wait with no commit before the rescue thread writes
/// them (see [`STARVED_AFTER_INTERVALS`]).
pub(super) fn starved_after(flush_interval: Duration) -> Duration {
    flush_interval.saturating_mul(STARVED_AFTER_INTERVALS)
}

/// How often the rescue thread looks: a quarter `flush_interval` (at least
/// 10 ms, at most a second), so a stall is seen within a quarter interval of its
/// bound.
pub(super) fn rescue_every(flush_interval: Duration) -> Duration {
    (flush_interval / 4).clamp(Duration::from_millis(10), Duration::from_secs(1))
}

/// How long the catch-up thread keeps the duty once the rescue thread found the
/// idle thread starved, before idle priority is tried again.
pub(super) const STARVED_HOLD: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Role {
    /// Writes while the writer keeps up; also runs the retention purge.
    Background,
    /// Writes while the writer is behind.
    CatchUp,
    /// Writes what has waited too long, whoever is on duty.
    Rescue,
}

impl Role {
    /// Whether this thread takes batches now.
    pub(super) fn on_duty(self, behind: bool) -> bool {
        match self {
            Role::Background => !behind,
            Role::CatchUp => behind,
            Role::Rescue => false,
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
            // The process's own priority: as any other work on the host.
            Role::Rescue => (c"audit-rescue", Ok(())),
        };
        if let Err(e) = set {
            tracing::warn!(error = %e, role = ?self, "cannot lower the audit writer's priority");
        }
        if let Err(e) = rustix::thread::set_name(name) {
            tracing::debug!(error = %e, "cannot name the audit writer's thread");
        }
    }
}
