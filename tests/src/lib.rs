//! The end-to-end harness: origins served in-process on port 0, a Sluice started from a TOML
//! literal on port 0, and clients that speak HTTP/1.1, h2c and raw bytes.
//!
//! Every test builds its own world (origin -> proxy -> client), so tests never share ports or
//! state and run in parallel.

pub mod architecture;
pub mod browser;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use sluice_http::body::{self, ProxyBody};
use std::path::{Path, PathBuf};

use sluice::config::{Services, Snapshot};
use sluice::server::Server;
use sluice_packages::{BuildOptions, build_plugin};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A boxed future answering one origin request.
pub type OriginFuture = Pin<Box<dyn Future<Output = Response<ProxyBody>> + Send>>;

/// The test client type: hyper-util's pooled client over plain TCP.
pub type TestClient = Client<HttpConnector, ProxyBody>;

/// An origin server running in the test process.
pub struct Origin {
    /// Where it listens.
    pub addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
    open: Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
}

/// Dropping an origin kills it: the listener closes and every open connection is cut, as when
/// a server process dies.
impl Drop for Origin {
    fn drop(&mut self) {
        self.task.abort();
        for connection in self.open.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).drain(..) {
            connection.abort();
        }
    }
}

impl Origin {
    /// Serves HTTP/1.1 and h2c on a free loopback port, answering with `handler`.
    pub async fn start<F>(handler: F) -> Self
    where
        F: Fn(Request<Incoming>) -> OriginFuture + Send + Sync + 'static,
    {
        Self::serve(None, handler).await
    }

    /// Serves HTTPS on a free loopback port with `tls` (whose ALPN picks h2 or HTTP/1.1).
    pub async fn start_tls<F>(tls: Arc<rustls::ServerConfig>, handler: F) -> Self
    where
        F: Fn(Request<Incoming>) -> OriginFuture + Send + Sync + 'static,
    {
        Self::serve(Some(tokio_rustls::TlsAcceptor::from(tls)), handler).await
    }

    /// Serves HTTP/1.1 and h2c on `addr` (another loopback address, or a port already chosen).
    pub async fn start_on<F>(addr: SocketAddr, handler: F) -> Self
    where
        F: Fn(Request<Incoming>) -> OriginFuture + Send + Sync + 'static,
    {
        let listener = TcpListener::bind(addr).await.expect("bind origin");
        Self::serve_on(listener, None, handler)
    }

    async fn serve<F>(tls: Option<tokio_rustls::TlsAcceptor>, handler: F) -> Self
    where
        F: Fn(Request<Incoming>) -> OriginFuture + Send + Sync + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind origin");
        Self::serve_on(listener, tls, handler)
    }

    fn serve_on<F>(listener: TcpListener, tls: Option<tokio_rustls::TlsAcceptor>, handler: F) -> Self
    where
        F: Fn(Request<Incoming>) -> OriginFuture + Send + Sync + 'static,
    {
        let addr = listener.local_addr().expect("origin address");
        let handler = Arc::new(handler);
        let connections = Arc::new(AtomicUsize::new(0));
        let accepted = connections.clone();
        let open: Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let tracked = open.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                accepted.fetch_add(1, Ordering::Relaxed);
                let handler = handler.clone();
                let tls = tls.clone();
                let connection = tokio::spawn(async move {
                    let service = service_fn(move |request| {
                        let answer = handler(request);
                        async move { Ok::<_, Infallible>(answer.await) }
                    });
                    let builder = auto::Builder::new(TokioExecutor::new());
                    match tls {
                        None => {
                            let _ = builder.serve_connection_with_upgrades(TokioIo::new(stream), service).await;
                        }
                        // A refused handshake just ends the connection, as a real server's would.
                        Some(tls) => {
                            if let Ok(stream) = tls.accept(stream).await {
                                let _ = builder.serve_connection_with_upgrades(TokioIo::new(stream), service).await;
                            }
                        }
                    }
                });
                let mut open = tracked.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                open.retain(|handle| !handle.is_finished());
                open.push(connection.abort_handle());
            }
        });
        Self { addr, connections, task, open }
    }

    /// How many connections it has accepted.
    pub fn connections_accepted(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }

    /// An origin that answers with a JSON description of the request it got (see [`Echo`]),
    /// naming itself `name` and adding `Server` and `X-Powered-By` headers to be hidden.
    pub async fn echo(name: &'static str) -> Self {
        Self::start(move |request| Box::pin(echo_answer(name, request))).await
    }

    /// An echo origin that also counts the requests it answers.
    pub async fn echo_counted(name: &'static str) -> (Self, Arc<AtomicUsize>) {
        let answered = Arc::new(AtomicUsize::new(0));
        let counter = answered.clone();
        let origin = Self::start(move |request| {
            counter.fetch_add(1, Ordering::Relaxed);
            Box::pin(echo_answer(name, request))
        })
        .await;
        (origin, answered)
    }

    /// An echo origin speaking HTTPS with `tls`.
    pub async fn echo_tls(name: &'static str, tls: Arc<rustls::ServerConfig>) -> Self {
        Self::start_tls(tls, move |request| Box::pin(echo_answer(name, request))).await
    }
}

