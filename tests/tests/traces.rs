//! Distributed tracing through a running proxy: the W3C trace context from the client to the
//! origin, the spans a request makes (server, route match, filter calls, cache lookup, upstream
//! tries) as an OTLP collector in the test receives them, over HTTP/protobuf and gRPC, and
//! sampling.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use prost::Message;
use sluice_http::body;
use sluice_tests::{Origin, TestProxy, http1_client, plugin, send};
use tokio::sync::Notify;

/// The client's trace: sampled.
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

fn traceparent(trace_id: &str, sampled: bool) -> String {
    format!("00-{trace_id}-{CLIENT_SPAN}-{}", if sampled { "01" } else { "00" })
}

/// Spans as a collector received them, and a signal for each export.
#[derive(Default)]
struct Received {
    spans: Mutex<Vec<Span>>,
    /// `service.name` of each export's resource.
    services: Mutex<Vec<String>>,
    arrived: Notify,
}

impl Received {
    fn take(&self, request: ExportTraceServiceRequest) {
        for resource in request.resource_spans {
            if let Some(resource_attributes) = &resource.resource {
                for attribute in &resource_attributes.attributes {
                    if attribute.key == "service.name" {
                        self.services.lock().unwrap().push(value_text(attribute.value.as_ref()));
                    }
                }
            }
            for scope in resource.scope_spans {
                self.spans.lock().unwrap().extend(scope.spans);
            }
        }
        self.arrived.notify_waiters();
    }

    /// Waits (bounded, so that a broken exporter fails the test) until the spans of `trace_id`
    /// include its server span, and returns them.
    async fn trace(&self, trace_id: &str) -> Vec<Span> {
        let wanted = hex::decode(trace_id).unwrap();
        let wait = async {
            loop {
                let arrived = self.arrived.notified();
                let spans: Vec<Span> =
                    self.spans.lock().unwrap().iter().filter(|span| span.trace_id == wanted).cloned().collect();
                if spans.iter().any(|span| span.kind == SpanKind::Server as i32) {
                    return spans;
                }
                arrived.await;
            }
        };
        tokio::time::timeout(Duration::from_secs(30), wait).await.expect("the trace reached the collector")
    }

    fn all(&self) -> Vec<Span> {
        self.spans.lock().unwrap().clone()
    }
}

/// An OTLP/HTTP collector: `POST /v1/traces` with a protobuf body.
struct HttpCollector {
    addr: SocketAddr,
    received: Arc<Received>,
    task: tokio::task::JoinHandle<()>,
}

