//! What the origin and the client see of a forwarded request: header hygiene, forwarding
//! headers, request ids, upstream failures, HTTP/2 and WebSocket.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use http::{Request, Response, StatusCode, Version};
use hyper_util::rt::TokioIo;
use sluice_http::body;
use sluice_tests::{Origin, TestProxy, get, h2c_client, http1_client, send};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;

fn one_route(origin: &Origin, extra_server: &str) -> String {
    format!(
        "[server]\n{extra_server}\n[[listener]]\nbind = \"127.0.0.1:0\"\n\
         [upstream.app]\nservers = [{{ addr = \"{}\" }}]\n[[route]]\nupstream = \"app\"\n",
        origin.addr
    )
}

#[tokio::test]
async fn hop_by_hop_headers_are_removed_both_ways_and_backend_hidden() {
    let origin = Origin::echo("app").await;
    let proxy = TestProxy::start(&one_route(&origin, "")).await;
    let request = Request::get(proxy.url("/"))
        .header("host", "app.test")
        .header("connection", "keep-alive, x-client-private")
        .header("x-client-private", "secret")
        .header("keep-alive", "timeout=5")
        .header("te", "gzip")
        .header("proxy-connection", "keep-alive")
        .header("x-kept", "yes")
        .body(body::empty())
        .unwrap();
    let response = send(&http1_client(), request).await;
    let echo = response.echo();
    for gone in ["x-client-private", "keep-alive", "te", "proxy-connection", "connection"] {
        assert_eq!(echo.header(gone), None, "{gone} reached the origin");
    }
    assert_eq!(echo.header("x-kept").as_deref(), Some("yes"));
    assert_eq!(echo.header("host").as_deref(), Some("app.test"));
    assert_eq!(echo.header("via").as_deref(), Some("1.1 sluice"));

    for gone in ["server", "x-powered-by", "keep-alive", "x-origin-private"] {
        assert!(!response.headers.contains_key(gone), "{gone} reached the client");
    }
    assert_eq!(response.headers["via"], "1.1 sluice");
}

#[tokio::test]
async fn forwarding_headers_from_untrusted_peers_are_replaced() {
    let origin = Origin::echo("app").await;
    let proxy = TestProxy::start(&one_route(&origin, "trusted_proxies = [\"10.0.0.0/8\"]")).await;
    let request = Request::get(proxy.url("/"))
        .header("host", "app.test:8080")
        .header("x-forwarded-for", "203.0.113.66")
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-host", "forged.test")
        .header("forwarded", "for=203.0.113.66")
        .body(body::empty())
        .unwrap();
    let echo = send(&http1_client(), request).await.echo();
    assert_eq!(echo.header("x-forwarded-for").as_deref(), Some("127.0.0.1"));
    assert_eq!(echo.header("x-forwarded-proto").as_deref(), Some("http"));
    assert_eq!(echo.header("x-forwarded-host").as_deref(), Some("app.test:8080"));
    assert_eq!(echo.header("forwarded"), None);
}

#[tokio::test]
async fn forwarding_headers_from_trusted_peers_are_extended() {
    let origin = Origin::echo("app").await;
    let proxy = TestProxy::start(&one_route(&origin, "trusted_proxies = [\"127.0.0.0/8\"]")).await;
    let request = Request::get(proxy.url("/"))
        .header("host", "app.test")
        .header("x-forwarded-for", "203.0.113.66")
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-host", "public.test")
        .header("via", "1.1 edge")
        .body(body::empty())
        .unwrap();
    let echo = send(&http1_client(), request).await.echo();
    assert_eq!(echo.header("x-forwarded-for").as_deref(), Some("203.0.113.66, 127.0.0.1"));
    assert_eq!(echo.header("x-forwarded-proto").as_deref(), Some("https"));
    assert_eq!(echo.header("x-forwarded-host").as_deref(), Some("public.test"));
    assert_eq!(echo.header("via").as_deref(), Some("1.1 edge, 1.1 sluice"));
}

