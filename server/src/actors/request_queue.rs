//! `RequestQueue`: admission to the upstream. At most `queue.max_in_flight`
//! requests are forwarded at once; the rest wait, FIFO within a project and
//! round-robin across projects, so one project's flood cannot starve another
//! project's single request.
//!
//! Hot path: when nobody waits and a slot is free, [`Admission::enter`] takes the
//! slot with one compare-and-swap and never talks to the actor. Otherwise it sends
//! one `Enter` message and waits on its own oneshot; the actor alone decides who
//! waits and in what order. A [`Permit`] frees its slot on drop (response sent,
//! stream ended, client gone) and, only when someone is waiting, tells the actor
//! with a fire-and-forget message so it can hand the slot on.
//!
//! A waiter that gives up (timeout, or its client disconnected and actix dropped
//! the handler) drops its ticket, which removes it from the queue at once.
//!
//! Messages, all sent with `do_send` (nobody waits on the mailbox):
//! - `Enter { id, project, reply }`: from [`Admission::enter`] when the fast path
//!   cannot take a slot. The actor answers on the oneshot `reply`: `Full` at once
//!   when `queue.max_waiting` requests already wait, else a [`Permit`] when the
//!   waiter's turn comes (at once if a slot is free).
//! - `Leave { id, project }`: from a waiter's dropped ticket (`queue.max_wait`
//!   passed, or the client went away): takes it out of its project's line.
//! - `Released`: from a dropped [`Permit`], only while someone waits: hand the
//!   freed slot on.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::time::Duration;

use actix::{Actor, Addr, Arbiter, Context, Handler, Message};
use serde::Serialize;
use tokio::sync::oneshot;

use crate::ids::ProjectId;

/// Seconds a rejected client is told to wait before trying again.
const RETRY_AFTER_SECS: u64 = 1;

/// Why [`Admission::enter`] gave no slot; the proxy answers 503 `queue_full`,
/// `queue_timeout` or `service_unavailable`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdmissionError {
    /// `queue.max_waiting` requests already wait.
    Full { retry_after: u64 },
    /// `queue.max_wait` passed without a slot.
    Timeout { waited: Duration, retry_after: u64 },
    /// The actor is gone (shutting down).
    Stopped,
}

/// Counters and gauges shared by the actor, the handlers and `/manage/queue`.
#[derive(Debug, Default)]
pub struct QueueStats {
    /// 0 = no limit (the queue is off; requests are still counted).
    max_in_flight: u64,
    max_waiting: u64,
    in_flight: AtomicU64,
    /// Written by the actor only; read by the fast path and the snapshot.
    waiting: AtomicU64,
    admitted: AtomicU64,
    waited: AtomicU64,
    rejected_full: AtomicU64,
    rejected_timeout: AtomicU64,
}

/// What `GET /manage/queue` shows.
#[derive(Debug, Serialize)]
pub struct QueueSnapshot {
    pub in_flight: u64,
    pub waiting: u64,
    pub max_in_flight: u64,
    pub max_waiting: u64,
    /// `queue_full` + `queue_timeout` + `rate_limited`.
    pub rejected_total: u64,
    pub admitted_total: u64,
    /// Admitted after waiting for a slot.
    pub waited_total: u64,
    pub rejected: RejectedCounts,
}

#[derive(Debug, Serialize)]
pub struct RejectedCounts {
    pub queue_full: u64,
    pub queue_timeout: u64,
    /// 429 `rate_limit_exceeded` from any limiter (per IP, per token, per project).
    pub rate_limited: u64,
}

impl QueueStats {
    /// Takes a slot if one is free.
    fn try_take_slot(&self) -> bool {
        if self.max_in_flight == 0 {
            self.in_flight.fetch_add(1, SeqCst);
            return true;
        }
        self.in_flight
            .fetch_update(SeqCst, SeqCst, |n| {
                (n < self.max_in_flight).then_some(n + 1)
            })
            .is_ok()
    }

