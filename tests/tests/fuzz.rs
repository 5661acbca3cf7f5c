//! A fuzz target for the request path: raw HTTP/1.1 requests built from arbitrary bytes (the
//! method, the request target, then header lines and body as given), sent to a real Sluice
//! listener in front of an origin that checks every request reaching it. Whatever a client sends,
//! what reaches the origin has one Host without credentials, a normalised path (no dot-segments,
//! no encoded unreserved characters, upper-case escapes), a method a client may use, no `h2c`
//! upgrade and unambiguous framing; and the proxy keeps serving. It runs for a bounded time in
//! the suite (`SLUICE_FUZZ_SECONDS`, 10 by default) over its corpus in `__fuzz__/` (raw requests
//! as the target reads them) and fresh inputs.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use sluice_http::body;
use sluice_tests::{Origin, TestProxy, get};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const METHODS: [&str; 10] = ["GET", "POST", "HEAD", "PUT", "DELETE", "OPTIONS", "CONNECT", "TRACE", "PATCH", "G\tET"];

fn fuzz_time() -> Duration {
    let seconds = std::env::var("SLUICE_FUZZ_SECONDS").ok().and_then(|text| text.parse().ok()).unwrap_or(10);
    Duration::from_secs(seconds)
}

/// The raw request `input` stands for: its first byte picks the method, the bytes up to the first
/// newline are the request target, and the rest follows the Host header as given.
fn raw_request(input: &[u8]) -> Vec<u8> {
    let (method, rest) = input.split_first().map_or((0, &[][..]), |(first, rest)| (*first, rest));
    let (target, tail) = match rest.iter().position(|byte| *byte == b'\n') {
        Some(newline) => (&rest[..newline], &rest[newline + 1..]),
        None => (rest, &[][..]),
    };
    let mut raw = Vec::with_capacity(input.len() + 64);
    raw.extend_from_slice(METHODS[usize::from(method) % METHODS.len()].as_bytes());
    raw.push(b' ');
    raw.extend_from_slice(if target.is_empty() { b"/" } else { target });
    raw.extend_from_slice(b" HTTP/1.1\r\nhost: a\r\n");
    raw.extend_from_slice(tail);
    raw.extend_from_slice(b"\r\n\r\n");
    raw
}

/// What is wrong with a request that reached the origin, if anything.
fn violation(request: &Request<Incoming>) -> Option<String> {
    let path = request.uri().path();
    let headers = request.headers();
    let hosts = headers.get_all("host").iter().count();
    if hosts != 1 || headers.get("host").is_some_and(|host| host.as_bytes().contains(&b'@')) {
        return Some(format!("host headers: {:?}", headers.get_all("host").iter().collect::<Vec<_>>()));
    }
    if !path.starts_with('/') || path.split('/').any(|segment| segment == "." || segment == "..") {
        return Some(format!("path not normalised: {path}"));
    }
    let bytes = path.as_bytes();
    for (index, byte) in bytes.iter().enumerate() {
        if *byte != b'%' {
            continue;
        }
        let Some(hex) = bytes.get(index + 1..index + 3) else { return Some(format!("broken escape: {path}")) };
        let Ok(decoded) = u8::from_str_radix(std::str::from_utf8(hex).unwrap_or("zz"), 16) else {
            return Some(format!("broken escape: {path}"));
        };
        let unreserved = decoded.is_ascii_alphanumeric() || matches!(decoded, b'-' | b'.' | b'_' | b'~');
        if unreserved || hex.iter().any(u8::is_ascii_lowercase) {
            return Some(format!("escape not normalised: {path}"));
        }
    }
    if matches!(request.method().as_str(), "CONNECT" | "TRACE") {
        return Some(format!("method {}", request.method()));
    }
    let upgrade = headers.get("upgrade").map(|value| value.as_bytes().to_ascii_lowercase());
    if upgrade.is_some_and(|upgrade| upgrade.windows(3).any(|window| window == b"h2c")) {
        return Some("h2c upgrade".to_owned());
    }
    if headers.contains_key("transfer-encoding") && headers.contains_key("content-length") {
        return Some("both transfer-encoding and content-length".to_owned());
    }
    None
}

#[test]
fn fuzz_requests_reach_the_origin_only_normalised_and_unambiguous() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let violations: Arc<Mutex<Vec<String>>> = Arc::default();
    let (proxy, _origin) = runtime.block_on(async {
        let seen = violations.clone();
        let origin = Origin::start(move |request| {
            if let Some(violation) = violation(&request) {
                seen.lock().unwrap().push(violation);
            }
            Box::pin(async move {
                let _ = http_body_util::BodyExt::collect(request.into_body()).await;
                let mut response = Response::new(body::full("ok"));
                *response.status_mut() = StatusCode::OK;
                response
            })
        })
        .await;
        let proxy = TestProxy::start(&format!(
            "[server]\nmax_connections_per_client = 100000\n[[listener]]\nbind = \"127.0.0.1:0\"\n\
             [upstream.app]\nservers = [{{ addr = \"{}\" }}]\n[[route]]\nupstream = \"app\"\n",
            origin.addr
        ))
        .await;
        (proxy, origin)
    });
    let addr = proxy.addr;
    bolero::check!().with_test_time(fuzz_time()).with_max_len(16 * 1024).for_each(|input: &[u8]| {
        let raw = raw_request(input);
        runtime.block_on(async {
            let mut stream = TcpStream::connect(addr).await.expect("the proxy accepts");
            let _ = stream.write_all(&raw).await;
            let _ = stream.shutdown().await;
            let mut answer = Vec::new();
            let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
            assert!(read.is_ok(), "the proxy held a connection its client had finished with: {raw:?}");
        });
        let found = std::mem::take(&mut *violations.lock().unwrap());
        assert!(found.is_empty(), "{found:?} for {:?}", String::from_utf8_lossy(&raw));
    });
    runtime.block_on(async {
        assert_eq!(get(&proxy, "a", "/").await.status, StatusCode::OK, "the proxy still serves");
    });
}
