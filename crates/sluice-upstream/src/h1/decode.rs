//! Reading a server's answer: the response head (httparse over the connection's buffer, header
//! values kept as slices of it), how its body is framed (RFC 9112 section 6.3), and the body
//! decoders. Every limit here bounds what a server can make the proxy hold.

use bytes::{Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Version};

use super::H1Error;

/// Most headers in a response head or in chunked trailers.
pub(super) const MAX_HEADERS: usize = 128;

/// Longest response head, and longest trailer section, in bytes.
pub(super) const MAX_HEAD_BYTES: usize = 256 * 1024;

/// Longest chunk-size line (size and extensions).
const MAX_CHUNK_LINE: usize = 4096;

/// A parsed response head.
#[derive(Debug)]
pub(super) struct ResponseHead {
    pub(super) status: StatusCode,
    pub(super) version: Version,
    pub(super) headers: HeaderMap,
}

/// Parses one response head from the front of `buffer`, consuming it; `None` while incomplete.
pub(super) fn parse_head(buffer: &mut BytesMut) -> Result<Option<ResponseHead>, H1Error> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut slots);
    let length = match response.parse(buffer) {
        Ok(httparse::Status::Complete(length)) => length,
        Ok(httparse::Status::Partial) if buffer.len() > MAX_HEAD_BYTES => {
            return Err(H1Error::Protocol("response head too large"));
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(H1Error::Protocol("too many response headers")),
        Err(_) => return Err(H1Error::Protocol("malformed response head")),
    };
    let status = response.code.and_then(|code| StatusCode::from_u16(code).ok());
    let status = status.ok_or(H1Error::Protocol("malformed response status"))?;
    let version = if response.version == Some(0) { Version::HTTP_10 } else { Version::HTTP_11 };
    // Offsets into the head, taken before the buffer is split so that values can be slices of it.
    let base = buffer.as_ptr() as usize;
    let spans: Vec<(HeaderName, usize, usize)> = response
        .headers
        .iter()
        .map(|header| {
            let name = HeaderName::from_bytes(header.name.as_bytes())
                .map_err(|_| H1Error::Protocol("malformed response header name"))?;
            let start = header.value.as_ptr() as usize - base;
            Ok((name, start, start + header.value.len()))
        })
        .collect::<Result<_, H1Error>>()?;
    let head = buffer.split_to(length).freeze();
    let mut headers = HeaderMap::with_capacity(spans.len());
    for (name, start, end) in spans {
        let value = HeaderValue::from_maybe_shared(head.slice(start..end))
            .map_err(|_| H1Error::Protocol("malformed response header value"))?;
        headers.append(name, value);
    }
    Ok(Some(ResponseHead { status, version, headers }))
}

/// How a response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Framing {
    /// No body at all.
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked transfer coding.
    Chunked,
    /// Everything until the server closes the connection.
    UntilClose,
}