async fn echo_answer(name: &'static str, request: Request<Incoming>) -> Response<ProxyBody> {
    let (parts, incoming) = request.into_parts();
    let body_bytes = incoming.collect().await.map(|body| body.to_bytes().len()).unwrap_or(0);
    let mut headers = serde_json::Map::new();
    for (key, value) in &parts.headers {
        let entry = headers.entry(key.as_str().to_owned()).or_insert_with(|| serde_json::Value::Array(Vec::new()));
        if let serde_json::Value::Array(values) = entry {
            values.push(String::from_utf8_lossy(value.as_bytes()).into_owned().into());
        }
    }
    let description = serde_json::json!({
        "origin": name,
        "method": parts.method.as_str(),
        "uri": parts.uri.to_string(),
        "version": format!("{:?}", parts.version),
        "headers": headers,
        "body_bytes": body_bytes,
    });
    Response::builder()
        .header("content-type", "application/json")
        .header("server", "test-origin/1.0")
        .header("x-powered-by", "tests")
        .header("keep-alive", "timeout=5")
        .header("connection", "x-origin-private")
        .header("x-origin-private", "hop-by-hop")
        .body(body::full(description.to_string()))
        .expect("valid echo response")
}

/// What an echo origin saw.
#[derive(Debug)]
pub struct Echo(pub serde_json::Value);

impl Echo {
    /// Parses an echo origin's answer.
    pub fn parse(body: &[u8]) -> Self {
        Self(
            serde_json::from_slice(body)
                .unwrap_or_else(|err| panic!("not an echo: {err}: {}", String::from_utf8_lossy(body))),
        )
    }
    /// The origin's name.
    pub fn origin(&self) -> &str {
        self.0["origin"].as_str().unwrap_or_default()
    }
    /// The request URI as the origin saw it (path and query).
    pub fn uri(&self) -> &str {
        self.0["uri"].as_str().unwrap_or_default()
    }
    /// All values of a request header as the origin saw them.
    pub fn header_values(&self, name: &str) -> Vec<String> {
        self.0["headers"][name]
            .as_array()
            .map(|values| values.iter().filter_map(|value| value.as_str().map(str::to_owned)).collect())
            .unwrap_or_default()
    }
    /// The single value of a request header, if present.
    pub fn header(&self, name: &str) -> Option<String> {
        let values = self.header_values(name);
        assert!(values.len() <= 1, "{name} sent {} times: {values:?}", values.len());
        values.into_iter().next()
    }
}

/// The `sluice` binary of this checkout, as users run it: built by cargo (once per test process;
/// a no-op when it is up to date, as after tests/run.sh's workspace build) into the target folder
/// and profile this test binary was built in. The binary belongs to another package than the
/// tests, so cargo does not build it for them.
pub fn sluice_binary() -> PathBuf {
    static BINARY: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BINARY
        .get_or_init(|| {
            // This test binary is TARGET/PROFILE/deps/NAME.
            let exe = std::env::current_exe().expect("the test binary's path");
            let profile_dir = exe.parent().and_then(Path::parent).expect("the test binary is in PROFILE/deps");
            let target_dir = profile_dir.parent().expect("PROFILE is in the target folder");
            let profile = match profile_dir.file_name().and_then(|name| name.to_str()) {
                Some("debug") | None => "dev",
                Some(other) => other,
            };
            // The same build as tests/run.sh's first step (the whole workspace, every target), so
            // that the features cargo unifies are the same and nothing is rebuilt.
            let mut cargo = std::process::Command::new(env!("CARGO"));
            // What the test runner sets for this test (its package's CARGO_* variables, the
            // runner's own) is not what the workspace was built with: cargo would take it for a
            // change and rebuild.
            for (name, _) in std::env::vars_os() {
                let name = name.to_string_lossy();
                let outer = ["CARGO_", "RUSTC", "RUSTFLAGS", "RUSTDOC", "NEXTEST", "__CARGO"]
                    .iter()
                    .any(|prefix| name.starts_with(prefix));
                if outer && name != "CARGO_HOME" {
                    cargo.env_remove(&*name);
                }
            }
            let status = cargo
                .args(["build", "--quiet", "--locked", "--workspace", "--all-targets", "--profile", profile])
                .arg("--target-dir")
                .arg(target_dir)
                .current_dir(repo_root())
                .status()
                .expect("run cargo to build the sluice binary");
            assert!(status.success(), "building the sluice binary failed");
            profile_dir.join("sluice")
        })
        .clone()
}

