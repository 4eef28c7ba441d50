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

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::time::Duration;

use actix::{Actor, Addr, Arbiter, Context, Handler, Message};
use serde::Serialize;
use tokio::sync::oneshot;

use crate::error::ProxyError;
use crate::ids::ProjectId;

/// Seconds a rejected client is told to wait before trying again.
const RETRY_AFTER_SECS: u64 = 1;

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
            RequestQueue::start_in_arbiter(&Arbiter::new().handle(), move |_| actor)
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
    pub async fn enter(&self, project: ProjectId) -> Result<Permit, ProxyError> {
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
                Err(ProxyError::QueueFull {
                    retry_after: RETRY_AFTER_SECS,
                })
            }
            Ok(Err(_)) => Err(ProxyError::Unavailable("request queue stopped".into())),
            Err(_) => {
                self.stats.rejected_timeout.fetch_add(1, SeqCst);
                Err(ProxyError::QueueTimeout {
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
