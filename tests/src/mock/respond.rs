//! How the mock sends an answer: a whole JSON body, or a stream of frames paced by
//! `x-mock-chunk-delay-ms`, cut by `x-mock-cut-after`, gzipped when asked.

use std::sync::Arc;
use std::time::Duration;

use actix_web::HttpResponse;

use super::chat::Frame;
use super::dialect::Dialect;
use super::gzip::{GzipStream, compress};
use super::plan::Plan;
use super::state::{Generation, Mock, StreamGuard};

/// Everything an answer needs besides its content.
pub struct Reply<'a> {
    pub mock: &'a Arc<Mock>,
    /// The request's `Accept-Encoding`.
    pub accept: Option<&'a str>,
    pub plan: Plan,
    /// The llama.cpp slot, held until the answer is sent.
    pub generation: Option<Generation>,
}

impl Reply<'_> {
    /// A JSON body, gzipped when the plan and the client's `Accept-Encoding` say so.
    pub fn json(self, body: String) -> HttpResponse {
        let mut resp = HttpResponse::Ok();
        resp.content_type("application/json");
        if self.plan.gzip.applies(self.accept) {
            resp.insert_header(("content-encoding", "gzip"))
                .insert_header(("vary", "Accept-Encoding"));
            return resp.body(compress(body.as_bytes()));
        }
        resp.body(body)
    }

    /// Sends `frames` paced by `x-mock-chunk-delay-ms`, cut by `x-mock-cut-after`,
    /// gzipped event by event when asked.
    pub fn stream(self, frames: Vec<Frame>) -> HttpResponse {
        let plan = &self.plan;
        let guard = StreamGuard::new(self.mock, self.generation);
        // Index of the frame after the K-th content frame: the stream aborts there.
        let cut_at = plan.cut_after.map(|k| {
            let mut seen = 0;
            frames
                .iter()
                .position(|f| {
                    if seen == k {
                        return true;
                    }
                    seen += u64::from(f.content);
                    false
                })
                .unwrap_or(frames.len())
        });
        let delay = Duration::from_millis(plan.chunk_delay_ms);
        let gzip = plan.gzip.applies(self.accept).then(GzipStream::default);
        let compressed = gzip.is_some();
        struct St {
            frames: Vec<Frame>,
            i: usize,
            guard: StreamGuard,
            gzip: Option<GzipStream>,
        }
        let start = St {
            frames,
            i: 0,
            guard,
            gzip,
        };
        let body = futures_util::stream::unfold(start, move |mut st| async move {
            if cut_at == Some(st.i) {
                // Let the frames already produced reach the wire before the abort.
                tokio::time::sleep(Duration::from_millis(50)).await;
                st.i = usize::MAX;
                return Some((Err(std::io::Error::other("mock: stream cut")), st));
            }
            if st.i >= st.frames.len() {
                if st.i == usize::MAX {
                    return None;
                }
                st.i = usize::MAX;
                st.guard.complete();
                return st.gzip.take().map(|gz| (Ok(gz.finish()), st));
            }
            let frame = &st.frames[st.i];
            if frame.paced && !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            let bytes = match st.gzip.as_mut() {
                Some(gz) => gz.piece(&frame.bytes),
                None => frame.bytes.clone(),
            };
            st.i += 1;
            Some((Ok::<_, std::io::Error>(bytes), st))
        });
        let mut resp = HttpResponse::Ok();
        resp.content_type(plan.dialect.stream_content_type());
        match plan.dialect {
            Dialect::Starlette => {
                resp.insert_header(("cache-control", "no-store"))
                    .insert_header(("x-accel-buffering", "no"));
            }
            _ => {
                resp.insert_header(("cache-control", "no-cache"));
            }
        }
        if compressed {
            resp.insert_header(("content-encoding", "gzip"))
                .insert_header(("vary", "Accept-Encoding"));
        }
        resp.streaming(body)
    }
}