/// The repository's root folder.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ is inside the repository").to_owned()
}

/// Builds the filter crate at `relative` (from the repository root) with `sluice plugin build`'s
/// code, into a target folder shared by every test so that unchanged plugins are not rebuilt,
/// and returns the component's path.
pub fn plugin(relative: &str) -> PathBuf {
    let options = BuildOptions { target_dir: Some(repo_root().join("target/plugins")), quiet: true };
    build_plugin(&repo_root().join(relative), &options).unwrap_or_else(|err| panic!("building {relative}: {err}"))
}

/// The `sluice plugin new --lang LANGUAGE NAME` scaffold, created once under
/// target/test-scaffolds (a later run finds it there) and built with `sluice plugin build`'s code;
/// returns its component.
pub fn scaffold(language: sluice_packages::Language, name: &str) -> PathBuf {
    let parent = repo_root().join("target/test-scaffolds");
    let dir = parent.join(name);
    if !dir.exists() {
        // Created aside and renamed into place: test processes running in parallel never see half
        // a scaffold (the one that renames second keeps the first one's).
        let staging = parent.join(format!(".{name}.{}", std::process::id()));
        std::fs::create_dir_all(&staging).expect("create the scaffold's staging folder");
        sluice_packages::new_plugin_in(&staging, name, language).expect("scaffold");
        let _ = std::fs::rename(staging.join(name), &dir);
        let _ = std::fs::remove_dir_all(&staging);
    }
    let options = BuildOptions { target_dir: None, quiet: true };
    build_plugin(&dir, &options).unwrap_or_else(|err| panic!("building the {name} scaffold: {err}"))
}

/// Runs the `name` scaffold in `language` ([`scaffold`]) on a route as its template is written
/// ([`assert_gates_requests`]).
pub async fn assert_scaffold_gates_requests(language: sluice_packages::Language, name: &str) {
    assert_gates_requests(&scaffold(language, name), name).await;
}

/// The template for `language` built as it stands in crates/sluice-packages/templates.
pub fn template(language: sluice_packages::Language) -> PathBuf {
    let folder = match language {
        sluice_packages::Language::Rust => "rust",
        sluice_packages::Language::JavaScript => "js",
        sluice_packages::Language::Go => "go",
    };
    plugin(&format!("crates/sluice-packages/templates/{folder}"))
}

/// Runs `component`, a filter made from a template whose name is `name`, on a route: configured
/// with `required_header`, it refuses requests without that header (400, saying so) and marks
/// the responses of the others with its name in `x-filtered-by`.
pub async fn assert_gates_requests(component: &Path, name: &str) {
    let origin = Origin::echo("app").await;
    let proxy = TestProxy::start(&format!(
        "[[listener]]\nbind = \"127.0.0.1:0\"\n[upstream.app]\nservers = [{{ addr = \"{origin}\" }}]\n\
         [plugin.gate]\nsource = \"{component}\"\n[[route]]\nupstream = \"app\"\n\
         filters = [{{ plugin = \"gate\", config = {{ required_header = \"x-api-version\" }} }}]\n",
        origin = origin.addr,
        component = component.display(),
    ))
    .await;
    let refused = get(&proxy, "app.test", "/").await;
    assert_eq!(refused.status, 400);
    assert_eq!(refused.text(), "missing header x-api-version\n");
    let request = Request::get(proxy.url("/"))
        .header("host", "app.test")
        .header("x-api-version", "2")
        .body(body::empty())
        .expect("valid request");
    let passed = send(&http1_client(), request).await;
    assert_eq!(passed.status, 200);
    assert_eq!(passed.headers["x-filtered-by"], name);
}

