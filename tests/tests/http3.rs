//! HTTP/3 through a running proxy, with quinn and h3's own client: a GET that the route's cache
//! then answers, a POST whose body streams through, a filter's local response, Alt-Svc on the TCP
//! side of the listener, a certificate reload reaching new QUIC handshakes, shutdown letting an
//! in-flight request finish, a client past its stream limit held back without harm to others, a
//! body that disagrees with its Content-Length refused, the configuration's
//! refusals, and an independent client (aioquic, installed by `tests/run.sh`) served alike.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::{Buf, Bytes};
use http::{Request, StatusCode};
use sluice_tests::{Origin, TestProxy, plugin};

/// A self-signed certificate for `localhost`, written where a listener can load it.
struct Certificate {
    cert: PathBuf,
    key: PathBuf,
    der: rustls::pki_types::CertificateDer<'static>,
}

fn certificate(name: &str) -> Certificate {
    let dir = std::env::temp_dir().join(format!("sluice-h3-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let issued = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, issued.cert.pem()).unwrap();
    std::fs::write(&key, issued.signing_key.serialize_pem()).unwrap();
    Certificate { cert, key, der: issued.cert.der().clone() }
}

fn config(certificate: &Certificate, origin: &Origin, route: &str) -> String {
    format!(
        "[[listener]]\nbind = \"127.0.0.1:0\"\nhttp3 = true\n\
         tls = {{ certificates = [{{ cert = \"{}\", key = \"{}\" }}] }}\n\
         [upstream.app]\nservers = [{{ addr = \"{}\" }}]\n[[route]]\nupstream = \"app\"\n{route}",
        certificate.cert.display(),
        certificate.key.display(),
        origin.addr
    )
}

/// A QUIC client endpoint offering `h3`, trusting `trusted`.
fn quic_endpoint(trusted: &[&Certificate]) -> quinn::Endpoint {
    let mut roots = rustls::RootCertStore::empty();
    for certificate in trusted {
        roots.add(certificate.der.clone()).unwrap();
    }
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"h3".to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    endpoint
}

/// An HTTP/3 client connection to `addr` trusting `certificate`.
async fn client(addr: SocketAddr, certificate: &Certificate) -> h3::client::SendRequest<h3_quinn::OpenStreams, Bytes> {
    let endpoint = quic_endpoint(&[certificate]);
    let connection = endpoint.connect(addr, "localhost").unwrap().await.expect("a QUIC handshake with Sluice");
    let (mut driver, send) = h3::client::new(h3_quinn::Connection::new(connection)).await.unwrap();
    tokio::spawn(async move {
        let _ = std::future::poll_fn(|cx| driver.poll_close(cx)).await;
    });
    send
}

type ClientStream = h3::client::RequestStream<h3_quinn::BidiStream<Bytes>, Bytes>;

/// The rest of a response's body, as it comes.
async fn read_body(stream: &mut ClientStream) -> Vec<u8> {
    let mut body = Vec::new();
    while let Some(mut chunk) = stream.recv_data().await.unwrap() {
        body.extend_from_slice(&chunk.copy_to_bytes(chunk.remaining()));
    }
    body
}

/// Sends one request and collects its answer.
async fn exchange(
    client: &mut h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>,
    request: Request<()>,
    body: &[&'static [u8]],
) -> (StatusCode, http::HeaderMap, String) {
    let mut stream = client.send_request(request).await.unwrap();
    for chunk in body {
        stream.send_data(Bytes::from_static(chunk)).await.unwrap();
    }
    stream.finish().await.unwrap();
    let response = stream.recv_response().await.unwrap();
    let text = read_body(&mut stream).await;
    (response.status(), response.headers().clone(), String::from_utf8_lossy(&text).into_owned())
}

fn get(path: &str) -> Request<()> {
    Request::get(format!("https://localhost{path}")).body(()).unwrap()
}

#[tokio::test]
async fn requests_over_http3_take_the_same_path_as_over_tcp() {
    let origin = Origin::echo("h3-origin").await;
    let certificate = certificate("path");
    let proxy = TestProxy::start(&config(&certificate, &origin, "cache = { default_ttl = \"60s\" }\n")).await;
    let addr = proxy.server().listener_addrs()[0].1;
    let mut client = client(addr, &certificate).await;

    let (status, headers, text) = exchange(&mut client, get("/first"), &[]).await;
    assert_eq!(status, 200, "{text}");
    let echo = sluice_tests::Echo::parse(text.as_bytes());
    assert_eq!(echo.origin(), "h3-origin");
    assert_eq!(echo.header("x-forwarded-proto").as_deref(), Some("https"));
    assert!(headers["cache-status"].to_str().unwrap().contains("stored"), "{headers:?}");
    let (_, again, cached) = exchange(&mut client, get("/first"), &[]).await;
    assert!(again["cache-status"].to_str().unwrap().starts_with("sluice; hit"), "{again:?}");
    assert_eq!(cached, text, "the cache's copy");

    let post = Request::post("https://localhost/upload").body(()).unwrap();
    let (status, _, text) = exchange(&mut client, post, &[b"first half, ", b"second half"]).await;
    assert_eq!(status, 200);
    let echo = sluice_tests::Echo::parse(text.as_bytes());
    assert_eq!(echo.0["body_bytes"], 23, "the streamed body reached the origin whole: {text}");
}

#[tokio::test]
async fn the_tcp_side_advertises_http3_with_alt_svc() {
    let origin = Origin::echo("alt-svc").await;
    let certificate = certificate("alt-svc");
    let quiet = "[[route]]\npath_prefix = \"/quiet\"\nupstream = \"app\"\nalt_svc = false\n";
    let proxy = TestProxy::start(&format!("{}{quiet}", config(&certificate, &origin, ""))).await;
    let addr = proxy.server().listener_addrs()[0].1;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(certificate.der.clone()).unwrap();
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tls = Arc::new(tls);
    let ask = |path: &'static str| {
        let tls = tls.clone();
        async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
            let mut stream = tokio_rustls::TlsConnector::from(tls).connect(name, stream).await.unwrap();
            let request = format!("GET {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n");
            stream.write_all(request.as_bytes()).await.unwrap();
            let mut answer = Vec::new();
            let _ = stream.read_to_end(&mut answer).await;
            String::from_utf8_lossy(&answer).to_lowercase()
        }
    };
    let answer = ask("/").await;
    assert!(answer.contains(&format!("alt-svc: h3=\":{}\"; ma=86400", addr.port())), "{answer}");
    let quiet = ask("/quiet").await;
    assert!(
        quiet.starts_with("http/1.1 200") && !quiet.contains("\nalt-svc:"),
        "a route with alt_svc = false: {quiet}"
    );
}

#[tokio::test]
async fn filters_answer_http3_requests_as_they_answer_tcp_ones() {
    let origin = Origin::echo("h3-waf").await;
    let certificate = certificate("waf");
    let route =
        format!("filters = [{{ plugin = \"waf\" }}]\n[plugin.waf]\nsource = \"{}\"\n", plugin("plugins/waf").display());
    let proxy = TestProxy::start(&config(&certificate, &origin, &route)).await;
    let addr = proxy.server().listener_addrs()[0].1;
    let mut client = client(addr, &certificate).await;
    let (status, _, text) =
        exchange(&mut client, get("/item?id=1%27%20UNION%20SELECT%20password%20FROM%20users--"), &[]).await;
    assert_eq!(status, 403);
    assert!(text.contains("web application firewall"), "the filter's own answer: {text}");
    let (status, _, _) = exchange(&mut client, get("/item?id=1"), &[]).await;
    assert_eq!(status, 200, "the same connection goes on");
}

#[tokio::test]
async fn shutdown_lets_an_http3_request_in_flight_finish() {
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let arrived = Arc::new(tokio::sync::Notify::new());
    let (held, told) = (gate.clone(), arrived.clone());
    let origin = Origin::start(move |_request| {
        let (gate, arrived) = (held.clone(), told.clone());
        Box::pin(async move {
            arrived.notify_one();
            gate.acquire().await.unwrap().forget();
            http::Response::new(sluice_http::body::full("late answer"))
        })
    })
    .await;
    let certificate = certificate("shutdown");
    let mut proxy = TestProxy::start(&config(&certificate, &origin, "")).await;
    let addr = proxy.server().listener_addrs()[0].1;
    let mut client = client(addr, &certificate).await;
    let mut stream = client.send_request(get("/slow")).await.unwrap();
    stream.finish().await.unwrap();
    arrived.notified().await;

    let mut shutdown = Box::pin(proxy.take_server().shutdown_within(std::time::Duration::from_secs(60)));
    // One poll starts the drain (GOAWAY to the client); the request is still at the origin.
    assert!(tokio::time::timeout(std::time::Duration::ZERO, &mut shutdown).await.is_err());
    gate.add_permits(1);
    let response = stream.recv_response().await.expect("the request in flight is answered");
    assert_eq!(response.status(), 200);
    assert_eq!(read_body(&mut stream).await, b"late answer");
    assert_eq!(shutdown.await, sluice::server::ShutdownOutcome::Drained);
}

#[tokio::test]
async fn http3_needs_tls_and_is_refused_with_client_certificates() {
    let compile = |listener: &str| {
        sluice::config::Snapshot::from_toml(
            &sluice_tests::services(),
            &format!(
                "{listener}[upstream.app]\nservers = [{{ addr = \"127.0.0.1:9\" }}]\n[[route]]\nupstream = \"app\"\n"
            ),
        )
    };
    let plain = compile("[[listener]]\nbind = \"127.0.0.1:0\"\nhttp3 = true\n").expect_err("no TLS");
    assert_eq!(plain.key, "listener[0].http3");
    assert!(plain.to_string().contains("needs `tls`"), "{plain}");
    assert_eq!(plain.position.map(|(line, _)| line), Some(3), "the line of the key: {plain}");

    let certificate = certificate("config");
    let tls = format!(
        "tls = {{ certificates = [{{ cert = \"{0}\", key = \"{1}\" }}], client_ca = \"{0}\" }}",
        certificate.cert.display(),
        certificate.key.display()
    );
    let mutual =
        compile(&format!("[[listener]]\nbind = \"127.0.0.1:0\"\nhttp3 = true\n{tls}\n")).expect_err("client CA");
    assert_eq!(mutual.key, "listener[0].http3");
    let zero = compile(&format!(
        "[[listener]]\nbind = \"127.0.0.1:0\"\nhttp3 = {{ max_streams = 0 }}\n{}\n",
        tls.replace(&format!(", client_ca = \"{}\"", certificate.cert.display()), "")
    ))
    .expect_err("no streams");
    assert_eq!(zero.key, "listener[0].http3.max_streams");
    let off = compile(&format!(
        "[[listener]]\nbind = \"127.0.0.1:0\"\nhttp3 = false\n{}\n",
        tls.replace(&format!(", client_ca = \"{}\"", certificate.cert.display()), "")
    ));
    assert!(off.is_ok(), "http3 = false is the default");
}

/// The Python with aioquic that `tests/run.sh` installs (or `SLUICE_AIOQUIC_PYTHON`).
fn aioquic_python() -> PathBuf {
    std::env::var_os("SLUICE_AIOQUIC_PYTHON").map(PathBuf::from).unwrap_or_else(|| {
        let cache = std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache"));
        cache.join("sluice/aioquic/bin/python")
    })
}

#[tokio::test]
async fn an_independent_http3_client_is_served() {
    let origin = Origin::echo("aioquic").await;
    let certificate = certificate("aioquic");
    let proxy = TestProxy::start(&config(&certificate, &origin, "")).await;
    let addr = proxy.server().listener_addrs()[0].1;
    let python = aioquic_python();
    let output = tokio::process::Command::new(&python)
        .arg(sluice_tests::repo_root().join("tests/interop/h3_get.py"))
        .args(["127.0.0.1", &addr.port().to_string()])
        .arg(&certificate.cert)
        .arg("/from-aioquic")
        .output()
        .await
        .unwrap_or_else(|err| panic!("{} does not run ({err}): tests/run.sh installs aioquic", python.display()));
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let answer: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(answer["status"], 200, "{answer}");
    assert_eq!(answer["headers"]["via"], "1.1 sluice");
    let echo = sluice_tests::Echo::parse(answer["body"].as_str().unwrap().as_bytes());
    assert_eq!((echo.origin(), echo.uri()), ("aioquic", "/from-aioquic"));
}

/// The leaf certificate Sluice presents to a new QUIC connection, with `trusted` as roots.
async fn quic_leaf(addr: SocketAddr, trusted: &[&Certificate]) -> rustls::pki_types::CertificateDer<'static> {
    let endpoint = quic_endpoint(trusted);
    let connection = endpoint.connect(addr, "localhost").unwrap().await.expect("a QUIC handshake");
    let identity = connection.peer_identity().expect("the server's certificates");
    let chain = identity.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>().expect("rustls certificates");
    connection.close(0u32.into(), b"");
    chain[0].clone()
}

