//! TLS termination: SNI, ALPN h2, resumption, certificate reload, protocol versions, mutual TLS,
//! the HTTPS redirect and HSTS; and TLS to upstreams: verification, SNI, ALPN h2 and client
//! certificates. Certificates are made at test time; no key is committed.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use http::Request;
use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, HandshakeKind, RootCertStore};
use sluice_http::body;
use sluice_tests::{Echo, Origin, TestProxy, get, plugin};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// A test CA issuing certificates into a fresh folder.
struct Pki {
    dir: PathBuf,
    issuer: Issuer<'static, KeyPair>,
    ca_der: CertificateDer<'static>,
}

/// A certificate written to disk.
struct Issued {
    cert: PathBuf,
    key: PathBuf,
    der: CertificateDer<'static>,
}

impl Pki {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("sluice-tls-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, "Sluice test CA");
        let ca = params.self_signed(&key).unwrap();
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        let ca_der = ca.der().clone();
        Self { dir, issuer: Issuer::new(params, key), ca_der }
    }

    fn ca_path(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// Issues a certificate for `names` (DNS names or IP addresses) as `stem.pem`/`stem.key`.
    fn issue(&self, stem: &str, names: &[&str]) -> Issued {
        let key = KeyPair::generate().unwrap();
        let params = CertificateParams::new(names.iter().map(|name| (*name).to_owned()).collect::<Vec<_>>()).unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let (cert_path, key_path) = (self.dir.join(format!("{stem}.pem")), self.dir.join(format!("{stem}.key")));
        // Written aside and renamed, as a deployment would, so a reload never reads half a file.
        write_atomically(&cert_path, cert.pem().as_bytes());
        write_atomically(&key_path, key.serialize_pem().as_bytes());
        Issued { cert: cert_path, key: key_path, der: cert.der().clone() }
    }

    /// A client configuration trusting this CA, offering `alpn`.
    fn client(&self, alpn: &[&[u8]], identity: Option<&Issued>) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca_der.clone()).unwrap();
        let builder = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
        let mut config = match identity {
            Some(issued) => {
                let chain = vec![issued.der.clone()];
                let key = PrivateKeyDer::from_pem_file_compat(&issued.key);
                builder.with_client_auth_cert(chain, key).unwrap()
            }
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = alpn.iter().map(|protocol| protocol.to_vec()).collect();
        Arc::new(config)
    }
}

impl Pki {
    /// An origin's TLS configuration serving `issued`, offering h2 and HTTP/1.1, and requiring
    /// a client certificate from `client_ca` when given.
    fn origin_config(&self, issued: &Issued, client_ca: Option<&Pki>) -> Arc<rustls::ServerConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap();
        let builder = match client_ca {
            Some(ca) => {
                let mut roots = RootCertStore::empty();
                roots.add(ca.ca_der.clone()).unwrap();
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                    .build()
                    .unwrap();
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let key = PrivateKeyDer::from_pem_file_compat(&issued.key);
        let mut config = builder.with_single_cert(vec![issued.der.clone()], key).unwrap();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Arc::new(config)
    }
}

trait FromPemFileCompat {
    fn from_pem_file_compat(path: &Path) -> Self;
}

impl FromPemFileCompat for PrivateKeyDer<'static> {
    fn from_pem_file_compat(path: &Path) -> Self {
        use rustls::pki_types::pem::PemObject;
        PrivateKeyDer::from_pem_file(path).unwrap()
    }
}

fn write_atomically(path: &Path, bytes: &[u8]) {
    let temporary = path.with_extension("tmp");
    std::fs::write(&temporary, bytes).unwrap();
    std::fs::rename(&temporary, path).unwrap();
}

async fn connect(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
    server_name: &str,
) -> std::io::Result<TlsStream<TcpStream>> {
    let stream = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(server_name.to_owned()).unwrap();
    TlsConnector::from(config).connect(name, stream).await
}

fn peer_leaf(stream: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    stream.get_ref().1.peer_certificates().unwrap()[0].clone().into_owned()
}