/// The services every proxy and runtime of this test process is built on, made on first use, as
/// the CLI makes them once per process. A test that needs a proxy of its own makes its own
/// [`Services`].
pub fn services() -> Services {
    static SERVICES: std::sync::OnceLock<Services> = std::sync::OnceLock::new();
    SERVICES.get_or_init(|| Services::with_default_cache().expect("the filter runtime starts")).clone()
}

/// The filter runtime of [`services`].
pub fn filter_runtime() -> Arc<sluice_runtime::Runtime> {
    services().runtime
}

/// A Sluice started in-process from a TOML literal.
pub struct TestProxy {
    /// The first listener's address.
    pub addr: SocketAddr,
    /// Every listener's address, in configured order.
    pub addrs: Vec<SocketAddr>,
    /// The admin listener's address, if configured.
    pub admin: Option<SocketAddr>,
    server: Option<Server>,
}

impl TestProxy {
    /// Compiles `config` and starts serving it; listeners should bind port 0.
    pub async fn start(config: &str) -> Self {
        Self::start_with(&services(), config).await
    }

    /// [`TestProxy::start`] on `services` of its own: a second, independent Sluice instance in
    /// the same process (its own filter runtime, key-value store and block list).
    pub async fn start_with(services: &Services, config: &str) -> Self {
        init_test_logging();
        let snapshot =
            Snapshot::from_toml(services, config).unwrap_or_else(|err| panic!("test config refused: {err}\n{config}"));
        let server = Server::start(snapshot).await.expect("start sluice");
        let addrs: Vec<SocketAddr> = server.listener_addrs().iter().map(|(_, addr)| *addr).collect();
        Self { addr: addrs[0], addrs, admin: server.admin_addr(), server: Some(server) }
    }

    /// [`TestProxy::start`] serving on `workers` threads of its own, as `sluice run` does.
    pub async fn start_workers(config: &str, workers: usize) -> Self {
        init_test_logging();
        let snapshot = Snapshot::from_toml(&services(), config)
            .unwrap_or_else(|err| panic!("test config refused: {err}\n{config}"));
        let server = Server::start_workers(snapshot, workers).await.expect("start sluice");
        let addrs: Vec<SocketAddr> = server.listener_addrs().iter().map(|(_, addr)| *addr).collect();
        Self { addr: addrs[0], addrs, admin: server.admin_addr(), server: Some(server) }
    }

    /// The running server, borrowed.
    pub fn server(&self) -> &Server {
        self.server.as_ref().expect("server taken")
    }

    /// A handle on another listener of the same proxy (by configured position), for requests.
    pub fn listener(&self, index: usize) -> TestProxy {
        TestProxy { addr: self.addrs[index], addrs: self.addrs.clone(), admin: self.admin, server: None }
    }

    /// The running server, for shutdown and metrics.
    pub fn take_server(&mut self) -> Server {
        self.server.take().expect("server already taken")
    }

    /// `http://ADDR{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

/// Logs go to the test's captured output, at debug for Sluice, once per process.
pub fn init_test_logging() {
    let _ = tracing_subscriber::fmt().with_env_filter("sluice=debug").with_test_writer().try_init();
}

/// Log lines of this test process, as JSON, for assertions on what was logged.
#[derive(Clone, Default)]
struct CapturedLogs(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for CapturedLogs {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn captured() -> &'static CapturedLogs {
    static LOGS: std::sync::OnceLock<CapturedLogs> = std::sync::OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = CapturedLogs::default();
        let writer = logs.clone();
        tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_env_filter("sluice=info")
            .with_writer(move || writer.clone())
            .init();
        logs
    })
}

/// Captures this test process's logs (as JSON) from now on, for [`logged_failure`]. Call it before
/// anything else logs (before [`TestProxy::start`]).
pub fn capture_logs() {
    captured();
}

/// The filter failure logged for `request_id` (the JSON event), from logs captured with
/// [`capture_logs`].
pub fn logged_failure(request_id: &str) -> serde_json::Value {
    let text = String::from_utf8_lossy(&captured().0.lock().unwrap()).into_owned();
    text.lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .find(|event| event["request_id"] == request_id && event["error.kind"].is_string())
        .unwrap_or_else(|| panic!("no filter failure logged for {request_id}:\n{text}"))
}

