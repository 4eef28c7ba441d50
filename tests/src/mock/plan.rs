//! What one request asks the mock to do: read from `x-mock-*` headers (which pass
//! through the gateway unchanged), from the model name (so an SDK user can
//! trigger it too), and from `POST /_mock/fail-next`. Headers win.

use actix_web::HttpRequest;

use super::dialect::Dialect;
use super::gzip::Gzip;
use super::state::{Mock, lock};

/// How this request should behave.
pub struct Plan {
    pub dialect: Dialect,
    pub gzip: Gzip,
    pub delay_ms: u64,
    pub status: Option<u16>,
    pub retry_after: String,
    pub hang: bool,
    pub chunks: u64,
    pub chunk_delay_ms: u64,
    pub cut_after: Option<u64>,
    pub fixed: bool,
}

pub fn header<'a>(req: &'a HttpRequest, name: &str) -> Option<&'a str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

fn header_u64(req: &HttpRequest, name: &str) -> Option<u64> {
    header(req, name).and_then(|v| v.trim().parse().ok())
}

/// The dialect for `req`: `x-mock-dialect` when it names one, else the process's.
pub fn dialect(req: &HttpRequest, mock: &Mock) -> Dialect {
    header(req, "x-mock-dialect")
        .and_then(|v| v.parse().ok())
        .unwrap_or(mock.dialect)
}

impl Plan {
    pub fn new(req: &HttpRequest, model: Option<&str>, mock: &Mock) -> Self {
        let model = model.unwrap_or_default();
        let by_model_num = |prefix: &str| {
            model
                .strip_prefix(prefix)
                .and_then(|n| n.parse::<u64>().ok())
        };
        let mut status = header_u64(req, "x-mock-status")
            .or_else(|| by_model_num("mock-error-"))
            .and_then(|c| u16::try_from(c).ok());
        let mut hang = false;
        let mut retry_after = None;
        {
            let mut fail = lock(&mock.stats.fail_next);
            if fail.count > 0 {
                fail.count -= 1;
                hang = fail.hang;
                retry_after.clone_from(&fail.retry_after);
                if !hang {
                    status = Some(fail.status);
                }
            }
        }
        Plan {
            dialect: dialect(req, mock),
            gzip: Gzip::from_header(header(req, "x-mock-gzip")),
            delay_ms: header_u64(req, "x-mock-delay-ms")
                .or_else(|| by_model_num("mock-slow-"))
                .unwrap_or(0),
            status,
            retry_after: retry_after
                .unwrap_or_else(|| header(req, "x-mock-retry-after").unwrap_or("1").to_owned()),
            hang: hang
                || header(req, "x-mock-hang").is_some_and(|v| v == "1")
                || model == "mock-hang",
            chunks: header_u64(req, "x-mock-chunks").unwrap_or(5),
            chunk_delay_ms: header_u64(req, "x-mock-chunk-delay-ms").unwrap_or(0),
            cut_after: header_u64(req, "x-mock-cut-after")
                .or((model == "mock-stream-cut").then_some(2)),
            fixed: header(req, "x-mock-fixed").is_some_and(|v| v == "1"),
        }
    }
}