    pub fn snapshot(&self) -> QueueSnapshot {
        let rejected = RejectedCounts {
            queue_full: self.rejected_full.load(SeqCst),
            queue_timeout: self.rejected_timeout.load(SeqCst),
            // Counted where every 429 `rate_limit_exceeded` becomes a response.
            rate_limited: crate::metrics::global().rejected_count("rate_limit_exceeded"),
        };
        QueueSnapshot {
            in_flight: self.in_flight.load(SeqCst),
            waiting: self.waiting.load(SeqCst),
            max_in_flight: self.max_in_flight,
            max_waiting: self.max_waiting,
            rejected_total: rejected.queue_full + rejected.queue_timeout + rejected.rate_limited,
            admitted_total: self.admitted.load(SeqCst),
            waited_total: self.waited.load(SeqCst),
            rejected,
        }
    }
}

/// One forwarded request's slot; dropping it frees the slot.
#[derive(Debug)]
pub struct Permit {
    stats: Arc<QueueStats>,
    queue: Option<Addr<RequestQueue>>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.stats.in_flight.fetch_sub(1, SeqCst);
        if self.stats.waiting.load(SeqCst) > 0
            && let Some(q) = &self.queue
        {
            q.do_send(Released);
        }
    }
}

/// The handlers' side of the queue: cheap to clone, shared by every worker.
#[derive(Clone, Debug)]
pub struct Admission {
    stats: Arc<QueueStats>,
    /// `None` when the queue is off (`max_in_flight: 0`): nothing ever waits.
    queue: Option<Addr<RequestQueue>>,
    max_wait: Duration,
    next_ticket: Arc<AtomicU64>,
}

impl Admission {
    /// Starts the actor on its own arbiter (unless the queue is off).
    pub fn start(max_in_flight: u64, max_waiting: u64, max_wait: Duration) -> Self {
        Self::start_with(max_in_flight, max_waiting, max_wait, |actor| {
            RequestQueue::start_in_arbiter(&Arbiter::new().handle(), move |_| actor)
        })
    }

    /// [`Admission::start`], with the actor started by `start` (tests start it on
    /// their own runtime, where time can be paused).
    fn start_with(
        max_in_flight: u64,
        max_waiting: u64,
        max_wait: Duration,
        start: impl FnOnce(RequestQueue) -> Addr<RequestQueue>,
    ) -> Self {
        let stats = Arc::new(QueueStats {
            max_in_flight,
            max_waiting,
            ..QueueStats::default()
        });
        let queue = (max_in_flight > 0).then(|| {
            let actor = RequestQueue {
                stats: Arc::clone(&stats),
                ring: VecDeque::new(),
                waiting: HashMap::new(),
                me: None,
            };
            start(actor)
        });
        Self {
            stats,
            queue,
            max_wait,
            next_ticket: Arc::new(AtomicU64::new(1)),
        }
    }

    pub fn stats(&self) -> &QueueStats {
        &self.stats
    }

    /// A slot for one request of `project`: at once when one is free and nobody
    /// waits, else after waiting in the project's line. 503 `queue_full` when the
    /// waiting line is full, 503 `queue_timeout` after `queue.max_wait`.
    pub async fn enter(&self, project: ProjectId) -> Result<Permit, AdmissionError> {
        let permit = |stats: &Arc<QueueStats>| Permit {
            stats: Arc::clone(stats),
            queue: self.queue.clone(),
        };
        let Some(queue) = &self.queue else {
            self.stats.try_take_slot();
            self.stats.admitted.fetch_add(1, SeqCst);
            return Ok(permit(&self.stats));
        };
        if self.stats.waiting.load(SeqCst) == 0 && self.stats.try_take_slot() {
            self.stats.admitted.fetch_add(1, SeqCst);
            return Ok(permit(&self.stats));
        }
        let (reply, rx) = oneshot::channel();
        let id = self.next_ticket.fetch_add(1, SeqCst);
        queue.do_send(Enter { id, project, reply });
        let mut ticket = Ticket {
            id,
            project,
            queue: Some(queue.clone()),
        };
        match tokio::time::timeout(self.max_wait, rx).await {
            Ok(Ok(Granted::Slot(p))) => {
                ticket.queue = None;
                self.stats.admitted.fetch_add(1, SeqCst);
                self.stats.waited.fetch_add(1, SeqCst);
                Ok(p)
            }
            Ok(Ok(Granted::Full)) => {
                ticket.queue = None;
                self.stats.rejected_full.fetch_add(1, SeqCst);
                Err(AdmissionError::Full {
                    retry_after: RETRY_AFTER_SECS,
                })
            }
            Ok(Err(_)) => Err(AdmissionError::Stopped),
            Err(_) => {
                self.stats.rejected_timeout.fetch_add(1, SeqCst);
                Err(AdmissionError::Timeout {
                    waited: self.max_wait,
                    retry_after: RETRY_AFTER_SECS,
                })
            }
        }
    }
}