/// The framing of the body of `head`, answering a `method` request, and whether the connection
/// may carry another request after it (RFC 9112 sections 6.3 and 9.3). A `Content-Length` that
/// `Transfer-Encoding` overrides is removed, as a proxy must before forwarding.
pub(super) fn framing(head: &mut ResponseHead, method: &Method) -> Result<(Framing, bool), H1Error> {
    let mut reusable = match head.version {
        Version::HTTP_10 => has_token(&head.headers, CONNECTION, "keep-alive"),
        _ => !has_token(&head.headers, CONNECTION, "close"),
    };
    let status = head.status.as_u16();
    if *method == Method::HEAD || (100..200).contains(&status) || status == 204 || status == 304 {
        return Ok((Framing::Empty, reusable));
    }
    if head.headers.contains_key(TRANSFER_ENCODING) {
        // Transfer-Encoding overrides Content-Length; a response with both may be an attempt to
        // desynchronise, so its connection is not used again.
        if head.headers.remove(CONTENT_LENGTH).is_some() || head.version == Version::HTTP_10 {
            reusable = false;
        }
        let last_coding = head
            .headers
            .get_all(TRANSFER_ENCODING)
            .iter()
            .flat_map(|value| value.as_bytes().split(|byte| *byte == b','))
            .map(<[u8]>::trim_ascii)
            .rfind(|coding| !coding.is_empty());
        return Ok(match last_coding {
            Some(coding) if coding.eq_ignore_ascii_case(b"chunked") => (Framing::Chunked, reusable),
            // A body not chunked last runs until the server closes.
            _ => (Framing::UntilClose, false),
        });
    }
    let mut length: Option<u64> = None;
    for value in head.headers.get_all(CONTENT_LENGTH) {
        for part in value.as_bytes().split(|byte| *byte == b',').map(<[u8]>::trim_ascii) {
            let parsed = parse_decimal(part).ok_or(H1Error::Protocol("invalid content-length in response"))?;
            if length.is_some_and(|seen| seen != parsed) {
                return Err(H1Error::Protocol("conflicting content-length values in response"));
            }
            length = Some(parsed);
        }
    }
    Ok(match length {
        Some(0) => (Framing::Empty, reusable),
        Some(length) => (Framing::Length(length), reusable),
        None => (Framing::UntilClose, false),
    })
}

fn parse_decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    digits.iter().try_fold(0u64, |total, digit| total.checked_mul(10)?.checked_add(u64::from(digit - b'0')))
}