/// One HTTP/1.1 request over an established TLS stream; returns the raw answer.
async fn http1_over(stream: &mut TlsStream<TcpStream>, host: &str, path: &str) -> String {
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer).await;
    String::from_utf8_lossy(&answer).into_owned()
}

fn tls_listener(certificates: &[&Issued], extra: &str) -> String {
    let entries: Vec<String> = certificates
        .iter()
        .map(|issued| format!("{{ cert = \"{}\", key = \"{}\" }}", issued.cert.display(), issued.key.display()))
        .collect();
    format!("[[listener]]\nbind = \"127.0.0.1:0\"\ntls = {{ certificates = [{}]{extra} }}\n", entries.join(", "))
}

fn config(listener: &str, origin: &Origin) -> String {
    format!("{listener}[upstream.app]\nservers = [{{ addr = \"{}\" }}]\n[[route]]\nupstream = \"app\"\n", origin.addr)
}

#[tokio::test]
async fn sni_picks_the_certificate_and_falls_back_to_the_default() {
    let pki = Pki::new("sni");
    let default = pki.issue("default", &["a.test", "127.0.0.1"]);
    let wildcard = pki.issue("wildcard", &["*.b.test"]);
    let exact = pki.issue("exact", &["www.b.test"]);
    let origin = Origin::echo("app").await;
    let proxy = TestProxy::start(&config(&tls_listener(&[&default, &wildcard, &exact], ""), &origin)).await;
    let client = pki.client(&[b"http/1.1"], None);

    assert_eq!(peer_leaf(&connect(proxy.addr, client.clone(), "a.test").await.unwrap()), default.der);
    assert_eq!(peer_leaf(&connect(proxy.addr, client.clone(), "api.b.test").await.unwrap()), wildcard.der);
    // An exact name beats a wildcard that also covers it.
    assert_eq!(peer_leaf(&connect(proxy.addr, client.clone(), "www.b.test").await.unwrap()), exact.der);
    // No SNI at all (an IP address): the default certificate.
    let mut stream = connect(proxy.addr, client.clone(), "127.0.0.1").await.unwrap();
    assert_eq!(peer_leaf(&stream), default.der);

    let answer = http1_over(&mut stream, "a.test", "/").await;
    assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
    let body = &answer[answer.find("\r\n\r\n").unwrap() + 4..];
    // The origin hears that the client used HTTPS.
    assert_eq!(Echo::parse(body.as_bytes()).header("x-forwarded-proto").as_deref(), Some("https"));
}

#[tokio::test]
async fn alpn_selects_h2_and_resumption_skips_the_full_handshake() {
    let pki = Pki::new("alpn");
    let cert = pki.issue("site", &["site.test"]);
    let origin = Origin::echo("app").await;
    let proxy = TestProxy::start(&config(&tls_listener(&[&cert], ""), &origin)).await;
    let client = pki.client(&[b"h2", b"http/1.1"], None);

    let stream = connect(proxy.addr, client.clone(), "site.test").await.unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    assert_eq!(stream.get_ref().1.handshake_kind(), Some(HandshakeKind::Full));
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await.unwrap();
    tokio::spawn(connection);
    let request = Request::get("https://site.test/h2").body(body::empty()).unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.version(), http::Version::HTTP_2);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(Echo::parse(&body).0["version"], "HTTP/1.1");
    drop(sender);

    // The first connection left a session ticket with the client: the next handshake resumes.
    let resumed = connect(proxy.addr, client, "site.test").await.unwrap();
    assert_eq!(resumed.get_ref().1.handshake_kind(), Some(HandshakeKind::Resumed));
}

