//! The connection guard: every byte of a connection passes through [`GuardedIo`].
//!
//! * **Head timeout on every request.** actix-http's own head timer covers only
//!   the first request of a connection (and its keep-alive timer stops at the
//!   first byte of the next one). Here the timer starts when the connection opens
//!   and again at the first byte that arrives while no request of the connection
//!   is in the application; it stops when the next request head reaches the
//!   application ([`ConnHandle::started`] moves). When it fires, a 408 JSON answer
//!   is written if nothing else is being written, and the read side reports end
//!   of stream, so actix closes the connection.
//! * **Parser answers in JSON.** See [`super::refusal`].
//! * **Per-IP permit.** Held for the connection's life, released on drop.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use super::per_ip::Permit;
use super::refusal;
use super::state::ConnHandle;

/// The head timer: armed for one generation of [`ConnHandle::started`].
///
/// Arming only notes the deadline; the timer itself is registered only when a
/// read would wait while armed (a head still incomplete). A head that arrives in
/// one read, as nearly all do, never touches the runtime's timer wheel.
struct HeadTimer {
    timeout: Duration,
    sleep: Pin<Box<Sleep>>,
    /// The generation whose head is awaited, and when it is due.
    armed: Option<(u64, Instant)>,
}

impl HeadTimer {
    /// Armed from the start: the first head must arrive in time too.
    fn new(timeout: Duration, conn: &ConnHandle) -> Self {
        let due = Instant::now() + timeout;
        Self {
            timeout,
            sleep: Box::pin(tokio::time::sleep_until(due)),
            armed: Some((conn.started(), due)),
        }
    }

    /// Disarms once the awaited head reached the application; arms when bytes
    /// arrive while the connection is idle (the start of the next head).
    fn update(&mut self, conn: &ConnHandle, got_bytes: bool) {
        if self.armed.is_some_and(|(g, _)| g != conn.started()) {
            self.armed = None;
        }
        if self.armed.is_none() && got_bytes && conn.idle() {
            self.armed = Some((conn.started(), Instant::now() + self.timeout));
        }
    }

    /// Whether the armed head is overdue; when the read is about to wait
    /// (`waiting`), also registers the waker for the deadline.
    fn expired(&mut self, cx: &mut Context<'_>, waiting: bool) -> bool {
        let Some((_, due)) = self.armed else {
            return false;
        };
        if Instant::now() >= due {
            return true;
        }
        if !waiting {
            return false;
        }
        if self.sleep.deadline() != due {
            self.sleep.as_mut().reset(due);
        }
        self.sleep.as_mut().poll(cx).is_ready()
    }
}

pub struct GuardedIo<T> {
    inner: T,
    conn: ConnHandle,
    peer: Option<SocketAddr>,
    head: HeadTimer,
    /// The head timed out: reads report end of stream from now on.
    cut: bool,
    /// The last write to `inner` was refused for now (actix holds unsent bytes).
    write_blocked: bool,
    /// A response of ours not yet fully written, and how much of it was.
    out: Option<(Bytes, usize)>,
    _permit: Option<Permit>,
}

impl<T> GuardedIo<T> {
    pub fn new(
        inner: T,
        peer: Option<SocketAddr>,
        header_timeout: Duration,
        permit: Option<Permit>,
    ) -> Self {
        let conn = ConnHandle::default();
        Self {
            head: HeadTimer::new(header_timeout, &conn),
            inner,
            conn,
            peer,
            cut: false,
            write_blocked: false,
            out: None,
            _permit: permit,
        }
    }

    pub fn handle(&self) -> ConnHandle {
        self.conn.clone()
    }

    pub fn peer(&self) -> Option<SocketAddr> {
        self.peer
    }
}

