//! Passwords: bcrypt at `auth.bcrypt_cost`, on a small pool of its own threads
//! ([`Hasher`]), never on the HTTP workers or actix's blocking pool.
//!
//! Why a pool of its own: one hash costs tens to hundreds of milliseconds of CPU,
//! and actix's blocking pool has hundreds of threads: a login flood ran that many
//! hashes at once and starved the proxy (p99 ×150, DB pool timeouts). Here:
//!
//! * at most `auth.bcrypt_concurrency` hashes run at once (0 = half the cores, at
//!   least one): that many threads, and as many permits ([`Hasher::admit`]);
//! * a login takes its permit *before* it looks the user up, so logins also hold
//!   at most that many database connections at once;
//! * a permit is waited for at most [`MAX_WAIT`], by at most [`MAX_WAITING_PER_SLOT`]
//!   callers per slot; anyone else is refused at once ([`Busy`]: 503 with
//!   `retry-after`), so a flood queues nothing unbounded;
//! * the threads run under `SCHED_IDLE`, like the audit writer's background
//!   thread (`actors/audit_writer/scheduling.rs`): they get the CPU only when
//!   nothing else wants it, and a request that wakes up preempts a hash at once.
//!   At nice 10 instead, `bench --login-flood` (300 addresses, one login a second
//!   each, gateway pinned to one core) moved the `/v1` c=1 p99 by ×2.2 and ×3.0;
//!   with `SCHED_IDLE`, ×2.1 and ×1.4 (the rest is the 300 logins a second being
//!   parsed and refused). The price: on a host whose cores are all busy, logins
//!   wait for a gap and may be answered 503; the management token, which needs
//!   no hashing, still works.

use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

use crate::secret::Secret;

/// At least this many characters; at most 72 bytes, where bcrypt stops reading
/// (longer passwords are refused instead of silently truncated).
pub const MIN_CHARS: usize = 12;
pub const MAX_BYTES: usize = 72;

/// Longest a caller waits for a hashing slot before it is refused.
pub const MAX_WAIT: Duration = Duration::from_secs(2);
/// Callers allowed to wait per slot; beyond that, refused without waiting.
pub const MAX_WAITING_PER_SLOT: usize = 16;

pub fn check_policy(password: &str) -> Result<(), String> {
    if password.chars().count() < MIN_CHARS {
        return Err(format!("must be at least {MIN_CHARS} characters"));
    }
    if password.len() > MAX_BYTES {
        return Err(format!(
            "must be at most {MAX_BYTES} bytes (bcrypt's limit)"
        ));
    }
    Ok(())
}

/// `auth.bcrypt_concurrency`, with 0 meaning half the cores (at least one).
pub fn concurrency(configured: u64) -> usize {
    match usize::try_from(configured) {
        Ok(0) | Err(_) => std::thread::available_parallelism()
            .map_or(1, |n| n.get() / 2)
            .max(1),
        Ok(n) => n,
    }
}

/// Every hashing slot is taken and the waiting line is full (or the wait ran
/// out): try again in `retry_after` seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Busy {
    pub retry_after: u64,
}

type Job = Box<dyn FnOnce() + Send>;

/// The bcrypt pool; cheap to clone.
#[derive(Clone)]
pub struct Hasher {
    inner: Arc<Inner>,
}

struct Inner {
    slots: Arc<Semaphore>,
    waiting: AtomicUsize,
    max_waiting: usize,
    max_wait: Duration,
    cost: u32,
    jobs: mpsc::Sender<Job>,
    dummy: OnceLock<String>,
    stats: Arc<Stats>,
}

/// What `/metrics` shows of the pool.
#[derive(Default)]
pub struct Stats {
    in_flight: AtomicI64,
    peak: AtomicI64,
    refused: AtomicU64,
}

impl Stats {
    /// Hashes running now.
    pub fn in_flight(&self) -> i64 {
        self.in_flight.load(Ordering::Relaxed)
    }
    /// Most hashes ever seen running at once.
    pub fn peak(&self) -> i64 {
        self.peak.load(Ordering::Relaxed)
    }
    /// Callers refused because the pool was busy.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
}