impl HttpCollector {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(Received::default());
        let shared = received.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let received = shared.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request: Request<hyper::body::Incoming>| {
                        let received = received.clone();
                        async move {
                            let protobuf = request
                                .headers()
                                .get("content-type")
                                .is_some_and(|value| value.as_bytes() == b"application/x-protobuf");
                            let path_ok = request.uri().path() == "/v1/traces";
                            let body = request.into_body().collect().await.unwrap().to_bytes();
                            let status = match ExportTraceServiceRequest::decode(body) {
                                Ok(export) if protobuf && path_ok => {
                                    received.take(export);
                                    StatusCode::OK
                                }
                                _ => StatusCode::BAD_REQUEST,
                            };
                            let answer = ExportTraceServiceResponse::default().encode_to_vec();
                            let mut response = Response::new(Full::new(Bytes::from(answer)));
                            *response.status_mut() = status;
                            response.headers_mut().insert("content-type", "application/x-protobuf".parse().unwrap());
                            Ok::<_, Infallible>(response)
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self { addr, received, task }
    }
}

impl Drop for HttpCollector {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An OTLP/gRPC collector: the `TraceService` of the OpenTelemetry protocol, served by tonic.
struct GrpcCollector {
    addr: SocketAddr,
    received: Arc<Received>,
    task: tokio::task::JoinHandle<()>,
}

struct GrpcTraces(Arc<Received>);

#[tonic::async_trait]
impl TraceService for GrpcTraces {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.0.take(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

impl GrpcCollector {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(Received::default());
        let service = TraceServiceServer::new(GrpcTraces(received.clone()));
        let task = tokio::spawn(async move {
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
            let _ = tonic::transport::Server::builder().add_service(service).serve_with_incoming(incoming).await;
        });
        Self { addr, received, task }
    }
}

impl Drop for GrpcCollector {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn value_text(value: Option<&opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    match value.and_then(|value| value.value.as_ref()) {
        Some(Value::StringValue(text)) => text.clone(),
        Some(Value::IntValue(number)) => number.to_string(),
        Some(Value::BoolValue(flag)) => flag.to_string(),
        Some(Value::DoubleValue(number)) => number.to_string(),
        other => format!("{other:?}"),
    }
}

fn attribute(span: &Span, key: &str) -> Option<String> {
    span.attributes.iter().find(|attribute| attribute.key == key).map(|attribute| value_text(attribute.value.as_ref()))
}

fn hex_id(bytes: &[u8]) -> String {
    hex::encode(bytes)
}

/// The trace context an origin saw, by the origin's name.
type Seen = Arc<Mutex<Vec<(&'static str, Option<String>)>>>;

/// An origin that notes each request's `traceparent` and answers `status`.
async fn noting_origin(name: &'static str, status: u16, seen: Seen) -> Origin {
    Origin::start(move |request| {
        let traceparent = request.headers().get("traceparent").and_then(|value| value.to_str().ok()).map(str::to_owned);
        seen.lock().unwrap().push((name, traceparent));
        Box::pin(async move {
            let mut response = Response::new(body::full(format!("{name}\n")));
            *response.status_mut() = StatusCode::from_u16(status).unwrap();
            response
        })
    })
    .await
}

fn tracing_section(endpoint: &str, protocol: &str, ratio: f64) -> String {
    format!(
        "[tracing]\nendpoint = \"{endpoint}\"\nprotocol = \"{protocol}\"\nsampling_ratio = {ratio}\n\
         service_name = \"edge-test\"\nexport_interval = \"50ms\"\n"
    )
}

async fn get_with(proxy: &TestProxy, path: &str, headers: &[(&str, &str)]) -> sluice_tests::Collected {
    let mut request = Request::get(proxy.url(path)).header("host", "app.test");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    send(&http1_client(), request.body(body::empty()).unwrap()).await
}

#[tokio::test]
async fn a_traced_request_makes_the_expected_tree_of_spans_over_otlp_http() {
    let collector = HttpCollector::start().await;
    let seen: Seen = Arc::default();
    // The first server fails with 503 and is retried on the second; the weights make the first
    // pick the failing one.
    let failing = noting_origin("failing", 503, seen.clone()).await;
    let healthy = noting_origin("healthy", 200, seen.clone()).await;
    let probe = plugin("tests/plugins/probe");
    let config = format!(
        r#"
[[listener]]
bind = "127.0.0.1:0"
[upstream.app]
servers = [{{ addr = "{failing}", weight = 100 }}, {{ addr = "{healthy}" }}]
retry = {{ retries = 1, on = ["503"] }}
[plugin.first]
source = "{probe}"
[plugin.second]
source = "{probe}"
[[route]]
name = "traced"
upstream = "app"
cache = {{}}
filters = [{{ plugin = "first", config = {{ tag = "one" }} }}, {{ plugin = "second", config = {{ tag = "two" }} }}]
{tracing}"#,
        failing = failing.addr,
        healthy = healthy.addr,
        probe = probe.display(),
        tracing = tracing_section(&format!("http://{}", collector.addr), "http/protobuf", 1.0),
    );
    let proxy = TestProxy::start(&config).await;
    let answer = get_with(&proxy, "/page", &[("traceparent", &traceparent(TRACE_ID, true))]).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.text(), "healthy\n");

    let spans = collector.received.trace(TRACE_ID).await;
    let by_id: HashMap<String, &Span> = spans.iter().map(|span| (hex_id(&span.span_id), span)).collect();
    let server: Vec<&Span> = spans.iter().filter(|span| span.kind == SpanKind::Server as i32).collect();
    assert_eq!(server.len(), 1, "one server span");
    let server = server[0];
    assert_eq!(hex_id(&server.parent_span_id), CLIENT_SPAN, "the server span continues the client's");
    assert_eq!(server.name, "GET traced");
    assert_eq!(attribute(server, "http.request.method").as_deref(), Some("GET"));
    assert_eq!(attribute(server, "url.path").as_deref(), Some("/page"));
    assert_eq!(attribute(server, "http.route").as_deref(), Some("traced"));
    assert_eq!(attribute(server, "http.response.status_code").as_deref(), Some("200"));
    assert_eq!(attribute(server, "server.address").as_deref(), Some("app.test"));
    assert_eq!(attribute(server, "sluice.cache.result").as_deref(), Some("miss"));
    assert!(attribute(server, "sluice.request_id").is_some());
    // Every other span is a child of the server span.
    let server_id = hex_id(&server.span_id);
    for span in spans.iter().filter(|span| span.span_id != server.span_id) {
        assert_eq!(hex_id(&span.parent_span_id), server_id, "{} is a child of the server span", span.name);
    }
    let named = |name: &str| spans.iter().filter(|span| span.name == name).collect::<Vec<_>>();
    assert_eq!(named("route match").len(), 1);
    let lookups = named("cache lookup");
    assert_eq!(lookups.len(), 1);
    assert_eq!(attribute(lookups[0], "sluice.cache.result").as_deref(), Some("miss"));

    // Each filter: its request-head and response-head calls, with plugin, digest and tenant.
    for filter in ["first", "second"] {
        let calls = named(&format!("filter {filter}"));
        let phases: Vec<String> = calls.iter().filter_map(|span| attribute(span, "sluice.filter.phase")).collect();
        assert!(phases.contains(&"request_headers".to_owned()) && phases.contains(&"response_headers".to_owned()));
        for call in &calls {
            assert_eq!(attribute(call, "sluice.plugin.name").as_deref(), Some(filter));
            assert!(attribute(call, "sluice.plugin.digest").is_some_and(|digest| digest.starts_with("sha256:")));
            assert_eq!(attribute(call, "sluice.tenant").as_deref(), Some("default"));
            assert_eq!(attribute(call, "sluice.filter.decision").as_deref(), Some("continue"));
        }
    }

    // Two upstream tries, siblings: the 503 and its retry, each sent upstream as the parent.
    let mut tries: Vec<&Span> = spans.iter().filter(|span| span.kind == SpanKind::Client as i32).collect();
    tries.sort_by_key(|span| span.start_time_unix_nano);
    assert_eq!(tries.len(), 2, "one try and one retry");
    assert_eq!(attribute(tries[0], "http.response.status_code").as_deref(), Some("503"));
    assert_eq!(attribute(tries[0], "http.request.resend_count"), None);
    assert_eq!(tries[0].status.as_ref().map(|status| status.code), Some(2), "the failed try is an error");
    assert_eq!(attribute(tries[1], "http.response.status_code").as_deref(), Some("200"));
    assert_eq!(attribute(tries[1], "http.request.resend_count").as_deref(), Some("1"));
    assert!(tries[0].end_time_unix_nano <= tries[1].start_time_unix_nano, "the retry follows the try");
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2);
    for ((origin, sent), attempt) in seen.iter().zip(&tries) {
        let sent = sent.as_deref().unwrap_or_else(|| panic!("{origin} got no traceparent"));
        let expected = format!("00-{TRACE_ID}-{}-01", hex_id(&attempt.span_id));
        assert_eq!(sent, expected, "{origin} saw its try's span as its parent");
        assert!(by_id.contains_key(&hex_id(&attempt.span_id)));
    }
    assert!(collector.received.services.lock().unwrap().iter().all(|service| service == "edge-test"));
}

#[tokio::test]
async fn spans_are_exported_over_otlp_grpc() {
    let collector = GrpcCollector::start().await;
    let seen: Seen = Arc::default();
    let origin = noting_origin("origin", 200, seen.clone()).await;
    let config = format!(
        "[[listener]]\nbind = \"127.0.0.1:0\"\n[upstream.app]\nservers = [{{ addr = \"{}\" }}]\n\
         [[route]]\nname = \"grpc-traced\"\nupstream = \"app\"\n{}",
        origin.addr,
        tracing_section(&format!("http://{}", collector.addr), "grpc", 1.0),
    );
    let proxy = TestProxy::start(&config).await;
    // No trace context from the client: a new trace starts here (the ratio is 1).
    let answer = get_with(&proxy, "/grpc", &[]).await;
    assert_eq!(answer.status, 200);
    let sent = seen.lock().unwrap()[0].1.clone().expect("the origin got a traceparent");
    let trace_id = sent.split('-').nth(1).unwrap().to_owned();
    let spans = collector.received.trace(&trace_id).await;
    let server = spans.iter().find(|span| span.kind == SpanKind::Server as i32).unwrap();
    assert!(server.parent_span_id.is_empty(), "a root span");
    assert_eq!(attribute(server, "http.route").as_deref(), Some("grpc-traced"));
    let attempt = spans.iter().find(|span| span.kind == SpanKind::Client as i32).unwrap();
    assert_eq!(sent, format!("00-{trace_id}-{}-01", hex_id(&attempt.span_id)));
    assert_eq!(hex_id(&attempt.parent_span_id), hex_id(&server.span_id));
}

#[tokio::test]
async fn at_a_sampling_ratio_of_zero_only_what_the_client_sampled_is_sent() {
    let collector = HttpCollector::start().await;
    let seen: Seen = Arc::default();
    let origin = noting_origin("origin", 200, seen.clone()).await;
    let config = format!(
        "[[listener]]\nbind = \"127.0.0.1:0\"\n[upstream.app]\nservers = [{{ addr = \"{}\" }}]\n\
         [[route]]\nupstream = \"app\"\n{}",
        origin.addr,
        tracing_section(&format!("http://{}/", collector.addr), "http/protobuf", 0.0),
    );
    let proxy = TestProxy::start(&config).await;
    let unsampled_trace = "11111111111111111111111111111111";
    for _ in 0..20 {
        assert_eq!(get_with(&proxy, "/", &[]).await.status, 200);
    }
    assert_eq!(get_with(&proxy, "/", &[("traceparent", &traceparent(unsampled_trace, false))]).await.status, 200);
    // The client's sampled trace is recorded whatever the ratio; spans leave in the order they
    // ended, so once its server span has arrived, any span of the requests before it would have.
    assert_eq!(get_with(&proxy, "/", &[("traceparent", &traceparent(TRACE_ID, true))]).await.status, 200);
    collector.received.trace(TRACE_ID).await;
    let wanted = hex::decode(TRACE_ID).unwrap();
    let others: Vec<String> =
        collector.received.all().iter().filter(|span| span.trace_id != wanted).map(|span| span.name.clone()).collect();
    assert!(others.is_empty(), "unsampled requests exported spans: {others:?}");

    // Unrecorded requests still pass a trace context on: the client's trace id and decision,
    // with a span id of Sluice's own.
    let seen = seen.lock().unwrap().clone();
    let unsampled = seen[20].1.as_deref().expect("traceparent sent on");
    assert!(unsampled.starts_with(&format!("00-{unsampled_trace}-")) && unsampled.ends_with("-00"), "{unsampled}");
    assert!(!unsampled.contains(CLIENT_SPAN));
    let fresh = seen[0].1.as_deref().expect("traceparent sent on");
    assert!(fresh.ends_with("-00"), "a trace the ratio did not sample says so: {fresh}");
}

#[tokio::test]
async fn without_tracing_the_trace_context_passes_through_untouched() {
    let seen: Seen = Arc::default();
    let origin = noting_origin("origin", 200, seen.clone()).await;
    let config = format!(
        "[[listener]]\nbind = \"127.0.0.1:0\"\n[upstream.app]\nservers = [{{ addr = \"{}\" }}]\n\
         [[route]]\nupstream = \"app\"\n",
        origin.addr
    );
    let proxy = TestProxy::start(&config).await;
    let sent = traceparent(TRACE_ID, true);
    assert_eq!(get_with(&proxy, "/", &[("traceparent", &sent), ("tracestate", "vendor=1")]).await.status, 200);
    assert_eq!(get_with(&proxy, "/", &[]).await.status, 200);
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen[0].1.as_deref(), Some(sent.as_str()));
    assert_eq!(seen[1].1, None, "no trace context is made up");
}

#[tokio::test]
async fn a_tracing_section_with_a_bad_value_is_refused_with_its_key() {
    for (section, key) in [
        ("[tracing]\nendpoint = \"collector:4318\"\n", "tracing.endpoint"),
        ("[tracing]\nendpoint = \"http://127.0.0.1:4318\"\nprotocol = \"thrift\"\n", "tracing.protocol"),
        ("[tracing]\nendpoint = \"http://127.0.0.1:4318\"\nsampling_ratio = 1.5\n", "tracing.sampling_ratio"),
    ] {
        let config = format!("[[listener]]\nbind = \"127.0.0.1:0\"\n{section}");
        let error = sluice::config::Snapshot::from_toml(&sluice_tests::services(), &config).unwrap_err().to_string();
        assert!(error.contains(key), "{error}");
    }
}

/// A request's `traceparent` and `x-trace-id`, as the origin got them.
type SentTrace = (Option<String>, Option<String>);

#[tokio::test]
async fn filters_in_rust_js_and_go_add_attributes_and_events_to_their_spans() {
    let collector = HttpCollector::start().await;
    // What reached the origin: each request's traceparent and x-trace-id.
    let seen: Arc<Mutex<Vec<SentTrace>>> = Arc::default();
    let noted = seen.clone();
    let origin = Origin::start(move |request| {
        let header = |name: &str| request.headers().get(name).and_then(|value| value.to_str().ok()).map(str::to_owned);
        noted.lock().unwrap().push((header("traceparent"), header("x-trace-id")));
        Box::pin(async { Response::new(body::full("ok\n")) })
    })
    .await;
    // A Rust and a Go filter on the request, the JavaScript one on the response body; the Go one
    // also makes a callout (to the same origin), which carries its span as the parent.
    let config = format!(
        r#"
[[listener]]
bind = "127.0.0.1:0"
[upstream.app]
servers = [{{ addr = "{origin}" }}]
[tenant.acme]
callouts = ["app"]
[plugin.rust]
source = "{rust}"
[plugin.go]
source = "{go}"
[plugin.js]
source = "{js}"
[[route]]
name = "languages"
tenant = "acme"
upstream = "app"
filters = [
  {{ plugin = "rust", config = {{ tag = "r", trace = true }} }},
  {{ plugin = "go", config = {{ tag = "g", trace = true, host_calls = "app" }} }},
  {{ plugin = "js", config = {{ secret = "a-secret-of-sixteen-bytes" }} }},
]
{tracing}"#,
        origin = origin.addr,
        rust = plugin("tests/plugins/probe").display(),
        go = plugin("tests/plugins/go-probe").display(),
        js = plugin("examples/js-sign-filter").display(),
        tracing = tracing_section(&format!("http://{}", collector.addr), "http/protobuf", 1.0),
    );
    let proxy = TestProxy::start(&config).await;
    let answer = get_with(&proxy, "/traced?q=1", &[("traceparent", &traceparent(TRACE_ID, true))]).await;
    // (The Go probe answers 203 from its response phase when it made its host calls.)
    assert_eq!(answer.status, 203, "{}", answer.text());
    assert!(answer.headers.contains_key("x-signature"), "the JavaScript filter signed the body");

    let spans = collector.received.trace(TRACE_ID).await;
    let call = |filter: &str, phase: &str| {
        spans
            .iter()
            .find(|span| {
                attribute(span, "sluice.filter.name").as_deref() == Some(filter)
                    && attribute(span, "sluice.filter.phase").as_deref() == Some(phase)
            })
            .unwrap_or_else(|| panic!("no {phase} span of {filter}"))
    };
    for (filter, tag) in [("rust", "r"), ("go", "g")] {
        let span = call(filter, "request_headers");
        assert_eq!(attribute(span, "probe.tag").as_deref(), Some(tag), "{filter}'s attribute");
        let event =
            span.events.iter().find(|event| event.name == "probe.seen").unwrap_or_else(|| panic!("{filter}'s event"));
        let path = event
            .attributes
            .iter()
            .find(|attribute| attribute.key == "path")
            .map(|attribute| value_text(attribute.value.as_ref()));
        assert_eq!(path.as_deref(), Some(if filter == "rust" { "/traced?q=1" } else { "/traced" }));
        assert!(attribute(span, "sluice.filter.guest_cpu_us").is_some(), "{filter}'s guest CPU time");
    }
    let signed = call("js", "response_body");
    assert_eq!(attribute(signed, "sign.header").as_deref(), Some("x-signature"));
    let event = signed.events.iter().find(|event| event.name == "signed").expect("the JavaScript filter's event");
    assert!(event.attributes.iter().any(|attribute| attribute.key == "bytes"));

    // The Go filter's callout went out under its call's span; the request itself under its try's.
    let go_call = hex_id(&call("go", "request_headers").span_id);
    let seen = seen.lock().unwrap().clone();
    let parents: Vec<String> = seen
        .iter()
        .map(|(sent, _)| sent.as_deref().expect("every request to the origin carries a traceparent").to_owned())
        .collect();
    assert!(
        seen.iter().any(|(_, trace_id)| trace_id.as_deref() == Some(TRACE_ID)),
        "the filters read the trace id: {seen:?}"
    );
    assert!(
        parents.contains(&format!("00-{TRACE_ID}-{go_call}-01")),
        "the callout's parent is the Go filter's span: {parents:?}"
    );
    let try_span = spans.iter().find(|span| span.kind == SpanKind::Client as i32).expect("the upstream try");
    assert!(parents.contains(&format!("00-{TRACE_ID}-{}-01", hex_id(&try_span.span_id))), "{parents:?}");
}
