use bytes::Bytes;
use http::Response;
use hyper::body::Frame;
use sluice_http::body::{self, BoxError};
use sluice_tests::Origin;

use super::{header, proxy_with, request};

const BODY: &str =
    r#"{"customer": "jane@example.com", "card": "4111 1111 1111 1111", "ssn": "123-45-6789", "order": "123456789012"}"#;
const MASKED: &str =
    r#"{"customer": "****@example.com", "card": "**** **** **** 1111", "ssn": "***-**-****", "order": "123456789012"}"#;

/// An origin sending `BODY` as `content-type` in chunks of `chunk` bytes, each its own write.
async fn chunked_origin(content_type: &'static str, chunk: usize) -> Origin {
    Origin::start(move |_request| {
        Box::pin(async move {
            let frames: Vec<Result<Frame<Bytes>, BoxError>> =
                BODY.as_bytes().chunks(chunk).map(|part| Ok(Frame::data(Bytes::copy_from_slice(part)))).collect();
            let mut response =
                Response::new(body::boxed(http_body_util::StreamBody::new(futures_util::stream::iter(frames))));
            response.headers_mut().insert("content-type", content_type.parse().expect("header"));
            response
        })
    })
    .await
}

fn routes(config: &str) -> String {
    format!("[[route]]\nupstream = \"app\"\nfilters = [{{ plugin = \"redact\", config = {config} }}]\n")
}

#[tokio::test]
async fn findings_split_across_chunks_are_masked_as_they_stream() {
    // 7-byte chunks cut the card number, the SSN and the address apart.
    let origin = chunked_origin("application/json", 7).await;
    let proxy = proxy_with(&origin, &["redact"], &routes("{}")).await;
    let response = request(&proxy, "GET", "/orders/1", &[("accept-encoding", "gzip")]).await;
    assert_eq!(response.status, 200);
    assert_eq!(response.text(), MASKED);
}

#[tokio::test]
async fn block_mode_withholds_a_response_with_findings() {
    let origin = chunked_origin("application/json", 16).await;
    let proxy = proxy_with(&origin, &["redact"], &routes("{ action = \"block\", detect = [\"card\"] }")).await;
    let response = request(&proxy, "GET", "/orders/1", &[("x-request-id", "rid-7")]).await;
    assert_eq!(response.status, 502);
    assert!(response.text().contains("sensitive data (request rid-7)"), "{}", response.text());
}

#[tokio::test]
async fn content_types_not_listed_pass_untouched() {
    let origin = chunked_origin("application/octet-stream", 7).await;
    let proxy = proxy_with(&origin, &["redact"], &routes("{}")).await;
    let response = request(&proxy, "GET", "/file", &[]).await;
    assert_eq!(response.text(), BODY);
    assert_eq!(header(&response, "content-type"), Some("application/octet-stream"));
}

#[tokio::test]
async fn custom_patterns_are_masked_too() {
    let origin = chunked_origin("text/plain", 5).await;
    let proxy = proxy_with(
        &origin,
        &["redact"],
        &routes(r###"{ detect = [], patterns = [{ name = "order-id", regex = "\\b\\d{12}\\b" }], mask = "#" }"###),
    )
    .await;
    let response = request(&proxy, "GET", "/", &[]).await;
    assert!(response.text().contains("\"order\": \"############\""), "{}", response.text());
    assert!(response.text().contains("4111 1111 1111 1111"), "cards are not in detect");
}