/// A hashing slot, held from admission until the hash is done.
pub struct HashPermit {
    permit: OwnedSemaphorePermit,
    inner: Arc<Inner>,
}

impl Hasher {
    /// Starts `size` hashing threads at bcrypt `cost`, and computes the dummy hash
    /// on one of them, so the first unknown-user login is not slower than the rest.
    pub fn start(size: usize, cost: u32) -> Self {
        Self::with_limits(size, cost, MAX_WAIT, MAX_WAITING_PER_SLOT)
    }

    fn with_limits(size: usize, cost: u32, max_wait: Duration, per_slot: usize) -> Self {
        let size = size.max(1);
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..size {
            let rx = Arc::clone(&rx);
            let spawned = std::thread::Builder::new()
                .name(format!("bcrypt-{i}"))
                .spawn(move || run_jobs(&rx));
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start a password hashing thread");
            }
        }
        let inner = Arc::new(Inner {
            slots: Arc::new(Semaphore::new(size)),
            waiting: AtomicUsize::new(0),
            max_waiting: size.saturating_mul(per_slot),
            max_wait,
            cost,
            jobs: tx,
            dummy: OnceLock::new(),
            stats: Arc::new(Stats::default()),
        });
        let warm = Arc::clone(&inner);
        let _ = inner.jobs.send(Box::new(move || {
            warm.dummy_hash();
        }));
        Self { inner }
    }

    pub fn stats(&self) -> &Stats {
        &self.inner.stats
    }

    /// A hashing slot: at once if one is free, else after a bounded wait; `Busy`
    /// when the waiting line is full or the wait runs out.
    pub async fn admit(&self) -> Result<HashPermit, Busy> {
        let inner = &self.inner;
        let busy = || {
            inner.stats.refused.fetch_add(1, Ordering::Relaxed);
            Busy {
                retry_after: inner.max_wait.as_secs().max(1),
            }
        };
        let permit = match Arc::clone(&inner.slots).try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                if inner.waiting.fetch_add(1, Ordering::AcqRel) >= inner.max_waiting {
                    inner.waiting.fetch_sub(1, Ordering::AcqRel);
                    return Err(busy());
                }
                let waited =
                    tokio::time::timeout(inner.max_wait, Arc::clone(&inner.slots).acquire_owned())
                        .await;
                inner.waiting.fetch_sub(1, Ordering::AcqRel);
                match waited {
                    Ok(Ok(p)) => p,
                    _ => return Err(busy()),
                }
            }
        };
        Ok(HashPermit {
            permit,
            inner: Arc::clone(inner),
        })
    }

    /// Hashes a new password (admits itself).
    pub async fn hash(&self, password: Secret) -> Result<String, HashError> {
        let permit = self.admit().await.map_err(HashError::Busy)?;
        permit.hash(password).await
    }
}

/// Why a new password could not be hashed.
#[derive(Debug)]
pub enum HashError {
    Busy(Busy),
    Failed(String),
}

impl HashPermit {
    /// Runs `f` on a hashing thread; the slot is given back when it is done, even
    /// if the caller has gone away meanwhile.
    async fn run<T: Send + 'static>(
        self,
        f: impl FnOnce(&Inner) -> T + Send + 'static,
    ) -> Option<T> {
        let (tx, rx) = oneshot::channel();
        let Self { permit, inner } = self;
        let jobs = inner.jobs.clone();
        let job: Job = Box::new(move || {
            let stats = &inner.stats;
            let now = stats.in_flight.fetch_add(1, Ordering::AcqRel) + 1;
            stats.peak.fetch_max(now, Ordering::AcqRel);
            let out = f(&inner);
            stats.in_flight.fetch_sub(1, Ordering::AcqRel);
            drop(permit);
            let _ = tx.send(out);
        });
        jobs.send(job).ok()?;
        rx.await.ok()
    }

    /// Hashes a new password.
    pub async fn hash(self, password: Secret) -> Result<String, HashError> {
        self.run(move |inner| bcrypt::hash(password.expose(), inner.cost))
            .await
            .ok_or_else(|| HashError::Failed("password hashing threads are gone".into()))?
            .map_err(|e| HashError::Failed(e.to_string()))
    }

    /// Verifies a password. `stored = None` (no such user) verifies against a
    /// fixed dummy hash of the same cost, so an unknown user takes as long to
    /// refuse as a wrong password, and always fails.
    pub async fn verify(self, password: Secret, stored: Option<String>) -> bool {
        let known = stored.is_some();
        let ok = self
            .run(move |inner| match stored {
                Some(hash) => bcrypt::verify(password.expose(), &hash).unwrap_or(false),
                None => bcrypt::verify(password.expose(), inner.dummy_hash()).unwrap_or(false),
            })
            .await
            .unwrap_or(false);
        known && ok
    }
}

