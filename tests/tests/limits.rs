//! Limits that protect the proxy from clients: header size and count, body size, slow headers,
//! idle connections, malformed requests.

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use sluice_http::body::BoxError;
use sluice_tests::{Origin, TestProxy, http1_client, raw_exchange, send};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn proxy_with(server: &str, route: &str) -> (TestProxy, Origin) {
    let origin = Origin::echo("app").await;
    let proxy = TestProxy::start(&format!(
        "[server]\n{server}\n[[listener]]\nbind = \"127.0.0.1:0\"\n\
         [upstream.app]\nservers = [{{ addr = \"{}\" }}]\n[[route]]\nupstream = \"app\"\n{route}\n",
        origin.addr
    ))
    .await;
    (proxy, origin)
}

fn status_line(answer: &str) -> &str {
    answer.lines().next().unwrap_or("")
}

#[tokio::test]
async fn oversized_header_block_is_431() {
    let (proxy, _origin) = proxy_with("max_header_bytes = 16384", "").await;
    let big = "a".repeat(20_000);
    let answer =
        raw_exchange(proxy.addr, format!("GET / HTTP/1.1\r\nhost: a\r\nx-big: {big}\r\n\r\n").as_bytes()).await;
    assert_eq!(status_line(&answer), "HTTP/1.1 431 Request Header Fields Too Large", "{answer}");

    let fits = "a".repeat(8_000);
    let answer = raw_exchange(
        proxy.addr,
        format!("GET / HTTP/1.1\r\nhost: a\r\nx-fits: {fits}\r\nconnection: close\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(status_line(&answer), "HTTP/1.1 200 OK");
}

#[tokio::test]
async fn too_many_headers_is_431() {
    let (proxy, _origin) = proxy_with("max_headers = 20", "").await;
    let many: String = (0..30).map(|n| format!("x-h{n}: {n}\r\n")).collect();
    let answer = raw_exchange(proxy.addr, format!("GET / HTTP/1.1\r\nhost: a\r\n{many}\r\n").as_bytes()).await;
    assert_eq!(status_line(&answer), "HTTP/1.1 431 Request Header Fields Too Large", "{answer}");
}

#[tokio::test]
async fn declared_oversized_body_is_413_before_the_upstream_sees_it() {
    let (proxy, _origin) = proxy_with("", "max_body_bytes = 1000").await;
    let request =
        Request::post(proxy.url("/upload")).header("host", "a").body(sluice_tests::full(vec![b'x'; 1001])).unwrap();
    let response = send(&http1_client(), request).await;
    assert_eq!(response.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(response.text().contains("request id: "));

    let request =
        Request::post(proxy.url("/upload")).header("host", "a").body(sluice_tests::full(vec![b'x'; 1000])).unwrap();
    let response = send(&http1_client(), request).await;
    assert_eq!(response.status, 200);
    assert_eq!(response.echo().0["body_bytes"], 1000);
}

#[tokio::test]
async fn streamed_oversized_body_is_413() {
    let (proxy, _origin) = proxy_with("max_body_bytes = 100000", "").await;
    // Chunked, so the size is only known once too much has arrived.
    let chunks = (0..20).map(|_| Ok::<_, BoxError>(Frame::data(Bytes::from(vec![b'x'; 10_000]))));
    let body = StreamBody::new(futures_util::stream::iter(chunks)).boxed_unsync();
    let request = Request::post(proxy.url("/upload")).header("host", "a").body(body).unwrap();
    let response = send(&http1_client(), request).await;
    assert_eq!(response.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", response.text());
}

#[tokio::test]
async fn slow_header_client_is_cut_off() {
    let (proxy, _origin) = proxy_with("header_read_timeout = \"200ms\"", "").await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    // Half a request head, then nothing: the proxy must close the connection, not wait forever.
    stream.write_all(b"GET / HTTP/1.1\r\nhost: a\r\nx-slow: ").await.unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.expect("connection closed by the proxy");
    let answer = String::from_utf8_lossy(&answer);
    assert!(!answer.contains("200 OK"), "{answer}");
}

#[tokio::test]
async fn idle_keep_alive_connection_is_closed() {
    let (proxy, _origin) = proxy_with("idle_timeout = \"200ms\"", "").await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream.write_all(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n").await.unwrap();
    // One response, then the connection idles until the proxy closes it: read_to_end returns.
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.expect("connection closed by the proxy");
    let answer = String::from_utf8_lossy(&answer);
    assert_eq!(answer.matches("HTTP/1.1 200 OK").count(), 1, "{answer}");
}

#[tokio::test]
async fn malformed_requests_get_400() {
    let (proxy, _origin) = proxy_with("", "").await;
    for raw in [
        "GET / HTTP/1.1\r\n\r\n",                         // no Host
        "GET / HTTP/1.1\r\nhost: a\r\nhost: b\r\n\r\n",   // two Hosts
        "GET /../etc/passwd HTTP/1.1\r\nhost: a\r\n\r\n", // climbs above the root
        "GET / HTTP/1.1\r\nhost: a b\r\n\r\n",            // not a host
        "NOT A REQUEST\r\n\r\n",                          // not HTTP
    ] {
        let answer = raw_exchange(proxy.addr, raw.as_bytes()).await;
        assert_eq!(status_line(&answer), "HTTP/1.1 400 Bad Request", "{raw:?} -> {answer}");
    }
}

#[tokio::test]
async fn connect_is_refused() {
    let (proxy, _origin) = proxy_with("", "").await;
    let answer = raw_exchange(proxy.addr, b"CONNECT example.com:443 HTTP/1.1\r\nhost: example.com:443\r\n\r\n").await;
    assert_eq!(status_line(&answer), "HTTP/1.1 405 Method Not Allowed", "{answer}");
}