impl<T: AsyncWrite + Unpin> GuardedIo<T> {
    /// Writes what is left of our own response; `Ready(Ok)` once nothing is.
    fn poll_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some((bytes, done)) = &mut self.out {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &bytes[*done..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *done += n;
            if *done >= bytes.len() {
                self.out = None;
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Queues our JSON answer (counted under `reason`, logged as `what`).
    fn answer(&mut self, status: u16, reason: &'static str, what: &str, cx: &mut Context<'_>) {
        let id = refusal::fresh_id();
        crate::metrics::global().client_error(reason);
        refusal::warn(what, status, self.peer, &id);
        self.conn.set_answered();
        self.out = Some((refusal::response(status, &id), 0));
        // Best effort now; flush and shutdown finish it.
        let _ = self.poll_out(cx);
    }

    /// The head took too long: answer 408 when the protocol still allows it
    /// (nothing else is being written), then end the connection.
    fn cut_head(&mut self, cx: &mut Context<'_>) {
        self.cut = true;
        if self.conn.idle() && !self.write_blocked && self.out.is_none() {
            let what = "request head not received within server.client_header_timeout";
            self.answer(408, "head_timeout", what, cx);
        } else {
            crate::metrics::global().client_error("head_timeout");
        }
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncRead for GuardedIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.cut {
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let read = Pin::new(&mut this.inner).poll_read(cx, buf);
        let got_bytes = buf.filled().len() > before;
        this.head.update(&this.conn, got_bytes);
        if this.head.expired(cx, read.is_pending()) {
            buf.set_filled(before);
            this.cut_head(cx);
            return Poll::Ready(Ok(()));
        }
        read
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for GuardedIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_out(cx))?;
        let parsers = this.conn.idle().then(|| refusal::parser_response(buf));
        if let Some((len, status)) = parsers.flatten() {
            let what = "request refused by the HTTP parser";
            this.answer(status, refusal::code(status), what, cx);
            return Poll::Ready(Ok(len));
        }
        let written = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.write_blocked = written.is_pending();
        written
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_out(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_out(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, duplex};

    const TIMEOUT: Duration = Duration::from_secs(5);

    fn guarded() -> (GuardedIo<DuplexStream>, DuplexStream) {
        let (server, client) = duplex(4096);
        (GuardedIo::new(server, None, TIMEOUT, None), client)
    }

    /// Reads until end of stream; returns the bytes and when the end came.
    async fn read_to_end(io: &mut GuardedIo<DuplexStream>) -> (Vec<u8>, Instant) {
        let mut all = Vec::new();
        let mut buf = [0u8; 64];
        loop {
            let n = io.read(&mut buf).await.unwrap();
            if n == 0 {
                return (all, Instant::now());
            }
            all.extend_from_slice(&buf[..n]);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn first_head_is_timed_from_the_connection_start() {
        let (mut io, mut client) = guarded();
        let t0 = Instant::now();
        client.write_all(b"GET / HT").await.unwrap();
        let (got, ended) = read_to_end(&mut io).await;
        assert_eq!(got, b"GET / HT");
        assert_eq!(ended - t0, TIMEOUT);
        let mut answer = Vec::new();
        io.flush().await.unwrap();
        drop(io);
        client.read_to_end(&mut answer).await.unwrap();
        let answer = String::from_utf8(answer).unwrap();
        assert!(
            answer.starts_with("HTTP/1.1 408 Request Timeout\r\n"),
            "{answer}"
        );
        assert!(answer.contains("\"code\":\"request_timeout\""), "{answer}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_later_head_is_timed_from_its_first_byte() {
        let (mut io, mut client) = guarded();
        let conn = io.handle();
        let mut buf = [0u8; 64];
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        assert!(io.read(&mut buf).await.unwrap() > 0);
        // The first head reached the application and was answered.
        drop(conn.start());
        // Keep-alive idle time is not head time.
        tokio::time::sleep(TIMEOUT * 3).await;
        let t1 = Instant::now();
        let drip = async {
            for b in b"GET /second" {
                client.write_all(&[*b]).await.unwrap();
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        };
        let (_, (_, ended)) = tokio::join!(drip, read_to_end(&mut io));
        assert_eq!(ended - t1, TIMEOUT);
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_in_the_application_is_not_head_time() {
        let (mut io, mut client) = guarded();
        let conn = io.handle();
        let mut buf = [0u8; 64];
        client
            .write_all(b"POST / HTTP/1.1\r\ncontent-length: 5\r\n\r\n")
            .await
            .unwrap();
        assert!(io.read(&mut buf).await.unwrap() > 0);
        let request = conn.start();
        // A slow body is the body timer's business, not the head timer's.
        for _ in 0..5 {
            tokio::time::sleep(TIMEOUT).await;
            client.write_all(b"x").await.unwrap();
            assert_eq!(io.read(&mut buf).await.unwrap(), 1);
        }
        drop(request);
        // Then the connection is idle: the next byte starts a head.
        client.write_all(b"G").await.unwrap();
        let t = Instant::now();
        let (_, ended) = read_to_end(&mut io).await;
        assert_eq!(ended - t, TIMEOUT);
    }

    #[tokio::test(start_paused = true)]
    async fn parser_answers_are_replaced_with_json() {
        let (mut io, mut client) = guarded();
        io.write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        io.shutdown().await.unwrap();
        drop(io);
        let mut answer = String::new();
        client.read_to_string(&mut answer).await.unwrap();
        assert!(
            answer.starts_with("HTTP/1.1 400 Bad Request\r\n"),
            "{answer}"
        );
        assert!(answer.contains("\r\nx-request-id: "), "{answer}");
        assert!(
            answer.contains("\"code\":\"malformed_request\""),
            "{answer}"
        );
    }
}
