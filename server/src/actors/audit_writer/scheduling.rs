//! How the writer shares the CPU with the request path: its threads' scheduling
//! priority.

use crate::config::WriterPriority;

/// Niceness of the writer's threads with [`WriterPriority::Low`] (0 is normal, 19
/// the lowest).
const WRITER_NICE: i32 = 10;

/// Records are written in the CPU time request handling leaves over: the writer's
/// thread, and the SQLite connection thread it opens afterwards (threads inherit
/// their creator's scheduling), run at [`WriterPriority`].
///
/// Why `SCHED_IDLE` by default: at nice 10 a request that wakes up while the
/// writer runs is not always given the CPU at once (the kernel lets the running
/// thread finish part of its slice), and `bench --audit-off` showed it: audit on had the higher open-loop p99 in 23 of 30 alternating rounds
/// (+160 µs at the median, sign test p = 0.01); with `SCHED_IDLE`, 14 of 30 and no
/// difference. Switching to an idle policy needs no privilege; switching back
/// would, so the choice is made once, here.
///
/// The thread is also named `audit-writer`, so `top -H` and the bench can tell its
/// CPU time from the request path's.
pub(super) fn lower_thread_priority(priority: WriterPriority) {
    let set = match priority {
        WriterPriority::Idle => thread_priority::set_thread_priority_and_policy(
            thread_priority::thread_native_id(),
            thread_priority::ThreadPriority::Min,
            thread_priority::ThreadSchedulePolicy::Normal(
                thread_priority::NormalThreadSchedulePolicy::Idle,
            ),
        )
        .map_err(|e| format!("{e:?}")),
        WriterPriority::Low => {
            rustix::process::setpriority_process(Some(rustix::thread::gettid()), WRITER_NICE)
                .map_err(|e| e.to_string())
        }
    };
    if let Err(e) = set {
        tracing::warn!(error = %e, ?priority, "cannot lower the audit writer's priority");
    }
    if let Err(e) = rustix::thread::set_name(c"audit-writer") {
        tracing::debug!(error = %e, "cannot name the audit writer's thread");
    }
}
