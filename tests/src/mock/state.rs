//! The mock's shared state: counters and the request log the tests read, pending
//! failures, and the single "slot" of the llama.cpp dialect.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use serde_json::Value;
use tokio::sync::Notify;

use super::dialect::Dialect;

pub struct Mock {
    pub name: String,
    pub models: Vec<String>,
    /// `--dialect`: what a request without `x-mock-dialect` gets.
    pub dialect: Dialect,
    pub stats: Stats,
    /// llama.cpp-dialect generations running now; `GET /v1/models` waits for 0.
    pub generating: AtomicU64,
    pub idle: Notify,
    /// `POST /_mock/models-delay`: `GET /v1/models` answers after this many ms.
    pub models_delay_ms: AtomicU64,
}

#[derive(Default)]
pub struct Stats {
    pub requests_total: AtomicU64,
    pub streams_started: AtomicU64,
    pub streams_completed: AtomicU64,
    pub streams_cancelled: AtomicU64,
    pub in_flight: AtomicU64,
    pub handlers_cancelled: AtomicU64,
    pub seq: AtomicU64,
    pub by_path: Mutex<BTreeMap<String, u64>>,
    pub log: Mutex<VecDeque<Value>>,
    pub fail_next: Mutex<FailNext>,
}

/// `POST /_mock/fail-next`: how the next `count` completion requests misbehave.
#[derive(Default, Clone)]
pub struct FailNext {
    pub count: u64,
    pub status: u16,
    /// Never answer instead of answering `status`.
    pub hang: bool,
    pub retry_after: Option<String>,
}

pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Mock {
    pub fn new(name: String, models: Vec<String>, dialect: Dialect) -> Self {
        Mock {
            name,
            models,
            dialect,
            stats: Stats::default(),
            generating: AtomicU64::new(0),
            idle: Notify::new(),
            models_delay_ms: AtomicU64::new(0),
        }
    }

    /// Waits until no llama.cpp-dialect generation runs (its single slot is free).
    pub async fn slot_free(&self) {
        loop {
            let idle = self.idle.notified();
            tokio::pin!(idle);
            idle.as_mut().enable();
            if self.generating.load(Ordering::SeqCst) == 0 {
                return;
            }
            idle.await;
        }
    }
}

/// Counts a handler in flight; notices when the client gave up before an answer.
pub struct HandlerGuard {
    mock: Arc<Mock>,
    pub answered: bool,
}

impl HandlerGuard {
    pub fn new(mock: &Arc<Mock>) -> Self {
        mock.stats.in_flight.fetch_add(1, Ordering::SeqCst);
        Self {
            mock: Arc::clone(mock),
            answered: false,
        }
    }
}

impl Drop for HandlerGuard {
    fn drop(&mut self) {
        self.mock.stats.in_flight.fetch_sub(1, Ordering::SeqCst);
        if !self.answered {
            self.mock
                .stats
                .handlers_cancelled
                .fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// Lives inside a streaming body; tells a completed stream from an abandoned one.
pub struct StreamGuard {
    mock: Arc<Mock>,
    finished: bool,
    _generation: Option<Generation>,
}

impl StreamGuard {
    pub fn new(mock: &Arc<Mock>, generation: Option<Generation>) -> Self {
        mock.stats.in_flight.fetch_add(1, Ordering::SeqCst);
        mock.stats.streams_started.fetch_add(1, Ordering::SeqCst);
        StreamGuard {
            mock: Arc::clone(mock),
            finished: false,
            _generation: generation,
        }
    }

    pub fn complete(&mut self) {
        self.finished = true;
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.mock.stats.in_flight.fetch_sub(1, Ordering::SeqCst);
        let counter = if self.finished {
            &self.mock.stats.streams_completed
        } else {
            &self.mock.stats.streams_cancelled
        };
        counter.fetch_add(1, Ordering::SeqCst);
    }
}

/// Holds the llama.cpp slot while a generation runs (its wait, its stream).
pub struct Generation {
    mock: Arc<Mock>,
}

impl Generation {
    pub fn start(mock: &Arc<Mock>) -> Self {
        mock.generating.fetch_add(1, Ordering::SeqCst);
        Generation {
            mock: Arc::clone(mock),
        }
    }
}

impl Drop for Generation {
    fn drop(&mut self) {
        if self.mock.generating.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.mock.idle.notify_waiters();
        }
    }
}
