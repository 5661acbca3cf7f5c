//! A filter written in Go with the Go SDK (`examples/go-header-policy`), built by `sluice plugin
//! build` (`go build` for wasip1, the world embedded, the WASI adapter) and run through the
//! proxy; the `sluice plugin new --lang go` scaffold; every host interface called from Go
//! (`tests/plugins/go-probe`).

use sluice_tests::{Origin, TestProxy, get, http1_client, plugin, send};

fn policy_config(origin: &Origin, policy: &str) -> String {
    format!(
        "[[listener]]\nbind = \"127.0.0.1:0\"\n[upstream.app]\nservers = [{{ addr = \"{origin}\" }}]\n\
         [plugin.policy]\nsource = \"{component}\"\n\
         [[route]]\nname = \"guarded\"\nupstream = \"app\"\nfilters = [{{ plugin = \"policy\", config = {policy} }}]\n",
        origin = origin.addr,
        component = plugin("examples/go-header-policy").display(),
    )
}

const POLICY: &str = "{ require = [\"x-api-key\"], deny = [{ header = \"user-agent\", contains = \"SQLMap\" }], \
     max_value_bytes = 64, strip_request = [\"x-internal-user\"], strip_response = [\"server\", \"x-powered-by\"], \
     set_response = { x-frame-options = \"DENY\" } }";

fn request(proxy: &TestProxy, headers: &[(&str, &str)]) -> http::Request<sluice_http::body::ProxyBody> {
    let mut builder = http::Request::get(proxy.url("/resource")).header("host", "app.test");
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(sluice_http::body::empty()).unwrap()
}

#[tokio::test]
async fn a_go_filter_enforces_its_header_policy() {
    let origin = Origin::echo("app").await;
    let proxy = TestProxy::start(&policy_config(&origin, POLICY)).await;
    let client = http1_client();

    let passed = send(&client, request(&proxy, &[("x-api-key", "k1"), ("x-internal-user", "admin")])).await;
    assert_eq!(passed.status, 200);
    let echo = passed.echo();
    assert_eq!(echo.header("x-api-key").as_deref(), Some("k1"));
    assert_eq!(echo.header("x-internal-user"), None, "stripped before the upstream");
    assert_eq!(passed.headers["x-frame-options"], "DENY");
    assert!(!passed.headers.contains_key("server") && !passed.headers.contains_key("x-powered-by"));

    let missing = send(&client, request(&proxy, &[])).await;
    assert_eq!(missing.status, 400);
    assert_eq!(missing.text(), "missing required header x-api-key\n");
    assert!(!missing.headers["x-request-id"].is_empty());

    let denied = send(&client, request(&proxy, &[("x-api-key", "k1"), ("user-agent", "sqlmap/1.7")])).await;
    assert_eq!(denied.status, 403);
    assert_eq!(denied.text(), "header user-agent is not allowed here\n");

    let long = "v".repeat(65);
    let too_long = send(&client, request(&proxy, &[("x-api-key", "k1"), ("x-note", &long)])).await;
    assert_eq!(too_long.status, 431);
    assert_eq!(origin.connections_accepted(), 1, "refused requests never reach the origin");
}

#[tokio::test]
async fn a_config_the_go_filter_refuses_fails_the_start() {
    let origin = Origin::echo("app").await;
    for (policy, message) in [
        ("{ require = [\"bad header\"] }", "require: \"bad header\" is not a valid header name"),
        ("{ max_value_bytes = \"many\" }", "invalid config: json: cannot unmarshal string"),
    ] {
        let snapshot = sluice::config::Snapshot::from_toml(&sluice_tests::services(), &policy_config(&origin, policy))
            .expect("valid TOML");
        let error = sluice::server::Server::start(snapshot).await.expect_err("the filter refuses its config");
        assert!(error.to_string().contains(message), "{error}");
    }
}

#[tokio::test]
async fn a_scaffolded_go_filter_builds_and_runs() {
    sluice_tests::assert_scaffold_gates_requests(sluice_packages::Language::Go, "gate-go").await;
}

