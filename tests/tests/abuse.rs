//! What a hostile client can no longer do: eject healthy servers with broken request bodies, hold
//! connection slots without sending a request, take every slot from one address, smuggle
//! requests through an `h2c` upgrade, bypass a route with credentials in the Host or an encoded
//! path, echo headers back with TRACE, or leave without its request being logged.

use std::time::Duration;

use http::StatusCode;
use sluice_tests::{
    Origin, SilentUpstream, TestProxy, access_log_line, admin_text, capture_logs, get, logged_events, raw_exchange,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn proxy_with(server: &str, extra: &str, origin: &Origin) -> TestProxy {
    capture_logs();
    TestProxy::start(&format!(
        "[server]\n{server}\n[[listener]]\nbind = \"127.0.0.1:0\"\n[admin]\nbind = \"127.0.0.1:0\"\n\
         [upstream.app]\nservers = [{{ addr = \"{}\" }}]\n{extra}\n[[route]]\nupstream = \"app\"\n",
        origin.addr
    ))
    .await
}

fn status_line(answer: &str) -> &str {
    answer.lines().next().unwrap_or("")
}

/// The request id in a raw HTTP/1.1 answer.
fn raw_request_id(answer: &str) -> Option<String> {
    answer.lines().find_map(|line| line.strip_prefix("x-request-id: ")).map(|id| id.trim().to_owned())
}

#[tokio::test]
async fn broken_request_bodies_are_the_clients_fault_and_never_eject_a_server() {
    let origin = Origin::echo("app").await;
    let proxy = proxy_with("", "", &origin).await;
    let head = "POST /upload HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n";
    let extension = format!("5;{}\r\nhello\r\n0\r\n\r\n", "x".repeat(100_000));
    let broken: [&str; 3] = ["zz\r\nhello\r\n0\r\n\r\n", &extension, "5\nhello\n0\n\n"];
    // Four rounds of each: more than the failures in a row that eject a server.
    for _ in 0..4 {
        for body in broken {
            let answer = raw_exchange(proxy.addr, format!("{head}{body}").as_bytes()).await;
            assert!(!answer.starts_with("HTTP/1.1 502"), "{answer}");
            if let Some(id) = raw_request_id(&answer) {
                let line = access_log_line(&id).await;
                assert_eq!(line["error.side"], "client", "{line}");
                assert_eq!(status_line(&answer), "HTTP/1.1 400 Bad Request");
            }
        }
        // The client goes away mid-upload.
        let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
        stream.write_all(format!("{head}1000\r\npartial").as_bytes()).await.unwrap();
        drop(stream);
    }
    // Every access line for these requests puts the failure on the client's side.
    let uploads: Vec<serde_json::Value> = logged_events()
        .into_iter()
        .filter(|event| event["target"] == "sluice::access" && event["url.path"] == "/upload")
        .collect();
    assert!(uploads.iter().all(|line| line["error.side"] == "client"), "{uploads:?}");
    let upstreams = admin_text(proxy.admin.unwrap(), "/upstreams").await;
    assert!(upstreams.contains("\"state\":\"available\""), "{upstreams}");
    assert_eq!(get(&proxy, "a", "/").await.status, StatusCode::OK, "the server still serves");
}

#[tokio::test]
async fn a_connection_that_sends_nothing_holds_its_slot_only_for_the_header_read_timeout() {
    let origin = Origin::echo("app").await;
    let proxy = proxy_with("header_read_timeout = \"200ms\"\nidle_timeout = \"1h\"", "", &origin).await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    // Nothing is sent: the proxy closes the connection (read_to_end returns) long before the
    // hour of idle time a connection that has served a request gets.
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.expect("closed by the proxy");
    assert!(answer.is_empty() || !String::from_utf8_lossy(&answer).contains("200 OK"));
}

#[tokio::test]
async fn an_http2_header_block_that_never_ends_is_cut_off() {
    let origin = Origin::echo("app").await;
    let proxy = proxy_with("header_read_timeout = \"200ms\"\nidle_timeout = \"1h\"", "", &origin).await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    // An empty SETTINGS frame, then HEADERS on stream 1 without END_HEADERS: the header block
    // stays open, waiting for a CONTINUATION that never comes.
    hello.extend_from_slice(&[0, 0, 0, 0x4, 0, 0, 0, 0, 0]);
    let block = [0x82u8, 0x86, 0x84]; // :method GET, :scheme http, :path /
    hello.extend_from_slice(&[0, 0, block.len() as u8, 0x1, 0x0, 0, 0, 0, 1]);
    hello.extend_from_slice(&block);
    stream.write_all(&hello).await.unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer).await;
    // The connection ended; no request was ever served on it.
    assert_eq!(origin.connections_accepted(), 0);
}

