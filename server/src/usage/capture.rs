//! What a usage record keeps of the request and of the response, collected on the
//! request path: references and memcpy only, never a parse. The audit writer
//! parses it later (see the module docs of [`crate::usage`]).
//!
//! Bounded per record:
//! - the request body: a reference when it is at most [`MAX_ACCOUNTED_BODY`]
//!   (it is in memory for the request anyway); past that only its length;
//! - a non-streamed response: references to its chunks up to
//!   [`MAX_ACCOUNTED_BODY`]; past that nothing but its length;
//! - a stream: its first [`STREAM_KEPT_BYTES`] *copied* into one buffer (a
//!   `Bytes` from hyper pins its whole read buffer, and a stream of a thousand
//!   small reads would pin a thousand of them), and past that a rolling window of
//!   the last [`STREAM_TAIL_CHUNKS`] chunks, where the usage chunk rides.

use std::collections::VecDeque;

use bytes::Bytes;

use super::{MAX_ACCOUNTED_BODY, STREAM_KEPT_BYTES, STREAM_TAIL_CHUNKS};

/// The request body as a usage record keeps it.
#[derive(Debug, Clone, Default)]
pub struct KeptRequest {
    /// The body, when small enough to keep.
    pub body: Option<Bytes>,
    /// Its length, kept or not.
    pub len: usize,
}

impl KeptRequest {
    pub fn of(body: &Bytes) -> Self {
        Self {
            body: (body.len() <= MAX_ACCOUNTED_BODY).then(|| body.clone()),
            len: body.len(),
        }
    }
}

/// The response body as a usage record keeps it.
#[derive(Debug, Clone, Default)]
pub struct KeptResponse {
    /// Non-streamed: the whole body's chunks (empty past the cap). Streamed: the
    /// stream's first bytes, up to [`STREAM_KEPT_BYTES`], in one buffer.
    pub head: Vec<Bytes>,
    /// Streamed past the cap only: the last chunks.
    pub tail: Vec<Bytes>,
    /// Every byte the upstream sent.
    pub total: u64,
    /// `head` holds the whole body.
    pub whole: bool,
}

impl KeptResponse {
    /// A response known in full (tests).
    #[cfg(test)]
    pub fn whole(body: Bytes) -> Self {
        Self {
            total: body.len() as u64,
            head: vec![body],
            tail: Vec::new(),
            whole: true,
        }
    }

    /// The kept head's length.
    #[cfg(test)]
    pub fn head_len(&self) -> usize {
        self.head.iter().map(Bytes::len).sum()
    }
}

/// Collects a response's body as its chunks pass by.
#[derive(Debug, Default)]
pub struct Capture {
    chunks: Vec<Bytes>,
    copied: Vec<u8>,
    tail: VecDeque<Bytes>,
    total: u64,
    overflow: bool,
}

impl Capture {
    pub fn push(&mut self, chunk: &Bytes, streamed: bool) {
        self.total += chunk.len() as u64;
        if streamed {
            self.push_stream(chunk);
        } else if !self.overflow {
            if self.total > MAX_ACCOUNTED_BODY as u64 {
                self.overflow = true;
                self.chunks = Vec::new();
            } else {
                self.chunks.push(chunk.clone());
            }
        }
    }

    /// Every byte seen so far.
    pub fn total(&self) -> u64 {
        self.total
    }

    fn push_stream(&mut self, chunk: &Bytes) {
        if self.overflow {
            if self.tail.len() == STREAM_TAIL_CHUNKS {
                self.tail.pop_front();
            }
            self.tail.push_back(chunk.clone());
            return;
        }
        let room = STREAM_KEPT_BYTES - self.copied.len();
        let take = chunk.len().min(room);
        let needed = self.copied.len() + take;
        if needed > self.copied.capacity() {
            // Doubling, but never past the cap.
            let grown = needed
                .max(self.copied.capacity() * 2)
                .clamp(4096, STREAM_KEPT_BYTES);
            self.copied.reserve_exact(grown - self.copied.len());
        }
        self.copied.extend_from_slice(&chunk[..take]);
        if take < chunk.len() {
            self.overflow = true;
            self.tail.push_back(chunk.clone());
        }
    }

