//! Response compression through a running proxy, each encoding decoded by its own reference
//! implementation (flate2, brotli, zstd crates).

use std::io::Read;

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::Frame;
use sluice_http::body::{self, BoxError};
use sluice_tests::{Collected, Origin, TestProxy, http1_client, send};

/// Text that compresses well, sent in chunks as an origin streaming a page would.
fn page() -> String {
    (0..400).map(|line| format!("<li>item {line}: the quick brown fox jumps over the lazy dog</li>\n")).collect()
}

/// An origin answering `/page` with `page()` (no Content-Length, streamed), `/small` with a short
/// text, `/png` with bytes labelled image/png, `/encoded` with a body it says is gzip already.
async fn origin() -> Origin {
    Origin::start(|request| {
        Box::pin(async move {
            let (content_type, chunks, extra): (&str, Vec<Bytes>, Option<(&str, &str)>) = match request.uri().path() {
                "/page" => (
                    "text/html; charset=utf-8",
                    page().into_bytes().chunks(1000).map(Bytes::copy_from_slice).collect(),
                    Some(("etag", "\"v1\"")),
                ),
                "/small" => ("text/plain", vec![Bytes::from_static(b"tiny")], None),
                "/png" => ("image/png", vec![Bytes::from(vec![7u8; 4096])], None),
                _ => ("text/plain", vec![Bytes::from(vec![b'a'; 4096])], Some(("content-encoding", "gzip"))),
            };
            let length: usize = chunks.iter().map(Bytes::len).sum();
            let frames: Vec<Result<Frame<Bytes>, BoxError>> =
                chunks.into_iter().map(|chunk| Ok(Frame::data(chunk))).collect();
            let mut response =
                Response::new(body::boxed(http_body_util::StreamBody::new(futures_util::stream::iter(frames))));
            response.headers_mut().insert("content-type", content_type.parse().unwrap());
            if request.uri().path() == "/small" {
                response.headers_mut().insert("content-length", length.to_string().parse().unwrap());
            }
            if let Some((name, value)) = extra {
                response.headers_mut().insert(name, value.parse().unwrap());
            }
            response
        })
    })
    .await
}

async fn proxy(origin: &Origin, compression: &str) -> TestProxy {
    TestProxy::start(&format!(
        "[[listener]]\nbind = \"127.0.0.1:0\"\n[upstream.app]\nservers = [{{ addr = \"{}\" }}]\n\
         [[route]]\nupstream = \"app\"\ncompression = {compression}\n",
        origin.addr
    ))
    .await
}

async fn fetch(proxy: &TestProxy, method: &str, path: &str, accept: Option<&str>) -> Collected {
    let mut request = Request::builder().method(method).uri(proxy.url(path)).header("host", "app.test");
    if let Some(accept) = accept {
        request = request.header("accept-encoding", accept);
    }
    send(&http1_client(), request.body(body::empty()).unwrap()).await
}

fn decode(encoding: &str, bytes: &[u8]) -> String {
    let mut out = String::new();
    match encoding {
        "gzip" => flate2::read::GzDecoder::new(bytes).read_to_string(&mut out).map(|_| ()).unwrap(),
        "br" => brotli::Decompressor::new(bytes, 4096).read_to_string(&mut out).map(|_| ()).unwrap(),
        "zstd" => out = String::from_utf8(zstd::decode_all(bytes).unwrap()).unwrap(),
        other => panic!("unexpected encoding {other}"),
    }
    out
}

fn header<'a>(response: &'a Collected, name: &str) -> Option<&'a str> {
    response.headers.get(name).map(|value| value.to_str().unwrap())
}

#[tokio::test]
async fn every_encoding_round_trips_and_is_chosen_by_q_values() {
    let origin = origin().await;
    let proxy = proxy(&origin, "{}").await;
    for (accept, expected) in [
        ("gzip", "gzip"),
        ("br", "br"),
        ("zstd", "zstd"),
        ("gzip, deflate, br, zstd", "zstd"),
        ("br;q=0.5, gzip;q=0.9", "gzip"),
        ("zstd;q=0, *;q=0.3", "br"),
    ] {
        let response = fetch(&proxy, "GET", "/page", Some(accept)).await;
        assert_eq!(response.status, 200);
        assert_eq!(header(&response, "content-encoding"), Some(expected), "Accept-Encoding: {accept}");
        assert_eq!(header(&response, "vary"), Some("accept-encoding"));
        assert_eq!(header(&response, "etag"), Some("W/\"v1\""), "a strong validator becomes weak");
        assert!(response.body.len() < page().len() / 4, "{expected}: {} bytes", response.body.len());
        assert_eq!(decode(expected, &response.body), page(), "{expected} round trip");
    }
}

#[tokio::test]
async fn responses_that_must_not_be_compressed_are_left_alone() {
    let origin = origin().await;
    let proxy = proxy(&origin, "{ encodings = [\"gzip\"], min_bytes = 100 }").await;
    let identity = fetch(&proxy, "GET", "/page", Some("identity")).await;
    assert_eq!(header(&identity, "content-encoding"), None);
    assert_eq!(identity.text(), page());
    assert_eq!(header(&identity, "vary"), Some("accept-encoding"), "it would have been compressed for others");
    let none = fetch(&proxy, "GET", "/page", None).await;
    assert_eq!(header(&none, "content-encoding"), None);
    let only_br = fetch(&proxy, "GET", "/page", Some("br")).await;
    assert_eq!(header(&only_br, "content-encoding"), None, "the route offers gzip only");
    let small = fetch(&proxy, "GET", "/small", Some("gzip")).await;
    assert_eq!((header(&small, "content-encoding"), small.text().as_str()), (None, "tiny"), "below min_bytes");
    let png = fetch(&proxy, "GET", "/png", Some("gzip")).await;
    assert_eq!(header(&png, "content-encoding"), None, "image/png is not listed");
    let encoded = fetch(&proxy, "GET", "/encoded", Some("gzip")).await;
    assert_eq!(header(&encoded, "content-encoding"), Some("gzip"));
    assert_eq!(encoded.body.len(), 4096, "never compressed twice");
    let head = fetch(&proxy, "HEAD", "/page", Some("gzip")).await;
    assert_eq!(header(&head, "content-encoding"), None);
}

#[tokio::test]
async fn bad_compression_settings_are_refused_with_their_key() {
    let error = sluice::config::Snapshot::from_toml(
        &sluice_tests::services(),
        "[[listener]]\nbind = \"127.0.0.1:0\"\n[upstream.app]\nservers = [{ addr = \"127.0.0.1:9\" }]\n\
         [[route]]\nupstream = \"app\"\ncompression = { encodings = [\"gzip\", \"lzma\"] }\n",
    )
    .expect_err("lzma is not offered");
    assert_eq!(error.key, "route[0].compression.encodings[1]");
}
