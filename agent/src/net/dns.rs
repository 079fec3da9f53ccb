//! The question name of a DNS message (RFC 1035 §4.1.2), parsed from the bytes the kernel copied.

/// The first question's name (`www.example.test`), or `None` when the bytes are not a DNS
/// query we can read (truncated copy, compression pointers in a question, garbage).
pub fn query_name(msg: &[u8]) -> Option<String> {
    // 12-byte header; QDCOUNT at bytes 4..6; QR bit (response) in byte 2
    let qdcount = u16::from_be_bytes([*msg.get(4)?, *msg.get(5)?]);
    if qdcount == 0 || msg.get(2)? & 0x80 != 0 {
        return None;
    }
    let mut labels = Vec::new();
    let mut i = 12usize;
    loop {
        let len = *msg.get(i)? as usize;
        if len == 0 {
            break;
        }
        if len > 63 || labels.len() >= 127 {
            return None; // a pointer or malformed
        }
        let label = msg.get(i + 1..i + 1 + len)?;
        if !label
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
        {
            return None;
        }
        labels.push(String::from_utf8_lossy(label).into_owned());
        i += 1 + len;
    }
    (!labels.is_empty()).then(|| labels.join("."))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A query for `name` (type A), as a resolver sends it.
    pub fn query(name: &str) -> Vec<u8> {
        let mut m = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        for l in name.split('.') {
            m.push(l.len() as u8);
            m.extend_from_slice(l.as_bytes());
        }
        m.extend_from_slice(&[0, 0, 1, 0, 1]);
        m
    }

    #[test]
    fn parses_queries() {
        assert_eq!(
            query_name(&query("www.example.test")).as_deref(),
            Some("www.example.test")
        );
        assert_eq!(query_name(&query("a")).as_deref(), Some("a"));
    }

    #[test]
    fn rejects_what_is_not_a_readable_query() {
        let q = query("www.example.test");
        assert_eq!(query_name(&q[..15]), None, "truncated");
        let mut resp = q.clone();
        resp[2] |= 0x80;
        assert_eq!(query_name(&resp), None, "a response");
        let mut bad = q.clone();
        bad[12] = 0xc0;
        assert_eq!(query_name(&bad), None, "a pointer");
        assert_eq!(query_name(b"junk"), None);
        let mut nul = q;
        nul[13] = 0;
        assert_eq!(query_name(&nul), None, "bytes that are not a hostname");
    }
}
