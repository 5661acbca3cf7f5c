//! Response compression: gzip, brotli and zstd, negotiated from the client's `Accept-Encoding`
//! (q-values honoured, ties broken by the route's order of preference), for the content types a
//! route lists, above a minimum size, never on top of an existing `Content-Encoding`, streaming.

use std::sync::Arc;

use async_compression::Level;
use async_compression::tokio::bufread::{BrotliEncoder, GzipEncoder, ZstdEncoder};
use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Response, StatusCode};
use http_body_util::{BodyStream, StreamBody};
use hyper::body::Frame;
use tokio_util::io::{ReaderStream, StreamReader};

use crate::body::{self, ProxyBody};

/// A content coding Sluice can produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// `zstd`.
    Zstd,
    /// `br`.
    Brotli,
    /// `gzip`.
    Gzip,
}

impl Encoding {
    /// Its name in `Content-Encoding`.
    pub fn token(self) -> &'static str {
        match self {
            Self::Zstd => "zstd",
            Self::Brotli => "br",
            Self::Gzip => "gzip",
        }
    }

    /// Parses a name from config.
    pub fn from_token(token: &str) -> Option<Self> {
        [Self::Zstd, Self::Brotli, Self::Gzip].into_iter().find(|encoding| encoding.token() == token)
    }
}

/// A route's compression settings.
#[derive(Debug, Clone)]
pub struct CompressionSettings {
    /// Encodings offered, most preferred first.
    pub encodings: Vec<Encoding>,
    /// Bodies declared smaller than this are sent as they are.
    pub min_bytes: u64,
    /// Content types compressed (prefixes, lower case, before any `;`).
    pub content_types: Vec<String>,
    /// Compression level: speed against size.
    pub level: CompressionLevel,
}

/// How hard to compress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompressionLevel {
    /// Least CPU.
    Fastest,
    /// Each encoder's default.
    Default,
    /// Smallest output.
    Best,
}

impl CompressionLevel {
    fn level(self, encoding: Encoding) -> Level {
        match (self, encoding) {
            (Self::Fastest, _) => Level::Fastest,
            // Brotli's own default is its slowest quality (11): well under 1 MB/s, fit for
            // files compressed once, not for responses compressed as they stream. 4 is where
            // brotli still beats gzip on size at a speed in gzip's range.
            (Self::Default, Encoding::Brotli) => Level::Precise(4),
            (Self::Default, _) => Level::Default,
            (Self::Best, _) => Level::Best,
        }
    }
}

/// The encoding to use for a client whose `Accept-Encoding` is `accept`, among `offered` (in
/// preference order): the acceptable one with the highest q-value, ties going to preference.
/// `*` covers encodings not named; `q=0` refuses one.
pub fn negotiate(accept: &str, offered: &[Encoding]) -> Option<Encoding> {
    let mut wildcard = None;
    let mut named: Vec<(String, f32)> = Vec::new();
    for item in accept.split(',') {
        let mut parts = item.split(';');
        let token = parts.next().unwrap_or_default().trim().to_ascii_lowercase();
        if token.is_empty() {
            continue;
        }
        let quality = parts
            .filter_map(|parameter| parameter.trim().strip_prefix("q=").or_else(|| parameter.trim().strip_prefix("Q=")))
            .find_map(|value| value.trim().parse::<f32>().ok())
            .unwrap_or(1.0)
            .clamp(0.0, 1.0);
        if token == "*" {
            wildcard = Some(quality);
        } else {
            named.push((token, quality));
        }
    }
    let quality_of = |encoding: Encoding| {
        named
            .iter()
            .find(|(token, _)| token == encoding.token())
            .map(|(_, quality)| *quality)
            .or(wildcard)
            .unwrap_or(0.0)
    };
    let mut best: Option<(Encoding, f32)> = None;
    for encoding in offered {
        let quality = quality_of(*encoding);
        if quality > 0.0 && best.is_none_or(|(_, best_quality)| quality > best_quality) {
            best = Some((*encoding, quality));
        }
    }
    best.map(|(encoding, _)| encoding)
}

fn content_type_listed(headers: &HeaderMap, listed: &[String]) -> bool {
    let Some(content_type) = headers.get(header::CONTENT_TYPE).and_then(|value| value.to_str().ok()) else {
        return false;
    };
    let essence = content_type.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    listed.iter().any(|prefix| essence.starts_with(prefix.as_str()))
}

