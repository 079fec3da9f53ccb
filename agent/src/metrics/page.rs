//! A rendered `/metrics` page: one per collection, shared by every scrape that waited for it.
//! Its gzip form is made once, by the first of them that asks for it.
//!
//! The page is the families' text blocks as they were written ([`super::expo::Text`]), sent
//! one after another under one exact `Content-Length`: never copied into one buffer.
use std::{
    collections::VecDeque,
    io::Write as _,
    pin::Pin,
    sync::OnceLock,
    task::{Context, Poll},
};

use bytes::Bytes;
use flate2::{Compression, write::GzEncoder};
use http_body::{Body, Frame, SizeHint};

#[derive(Debug)]
pub struct Page {
    chunks: Vec<Bytes>,
    len: u64,
    gzip: OnceLock<Bytes>,
}

impl Page {
    pub fn new(mut chunks: Vec<Bytes>) -> Self {
        chunks.retain(|c| !c.is_empty());
        let len = chunks.iter().map(|c| c.len() as u64).sum();
        Self {
            chunks,
            len,
            gzip: OnceLock::new(),
        }
    }

    /// The text exposition as an HTTP body (cheap: the chunks are reference counted).
    pub fn text(&self) -> Chunks {
        Chunks {
            chunks: self.chunks.iter().cloned().collect(),
            left: self.len,
        }
    }

    /// The gzip of the text, compressed by the first caller (blocking: milliseconds for a page of
    /// MiBs); callers at the same time wait for that one compression.
    pub fn gzip(&self) -> Bytes {
        self.gzip
            .get_or_init(|| Bytes::from(gzip(&self.chunks, self.len)))
            .clone()
    }
}

/// A page's chunks as a body of known length (hyper sends it as `Content-Length`).
#[derive(Debug)]
pub struct Chunks {
    chunks: VecDeque<Bytes>,
    left: u64,
}

impl Body for Chunks {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let next = self.chunks.pop_front();
        if let Some(c) = &next {
            self.left -= c.len() as u64;
        }
        Poll::Ready(next.map(|c| Ok(Frame::data(c))))
    }

    fn is_end_stream(&self) -> bool {
        self.left == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.left)
    }
}

/// Level 1: a /metrics page is repetitive enough that the fastest level already shrinks it
/// ~15x, and it is compressed once per scrape.
fn gzip(chunks: &[Bytes], len: u64) -> Vec<u8> {
    let cap = usize::try_from(len / 8).unwrap_or(0);
    let mut e = GzEncoder::new(Vec::with_capacity(cap), Compression::fast());
    for c in chunks {
        // writing into a Vec cannot fail
        let _ = e.write_all(c);
    }
    e.finish().unwrap_or_default()
}

/// Whether an `Accept-Encoding` value accepts gzip (`gzip`, `x-gzip` or `*` with a non-zero q).
pub fn accepts_gzip(accept_encoding: &str) -> bool {
    accept_encoding.split(',').any(|item| {
        let mut parts = item.split(';');
        let coding = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        if !matches!(coding.as_str(), "gzip" | "x-gzip" | "*") {
            return false;
        }
        parts
            .filter_map(|p| p.trim().strip_prefix("q="))
            .all(|q| q.trim().parse::<f32>().map_or(true, |q| q > 0.0))
    })
}

#[cfg(test)]
mod tests {
    use std::io::Read as _;

    use super::*;

    #[test]
    fn accept_encoding() {
        for yes in [
            "gzip",
            "gzip, deflate",
            "deflate, GZIP;q=0.5",
            "*",
            "br;q=1.0, gzip;q=0.8, *;q=0.1",
            "x-gzip",
        ] {
            assert!(accepts_gzip(yes), "{yes}");
        }
        for no in [
            "",
            "identity",
            "deflate, br",
            "gzip;q=0",
            "gzip; q=0.0",
            "gzipx",
        ] {
            assert!(!accepts_gzip(no), "{no}");
        }
    }

    #[test]
    fn the_body_is_every_chunk_in_order_under_its_exact_length() {
        let page = Page::new(vec![
            Bytes::from("a 1\n"),
            Bytes::new(),
            Bytes::from("b 2\nc 3\n"),
        ]);
        let mut body = page.text();
        assert_eq!(body.size_hint().exact(), Some(12));
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut got = Vec::new();
        while let Poll::Ready(Some(Ok(frame))) = Pin::new(&mut body).poll_frame(&mut cx) {
            got.extend_from_slice(&frame.into_data().unwrap());
        }
        assert_eq!(got, b"a 1\nb 2\nc 3\n");
        assert!(body.is_end_stream());
        assert_eq!(body.size_hint().exact(), Some(0));
    }

    #[test]
    fn gzip_is_made_once_and_decompresses_to_the_text() {
        let text: String = (0..2000)
            .map(|i| {
                format!("palisade_syscalls_total{{container=\"c{i}\",syscall=\"read\"}} {i}\n")
            })
            .collect();
        // in chunks, one of them empty
        let chunks = text
            .as_bytes()
            .chunks(1000)
            .map(Bytes::copy_from_slice)
            .chain([Bytes::new()])
            .collect();
        let page = Page::new(chunks);
        let a = page.gzip();
        let b = page.gzip();
        assert_eq!(a.as_ptr(), b.as_ptr(), "one compression per page");
        assert!(a.len() * 5 < text.len(), "{} of {}", a.len(), text.len());
        let mut out = String::new();
        flate2::read::GzDecoder::new(&a[..])
            .read_to_string(&mut out)
            .unwrap();
        assert_eq!(out, text);
    }
}