/// Every event logged so far in this test process (as JSON), from logs captured with
/// [`capture_logs`].
pub fn logged_events() -> Vec<serde_json::Value> {
    let text = String::from_utf8_lossy(&captured().0.lock().unwrap()).into_owned();
    text.lines().filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok()).collect()
}

/// The access log line of `request_id`, once written: polls the captured logs (the line is
/// written when the response body has gone, which may be after the client has read it).
pub async fn access_log_line(request_id: &str) -> serde_json::Value {
    for _ in 0..500 {
        let found = logged_events()
            .into_iter()
            .find(|event| event["target"] == "sluice::access" && event["request_id"] == request_id);
        if let Some(line) = found {
            return line;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("no access log line for {request_id}");
}

/// The admin listener's answer to `GET path`, as text.
pub async fn admin_text(admin: SocketAddr, path: &str) -> String {
    let request = Request::get(format!("http://{admin}{path}")).body(body::empty()).expect("valid request");
    send(&http1_client(), request).await.text()
}

/// A real `redis-server` on a loopback port of its own, without persistence, killed when dropped.
pub struct RedisServer {
    /// Its port.
    pub port: u16,
    child: std::process::Child,
}

impl RedisServer {
    /// Starts one on a free port and waits until it answers.
    pub async fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        Self::start_on(port).await
    }

    /// Starts one on `port` (again, after [`RedisServer::stop`], to test recovery).
    pub async fn start_on(port: u16) -> Self {
        let child = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server is installed (tests/run.sh installs it)");
        let server = Self { port, child };
        for _ in 0..500 {
            if let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)).await {
                let _ = stream.write_all(b"PING\r\n").await;
                let mut answer = [0u8; 7];
                if stream.read_exact(&mut answer).await.is_ok() && &answer == b"+PONG\r\n" {
                    return server;
                }
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("redis-server did not answer on port {port}");
    }

    /// `redis://127.0.0.1:PORT/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Kills it (as a crash would) and waits until it is gone.
    pub fn stop(mut self) -> u16 {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.port
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An upstream that accepts connections and never answers (nor closes them) while it lives.
pub struct SilentUpstream {
    /// Where it listens.
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl SilentUpstream {
    /// Listens on a port of its own.
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                held.push(stream);
            }
        });
        Self { addr, task }
    }
}

impl Drop for SilentUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A client speaking HTTP/1.1 with keep-alive.
pub fn http1_client() -> Client<HttpConnector, ProxyBody> {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

/// A client speaking HTTP/2 over cleartext with prior knowledge.
pub fn h2c_client() -> Client<HttpConnector, ProxyBody> {
    Client::builder(TokioExecutor::new()).http2_only(true).build(HttpConnector::new())
}

/// A collected response.
#[derive(Debug)]
pub struct Collected {
    /// Status.
    pub status: StatusCode,
    /// Headers.
    pub headers: HeaderMap,
    /// The whole body.
    pub body: Bytes,
}

impl Collected {
    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    /// The body as an echo origin's description.
    pub fn echo(&self) -> Echo {
        Echo::parse(&self.body)
    }
}

/// Sends `request` and collects the whole response.
pub async fn send(client: &Client<HttpConnector, ProxyBody>, request: Request<ProxyBody>) -> Collected {
    let response = client.request(request).await.expect("request through sluice");
    let (parts, incoming) = response.into_parts();
    let body = incoming.collect().await.expect("response body").to_bytes();
    Collected { status: parts.status, headers: parts.headers, body }
}

/// GET `path` from `proxy` with the given Host header.
pub async fn get(proxy: &TestProxy, host: &str, path: &str) -> Collected {
    let request = Request::get(proxy.url(path)).header("host", host).body(body::empty()).expect("valid request");
    send(&http1_client(), request).await
}

/// `method` `path` from `proxy` with the given Host header and extra request headers.
pub async fn request_as(
    proxy: &TestProxy,
    host: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Collected {
    let mut request = Request::builder().method(method).uri(proxy.url(path)).header("host", host);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    send(&http1_client(), request.body(body::empty()).expect("valid request")).await
}

/// Writes `raw` to a new connection and reads until the server closes it.
pub async fn raw_exchange(addr: SocketAddr, raw: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(raw).await.expect("write request");
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer).await;
    String::from_utf8_lossy(&answer).into_owned()
}

/// A full-bytes request body.
pub fn full(bytes: impl Into<Bytes>) -> ProxyBody {
    body::full(bytes)
}
