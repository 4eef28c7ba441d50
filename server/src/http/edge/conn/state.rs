//! What a connection's I/O guard (`io.rs`) and the request middleware
//! (`body.rs`) share: how many request heads the application has
//! seen on the connection, and how many of their responses are still going out.
//! Both live on the connection's worker thread, so plain cells do.

use std::cell::Cell;
use std::rc::Rc;

#[derive(Debug, Default)]
struct Counts {
    /// Request heads handed to the application over the connection's life.
    started: Cell<u64>,
    /// Requests whose response has not finished (or been dropped) yet.
    in_flight: Cell<u32>,
    /// A response the HTTP parser wrote itself (400, 431, 408) was replaced with
    /// a JSON one and logged: the dispatcher's error need not be logged again.
    answered: Cell<bool>,
}

/// One connection's shared counters; cloned into the connection's request data.
#[derive(Debug, Clone, Default)]
pub struct ConnHandle(Rc<Counts>);

impl ConnHandle {
    /// The application received a request head; the returned guard marks its
    /// response finished when dropped (with the response body).
    pub fn start(&self) -> InFlight {
        self.0.started.set(self.0.started.get().wrapping_add(1));
        self.0
            .in_flight
            .set(self.0.in_flight.get().saturating_add(1));
        InFlight(self.clone())
    }

    /// Changes every time a request head reaches the application.
    pub fn started(&self) -> u64 {
        self.0.started.get()
    }

    /// No request of this connection is in the application or answering.
    pub fn idle(&self) -> bool {
        self.0.in_flight.get() == 0
    }

    pub fn set_answered(&self) {
        self.0.answered.set(true);
    }

    pub fn answered(&self) -> bool {
        self.0.answered.get()
    }
}

/// A request between its head and the end of its response.
#[derive(Debug)]
pub struct InFlight(ConnHandle);

impl Drop for InFlight {
    fn drop(&mut self) {
        let n = &(self.0).0.in_flight;
        n.set(n.get().saturating_sub(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_flight_counts_until_dropped() {
        let conn = ConnHandle::default();
        assert!(conn.idle());
        let a = conn.start();
        let b = conn.start();
        assert_eq!(conn.started(), 2);
        drop(a);
        assert!(!conn.idle());
        drop(b);
        assert!(conn.idle());
        assert_eq!(conn.started(), 2);
    }
}