#[tokio::test]
async fn a_certificate_replaced_on_disk_reaches_new_quic_handshakes() {
    let origin = Origin::echo("h3-reload").await;
    let first = certificate("reload");
    let listener = format!(
        "[[listener]]\nbind = \"127.0.0.1:0\"\nhttp3 = true\n\
         tls = {{ certificates = [{{ cert = \"{}\", key = \"{}\" }}], reload_interval = \"100ms\" }}\n\
         [upstream.app]\nservers = [{{ addr = \"{}\" }}]\n[[route]]\nupstream = \"app\"\n",
        first.cert.display(),
        first.key.display(),
        origin.addr
    );
    let proxy = TestProxy::start(&listener).await;
    let addr = proxy.server().listener_addrs()[0].1;
    assert_eq!(quic_leaf(addr, &[&first]).await, first.der);
    // The same files, a new certificate: written aside and renamed in, as a deployment would.
    let second = {
        let issued = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        for (path, text) in [(&first.key, issued.signing_key.serialize_pem()), (&first.cert, issued.cert.pem())] {
            let aside = path.with_extension("new");
            std::fs::write(&aside, text).unwrap();
            std::fs::rename(&aside, path).unwrap();
        }
        Certificate { cert: first.cert.clone(), key: first.key.clone(), der: issued.cert.der().clone() }
    };
    // Handshake until the reloader has picked the new files up; the test runner bounds the wait.
    while quic_leaf(addr, &[&first, &second]).await != second.der {
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn a_client_past_its_stream_limit_waits_and_others_are_served() {
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let arrived = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let first_arrived = Arc::new(tokio::sync::Notify::new());
    let (held, seen, told) = (gate.clone(), arrived.clone(), first_arrived.clone());
    let origin = Origin::start(move |request| {
        let (gate, seen, told) = (held.clone(), seen.clone(), told.clone());
        Box::pin(async move {
            let path = request.uri().path().to_owned();
            seen.lock().unwrap().push(path.clone());
            if path == "/held" {
                told.notify_one();
                gate.acquire().await.unwrap().forget();
            }
            http::Response::new(sluice_http::body::full(path))
        })
    })
    .await;
    let certificate = certificate("streams");
    let listener = config(&certificate, &origin, "").replace("http3 = true", "http3 = { max_streams = 1 }");
    let proxy = TestProxy::start(&listener).await;
    let addr = proxy.server().listener_addrs()[0].1;

    let mut greedy = client(addr, &certificate).await;
    let mut held = greedy.send_request(get("/held")).await.unwrap();
    held.finish().await.unwrap();
    first_arrived.notified().await;
    // Its second stream cannot open until the first ends: QUIC gives it no credit for one.
    let mut second_client = greedy.clone();
    let second = tokio::spawn(async move { exchange(&mut second_client, get("/second"), &[]).await });

    let mut other = client(addr, &certificate).await;
    let (status, _, text) = exchange(&mut other, get("/other"), &[]).await;
    assert_eq!((status.as_u16(), text.as_str()), (200, "/other"), "another client is served meanwhile");
    assert_eq!(*arrived.lock().unwrap(), ["/held", "/other"], "the stream past the limit has not reached the origin");

    gate.add_permits(1);
    let response = held.recv_response().await.unwrap();
    assert_eq!(response.status(), 200);
    let (status, _, text) = second.await.unwrap();
    assert_eq!((status.as_u16(), text.as_str()), (200, "/second"), "served once a stream is free");
}

#[tokio::test]
async fn a_body_that_disagrees_with_its_content_length_is_refused() {
    let origin = Origin::echo("h3-length").await;
    let certificate = certificate("length");
    let proxy = TestProxy::start(&config(&certificate, &origin, "")).await;
    let addr = proxy.server().listener_addrs()[0].1;
    let mut client = client(addr, &certificate).await;
    for (declared, chunks) in [("3", &[&b"longer than three"[..]][..]), ("30", &[&b"short"[..]][..])] {
        let request = Request::post("https://localhost/upload").header("content-length", declared).body(()).unwrap();
        let (status, _, text) = exchange(&mut client, request, chunks).await;
        assert_eq!(status, 400, "Content-Length {declared}: {text}");
    }
    let request = Request::post("https://localhost/upload").header("content-length", "5").body(()).unwrap();
    let (status, _, text) = exchange(&mut client, request, &[b"exact"]).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(sluice_tests::Echo::parse(text.as_bytes()).0["body_bytes"], 5);
}