/// A place in line; dropped while still waiting (timeout, client gone), it takes
/// the place back at once.
struct Ticket {
    id: u64,
    project: ProjectId,
    queue: Option<Addr<RequestQueue>>,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if let Some(q) = self.queue.take() {
            q.do_send(Leave {
                id: self.id,
                project: self.project,
            });
        }
    }
}

enum Granted {
    Slot(Permit),
    Full,
}

struct Waiter {
    id: u64,
    reply: oneshot::Sender<Granted>,
}

/// The actor: the only code that decides who waits and who goes next.
pub struct RequestQueue {
    stats: Arc<QueueStats>,
    /// Projects with someone waiting, in round-robin order.
    ring: VecDeque<ProjectId>,
    waiting: HashMap<ProjectId, VecDeque<Waiter>>,
    me: Option<Addr<RequestQueue>>,
}

impl Actor for RequestQueue {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        use actix::AsyncContext;
        self.me = Some(ctx.address());
    }
}

impl RequestQueue {
    /// Hands free slots to waiters: one per project in turn.
    fn dispatch(&mut self) {
        while let Some(project) = self.ring.pop_front() {
            let Some(line) = self.waiting.get_mut(&project) else {
                continue;
            };
            let Some(waiter) = line.pop_front() else {
                self.waiting.remove(&project);
                continue;
            };
            if waiter.reply.is_closed() {
                // Its Leave is on the way; it no longer counts as waiting.
                self.stats.waiting.fetch_sub(1, SeqCst);
                self.requeue(project);
                continue;
            }
            if !self.stats.try_take_slot() {
                line.push_front(waiter);
                self.ring.push_front(project);
                return;
            }
            self.stats.waiting.fetch_sub(1, SeqCst);
            self.requeue(project);
            let permit = Permit {
                stats: Arc::clone(&self.stats),
                queue: self.me.clone(),
            };
            // A waiter that gave up in the meantime drops the permit with the
            // channel, which frees the slot again (and brings us back here).
            let _ = waiter.reply.send(Granted::Slot(permit));
        }
    }

    /// Puts `project` at the back of the ring if it still has waiters.
    fn requeue(&mut self, project: ProjectId) {
        match self.waiting.get(&project) {
            Some(line) if !line.is_empty() => self.ring.push_back(project),
            Some(_) => {
                self.waiting.remove(&project);
            }
            None => {}
        }
    }
}

#[derive(Message)]
#[rtype(result = "()")]
struct Enter {
    id: u64,
    project: ProjectId,
    reply: oneshot::Sender<Granted>,
}

impl Handler<Enter> for RequestQueue {
    type Result = ();

    fn handle(&mut self, msg: Enter, _: &mut Context<Self>) {
        if self.stats.waiting.load(SeqCst) >= self.stats.max_waiting {
            let _ = msg.reply.send(Granted::Full);
            return;
        }
        // Counted before the slot check, so a permit dropped concurrently sees a
        // waiter and wakes us.
        self.stats.waiting.fetch_add(1, SeqCst);
        let line = self.waiting.entry(msg.project).or_default();
        if line.is_empty() {
            self.ring.push_back(msg.project);
        }
        line.push_back(Waiter {
            id: msg.id,
            reply: msg.reply,
        });
        self.dispatch();
    }
}

#[derive(Message)]
#[rtype(result = "()")]
struct Leave {
    id: u64,
    project: ProjectId,
}

impl Handler<Leave> for RequestQueue {
    type Result = ();

    fn handle(&mut self, msg: Leave, _: &mut Context<Self>) {
        let Some(line) = self.waiting.get_mut(&msg.project) else {
            return;
        };
        let before = line.len();
        line.retain(|w| w.id != msg.id);
        if line.len() < before {
            self.stats.waiting.fetch_sub(1, SeqCst);
        }
        if line.is_empty() {
            self.waiting.remove(&msg.project);
            self.ring.retain(|p| *p != msg.project);
        }
    }
}