#[tokio::test]
async fn a_go_filter_reaches_every_host_function_through_the_sdk() {
    let origin = Origin::echo("app").await;
    let proxy = TestProxy::start(&format!(
        "[[listener]]\nbind = \"127.0.0.1:0\"\n[admin]\nbind = \"127.0.0.1:0\"\n\
         [upstream.app]\nservers = [{{ addr = \"{origin}\" }}]\n\
         [tenant.acme]\ncallouts = [\"app\"]\n\
         [plugin.probe]\nsource = \"{probe}\"\n\
         [[route]]\nname = \"go-host\"\ntenant = \"acme\"\nupstream = \"app\"\n\
         filters = [{{ plugin = \"probe\", config = {{ tag = \"g\", host_calls = \"app\" }} }}]\n",
        origin = origin.addr,
        probe = plugin("tests/plugins/go-probe").display(),
    ))
    .await;
    let before = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis();
    let request = http::Request::get(proxy.url("/probe?x=1"))
        .header("host", "app.test")
        .header("x-multi", "a")
        .header("x-multi", "b")
        .header("x-remove-me", "1")
        .body(sluice_http::body::empty())
        .unwrap();
    let response = send(&http1_client(), request).await;
    let after = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis();

    // The response handle: read, appended, removed, status changed; an invalid status refused.
    assert_eq!(response.status.as_u16(), 203);
    assert_eq!(response.headers["x-host-response-status"], "200");
    assert_eq!(response.headers["x-host-response-content-type"], "application/json");
    assert_eq!(response.headers["x-host-response-multi-count"], "2");
    assert_eq!(response.headers["x-host-set-status-invalid"], "refused");
    assert!(!response.headers.contains_key("x-powered-by"));

    // The request handle and the capability interfaces, as the filter reported them upstream.
    let echo = response.echo();
    let host = |name: &str| echo.header(&format!("x-host-{name}")).unwrap_or_else(|| panic!("x-host-{name} missing"));
    assert_eq!(host("method"), "GET");
    assert_eq!(host("authority"), "app.test");
    assert_eq!(host("path-with-query"), "/probe?x=1");
    assert_eq!(host("client-ip"), "127.0.0.1");
    assert_eq!(host("request-id"), response.headers["x-request-id"].to_str().unwrap());
    assert_eq!(host("route"), "go-host");
    assert_eq!(host("header-all"), "a|b");
    assert_eq!(host("header-absent"), "true");
    assert_eq!(host("headers"), "x-multi=a,x-multi=b");
    assert_eq!(host("set-header-invalid"), "refused");
    assert_eq!(host("set-path-invalid"), "refused");
    assert_eq!(echo.header("x-remove-me"), None);
    assert_eq!(
        host("kv"),
        "set=ok,get=v1/true,cas=true,cas-stale=false,cas-absent=true,delete=true,get-deleted=false,\
         increment=5,increment-text=true,bucket=true/0/true,bucket-empty=false/true,bucket-invalid=true"
    );
    assert_eq!(host("random-len"), "24");
    assert_eq!(host("random-u64-differ"), "true");
    let now: u128 = host("now-ms").parse().unwrap();
    assert!((before..=after).contains(&now), "the host's clock: {before} <= {now} <= {after}");
    assert_eq!(host("monotonic"), "true");
    assert!(host("callout").starts_with("200 "), "{}", host("callout"));
    assert_eq!(host("callout-content-type"), "application/json");
    assert!(host("callout-unknown").starts_with("callout not-granted: "), "{}", host("callout-unknown"));

    let admin = proxy.admin.unwrap();
    let metrics = send(
        &http1_client(),
        http::Request::get(format!("http://{admin}/metrics")).body(sluice_http::body::empty()).unwrap(),
    )
    .await
    .text();
    for expected in ["name=\"probe_gauge\",kind=\"go\"} -7", "name=\"probe_seconds\""] {
        assert!(metrics.contains(expected), "{expected} in\n{metrics}");
    }
}

#[tokio::test]
async fn a_warm_go_instance_serves_thousands_of_large_calls_within_its_memory() {
    use std::sync::Arc;

    use sluice_runtime::{
        BodyOutcome, CallContext, FailurePolicy, FilterPool, FilterSpec, Isolation, Plugin, RequestHead, Tenant,
    };

    // Every call hands the filter 256 KiB of body and 64 headers, which the host writes into memory
    // the Go SDK allocates; its collector runs between calls (never inside the host's), so the
    // heap stays bounded and no call fails.
    // These calls take milliseconds each, so they run as long calls. What is tested here is the
    // instance's memory, not scheduling: at the default (idle) priority, a CI machine busy with
    // other tests would leave them waiting for its CPU.
    let runtime = sluice_tests::filter_runtime();
    runtime.set_long_call_priority(sluice_runtime::LongCallPriority::Niceness(0));
    let plugin = Plugin::load_file(&runtime, "probe", &plugin("tests/plugins/go-probe")).unwrap();
    let tenant = Arc::new(Tenant { memory_bytes: 32 << 20, ..Tenant::default_tenant() });
    let spec = FilterSpec {
        route: "r".into(),
        name: "probe".into(),
        plugin: Arc::new(plugin),
        config: r#"{"tag":"big","upper_request_body":true}"#.into(),
        on_error: FailurePolicy::FailClosed,
        isolation: Isolation::Instance,
        tenant,
    };
    let pool = FilterPool::prepare(runtime, spec).await.unwrap();
    let context = CallContext {
        route: "r".into(),
        filter: "probe".into(),
        tenant: Arc::new(Tenant::default_tenant()),
        request_id: "test".into(),
        client_ip: "127.0.0.1".parse().unwrap(),
        client_identity: None,
        client_location: Default::default(),
        upstreams: Arc::new(sluice_runtime::NoUpstreams),
        deadline: None,
    };
    let body = bytes::Bytes::from(b"abcdefgh".repeat(32 << 10));
    let mut instance = pool.checkout(context).await.unwrap();
    for call in 0..2000 {
        let mut builder = http::Request::post("/upload");
        for index in 0..64 {
            builder = builder.header(format!("x-header-{index}"), "v".repeat(100));
        }
        let mut head = RequestHead { parts: builder.body(()).unwrap().into_parts().0, cache_key: None };
        instance.on_request(&mut head).await.unwrap_or_else(|error| panic!("call {call}: {error:?}"));
        let outcome = instance.on_request_body(&mut head, body.clone()).await;
        let outcome = outcome.unwrap_or_else(|error| panic!("call {call}: {error:?}"));
        let BodyOutcome::Replace(upper) = outcome else { panic!("call {call}: the body was not replaced") };
        assert_eq!(upper.len(), body.len());
        assert!(upper.starts_with(b"ABCDEFGH"));
        assert_eq!(head.parts.headers["x-big-instance-requests"], (call + 1).to_string().as_str(), "one warm instance");
    }
    assert!(instance.memory_bytes() <= 32 << 20);
}