#[tokio::test]
async fn a_certificate_replaced_on_disk_is_served_on_the_next_handshake() {
    let pki = Pki::new("reload");
    let first = pki.issue("site", &["site.test"]);
    let origin = Origin::echo("app").await;
    let proxy = TestProxy::start(&config(&tls_listener(&[&first], ", reload_interval = \"100ms\""), &origin)).await;
    let client = pki.client(&[b"http/1.1"], None);
    let mut open = connect(proxy.addr, client.clone(), "site.test").await.unwrap();
    assert_eq!(peer_leaf(&open), first.der);

    let second = pki.issue("site", &["site.test"]);
    assert_ne!(first.der, second.der);
    // Handshake until the reloader has picked the new files up; the test runner bounds the wait.
    loop {
        let stream = connect(proxy.addr, client.clone(), "site.test").await.unwrap();
        if peer_leaf(&stream) == second.der {
            break;
        }
        tokio::task::yield_now().await;
    }
    // The connection opened before the swap still works.
    assert!(http1_over(&mut open, "site.test", "/").await.starts_with("HTTP/1.1 200 OK"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_1_0_and_1_1_are_refused() {
    let pki = Pki::new("versions");
    let cert = pki.issue("site", &["site.test"]);
    let origin = Origin::echo("app").await;
    let proxy = TestProxy::start(&config(&tls_listener(&[&cert], ""), &origin)).await;
    let port = proxy.addr.port().to_string();
    let s_client = |version: &str| {
        // `timeout` bounds a peer that waits for more than the test gives it.
        // The proxy runs on this runtime: wait for the peer off its worker thread.
        let output = tokio::task::block_in_place(|| {
            std::process::Command::new("timeout")
                .args([
                    "20",
                    "openssl",
                    "s_client",
                    "-connect",
                    &format!("127.0.0.1:{port}"),
                    "-servername",
                    "site.test",
                    version,
                ])
                .args(["-cipher", "DEFAULT@SECLEVEL=0"])
                .stdin(std::process::Stdio::null())
                .output()
        })
        .expect("openssl is installed (tests/run.sh installs it)");
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr),
        )
    };
    for old in ["-tls1", "-tls1_1"] {
        let (connected, text) = s_client(old);
        assert!(!connected, "{old} was accepted:\n{text}");
        // rustls answers an old ClientHello with an alert; no cipher is ever agreed.
        assert!(text.contains("alert") && text.contains("Cipher is (NONE)"), "{old}:\n{text}");
    }
    let (connected, text) = s_client("-tls1_2");
    assert!(connected && text.contains("Protocol  : TLSv1.2"), "{text}");
}

#[tokio::test]
async fn client_certificates_are_required_and_their_identity_reaches_filters() {
    let pki = Pki::new("mtls");
    let server = pki.issue("server", &["site.test"]);
    let client_cert = pki.issue("client", &["client.acme.test"]);
    let origin = Origin::echo("app").await;
    let listener = tls_listener(&[&server], &format!(", client_ca = \"{}\"", pki.ca_path().display()));
    let proxy = TestProxy::start(&format!(
        "{listener}[upstream.app]\nservers = [{{ addr = \"{}\" }}]\n[plugin.probe]\nsource = \"{}\"\n\
         [[route]]\nupstream = \"app\"\nfilters = [{{ plugin = \"probe\", config = {{ tag = \"p\" }} }}]\n",
        origin.addr,
        plugin("tests/plugins/probe").display()
    ))
    .await;

    let mut stream = connect(proxy.addr, pki.client(&[b"http/1.1"], Some(&client_cert)), "site.test").await.unwrap();
    let answer = http1_over(&mut stream, "site.test", "/").await;
    assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
    let body = &answer[answer.find("\r\n\r\n").unwrap() + 4..];
    assert_eq!(Echo::parse(body.as_bytes()).header("x-client-identity").as_deref(), Some("client.acme.test"));

    // Without a certificate the server refuses: the handshake or the first read fails.
    let refused = match connect(proxy.addr, pki.client(&[b"http/1.1"], None), "site.test").await {
        Err(_) => true,
        Ok(mut stream) => !http1_over(&mut stream, "site.test", "/").await.starts_with("HTTP/1.1"),
    };
    assert!(refused, "a client without a certificate was served");
}

#[tokio::test]
async fn plain_listener_redirects_to_https_and_tls_responses_carry_hsts() {
    let pki = Pki::new("redirect");
    let cert = pki.issue("site", &["site.test"]);
    let origin = Origin::echo("app").await;
    let listeners = format!(
        "{}[[listener]]\nname = \"plain\"\nbind = \"127.0.0.1:0\"\nredirect_to_https = 8443\n",
        tls_listener(&[&cert], ", hsts = { max_age = \"1d\", include_subdomains = true }")
    );
    let proxy = TestProxy::start(&config(&listeners, &origin)).await;

    let mut stream = connect(proxy.addr, pki.client(&[b"http/1.1"], None), "site.test").await.unwrap();
    let answer = http1_over(&mut stream, "site.test", "/").await;
    assert!(answer.contains("strict-transport-security: max-age=86400; includeSubDomains"), "{answer}");

    let plain = proxy.listener(1);
    let redirect = get(&plain, "site.test", "/login?next=%2F").await;
    assert_eq!(redirect.status, http::StatusCode::PERMANENT_REDIRECT);
    assert_eq!(redirect.headers["location"], "https://site.test:8443/login?next=%2F");
    assert!(!redirect.headers.contains_key("strict-transport-security"));
}

#[tokio::test]
async fn bad_certificate_files_are_refused_with_the_reason() {
    let pki = Pki::new("bad");
    let one = pki.issue("one", &["one.test"]);
    let two = pki.issue("two", &["two.test"]);
    let origin = Origin::echo("app").await;

    let mismatched = format!(
        "[[listener]]\nbind = \"127.0.0.1:0\"\ntls = {{ certificates = [{{ cert = \"{}\", key = \"{}\" }}] }}\n",
        one.cert.display(),
        two.key.display()
    );
    let error =
        sluice::config::Snapshot::from_toml(&sluice_tests::services(), &config(&mismatched, &origin)).unwrap_err();
    assert_eq!(error.key, "listener[0].tls.certificates[0]");
    assert!(error.message.contains("does not match the certificate"), "{error}");

    let missing = format!(
        "[[listener]]\nbind = \"127.0.0.1:0\"\ntls = {{ certificates = [{{ cert = \"{}\", key = \"{}\" }}] }}\n",
        pki.dir.join("nope.pem").display(),
        one.key.display()
    );
    let error = sluice::config::Snapshot::from_toml(&sluice_tests::services(), &config(&missing, &origin)).unwrap_err();
    assert!(error.message.contains("nope.pem") && error.message.contains("no such file"), "{error}");
}

/// A proxy in front of `origin`, whose upstream speaks TLS with the settings in `tls`.
async fn proxy_to_tls_origin(origin: &Origin, tls: &str) -> TestProxy {
    TestProxy::start(&format!(
        "[[listener]]\nbind = \"127.0.0.1:0\"\n[upstream.app]\nservers = [{{ addr = \"{}\" }}]\ntls = {{ {tls} }}\n\
         [[route]]\nupstream = \"app\"\n",
        origin.addr
    ))
    .await
}

#[tokio::test]
async fn upstream_tls_is_verified_and_negotiates_h2() {
    let pki = Pki::new("upstream");
    let cert = pki.issue("origin", &["origin.test"]);
    let origin = Origin::echo_tls("secure", pki.origin_config(&cert, None)).await;
    let ca = pki.ca_path();

    let h2 = proxy_to_tls_origin(&origin, &format!("ca = \"{}\", server_name = \"origin.test\"", ca.display())).await;
    let answer = get(&h2, "site.test", "/over-tls").await;
    assert_eq!(answer.status, http::StatusCode::OK, "{}", answer.text());
    assert_eq!(answer.echo().0["version"], "HTTP/2.0");
    assert_eq!(answer.echo().header("x-forwarded-proto").as_deref(), Some("http"));

    let http1 = proxy_to_tls_origin(
        &origin,
        &format!("ca = \"{}\", server_name = \"origin.test\", alpn = [\"http/1.1\"]", ca.display()),
    )
    .await;
    let answer = get(&http1, "site.test", "/over-tls").await;
    assert_eq!(answer.status, http::StatusCode::OK, "{}", answer.text());
    assert_eq!(answer.echo().0["version"], "HTTP/1.1");
}

#[tokio::test]
async fn an_upstream_certificate_that_does_not_verify_gets_502() {
    let pki = Pki::new("upstream-bad");
    let stranger = Pki::new("upstream-stranger");
    let cert = pki.issue("origin", &["origin.test"]);
    let origin = Origin::echo_tls("secure", pki.origin_config(&cert, None)).await;

    // Signed by a CA the proxy was not told to trust.
    let untrusted = proxy_to_tls_origin(
        &origin,
        &format!("ca = \"{}\", server_name = \"origin.test\"", stranger.ca_path().display()),
    )
    .await;
    assert_eq!(get(&untrusted, "site.test", "/").await.status, http::StatusCode::BAD_GATEWAY);
    // Trusted CA, but issued for another name.
    let wrong_name = proxy_to_tls_origin(
        &origin,
        &format!("ca = \"{}\", server_name = \"elsewhere.test\"", pki.ca_path().display()),
    )
    .await;
    assert_eq!(get(&wrong_name, "site.test", "/").await.status, http::StatusCode::BAD_GATEWAY);
    // Without `ca` the system's roots apply, and no public CA signed the test certificate.
    let system_roots = proxy_to_tls_origin(&origin, "server_name = \"origin.test\"").await;
    assert_eq!(get(&system_roots, "site.test", "/").await.status, http::StatusCode::BAD_GATEWAY);
}

#[tokio::test]
async fn upstream_client_certificates_are_presented() {
    let pki = Pki::new("upstream-mtls");
    let cert = pki.issue("origin", &["origin.test"]);
    let identity = pki.issue("proxy", &["proxy.test"]);
    let origin = Origin::echo_tls("secure", pki.origin_config(&cert, Some(&pki))).await;
    let trust = format!("ca = \"{}\", server_name = \"origin.test\"", pki.ca_path().display());

    let with_certificate = proxy_to_tls_origin(
        &origin,
        &format!("{trust}, client_cert = \"{}\", client_key = \"{}\"", identity.cert.display(), identity.key.display()),
    )
    .await;
    let answer = get(&with_certificate, "site.test", "/").await;
    assert_eq!(answer.status, http::StatusCode::OK, "{}", answer.text());

    let without = proxy_to_tls_origin(&origin, &trust).await;
    assert_eq!(get(&without, "site.test", "/").await.status, http::StatusCode::BAD_GATEWAY);
}

#[tokio::test]
async fn upstream_tls_settings_are_checked_with_their_key() {
    let pki = Pki::new("upstream-config");
    let identity = pki.issue("proxy", &["proxy.test"]);
    let upstream = |tls: &str| {
        format!(
            "[[listener]]\nbind = \"127.0.0.1:0\"\n[upstream.app]\nservers = [{{ addr = \"127.0.0.1:9\" }}]\n\
             tls = {{ {tls} }}\n[[route]]\nupstream = \"app\"\n"
        )
    };
    let error = sluice::config::Snapshot::from_toml(
        &sluice_tests::services(),
        &upstream(&format!("client_cert = \"{}\"", identity.cert.display())),
    )
    .unwrap_err();
    assert_eq!(error.key, "upstream.app.tls.client_key");
    let error =
        sluice::config::Snapshot::from_toml(&sluice_tests::services(), &upstream("alpn = [\"spdy/3\"]")).unwrap_err();
    assert_eq!(error.key, "upstream.app.tls.alpn[0]");
    assert!(error.message.contains("spdy/3"), "{error}");
    let error = sluice::config::Snapshot::from_toml(
        &sluice_tests::services(),
        &upstream(&format!("ca = \"{}\"", pki.dir.join("missing.pem").display())),
    )
    .unwrap_err();
    assert_eq!(error.key, "upstream.app.tls.ca");
    assert!(error.message.contains("missing.pem"), "{error}");
}