#[derive(Message)]
#[rtype(result = "()")]
struct Released;

impl Handler<Released> for RequestQueue {
    type Result = ();

    fn handle(&mut self, _: Released, _: &mut Context<Self>) {
        self.dispatch();
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // waiters are spawned as local tasks
mod tests {
    use super::*;
    use actix::Actor;
    use tokio::sync::mpsc;
    use tokio::time::Instant;

    /// A queue whose actor runs on the test's runtime, with time paused.
    fn queue(max_in_flight: u64, max_waiting: u64, max_wait_secs: u64) -> Admission {
        tokio::time::pause();
        Admission::start_with(
            max_in_flight,
            max_waiting,
            Duration::from_secs(max_wait_secs),
            RequestQueue::start,
        )
    }

    /// Yields until `cond` holds: the actor runs on this thread, between yields.
    async fn until(what: &str, cond: impl Fn() -> bool) {
        for _ in 0..10_000 {
            if cond() {
                return;
            }
            tokio::task::yield_now().await;
        }
        panic!("never happened: {what}");
    }

    /// A one-slot queue whose slot a request of project `a` holds (`held`);
    /// waiters started by [`Busy::wait_in_line`] report their admission.
    struct Busy {
        q: Admission,
        a: ProjectId,
        held: Option<Permit>,
        tx: mpsc::UnboundedSender<(&'static str, Permit)>,
        admitted: mpsc::UnboundedReceiver<(&'static str, Permit)>,
    }

    impl Busy {
        async fn new(max_waiting: u64, max_wait_secs: u64) -> Self {
            let q = queue(1, max_waiting, max_wait_secs);
            let a = ProjectId::new();
            let held = Some(q.enter(a).await.unwrap());
            let (tx, admitted) = mpsc::unbounded_channel();
            Self {
                q,
                a,
                held,
                tx,
                admitted,
            }
        }

        fn waiting(&self) -> u64 {
            self.q.stats().waiting.load(SeqCst)
        }

        fn in_flight(&self) -> u64 {
            self.q.stats().in_flight.load(SeqCst)
        }

        /// Starts a request of `project` that waits for its slot and, once
        /// admitted, hands its permit to the test; returns once it is in line.
        async fn wait_in_line(
            &self,
            project: ProjectId,
            name: &'static str,
        ) -> tokio::task::JoinHandle<Result<(), AdmissionError>> {
            let waiting = self.waiting();
            let (q, tx) = (self.q.clone(), self.tx.clone());
            let task = tokio::task::spawn_local(async move {
                let permit = q.enter(project).await?;
                tx.send((name, permit)).unwrap();
                Ok(())
            });
            until("in line", || self.waiting() == waiting + 1).await;
            task
        }

        /// The next waiter let in, with its permit.
        async fn next_admitted(&mut self) -> (&'static str, Permit) {
            self.admitted.recv().await.unwrap()
        }
    }

    #[actix_rt::test]
    async fn free_slots_are_taken_without_waiting_and_freed_on_drop() {
        let q = queue(2, 10, 5);
        let a = q.enter(ProjectId::new()).await.unwrap();
        let b = q.enter(ProjectId::new()).await.unwrap();
        let snap = q.stats().snapshot();
        assert_eq!(
            (snap.in_flight, snap.waiting, snap.admitted_total),
            (2, 0, 2)
        );
        assert_eq!(snap.waited_total, 0);
        drop(a);
        drop(b);
        assert_eq!(q.stats().snapshot().in_flight, 0);
    }

    #[actix_rt::test]
    async fn waiters_go_first_in_first_out_within_a_project_round_robin_across_projects() {
        let mut t = Busy::new(10, 60).await;
        // Project a floods the line before b and c send one request each.
        for name in ["a1", "a2", "a3"] {
            t.wait_in_line(t.a, name).await;
        }
        t.wait_in_line(ProjectId::new(), "b1").await;
        t.wait_in_line(ProjectId::new(), "c1").await;
        // Each released slot goes to the next project in turn (`Released`).
        let mut order = Vec::new();
        let mut permit = t.held.take();
        for _ in 0..5 {
            drop(permit);
            let (name, next) = t.next_admitted().await;
            assert_eq!(t.in_flight(), 1, "one slot, handed on");
            order.push(name);
            permit = Some(next);
        }
        assert_eq!(order, ["a1", "b1", "c1", "a2", "a3"]);
        let snap = t.q.stats().snapshot();
        assert_eq!(
            (snap.waiting, snap.waited_total, snap.admitted_total),
            (0, 5, 6)
        );
        drop(permit);
        assert_eq!(t.in_flight(), 0);
    }

    #[actix_rt::test]
    async fn a_newcomer_does_not_take_a_freed_slot_from_a_waiter() {
        let mut t = Busy::new(10, 60).await;
        t.wait_in_line(t.a, "a1").await;
        t.held = None;
        // Polled once before the actor sees `Released`: the slot is free, yet
        // someone waits, so the newcomer queues instead of taking it.
        let q = t.q.clone();
        let mut newcomer = std::pin::pin!(q.enter(ProjectId::new()));
        let first_poll =
            std::future::poll_fn(|cx| std::task::Poll::Ready(newcomer.as_mut().poll(cx))).await;
        assert!(first_poll.is_pending());
        let (first, permit) = t.next_admitted().await;
        assert_eq!(first, "a1");
        drop(permit);
        newcomer.await.unwrap();
        assert_eq!(t.q.stats().snapshot().waited_total, 2);
    }

    #[actix_rt::test]
    async fn a_waiter_times_out_after_max_wait_and_leaves_the_line() {
        let mut t = Busy::new(10, 5).await;
        let started = Instant::now();
        // Nothing else runs: paused time jumps to the waiter's deadline.
        match t.q.enter(t.a).await {
            Err(AdmissionError::Timeout {
                waited,
                retry_after,
            }) => assert_eq!((waited, retry_after), (Duration::from_secs(5), 1)),
            other => panic!("{other:?}"),
        }
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_secs(5),
            "not before max_wait: {waited:?}"
        );
        assert!(waited < Duration::from_millis(5_010), "{waited:?}");
        // Its ticket's `Leave` takes it out of the line.
        until("left the line", || t.waiting() == 0).await;
        let snap = t.q.stats().snapshot();
        assert_eq!((snap.rejected.queue_timeout, snap.admitted_total), (1, 1));
        t.held = None;
        assert_eq!(t.in_flight(), 0, "no slot handed to it");
    }

    #[actix_rt::test]
    async fn a_waiter_whose_client_went_away_leaves_and_the_next_one_gets_the_slot() {
        let mut t = Busy::new(10, 60).await;
        let gone = t.wait_in_line(t.a, "a1").await;
        t.wait_in_line(ProjectId::new(), "b1").await;
        // actix drops the handler of a disconnected client: its ticket goes.
        gone.abort();
        until("left the line", || t.waiting() == 1).await;
        t.held = None;
        let (name, permit) = t.next_admitted().await;
        assert_eq!(name, "b1");
        assert_eq!(t.in_flight(), 1);
        drop(permit);
        assert_eq!(t.in_flight(), 0);
    }

    #[actix_rt::test]
    async fn a_full_line_refuses_at_once() {
        let t = Busy::new(2, 60).await;
        t.wait_in_line(t.a, "a1").await;
        t.wait_in_line(ProjectId::new(), "b1").await;
        let started = Instant::now();
        assert!(matches!(
            t.q.enter(t.a).await,
            Err(AdmissionError::Full { retry_after: 1 })
        ));
        assert_eq!(started.elapsed(), Duration::ZERO);
        let snap = t.q.stats().snapshot();
        assert_eq!((snap.waiting, snap.rejected.queue_full), (2, 1));
    }

    #[actix_rt::test]
    async fn with_the_queue_off_every_request_goes_at_once() {
        let q = queue(0, 0, 1);
        let mut permits = Vec::new();
        for _ in 0..100 {
            permits.push(q.enter(ProjectId::new()).await.unwrap());
        }
        let snap = q.stats().snapshot();
        assert_eq!((snap.in_flight, snap.admitted_total), (100, 100));
        drop(permits);
        assert_eq!(q.stats().snapshot().in_flight, 0);
    }
}