#[test]
fn a_go_filter_packs_as_a_plugin_package() {
    let dir = sluice_tests::repo_root().join("examples/go-header-policy");
    let options = sluice_packages::BuildOptions {
        target_dir: Some(sluice_tests::repo_root().join("target/plugins")),
        quiet: true,
    };
    let package =
        sluice_packages::oci::pack(&sluice_tests::filter_runtime(), &dir, &options).expect("the Go filter packs");
    assert_eq!(package.info.name, "header-policy");
    assert_eq!(package.info.version, "0.1.0");
    assert!(package.info.description.as_deref().is_some_and(|text| text.contains("header policy")));
    assert_eq!(package.info.world, "sluice:filter/plugin@0.1.3");
    // Go's linker keeps only the host functions the filter calls, and Go's runtime needs WASI
    // (clocks, randomness, stderr) through the adapter: no preopens, no environment.
    assert_eq!(package.info.capabilities, ["log", "metrics", "wasi"].map(String::from));
}

#[tokio::test]
async fn a_panicking_go_filter_fails_only_its_request_and_logs_the_panic() {
    sluice_tests::capture_logs();
    let origin = Origin::echo("app").await;
    let proxy = TestProxy::start(&format!(
        "[[listener]]\nbind = \"127.0.0.1:0\"\n[upstream.app]\nservers = [{{ addr = \"{origin}\" }}]\n\
         [plugin.probe]\nsource = \"{probe}\"\n\
         [[route]]\nname = \"fragile\"\nupstream = \"app\"\n\
         filters = [{{ plugin = \"probe\", config = {{ tag = \"g\", panic_path = \"/boom\" }} }}]\n",
        origin = origin.addr,
        probe = plugin("tests/plugins/go-probe").display(),
    ))
    .await;
    let failed = get(&proxy, "app.test", "/boom").await;
    assert_eq!(failed.status, 500);
    let request_id = failed.headers["x-request-id"].to_str().unwrap();
    let line = sluice_tests::logged_failure(request_id);
    assert_eq!(line["route"], "fragile");
    assert_eq!(line["filter"], "probe");
    // Go's runtime writes the panic to stderr and exits: the message and the goroutine's stack
    // are the failure's guest message.
    let message = line["guest_message"].as_str().unwrap();
    assert!(message.starts_with("panic: go-probe panicked on /boom"), "{message}");
    assert!(message.contains("main.(*Probe).OnRequest"), "{message}");
    // One event per failure: the panic and its stack are the failure's message, not also a log
    // event per line (or, as Go's runtime writes it, per word).
    let stderr: Vec<String> = sluice_tests::logged_events()
        .into_iter()
        .filter(|event| event["target"] == "sluice::filter" && event["stream"] == "stderr")
        .map(|event| event["message"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert!(stderr.is_empty(), "the failed call's stderr was logged line by line too: {stderr:?}");
    // The access log line says what failed in one line; the backtrace is in the failure event.
    let access = sluice_tests::access_log_line(request_id).await;
    let said = access["error.message"].as_str().unwrap_or_default();
    assert!(said.starts_with("filter probe on route fragile: trapped") && !said.contains('\n'), "{said:?}");
    // The trapped instance was discarded; the next request gets a fresh one and succeeds.
    let next = get(&proxy, "app.test", "/fine").await;
    assert_eq!(next.status, 200);
    assert_eq!(next.echo().header("x-g-instance-requests").as_deref(), Some("1"));
}