/// Whether a response could be compressed at all, whatever the client accepts.
fn compressible(method: &Method, status: StatusCode, headers: &HeaderMap, settings: &CompressionSettings) -> bool {
    let no_transform = headers
        .get_all(header::CACHE_CONTROL)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .any(|value| value.to_ascii_lowercase().contains("no-transform"));
    let declared = headers.get(header::CONTENT_LENGTH).and_then(|value| value.to_str().ok()?.parse::<u64>().ok());
    method != Method::HEAD
        && status.is_success()
        && status != StatusCode::NO_CONTENT
        && status != StatusCode::PARTIAL_CONTENT
        && !headers.contains_key(header::CONTENT_ENCODING)
        && !headers.contains_key(header::CONTENT_RANGE)
        && !no_transform
        && declared.is_none_or(|length| length >= settings.min_bytes)
        && content_type_listed(headers, &settings.content_types)
}

/// Compresses `response` for a client that sent `accept`, when the route's settings and the
/// response allow it.
pub fn compress(
    response: Response<ProxyBody>,
    settings: &Arc<CompressionSettings>,
    method: &Method,
    accept: Option<&HeaderValue>,
) -> Response<ProxyBody> {
    if !compressible(method, response.status(), response.headers(), settings) {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    // Whether it is compressed depends on Accept-Encoding: caches must key on it.
    parts.headers.append(header::VARY, HeaderValue::from_static("accept-encoding"));
    let Some(encoding) =
        accept.and_then(|value| value.to_str().ok()).and_then(|accept| negotiate(accept, &settings.encodings))
    else {
        return Response::from_parts(parts, body);
    };
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.remove(header::ACCEPT_RANGES);
    parts.headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static(encoding.token()));
    // The bytes differ from the origin's: a strong validator would now be wrong.
    if let Some(etag) = parts.headers.get(header::ETAG).and_then(|value| value.to_str().ok())
        && !etag.starts_with("W/")
        && let Ok(weak) = HeaderValue::try_from(format!("W/{etag}"))
    {
        parts.headers.insert(header::ETAG, weak);
    }
    let plain = StreamReader::new(
        BodyStream::new(body)
            .try_filter_map(|frame| async move { Ok(frame.into_data().ok()) })
            .map_err(std::io::Error::other),
    );
    let level = settings.level.level(encoding);
    let compressed = match encoding {
        Encoding::Gzip => encoded(GzipEncoder::with_quality(plain, level)),
        Encoding::Brotli => encoded(BrotliEncoder::with_quality(plain, level)),
        Encoding::Zstd => encoded(ZstdEncoder::with_quality(plain, level)),
    };
    Response::from_parts(parts, compressed)
}

fn encoded(reader: impl tokio::io::AsyncRead + Send + 'static) -> ProxyBody {
    let frames = ReaderStream::new(reader)
        .map(|chunk: std::io::Result<Bytes>| chunk.map(Frame::data).map_err(|err| -> body::BoxError { Box::new(err) }));
    body::boxed(StreamBody::new(frames))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [Encoding; 3] = [Encoding::Zstd, Encoding::Brotli, Encoding::Gzip];

    #[test]
    fn the_best_acceptable_encoding_wins() {
        assert_eq!(negotiate("gzip, deflate, br, zstd", &ALL), Some(Encoding::Zstd), "ties go to preference");
        assert_eq!(negotiate("gzip, br", &ALL), Some(Encoding::Brotli));
        assert_eq!(negotiate("br;q=0.5, gzip;q=1.0", &ALL), Some(Encoding::Gzip));
        assert_eq!(negotiate("gzip;q=0, *", &ALL), Some(Encoding::Zstd));
        assert_eq!(negotiate("*;q=0.1, gzip;q=0.5", &ALL), Some(Encoding::Gzip));
        assert_eq!(negotiate("identity", &ALL), None);
        assert_eq!(negotiate("*;q=0", &ALL), None);
        assert_eq!(negotiate("deflate", &ALL), None);
        assert_eq!(negotiate("GZIP", &[Encoding::Gzip]), Some(Encoding::Gzip));
        assert_eq!(negotiate("br", &[Encoding::Gzip]), None, "only what the route offers");
    }
}
