//! Sluice's own HTTP/1.1 client against origins that answer byte for byte as written here:
//! body framing by length, chunks and close, interim answers, connection reuse and what the
//! client does with connections the server closed or answers it must refuse.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use sluice_tests::{TestProxy, get};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// An origin that answers every request on a connection with `answer(n)` (n counts requests on
/// that connection from 0): the bytes, and whether to close the connection after them; `None`
/// closes it without an answer.
struct RawOrigin {
    addr: std::net::SocketAddr,
    connections: Arc<AtomicUsize>,
    /// Told each time the proxy closes a connection to it.
    closed: Arc<tokio::sync::Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RawOrigin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RawOrigin {
    async fn start(answer: fn(usize) -> Option<(Vec<u8>, bool)>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let closed = Arc::new(tokio::sync::Notify::new());
        let (counted, told) = (connections.clone(), closed.clone());
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::Relaxed);
                let told = told.clone();
                tokio::spawn(async move {
                    if serve(stream, answer).await {
                        told.notify_one();
                    }
                });
            }
        });
        Self { addr, connections, closed, task }
    }

    fn config(&self) -> String {
        format!(
            "[[listener]]\nbind = \"127.0.0.1:0\"\n[upstream.app]\nservers = [{{ addr = \"{}\" }}]\n[[route]]\nupstream = \"app\"\n",
            self.addr
        )
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }
}

/// Reads request heads (these tests send no request bodies) and writes the scripted answers;
/// true when the proxy closed the connection.
async fn serve(mut stream: TcpStream, answer: fn(usize) -> Option<(Vec<u8>, bool)>) -> bool {
    let mut buffer = Vec::new();
    let mut served = 0;
    loop {
        while !buffer.windows(4).any(|window| window == b"\r\n\r\n") {
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) => return true,
                Err(_) => return false,
                Ok(read) => buffer.extend_from_slice(&chunk[..read]),
            }
        }
        let end = buffer.windows(4).position(|window| window == b"\r\n\r\n").unwrap() + 4;
        buffer.drain(..end);
        let Some((response, close)) = answer(served) else { return false };
        served += 1;
        if stream.write_all(&response).await.is_err() || close {
            return false;
        }
    }
}

#[tokio::test]
async fn chunked_bodies_with_extensions_and_trailers_arrive_whole_and_the_connection_is_reused() {
    let origin = RawOrigin::start(|_| {
        Some((
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n6;note=first\r\nhello \r\n5\r\nworld\r\n0\r\nx-checksum: 1\r\n\r\n"
                .to_vec(),
            false,
        ))
    })
    .await;
    let proxy = TestProxy::start(&origin.config()).await;
    for _ in 0..3 {
        let response = get(&proxy, "site", "/chunked").await;
        assert_eq!(response.status, 200);
        assert_eq!(response.text(), "hello world");
    }
    assert_eq!(origin.connections(), 1, "one pooled connection carries every request");
}

#[tokio::test]
async fn a_body_delimited_by_close_arrives_whole_and_its_connection_is_not_reused() {
    let origin =
        RawOrigin::start(|served| (served == 0).then(|| (b"HTTP/1.1 200 OK\r\n\r\nuntil the end".to_vec(), true)))
            .await;
    let proxy = TestProxy::start(&origin.config()).await;
    assert_eq!(get(&proxy, "site", "/a").await.text(), "until the end");
    assert_eq!(get(&proxy, "site", "/b").await.text(), "until the end");
    assert_eq!(origin.connections(), 2);
}

#[tokio::test]
async fn a_pooled_connection_the_server_closed_is_replaced() {
    // Each connection answers once with keep-alive, then the server closes it.
    let origin = RawOrigin::start(|served| {
        (served == 0).then(|| (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec(), false))
    })
    .await;
    let proxy = TestProxy::start(&origin.config()).await;
    for _ in 0..4 {
        let response = get(&proxy, "site", "/").await;
        assert_eq!((response.status.as_u16(), response.text().as_str()), (200, "ok"));
    }
    assert_eq!(origin.connections(), 4);
}