#[tokio::test]
async fn request_ids_are_propagated_or_generated() {
    let origin = Origin::echo("app").await;
    let proxy = TestProxy::start(&one_route(&origin, "")).await;

    let request =
        Request::get(proxy.url("/")).header("host", "a").header("x-request-id", "trace-1").body(body::empty()).unwrap();
    let response = send(&http1_client(), request).await;
    assert_eq!(response.headers["x-request-id"], "trace-1");
    assert_eq!(response.echo().header("x-request-id").as_deref(), Some("trace-1"));

    let response = get(&proxy, "a", "/").await;
    let generated = response.headers["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(generated.len(), 32);
    assert_eq!(response.echo().header("x-request-id"), Some(generated));
}

#[tokio::test]
async fn refused_connection_is_502_naming_the_request_id() {
    // A port that was free a moment ago and is closed now.
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
    let proxy = TestProxy::start(&format!(
        "[[listener]]\nbind = \"127.0.0.1:0\"\n[upstream.gone]\nservers = [{{ addr = \"{closed}\" }}]\n\
         [[route]]\nupstream = \"gone\"\n"
    ))
    .await;
    let response = get(&proxy, "a", "/").await;
    assert_eq!(response.status, StatusCode::BAD_GATEWAY);
    let id = response.headers["x-request-id"].to_str().unwrap();
    assert_eq!(response.text(), format!("502 Bad Gateway\nrequest id: {id}\n"));
}

#[tokio::test]
async fn silent_upstream_is_504() {
    // The origin takes the request and never answers; the route gives up after its timeout.
    let origin = Origin::start(|_request| Box::pin(futures_util::future::pending::<Response<_>>())).await;
    let proxy = TestProxy::start(&format!(
        "[[listener]]\nbind = \"127.0.0.1:0\"\n[upstream.slow]\nservers = [{{ addr = \"{}\" }}]\n\
         [[route]]\nupstream = \"slow\"\ntimeout = \"200ms\"\n",
        origin.addr
    ))
    .await;
    let response = get(&proxy, "a", "/").await;
    assert_eq!(response.status, StatusCode::GATEWAY_TIMEOUT);
    assert!(response.text().starts_with("504 Gateway Timeout\nrequest id: "), "{}", response.text());
}

#[tokio::test]
async fn h2c_clients_are_served_and_forwarded_as_http1() {
    let origin = Origin::echo("app").await;
    let proxy = TestProxy::start(&one_route(&origin, "")).await;
    let request = Request::get(proxy.url("/h2?x=1"))
        .version(Version::HTTP_2)
        .header("host", "app.test")
        .body(body::empty())
        .unwrap();
    let client = h2c_client();
    let response = send(&client, request).await;
    assert_eq!(response.status, 200);
    let echo = response.echo();
    assert_eq!(echo.uri(), "/h2?x=1");
    assert_eq!(echo.0["version"], "HTTP/1.1");
    assert!(echo.header("host").is_some());
}

#[tokio::test]
async fn websocket_upgrade_is_tunnelled() {
    let origin = Origin::start(|mut request| {
        Box::pin(async move {
            let key = request.headers().get("sec-websocket-key").cloned().expect("websocket key");
            let upgrade = hyper::upgrade::on(&mut request);
            tokio::spawn(async move {
                let upgraded = upgrade.await.expect("origin upgrade");
                let mut socket =
                    tokio_tungstenite::WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None)
                        .await;
                while let Some(Ok(message)) = socket.next().await {
                    if message.is_text() || message.is_binary() {
                        socket.send(message).await.expect("echo back");
                    }
                }
            });
            Response::builder()
                .status(StatusCode::SWITCHING_PROTOCOLS)
                .header("connection", "upgrade")
                .header("upgrade", "websocket")
                .header("sec-websocket-accept", derive_accept_key(key.as_bytes()))
                .body(body::empty())
                .unwrap()
        })
    })
    .await;
    let proxy = TestProxy::start(&one_route(&origin, "")).await;

    let (mut socket, response) =
        tokio_tungstenite::connect_async(format!("ws://{}/chat", proxy.addr)).await.expect("websocket through sluice");
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
    for text in ["hello", "through", "the proxy"] {
        socket.send(Message::text(text)).await.unwrap();
        let echoed =
            tokio::time::timeout(Duration::from_secs(10), socket.next()).await.expect("echo in time").unwrap().unwrap();
        assert_eq!(echoed, Message::text(text));
    }
    socket.close(None).await.unwrap();
}

#[tokio::test]
async fn admin_serves_metrics_and_health() {
    let origin = Origin::echo("app").await;
    let proxy = TestProxy::start(&format!(
        "[admin]\nbind = \"127.0.0.1:0\"\n[[listener]]\nname = \"public\"\nbind = \"127.0.0.1:0\"\n\
         [upstream.app]\nservers = [{{ addr = \"{}\" }}]\n[[route]]\nname = \"main\"\nupstream = \"app\"\n",
        origin.addr
    ))
    .await;
    assert_eq!(get(&proxy, "a", "/").await.status, 200);
    let admin = proxy.admin.expect("admin listener");
    let client = http1_client();
    let health = send(&client, Request::get(format!("http://{admin}/healthz")).body(body::empty()).unwrap()).await;
    assert_eq!(health.status, 200);
    // The access log and metrics are written when the response body ends, which may be a moment
    // after the client has read it; poll until the figure shows up.
    let metrics = loop {
        let metrics =
            send(&client, Request::get(format!("http://{admin}/metrics")).body(body::empty()).unwrap()).await.text();
        if metrics.contains("sluice_http_requests_total{route=\"main\",upstream=\"app\",code=\"200\"} 1") {
            break metrics;
        }
        tokio::task::yield_now().await;
    };
    assert!(metrics.contains("sluice_http_request_duration_seconds_bucket{"), "{metrics}");
    assert!(metrics.contains("sluice_connections_active{listener=\"public\"}"), "{metrics}");
    assert!(metrics.contains("sluice_connections_total{listener=\"public\"} "), "{metrics}");
}

#[tokio::test]
async fn upstream_connections_are_pooled() {
    let origin = Origin::echo("app").await;
    let proxy = TestProxy::start(&one_route(&origin, "")).await;
    // Fresh client connections each time: only the proxy's pool can explain a single origin
    // connection.
    for _ in 0..10 {
        assert_eq!(get(&proxy, "a", "/").await.status, 200);
    }
    assert_eq!(origin.connections_accepted(), 1);
}

#[tokio::test]
async fn connections_over_the_limit_wait_for_a_free_slot() {
    let origin = Origin::echo("app").await;
    let proxy = TestProxy::start(&one_route(&origin, "max_connections = 1")).await;
    let request = b"GET / HTTP/1.1\r\nhost: a\r\n\r\n";

    let mut first = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    first.write_all(request).await.unwrap();
    let mut buffer = [0u8; 4096];
    let read = first.read(&mut buffer).await.unwrap();
    assert!(buffer[..read].starts_with(b"HTTP/1.1 200 OK"));

    // The first connection is still open, so the second is not accepted and gets no answer.
    let mut second = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    second.write_all(request).await.unwrap();
    let waited = tokio::time::timeout(Duration::from_millis(300), second.read(&mut buffer)).await;
    assert!(waited.is_err(), "second connection was served while the first held the only slot");

    drop(first);
    let read = second.read(&mut buffer).await.unwrap();
    assert!(buffer[..read].starts_with(b"HTTP/1.1 200 OK"));
}
