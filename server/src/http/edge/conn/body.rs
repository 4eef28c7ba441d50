//! The request side of the connection guard, as the outermost middleware:
//!
//! * marks each request in flight on its connection ([`ConnHandle::start`]) from
//!   its head until its response body ends, which is what tells the head timer
//!   that bytes arriving now are a body, not the next head;
//! * bounds reading the request body: `server.client_body_timeout` is one
//!   deadline for the whole body, from the handler's first read. It is a total,
//!   not a gap between chunks nor a minimum rate: a client dripping a byte every
//!   two seconds is cut at the deadline, however many bytes it sent. When it
//!   passes, the body stream fails with `TimedOut`, which the body readers of
//!   `/v1` and `/manage` answer with 408 `request_timeout` in their envelope.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use actix_web::HttpMessage as _;
use actix_web::body::{BodySize, BoxBody, MessageBody};
use actix_web::dev::{Payload, ServiceRequest, ServiceResponse};
use actix_web::error::PayloadError;
use actix_web::middleware::Next;
use actix_web::web::{self, Bytes};
use futures_util::Stream;
use tokio::time::{Instant, Sleep};

use super::state::{ConnHandle, InFlight};
use crate::state::AppState;

pub async fn middleware(
    mut req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let in_flight = req.conn_data::<ConnHandle>().map(ConnHandle::start);
    let timeout = req
        .app_data::<web::Data<AppState>>()
        .map(|s| s.config.server.client_body_timeout.0);
    if let Some(timeout) = timeout {
        match req.take_payload() {
            Payload::None => {}
            payload => req.set_payload(Payload::Stream {
                payload: Box::pin(BodyDeadline::new(payload, timeout)),
            }),
        }
    }
    let res = next.call(req).await?;
    Ok(res.map_into_boxed_body().map_body(|_, body| Tracked {
        body,
        _in_flight: in_flight,
    }))
}

/// Whether a body read failed on [`BodyDeadline`].
pub fn is_timeout(e: &PayloadError) -> bool {
    matches!(e, PayloadError::Io(e) if e.kind() == io::ErrorKind::TimedOut)
}

/// A request body that fails with `TimedOut` once `timeout` has passed since it
/// was first read. The deadline is checked on every read; a timer is registered
/// only when a read has to wait, so a body already received (nearly every
/// one) costs a clock read, not a timer.
pub struct BodyDeadline {
    inner: Payload,
    timeout: Duration,
    due: Option<Instant>,
    sleep: Option<Pin<Box<Sleep>>>,
    expired: bool,
}

impl BodyDeadline {
    pub fn new(inner: Payload, timeout: Duration) -> Self {
        Self {
            inner,
            timeout,
            due: None,
            sleep: None,
            expired: false,
        }
    }

    fn expire(&mut self) -> Poll<Option<Result<Bytes, PayloadError>>> {
        self.expired = true;
        crate::metrics::global().client_error("body_timeout");
        Poll::Ready(Some(Err(PayloadError::Io(io::Error::new(
            io::ErrorKind::TimedOut,
            "the request body was not received within server.client_body_timeout",
        )))))
    }
}

impl Stream for BodyDeadline {
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.expired {
            return Poll::Ready(None);
        }
        let now = Instant::now();
        let due = *this.due.get_or_insert(now + this.timeout);
        // The deadline first: a drip that keeps data ready must not outrun it.
        if now >= due {
            return this.expire();
        }
        match Pin::new(&mut this.inner).poll_next(cx) {
            Poll::Pending => {
                let sleep = this
                    .sleep
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(due)));
                match sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => this.expire(),
                    Poll::Pending => Poll::Pending,
                }
            }
            ready => ready,
        }
    }
}

/// A response body that keeps its request in flight until it ends or is dropped.
pub struct Tracked {
    body: BoxBody,
    _in_flight: Option<InFlight>,
}

impl MessageBody for Tracked {
    type Error = <BoxBody as MessageBody>::Error;

    fn size(&self) -> BodySize {
        self.body.size()
    }

    fn poll_next(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, Self::Error>>> {
        let this = self.get_mut();
        Pin::new(&mut this.body).poll_next(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;
    use tokio::time::Instant;

    /// `n` one-byte chunks, one every `every`.
    fn drip(n: usize, every: Duration) -> Payload {
        let s = futures_util::stream::unfold(0, move |i| async move {
            if i == n {
                return None;
            }
            tokio::time::sleep(every).await;
            Some((Ok::<_, PayloadError>(Bytes::from_static(b"x")), i + 1))
        });
        Payload::Stream {
            payload: Box::pin(s),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_drip_is_cut_at_the_total_deadline() {
        let t0 = Instant::now();
        let mut body =
            BodyDeadline::new(drip(1_000, Duration::from_secs(2)), Duration::from_secs(7));
        let mut got = 0;
        let err = loop {
            match body.next().await.unwrap() {
                Ok(b) => got += b.len(),
                Err(e) => break e,
            }
        };
        assert!(is_timeout(&err), "{err}");
        assert_eq!(got, 3);
        assert_eq!(t0.elapsed(), Duration::from_secs(7));
        assert!(body.next().await.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_in_time_is_untouched_and_the_clock_starts_at_the_first_read() {
        let mut body = BodyDeadline::new(drip(3, Duration::from_secs(2)), Duration::from_secs(7));
        // Time before the handler reads does not count.
        tokio::time::sleep(Duration::from_secs(60)).await;
        let mut got = 0;
        while let Some(chunk) = body.next().await {
            got += chunk.unwrap().len();
        }
        assert_eq!(got, 3);
    }
}