impl Inner {
    /// A hash of a random password, made once per pool at its cost.
    fn dummy_hash(&self) -> &str {
        self.dummy.get_or_init(|| {
            let random = crate::secret::TokenSecret::generate();
            bcrypt::hash(random.expose(), self.cost).unwrap_or_default()
        })
    }
}

/// A hashing thread: moves itself to `SCHED_IDLE`, then runs jobs until the
/// pool is dropped.
fn run_jobs(rx: &Mutex<mpsc::Receiver<Job>>) {
    let idle = thread_priority::set_thread_priority_and_policy(
        thread_priority::thread_native_id(),
        thread_priority::ThreadPriority::Min,
        thread_priority::ThreadSchedulePolicy::Normal(
            thread_priority::NormalThreadSchedulePolicy::Idle,
        ),
    );
    if let Err(e) = idle {
        tracing::warn!(error = ?e, "cannot lower the password hashing threads' priority");
    }
    loop {
        let job = match rx.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => return,
        };
        match job {
            Ok(job) => job(),
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_concurrency_means_half_the_cores_and_at_least_one() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(concurrency(0), (cores / 2).max(1));
        assert_eq!(concurrency(3), 3);
    }

    #[tokio::test]
    async fn hash_then_verify_and_unknown_users_fail() {
        let h = Hasher::start(1, 4);
        let hash = h.hash(Secret::new("correct horse battery")).await.unwrap();
        let p = h.admit().await.unwrap();
        assert!(
            p.verify(Secret::new("correct horse battery"), Some(hash.clone()))
                .await
        );
        let p = h.admit().await.unwrap();
        assert!(!p.verify(Secret::new("wrong"), Some(hash)).await);
        let p = h.admit().await.unwrap();
        assert!(!p.verify(Secret::new("correct horse battery"), None).await);
        assert_eq!(h.stats().peak(), 1);
        assert_eq!(h.stats().in_flight(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn callers_beyond_the_slots_wait_then_are_refused() {
        let h = Hasher::with_limits(1, 4, Duration::from_secs(2), 1);
        let held = h.admit().await.unwrap();
        // One may wait (one slot × one waiter); the next is refused at once.
        let waiter = h.admit();
        tokio::pin!(waiter);
        assert!(futures_util::poll!(&mut waiter).is_pending());
        assert_eq!(h.admit().await.err(), Some(Busy { retry_after: 2 }));
        // The waiter gives up after the bounded wait.
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(waiter.await.err(), Some(Busy { retry_after: 2 }));
        assert_eq!(h.stats().refused(), 2);
        // A freed slot is handed to the next caller.
        drop(held);
        assert!(h.admit().await.is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_gets_the_slot_when_it_is_freed_in_time() {
        let h = Hasher::with_limits(1, 4, Duration::from_secs(2), 4);
        let held = h.admit().await.unwrap();
        let waiter = h.admit();
        tokio::pin!(waiter);
        assert!(futures_util::poll!(&mut waiter).is_pending());
        tokio::time::advance(Duration::from_secs(1)).await;
        drop(held);
        assert!(waiter.await.is_ok());
    }
}
