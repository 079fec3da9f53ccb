//! A rendered `/metrics` page: one per collection, shared by every scrape that waited for it.
//! Its gzip form is made once, by the first of them that asks for it.
use std::{io::Write as _, sync::OnceLock};

use bytes::Bytes;
use flate2::{Compression, write::GzEncoder};

#[derive(Debug)]
pub struct Page {
    text: Bytes,
    gzip: OnceLock<Bytes>,
}

impl Page {
    pub fn new(text: Bytes) -> Self {
        Self {
            text,
            gzip: OnceLock::new(),
        }
    }

    /// The text exposition (cheap: reference counted).
    pub fn text(&self) -> Bytes {
        self.text.clone()
    }

    /// The gzip of the text, compressed by the first caller (blocking: milliseconds for a page of
    /// MiBs); callers at the same time wait for that one compression.
    pub fn gzip(&self) -> Bytes {
        self.gzip
            .get_or_init(|| Bytes::from(gzip(&self.text)))
            .clone()
    }
}

/// Level 1: a /metrics page is repetitive enough that the fastest level already shrinks it
/// ~15x, and it is compressed once per scrape.
fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = GzEncoder::new(Vec::with_capacity(data.len() / 8), Compression::fast());
    // writing into a Vec cannot fail
    let _ = e.write_all(data);
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
    fn gzip_is_made_once_and_decompresses_to_the_text() {
        let text: String = (0..2000)
            .map(|i| {
                format!("palisade_syscalls_total{{container=\"c{i}\",syscall=\"read\"}} {i}\n")
            })
            .collect();
        let page = Page::new(Bytes::from(text.clone()));
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
