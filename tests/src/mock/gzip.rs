//! `x-mock-gzip`: compressed responses, as behind a CDN or a stock GZip middleware.
//! Streams are compressed event by event with a sync flush after each, so every
//! event can be decoded as it arrives (what a streaming-aware compressor does).

use std::io::Write as _;

use bytes::Bytes;
use flate2::Compression;
use flate2::write::GzEncoder;

/// When to compress.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Gzip {
    #[default]
    Off,
    /// `x-mock-gzip: 1`: when the request's `Accept-Encoding` names gzip.
    IfAccepted,
    /// `x-mock-gzip: always`: whatever the client accepts.
    Always,
}

impl Gzip {
    pub fn from_header(v: Option<&str>) -> Self {
        match v.map(str::trim) {
            Some("1" | "true" | "yes") => Gzip::IfAccepted,
            Some("always") => Gzip::Always,
            _ => Gzip::Off,
        }
    }

    /// Whether this response is compressed, given the request's `Accept-Encoding`.
    pub fn applies(self, accept_encoding: Option<&str>) -> bool {
        match self {
            Gzip::Off => false,
            Gzip::Always => true,
            Gzip::IfAccepted => accept_encoding.is_some_and(|v| {
                v.split(',').any(|enc| {
                    let mut it = enc.split(';');
                    let name = it.next().unwrap_or_default().trim();
                    let q_zero =
                        it.any(|p| matches!(p.trim(), "q=0" | "q=0.0" | "q=0.00" | "q=0.000"));
                    (name.eq_ignore_ascii_case("gzip") || name == "*") && !q_zero
                })
            }),
        }
    }
}

/// A whole body, compressed.
pub fn compress(body: &[u8]) -> Vec<u8> {
    let mut enc = GzEncoder::new(
        Vec::with_capacity(body.len() / 2 + 32),
        Compression::default(),
    );
    // Writing into a Vec cannot fail.
    let _ = enc.write_all(body);
    enc.finish().unwrap_or_default()
}

/// One gzip member written piece by piece.
pub struct GzipStream {
    enc: GzEncoder<Vec<u8>>,
}

impl Default for GzipStream {
    fn default() -> Self {
        GzipStream {
            enc: GzEncoder::new(Vec::new(), Compression::default()),
        }
    }
}

impl GzipStream {
    /// Compresses `piece` and flushes, returning every byte produced so far.
    pub fn piece(&mut self, piece: &[u8]) -> Bytes {
        let _ = self.enc.write_all(piece);
        let _ = self.enc.flush();
        Bytes::from(std::mem::take(self.enc.get_mut()))
    }

    /// The end of the member (the rest of the deflate stream and the trailer).
    pub fn finish(self) -> Bytes {
        Bytes::from(self.enc.finish().unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read as _;

    use super::*;

    #[test]
    fn pieces_decode_to_the_original() {
        let mut s = GzipStream::default();
        let mut all = Vec::new();
        all.extend_from_slice(&s.piece(b"data: a\n\n"));
        all.extend_from_slice(&s.piece(b"data: b\n\n"));
        all.extend_from_slice(&s.finish());
        let mut out = String::new();
        flate2::read::GzDecoder::new(&all[..])
            .read_to_string(&mut out)
            .unwrap();
        assert_eq!(out, "data: a\n\ndata: b\n\n");
    }

    #[test]
    fn accept_encoding_is_read_like_a_middleware() {
        assert!(Gzip::IfAccepted.applies(Some("gzip, deflate")));
        assert!(Gzip::IfAccepted.applies(Some("br;q=1.0, GZIP;q=0.5")));
        assert!(!Gzip::IfAccepted.applies(Some("gzip;q=0, br")));
        assert!(!Gzip::IfAccepted.applies(Some("identity")));
        assert!(!Gzip::IfAccepted.applies(None));
        assert!(Gzip::Always.applies(None));
    }
}
