//! The records on their way to the writer, and the batch gathering from them.
//!
//! The batch belongs to the queue, not to a thread, and the queue's lock is only
//! held for a moment, never across a wait: a writer thread that is starved of CPU
//! (the idle-priority one, on a host whose cores are all busy) holds nothing the
//! other threads need, except while it writes (see `scheduling`).

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::task::Poll;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::sink::{Queued, Slots};

pub(super) struct Queue(Mutex<Inner>);

struct Inner {
    rx: mpsc::UnboundedReceiver<Queued>,
    batch: Vec<Queued>,
}

impl Queue {
    pub(super) fn new(rx: mpsc::UnboundedReceiver<Queued>) -> Self {
        Self(Mutex::new(Inner {
            rx,
            batch: Vec::new(),
        }))
    }

    /// Held for a few instructions only; a panic while held leaves nothing half
    /// done, so a poisoned lock is used as it is.
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Nothing gathered and nothing queued.
    pub(super) fn is_empty(&self) -> bool {
        let q = self.lock();
        q.batch.is_empty() && q.rx.is_empty()
    }

    /// At least `full` records gathered or queued.
    pub(super) fn is_due(&self, full: usize) -> bool {
        let q = self.lock();
        q.batch.len() + q.rx.len() >= full
    }

    /// When the first record of the batch gathering was queued.
    pub(super) fn first_queued(&self) -> Option<Instant> {
        self.lock().batch.first().map(|q| q.at)
    }

    /// Waits until the batch has a first record; `false` once no record can come
    /// any more (every sender gone). The channel wakes only the thread that
    /// waited here last: the one on duty (while draining, all of them wait here
    /// in turn, with a timer each).
    pub(super) async fn first_record(&self, slots: &Slots) -> bool {
        std::future::poll_fn(|cx| {
            let mut q = self.lock();
            if !q.batch.is_empty() {
                return Poll::Ready(true);
            }
            match q.rx.poll_recv(cx) {
                Poll::Ready(Some(r)) => {
                    slots.set_oldest(Some(r.at));
                    q.batch.push(r);
                    Poll::Ready(true)
                }
                Poll::Ready(None) => Poll::Ready(false),
                Poll::Pending => Poll::Pending,
            }
        })
        .await
    }

    /// Takes the batch gathered so far and what is queued, up to `most` records.
    pub(super) fn take(&self, most: usize) -> Vec<Queued> {
        let mut q = self.lock();
        let mut out = std::mem::take(&mut q.batch);
        while out.len() < most {
            match q.rx.try_recv() {
                Ok(r) => out.push(r),
                Err(_) => break,
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::actors::audit_writer::{AuditEvent, Record};

    fn queued() -> Queued {
        Queued {
            at: Instant::now(),
            record: Record::Audit(Box::new(AuditEvent::sample(
                "token.revoke",
                crate::time::now(),
            ))),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_left_by_one_thread_is_the_next_ones_whole() {
        let (tx, rx) = mpsc::unbounded_channel();
        let (queue, slots) = (Queue::new(rx), Slots::new(8));
        assert!(queue.is_empty());
        tx.send(queued()).unwrap();
        // One thread gathers the first record, then goes off duty without
        // writing: the batch stays with the queue.
        assert!(queue.first_record(&slots).await);
        assert_eq!(queue.first_queued(), Some(Instant::now()));
        tokio::time::advance(std::time::Duration::from_millis(300)).await;
        tx.send(queued()).unwrap();
        tx.send(queued()).unwrap();
        // The next thread finds it at once, with when it began, and takes it
        // with what came since, up to the batch size.
        assert!(queue.first_record(&slots).await);
        assert_eq!(
            queue.first_queued().map(|at| at.elapsed()),
            Some(std::time::Duration::from_millis(300))
        );
        assert!(queue.is_due(3) && !queue.is_due(4));
        assert_eq!(queue.take(2).len(), 2);
        assert_eq!(queue.take(2).len(), 1);
        assert!(queue.is_empty());
        drop(tx);
        assert!(!queue.first_record(&slots).await, "no sender left");
    }
}