    pub fn finish(self) -> KeptResponse {
        let Capture {
            chunks,
            mut copied,
            tail,
            total,
            overflow,
        } = self;
        let head = if copied.is_empty() {
            // Non-streamed: the same reasoning as for a stream's tail.
            compact(chunks.into())
        } else {
            copied.shrink_to_fit();
            vec![Bytes::from(copied)]
        };
        KeptResponse {
            head,
            tail: compact(tail),
            total,
            whole: !overflow,
        }
    }
}

/// Records wait up to `audit.flush_interval` in the queue: a small tail is copied
/// into one exact-size buffer so hyper's read buffers are freed (and reused) at
/// once.
fn compact(tail: VecDeque<Bytes>) -> Vec<Bytes> {
    let len: usize = tail.iter().map(Bytes::len).sum();
    if len == 0 {
        return Vec::new();
    }
    if len > COMPACT_TAIL_MAX {
        return tail.into_iter().collect();
    }
    let mut out = Vec::with_capacity(len);
    for chunk in &tail {
        out.extend_from_slice(chunk);
    }
    vec![Bytes::from(out)]
}

/// Above this, copying on the request path would cost more than it saves.
const COMPACT_TAIL_MAX: usize = 16 * 1024;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_stream_is_kept_whole_in_one_buffer() {
        let mut c = Capture::default();
        for i in 0..10 {
            c.push(&Bytes::from(format!("data: {i}\n\n")), true);
        }
        let kept = c.finish();
        assert!(kept.whole);
        assert_eq!(kept.head.len(), 1);
        assert_eq!(kept.head_len() as u64, kept.total);
        assert!(kept.tail.is_empty());
    }

    #[test]
    fn long_stream_keeps_the_cap_and_the_last_chunks() {
        let mut c = Capture::default();
        let chunk = Bytes::from(vec![b'x'; 1000]);
        let n = STREAM_KEPT_BYTES / 1000 + 50;
        for _ in 0..n {
            c.push(&chunk, true);
        }
        c.push(&Bytes::from_static(b"last"), true);
        let kept = c.finish();
        assert!(!kept.whole);
        assert_eq!(kept.head_len(), STREAM_KEPT_BYTES);
        assert!(kept.head[0].len() <= STREAM_KEPT_BYTES);
        assert_eq!(kept.total, n as u64 * 1000 + 4);
        let tail: Vec<u8> = kept.tail.concat();
        assert_eq!(tail.len(), (STREAM_TAIL_CHUNKS - 1) * 1000 + 4);
        assert!(tail.ends_with(b"last"));
    }

    #[test]
    fn large_plain_body_is_not_kept() {
        let mut c = Capture::default();
        let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
        for _ in 0..(MAX_ACCOUNTED_BODY / chunk.len()) {
            c.push(&chunk, false);
        }
        assert!(c.clone_head_len() == MAX_ACCOUNTED_BODY);
        c.push(&chunk, false);
        let kept = c.finish();
        assert!(!kept.whole);
        assert!(kept.head.is_empty());
        assert_eq!(kept.total, (MAX_ACCOUNTED_BODY + chunk.len()) as u64);
    }

    impl Capture {
        fn clone_head_len(&self) -> usize {
            self.chunks.iter().map(Bytes::len).sum()
        }
    }

    #[test]
    fn request_body_is_kept_up_to_the_cap() {
        let small = Bytes::from_static(b"{}");
        assert!(KeptRequest::of(&small).body.is_some());
        let big = Bytes::from(vec![b' '; MAX_ACCOUNTED_BODY + 1]);
        let kept = KeptRequest::of(&big);
        assert!(kept.body.is_none());
        assert_eq!(kept.len, MAX_ACCOUNTED_BODY + 1);
    }
}
