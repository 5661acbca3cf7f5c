//! Writing a request: its head into the connection's write buffer, with the framing of its body
//! decided as RFC 9112 says (the request's own `Content-Length` or `Transfer-Encoding` when it
//! has them, else the body's known length, else chunks), and each body chunk's framing.

use std::io::Write as _;

use http::header::{CONTENT_LENGTH, HOST, TRANSFER_ENCODING};
use http::uri::Authority;
use http::{HeaderMap, Method};

/// How a request body is delimited, and the framing header the head must add for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RequestFraming {
    /// No body.
    Empty,
    /// Exactly this many bytes; `add_header` when the request has no `Content-Length` yet.
    Length { length: u64, add_header: bool },
    /// Chunked; `add_header` when the request does not say so yet.
    Chunked { add_header: bool },
}

/// The framing of a request with `headers` and a body of `known_length` (`None`: unknown).
pub(super) fn request_framing(method: &Method, headers: &HeaderMap, known_length: Option<u64>) -> RequestFraming {
    if let Some(codings) = headers.get(TRANSFER_ENCODING) {
        let chunked_last = codings
            .as_bytes()
            .rsplit(|byte| *byte == b',')
            .next()
            .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        return RequestFraming::Chunked { add_header: !chunked_last };
    }
    if let Some(length) = headers.get(CONTENT_LENGTH).and_then(|value| value.to_str().ok()?.trim().parse().ok()) {
        return RequestFraming::Length { length, add_header: false };
    }
    match known_length {
        // Methods without a defined meaning for a body say nothing of an empty one.
        Some(0) if matches!(*method, Method::GET | Method::HEAD | Method::DELETE | Method::OPTIONS | Method::TRACE) => {
            RequestFraming::Empty
        }
        Some(length) => RequestFraming::Length { length, add_header: true },
        None => RequestFraming::Chunked { add_header: true },
    }
}

/// Writes the request head to `out`: the request line, every header, `Host` when the request
/// has none, and the framing header `framing` adds.
pub(super) fn encode_head(
    out: &mut Vec<u8>,
    method: &Method,
    path_and_query: &str,
    headers: &HeaderMap,
    authority: &Authority,
    framing: RequestFraming,
) {
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(path_and_query.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    if !headers.contains_key(HOST) {
        out.extend_from_slice(b"host: ");
        out.extend_from_slice(authority.as_str().as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let drop_length = matches!(framing, RequestFraming::Chunked { .. });
    for (name, value) in headers {
        // Chunks delimit the body: a Content-Length beside them would be read differently by
        // different servers.
        if drop_length && name == CONTENT_LENGTH {
            continue;
        }
        if name == TRANSFER_ENCODING && framing == (RequestFraming::Chunked { add_header: true }) {
            out.extend_from_slice(b"transfer-encoding: ");
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(b", chunked\r\n");
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    match framing {
        RequestFraming::Length { length, add_header: true } => {
            let _ = write!(out, "content-length: {length}\r\n");
        }
        RequestFraming::Chunked { add_header: true } if !headers.contains_key(TRANSFER_ENCODING) => {
            out.extend_from_slice(b"transfer-encoding: chunked\r\n");
        }
        _ => {}
    }
    out.extend_from_slice(b"\r\n");
}

/// Appends one chunk of a chunked body.
pub(super) fn encode_chunk(out: &mut Vec<u8>, data: &[u8]) {
    if data.is_empty() {
        return;
    }
    let _ = write!(out, "{:x}\r\n", data.len());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// Appends the last chunk and the trailers that end a chunked body.
pub(super) fn encode_last_chunk(out: &mut Vec<u8>, trailers: Option<&HeaderMap>) {
    out.extend_from_slice(b"0\r\n");
    for (name, value) in trailers.into_iter().flatten() {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(method: Method, headers: &[(&str, &str)], known_length: Option<u64>) -> String {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.append(http::HeaderName::from_bytes(name.as_bytes()).unwrap(), value.parse().unwrap());
        }
        let framing = request_framing(&method, &map, known_length);
        let mut out = Vec::new();
        encode_head(&mut out, &method, "/a?b=1", &map, &Authority::from_static("origin:80"), framing);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn heads_carry_host_and_the_framing_the_body_needs() {
        assert_eq!(head(Method::GET, &[("host", "site")], Some(0)), "GET /a?b=1 HTTP/1.1\r\nhost: site\r\n\r\n");
        assert_eq!(head(Method::GET, &[], Some(0)), "GET /a?b=1 HTTP/1.1\r\nhost: origin:80\r\n\r\n");
        assert_eq!(
            head(Method::POST, &[("host", "h")], Some(0)),
            "POST /a?b=1 HTTP/1.1\r\nhost: h\r\ncontent-length: 0\r\n\r\n"
        );
        assert_eq!(
            head(Method::PUT, &[("host", "h")], Some(3)),
            "PUT /a?b=1 HTTP/1.1\r\nhost: h\r\ncontent-length: 3\r\n\r\n"
        );
        assert_eq!(
            head(Method::POST, &[("host", "h"), ("content-length", "7")], None),
            "POST /a?b=1 HTTP/1.1\r\nhost: h\r\ncontent-length: 7\r\n\r\n"
        );
        assert_eq!(
            head(Method::POST, &[("host", "h")], None),
            "POST /a?b=1 HTTP/1.1\r\nhost: h\r\ntransfer-encoding: chunked\r\n\r\n"
        );
        assert_eq!(
            head(Method::POST, &[("host", "h"), ("transfer-encoding", "gzip"), ("content-length", "4")], None),
            "POST /a?b=1 HTTP/1.1\r\nhost: h\r\ntransfer-encoding: gzip, chunked\r\n\r\n"
        );
    }

    #[test]
    fn chunks_are_framed_in_hex() {
        let mut out = Vec::new();
        encode_chunk(&mut out, &[b'x'; 26]);
        encode_chunk(&mut out, b"");
        let mut trailers = HeaderMap::new();
        trailers.insert("x-sum", "9".parse().unwrap());
        encode_last_chunk(&mut out, Some(&trailers));
        assert_eq!(String::from_utf8(out).unwrap(), format!("1a\r\n{}\r\n0\r\nx-sum: 9\r\n\r\n", "x".repeat(26)));
    }
}