#[tokio::test]
async fn one_client_address_holds_at_most_its_share_of_connections() {
    let origin = Origin::echo("app").await;
    let proxy = proxy_with("max_connections_per_client = 3", "", &origin).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
        stream.write_all(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n").await.unwrap();
        let mut first = [0u8; 12];
        stream.read_exact(&mut first).await.unwrap();
        assert_eq!(&first, b"HTTP/1.1 200");
        held.push(stream);
    }
    // A fourth is closed at once, unanswered.
    let answer = raw_exchange(proxy.addr, b"GET / HTTP/1.1\r\nhost: a\r\n\r\n").await;
    assert_eq!(answer, "");
    let metrics = admin_text(proxy.admin.unwrap(), "/metrics").await;
    assert!(metrics.contains("sluice_connections_refused_total{listener=\"127.0.0.1:0\"} 1"), "{metrics}");
    // Once one closes, the address may connect again.
    drop(held.pop());
    let mut answered = String::new();
    for _ in 0..100 {
        answered = raw_exchange(proxy.addr, b"GET / HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n").await;
        if !answered.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(status_line(&answered), "HTTP/1.1 200 OK");
}

#[tokio::test]
async fn an_h2c_upgrade_is_never_passed_to_the_origin() {
    let origin = Origin::echo("app").await;
    let proxy = proxy_with("", "", &origin).await;
    let answer = raw_exchange(
        proxy.addr,
        b"GET / HTTP/1.1\r\nhost: a\r\nconnection: Upgrade, HTTP2-Settings\r\nupgrade: h2c\r\n\
          http2-settings: AAMAAABkAAQAAP__\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status_line(&answer), "HTTP/1.1 200 OK", "{answer}");
    let body = &answer[answer.find("\r\n\r\n").unwrap() + 4..];
    let echo = sluice_tests::Echo::parse(body.as_bytes());
    assert_eq!(echo.header("upgrade"), None);
    assert_eq!(echo.header("http2-settings"), None);
}

#[tokio::test]
async fn requests_no_route_may_see_are_refused_and_encoded_paths_route_as_decoded() {
    let origin = Origin::echo("app").await;
    let admin_origin = Origin::echo("admin").await;
    let extra = format!(
        "[upstream.admin]\nservers = [{{ addr = \"{}\" }}]\n[[route]]\npath_prefix = \"/admin\"\nupstream = \"admin\"\n",
        admin_origin.addr
    );
    let proxy = proxy_with("", &extra, &origin).await;
    for raw in ["GET / HTTP/1.1\r\nhost: user:pass@a\r\n\r\n", "GET http://user@a/ HTTP/1.1\r\nhost: a\r\n\r\n"] {
        let answer = raw_exchange(proxy.addr, raw.as_bytes()).await;
        assert_eq!(status_line(&answer), "HTTP/1.1 400 Bad Request", "{raw:?} -> {answer}");
    }
    let answer = raw_exchange(proxy.addr, b"TRACE / HTTP/1.1\r\nhost: a\r\ncookie: secret\r\n\r\n").await;
    assert_eq!(status_line(&answer), "HTTP/1.1 405 Method Not Allowed", "{answer}");
    assert!(!answer.contains("secret"));

    // Encoded dot-segments and unreserved characters are the path they decode to: the route for
    // `/admin` takes them, and its upstream sees the same path.
    for path in ["/x/%2e%2e/admin", "/%61dmin", "/x/%2E%2E/%61dmin/users"] {
        let response = get(&proxy, "a", path).await;
        let echo = response.echo();
        assert_eq!(echo.origin(), "admin", "{path}");
        assert!(echo.uri().starts_with("/admin"), "{path} -> {}", echo.uri());
    }
}

#[tokio::test]
async fn a_request_whose_client_leaves_before_the_response_is_logged_once() {
    let origin = Origin::echo("app").await;
    let silent = SilentUpstream::start().await;
    let extra = format!(
        "[upstream.silent]\nservers = [{{ addr = \"{}\" }}]\n[[route]]\npath_prefix = \"/slow\"\nupstream = \"silent\"\n",
        silent.addr
    );
    // Trusted, so that the request keeps the id the test gives it.
    let proxy = proxy_with("trusted_proxies = [\"127.0.0.0/8\"]", &extra, &origin).await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream.write_all(b"GET /slow HTTP/1.1\r\nhost: a\r\nx-request-id: client-left-early\r\n\r\n").await.unwrap();
    // Wait until the proxy has sent the request on (the silent upstream holds it), then leave.
    for _ in 0..500 {
        let metrics = admin_text(proxy.admin.unwrap(), "/upstreams").await;
        if metrics.contains("\"in_flight\":1") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    drop(stream);
    let line = access_log_line("client-left-early").await;
    assert_eq!(line["http.response.status_code"], 499, "{line}");
    assert_eq!(line["error.kind"], "client_closed");
    assert_eq!(line["error.side"], "client");
    let lines = logged_events()
        .into_iter()
        .filter(|event| event["target"] == "sluice::access" && event["request_id"] == "client-left-early")
        .count();
    assert_eq!(lines, 1);
}

#[tokio::test]
async fn a_client_too_slow_with_its_body_gets_408_and_the_server_is_not_blamed() {
    let origin = Origin::echo("app").await;
    capture_logs();
    let proxy = TestProxy::start(&format!(
        "[server]\ntrusted_proxies = [\"127.0.0.0/8\"]\n[[listener]]\nbind = \"127.0.0.1:0\"\n[admin]\nbind = \"127.0.0.1:0\"\n\
         [upstream.app]\nservers = [{{ addr = \"{}\" }}]\n[[route]]\nupstream = \"app\"\ntimeout = \"300ms\"\n",
        origin.addr
    ))
    .await;
    // More stalled uploads than the failures in a row that eject a server.
    let mut stalled = Vec::new();
    for index in 0..8 {
        let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
        let head =
            format!("POST /upload HTTP/1.1\r\nhost: a\r\nx-request-id: slow-{index}\r\ncontent-length: 100\r\n\r\n");
        stream.write_all(head.as_bytes()).await.unwrap();
        stream.write_all(b"only ten b").await.unwrap();
        stalled.push(stream);
    }
    for (index, mut stream) in stalled.into_iter().enumerate() {
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer).await;
        let answer = String::from_utf8_lossy(&answer);
        assert_eq!(status_line(&answer), "HTTP/1.1 408 Request Timeout", "{answer}");
        let line = access_log_line(&format!("slow-{index}")).await;
        assert_eq!(line["error.kind"], "request_body_timeout", "{line}");
        assert_eq!(line["error.side"], "client");
    }
    let upstreams = admin_text(proxy.admin.unwrap(), "/upstreams").await;
    assert!(upstreams.contains("\"state\":\"available\""), "{upstreams}");
    assert_eq!(get(&proxy, "a", "/").await.status, StatusCode::OK);
}

#[tokio::test]
async fn a_later_request_head_on_a_kept_alive_connection_has_the_header_read_timeout_too() {
    let origin = Origin::echo("app").await;
    let proxy = proxy_with("header_read_timeout = \"200ms\"\nidle_timeout = \"1h\"", "", &origin).await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream.write_all(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n").await.unwrap();
    let mut first = [0u8; 12];
    stream.read_exact(&mut first).await.unwrap();
    assert_eq!(&first, b"HTTP/1.1 200");
    // Half of a second head, then nothing: cut off, not kept for the hour of idle time.
    stream.write_all(b"GET / HTTP/1.1\r\nhost: a\r\nx-slow: ").await.unwrap();
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).await.expect("closed by the proxy");
    assert_eq!(String::from_utf8_lossy(&rest).matches("HTTP/1.1 200").count(), 0);
}

#[tokio::test]
async fn a_client_that_stops_reading_its_response_is_cut_off_at_the_send_timeout() {
    capture_logs();
    let origin = Origin::start(|_request| {
        Box::pin(async { http::Response::new(sluice_http::body::full(vec![b'x'; 32 << 20])) })
    })
    .await;
    let proxy = TestProxy::start(&format!(
        "[server]\nsend_timeout = \"300ms\"\nidle_timeout = \"1h\"\ntrusted_proxies = [\"127.0.0.0/8\"]\n\
         [[listener]]\nbind = \"127.0.0.1:0\"\n[upstream.app]\nservers = [{{ addr = \"{}\" }}]\n\
         [[route]]\nupstream = \"app\"\n",
        origin.addr
    ))
    .await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream.write_all(b"GET /big HTTP/1.1\r\nhost: a\r\nx-request-id: never-reads\r\n\r\n").await.unwrap();
    // The client reads nothing: once the socket buffers are full the proxy waits on it, and cuts
    // it off at the send timeout, which ends (and logs) the request.
    let line = access_log_line("never-reads").await;
    assert_eq!(line["complete"], false, "{line}");
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer).await;
    assert!(answer.len() < 32 << 20, "the response was cut short");
}