fn has_token(headers: &HeaderMap, name: HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .flat_map(|value| value.as_bytes().split(|byte| *byte == b','))
        .any(|part| part.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// What a body decoder got out of the buffer.
#[derive(Debug)]
pub(super) enum Decoded {
    /// Body bytes.
    Data(Bytes),
    /// The trailers that ended a chunked body.
    Trailers(HeaderMap),
    /// The body is complete.
    End,
    /// More bytes must be read first.
    NeedMore,
}

/// Takes a body, framed by length, chunks or the connection's end, out of a read buffer.
#[derive(Debug)]
pub(super) enum BodyDecoder {
    /// `remaining` bytes to go.
    Length { remaining: u64 },
    /// Chunked, in the given state.
    Chunked(Chunked),
    /// Until the connection ends.
    UntilClose,
    /// Nothing more.
    Done,
}

/// Where a chunked decoder stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Chunked {
    /// In a chunk-size line: the size so far, its digit count, and whether extensions began.
    Size { size: u64, digits: u8, extension: bool, line: usize },
    /// After a chunk-size line's CR.
    SizeLf { size: u64 },
    /// In a chunk's data.
    Data { remaining: u64 },
    /// After a chunk's data: its CR.
    DataCr,
    /// After a chunk's data: its LF.
    DataLf,
    /// After the last chunk: the trailer section, until an empty line.
    Trailers,
}

impl Chunked {
    fn start() -> Self {
        Self::Size { size: 0, digits: 0, extension: false, line: 0 }
    }
}

impl BodyDecoder {
    /// The decoder for `framing`.
    pub(super) fn new(framing: Framing) -> Self {
        match framing {
            Framing::Empty | Framing::Length(0) => Self::Done,
            Framing::Length(remaining) => Self::Length { remaining },
            Framing::Chunked => Self::Chunked(Chunked::start()),
            Framing::UntilClose => Self::UntilClose,
        }
    }

    /// Whether the body has ended.
    pub(super) fn is_done(&self) -> bool {
        matches!(self, Self::Done)
    }

    /// Bytes still to come when the framing says.
    pub(super) fn remaining(&self) -> Option<u64> {
        match self {
            Self::Length { remaining } => Some(*remaining),
            Self::Done => Some(0),
            _ => None,
        }
    }

    /// The next piece of the body from `buffer`.
    pub(super) fn decode(&mut self, buffer: &mut BytesMut) -> Result<Decoded, H1Error> {
        match self {
            Self::Done => Ok(Decoded::End),
            Self::Length { remaining } => {
                if buffer.is_empty() {
                    return Ok(Decoded::NeedMore);
                }
                let take = usize::try_from(*remaining).unwrap_or(usize::MAX).min(buffer.len());
                *remaining -= take as u64;
                if *remaining == 0 {
                    *self = Self::Done;
                }
                Ok(Decoded::Data(buffer.split_to(take).freeze()))
            }
            Self::UntilClose => {
                if buffer.is_empty() {
                    return Ok(Decoded::NeedMore);
                }
                Ok(Decoded::Data(buffer.split().freeze()))
            }
            Self::Chunked(state) => {
                let decoded = decode_chunked(state, buffer)?;
                if matches!(decoded, Decoded::Trailers(_) | Decoded::End) {
                    *self = Self::Done;
                }
                Ok(decoded)
            }
        }
    }

    /// The connection ended: the end of an until-close body, else a body cut short.
    pub(super) fn at_eof(&mut self) -> Result<Decoded, H1Error> {
        match self {
            Self::UntilClose | Self::Done => {
                *self = Self::Done;
                Ok(Decoded::End)
            }
            _ => Err(H1Error::Protocol("the server closed the connection before the body ended")),
        }
    }
}

fn decode_chunked(state: &mut Chunked, buffer: &mut BytesMut) -> Result<Decoded, H1Error> {
    let mut consumed = 0;
    let result = loop {
        if let Chunked::Data { remaining } = *state {
            buffer.advance_front(consumed);
            consumed = 0;
            if buffer.is_empty() {
                break Decoded::NeedMore;
            }
            let take = usize::try_from(remaining).unwrap_or(usize::MAX).min(buffer.len());
            let left = remaining - take as u64;
            *state = if left == 0 { Chunked::DataCr } else { Chunked::Data { remaining: left } };
            return Ok(Decoded::Data(buffer.split_to(take).freeze()));
        }
        if *state == Chunked::Trailers {
            buffer.advance_front(consumed);
            return trailers(buffer);
        }
        let Some(&byte) = buffer.get(consumed) else { break Decoded::NeedMore };
        consumed += 1;
        *state = match (*state, byte) {
            (Chunked::Size { size, digits, extension: false, line }, _) if byte.is_ascii_hexdigit() => {
                if digits >= 15 {
                    return Err(H1Error::Protocol("chunk size too large"));
                }
                let digit = u64::from((byte as char).to_digit(16).unwrap_or(0) as u8);
                Chunked::Size { size: size * 16 + digit, digits: digits + 1, extension: false, line: line + 1 }
            }
            (Chunked::Size { digits: 0, .. }, _) => return Err(H1Error::Protocol("malformed chunk size")),
            (Chunked::Size { size, .. }, b'\r') => Chunked::SizeLf { size },
            (Chunked::Size { line, .. }, _) if line >= MAX_CHUNK_LINE => {
                return Err(H1Error::Protocol("chunk extensions too long"));
            }
            (Chunked::Size { size, digits, line, .. }, b';') => {
                Chunked::Size { size, digits, extension: true, line: line + 1 }
            }
            (Chunked::Size { size, digits, extension: true, line }, _) if byte != b'\n' && byte != 0 => {
                Chunked::Size { size, digits, extension: true, line: line + 1 }
            }
            (Chunked::Size { .. }, _) => return Err(H1Error::Protocol("malformed chunk size")),
            (Chunked::SizeLf { size: 0 }, b'\n') => Chunked::Trailers,
            (Chunked::SizeLf { size }, b'\n') => Chunked::Data { remaining: size },
            (Chunked::DataCr, b'\r') => Chunked::DataLf,
            (Chunked::DataLf, b'\n') => Chunked::start(),
            _ => return Err(H1Error::Protocol("malformed chunked body")),
        };
    };
    buffer.advance_front(consumed);
    Ok(result)
}

/// The trailer section after the last chunk, once it is all in `buffer`.
fn trailers(buffer: &mut BytesMut) -> Result<Decoded, H1Error> {
    if buffer.starts_with(b"\r\n") {
        buffer.advance_front(2);
        return Ok(Decoded::End);
    }
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    match httparse::parse_headers(buffer, &mut slots) {
        Ok(httparse::Status::Complete((length, fields))) => {
            let mut trailers = HeaderMap::with_capacity(fields.len());
            for field in fields {
                if let (Ok(name), Ok(value)) =
                    (HeaderName::from_bytes(field.name.as_bytes()), HeaderValue::from_bytes(field.value))
                {
                    trailers.append(name, value);
                }
            }
            buffer.advance_front(length);
            Ok(Decoded::Trailers(trailers))
        }
        Ok(httparse::Status::Partial) if buffer.len() > MAX_HEAD_BYTES => Err(H1Error::Protocol("trailers too large")),
        Ok(httparse::Status::Partial) => Ok(Decoded::NeedMore),
        Err(_) => Err(H1Error::Protocol("malformed trailers")),
    }
}

/// Dropping bytes from the front of a buffer.
trait AdvanceFront {
    fn advance_front(&mut self, count: usize);
}

impl AdvanceFront for BytesMut {
    fn advance_front(&mut self, count: usize) {
        if count > 0 {
            bytes::Buf::advance(self, count);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(raw: &str) -> ResponseHead {
        parse_head(&mut BytesMut::from(raw)).unwrap().unwrap()
    }

    fn decode_all(framing: Framing, raw: &[u8]) -> Result<(Vec<u8>, Option<HeaderMap>, BytesMut), H1Error> {
        let mut decoder = BodyDecoder::new(framing);
        let mut buffer = BytesMut::from(raw);
        let (mut body, mut trailers) = (Vec::new(), None);
        loop {
            match decoder.decode(&mut buffer)? {
                Decoded::Data(data) => body.extend_from_slice(&data),
                Decoded::Trailers(fields) => trailers = Some(fields),
                Decoded::End => return Ok((body, trailers, buffer)),
                Decoded::NeedMore => match decoder.at_eof()? {
                    Decoded::End => return Ok((body, trailers, buffer)),
                    _ => unreachable!(),
                },
            }
        }
    }

    #[test]
    fn heads_are_parsed_and_consumed_leaving_the_body() {
        let mut buffer = BytesMut::from("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1\r\nx-a: 2\r\n\r\nhello");
        let parsed = parse_head(&mut buffer).unwrap().unwrap();
        assert_eq!(parsed.status, 200);
        assert_eq!(parsed.headers.get_all("x-a").iter().count(), 2);
        assert_eq!(&buffer[..], b"hello");
        assert!(parse_head(&mut BytesMut::from("HTTP/1.1 200 OK\r\nA: b\r\n")).unwrap().is_none());
        assert!(parse_head(&mut BytesMut::from("HTTP/1.1 2000 OK\r\n\r\n")).is_err());
        assert!(parse_head(&mut BytesMut::from("HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n")).is_err());
        let many = format!("HTTP/1.1 200 OK\r\n{}\r\n", "a: b\r\n".repeat(MAX_HEADERS + 1));
        assert!(matches!(parse_head(&mut BytesMut::from(many.as_str())), Err(H1Error::Protocol(_))));
        let huge = format!("HTTP/1.1 200 OK\r\na: {}", "b".repeat(MAX_HEAD_BYTES + 1));
        assert!(matches!(parse_head(&mut BytesMut::from(huge.as_str())), Err(H1Error::Protocol(_))));
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let get = Method::GET;
        assert_eq!(
            framing(&mut head("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n"), &get).unwrap(),
            (Framing::Length(3), true)
        );
        assert_eq!(
            framing(&mut head("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n"), &Method::HEAD).unwrap().0,
            Framing::Empty
        );
        assert_eq!(framing(&mut head("HTTP/1.1 204 No Content\r\n\r\n"), &get).unwrap(), (Framing::Empty, true));
        assert_eq!(
            framing(&mut head("HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n"), &get).unwrap().0,
            Framing::Empty
        );
        assert_eq!(framing(&mut head("HTTP/1.1 200 OK\r\n\r\n"), &get).unwrap(), (Framing::UntilClose, false));
        assert_eq!(
            framing(&mut head("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"), &get).unwrap(),
            (Framing::Chunked, true)
        );
        assert_eq!(
            framing(&mut head("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n"), &get).unwrap(),
            (Framing::UntilClose, false)
        );
        // Both: the chunks delimit the body, and the connection is not trusted again.
        assert_eq!(
            framing(&mut head("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n"), &get)
                .unwrap(),
            (Framing::Chunked, false)
        );
        assert_eq!(
            framing(&mut head("HTTP/1.1 200 OK\r\nContent-Length: 3, 3\r\n\r\n"), &get).unwrap().0,
            Framing::Length(3)
        );
        for bad in ["3, 4", "-1", "+3", "0x10", "", "99999999999999999999"] {
            let raw = format!("HTTP/1.1 200 OK\r\nContent-Length: {bad}\r\n\r\n");
            assert!(framing(&mut head(&raw), &get).is_err(), "{bad}");
        }
        assert!(
            !framing(&mut head("HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\n"), &get).unwrap().1
        );
        assert!(!framing(&mut head("HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n"), &get).unwrap().1);
        assert!(
            framing(&mut head("HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 1\r\n\r\n"), &get)
                .unwrap()
                .1
        );
    }

    #[test]
    fn bodies_decode_by_length_chunks_and_close() {
        let (body, _, rest) = decode_all(Framing::Length(5), b"helloGET /next").unwrap();
        assert_eq!(body, b"hello");
        assert_eq!(&rest[..], b"GET /next", "bytes past the body stay in the buffer");
        let (body, trailers, rest) =
            decode_all(Framing::Chunked, b"5;name=value\r\nhello\r\n1\r\n!\r\n0\r\nx-sum: 7\r\n\r\nleft").unwrap();
        assert_eq!(body, b"hello!");
        assert_eq!(trailers.unwrap()["x-sum"], "7");
        assert_eq!(&rest[..], b"left");
        let (body, trailers, _) = decode_all(Framing::Chunked, b"A\r\n0123456789\r\n0\r\n\r\n").unwrap();
        assert_eq!(body, b"0123456789");
        assert!(trailers.is_none());
        let (body, ..) = decode_all(Framing::UntilClose, b"all of it").unwrap();
        assert_eq!(body, b"all of it");
    }

    #[test]
    fn chunked_bodies_decode_the_same_byte_by_byte() {
        let raw = b"3\r\nabc\r\n10\r\n0123456789abcdef\r\n0\r\n\r\n";
        let mut decoder = BodyDecoder::new(Framing::Chunked);
        let mut buffer = BytesMut::new();
        let mut body = Vec::new();
        for &byte in raw {
            buffer.extend_from_slice(&[byte]);
            loop {
                match decoder.decode(&mut buffer).unwrap() {
                    Decoded::Data(data) => body.extend_from_slice(&data),
                    Decoded::NeedMore => break,
                    Decoded::End | Decoded::Trailers(_) => break,
                }
            }
        }
        assert!(decoder.is_done());
        assert_eq!(body, b"abc0123456789abcdef");
    }

    #[test]
    fn malformed_or_cut_bodies_are_errors() {
        for bad in [
            &b"x\r\n"[..],
            b"5\r\nhelloXX",
            b"5\nhello\r\n0\r\n\r\n",
            b"10000000000000000\r\n",
            b";ext\r\n",
            b"5\r\nhello\r\n0\r\nbad trailer\r\n\r\n",
        ] {
            assert!(decode_all(Framing::Chunked, bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
        let long_extension = format!("1;{}\r\n", "e".repeat(MAX_CHUNK_LINE));
        assert!(decode_all(Framing::Chunked, long_extension.as_bytes()).is_err());
        assert!(decode_all(Framing::Length(10), b"short").is_err(), "a length body cut short");
        assert!(decode_all(Framing::Chunked, b"5\r\nhel").is_err(), "a chunked body cut short");
    }
}