#[tokio::test]
async fn interim_answers_are_passed_over() {
    let origin = RawOrigin::start(|_| {
        Some((b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 102 Processing\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 4\r\n\r\nmade".to_vec(), false))
    })
    .await;
    let proxy = TestProxy::start(&origin.config()).await;
    let response = get(&proxy, "site", "/").await;
    assert_eq!(response.status, 201);
    assert_eq!(response.text(), "made");
}

#[tokio::test]
async fn answers_that_break_http_get_502_and_their_connection_is_dropped() {
    let origins = [
        RawOrigin::start(|_| Some((b"HTTP/1.1 200 OK\r\nContent-Length: 3, 4\r\n\r\nabcd".to_vec(), false))).await,
        RawOrigin::start(|_| Some((b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n".to_vec(), false))).await,
        RawOrigin::start(|_| Some((b"HTTP/1.1 200 OK\r\nBad Header\r\n\r\n".to_vec(), false))).await,
        RawOrigin::start(|_| Some((b"SMTP ready\r\n\r\n".to_vec(), false))).await,
        RawOrigin::start(|_| {
            let mut head = b"HTTP/1.1 200 OK\r\n".to_vec();
            head.extend(std::iter::repeat_n(b"x-filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n", 8000).flatten());
            Some((head, false))
        })
        .await,
    ];
    for origin in &origins {
        let proxy = TestProxy::start(&origin.config()).await;
        let response = get(&proxy, "site", "/").await;
        assert_eq!(response.status, 502, "{}", response.text());
    }
}

#[tokio::test]
async fn both_framings_at_once_are_read_by_chunks_and_the_connection_is_not_trusted_again() {
    let origin = RawOrigin::start(|_| {
        Some((
            b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n".to_vec(),
            false,
        ))
    })
    .await;
    let proxy = TestProxy::start(&origin.config()).await;
    assert_eq!(get(&proxy, "site", "/").await.text(), "ok");
    assert_eq!(get(&proxy, "site", "/").await.text(), "ok");
    assert_eq!(origin.connections(), 2);
}

#[tokio::test]
async fn a_body_cut_short_ends_the_response_as_failed() {
    let origin =
        RawOrigin::start(|_| Some((b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this".to_vec(), true))).await;
    let proxy = TestProxy::start(&origin.config()).await;
    let mut client = TcpStream::connect(proxy.addr).await.unwrap();
    client.write_all(b"GET / HTTP/1.1\r\nHost: site\r\n\r\n").await.unwrap();
    // The head promised 100 bytes; the proxy closes the client's connection without them
    // rather than pretend the body was complete (or hand the connection another request).
    let mut answer = Vec::new();
    let _ = client.read_to_end(&mut answer).await;
    let answer = String::from_utf8_lossy(&answer);
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, body)| body);
    assert!(body.len() < 100, "{answer}");
}

#[tokio::test]
async fn an_answer_before_the_body_is_all_sent_reaches_the_client() {
    // The origin reads the head only and refuses at once, leaving the body unread.
    let origin = RawOrigin::start(|_| {
        Some((b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 8\r\n\r\ntoo much".to_vec(), false))
    })
    .await;
    let proxy = TestProxy::start(&origin.config()).await;
    let mut client = TcpStream::connect(proxy.addr).await.unwrap();
    // A large declared body of which only a part is sent: the client waits for an answer.
    client.write_all(b"POST /upload HTTP/1.1\r\nHost: site\r\nContent-Length: 10000000\r\n\r\n").await.unwrap();
    client.write_all(&vec![b'x'; 64 * 1024]).await.unwrap();
    let mut answer = vec![0u8; 4096];
    let mut read = 0;
    while !String::from_utf8_lossy(&answer[..read]).contains("too much") {
        let more = client.read(&mut answer[read..]).await.unwrap();
        assert!(more > 0, "closed without the origin's answer: {}", String::from_utf8_lossy(&answer[..read]));
        read += more;
    }
    assert!(String::from_utf8_lossy(&answer[..read]).starts_with("HTTP/1.1 413"));
}

#[tokio::test]
async fn large_and_chunked_request_bodies_arrive_framed() {
    let origin = sluice_tests::Origin::echo("app").await;
    let config = format!(
        "[[listener]]\nbind = \"127.0.0.1:0\"\n[upstream.app]\nservers = [{{ addr = \"{}\" }}]\n[[route]]\nupstream = \"app\"\n",
        origin.addr
    );
    let proxy = TestProxy::start(&config).await;
    // Streamed in pieces of every size around the point where frames are written uncopied.
    let pieces: Vec<Result<http_body::Frame<bytes::Bytes>, std::convert::Infallible>> =
        [10usize, 16 * 1024, 16 * 1024 + 1, 100_000, 3]
            .iter()
            .enumerate()
            .map(|(index, &size)| Ok(http_body::Frame::data(bytes::Bytes::from(vec![b'a' + index as u8; size]))))
            .collect();
    let total: usize = [10usize, 16 * 1024, 16 * 1024 + 1, 100_000, 3].iter().sum();
    let streamed = http_body_util::StreamBody::new(futures_util::stream::iter(pieces));
    let request = http::Request::post(proxy.url("/upload"))
        .header("host", "site")
        .body(sluice_http::body::boxed(streamed))
        .unwrap();
    let response = sluice_tests::send(&sluice_tests::http1_client(), request).await;
    assert_eq!(response.status, 200);
    let echo = response.echo();
    assert_eq!(echo.0["body_bytes"].as_u64(), Some(total as u64), "{}", echo.0);
}

#[tokio::test]
async fn idle_pooled_connections_are_closed_once_they_idle_out() {
    let origin = RawOrigin::start(|_| Some((b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec(), false))).await;
    let config = origin.config().replace("[[route]]", "pool_idle_timeout = \"200ms\"\n[[route]]");
    let proxy = TestProxy::start(&config).await;
    let closed = origin.closed.notified();
    assert_eq!(get(&proxy, "site", "/").await.text(), "ok");
    // Nothing else reaches the proxy: its reaper closes the idle connection by itself.
    closed.await;
    assert_eq!(get(&proxy, "site", "/").await.text(), "ok");
    assert_eq!(origin.connections(), 2);
}
