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

fn request(proxy: &TestProxy, headers: &[(&str, &str)]) -> http::Request<sluice::body::ProxyBody> {
    let mut builder = http::Request::get(proxy.url("/resource")).header("host", "app.test");
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(sluice::body::empty()).unwrap()
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
        let snapshot = sluice::config::Snapshot::from_toml(&policy_config(&origin, policy)).expect("valid TOML");
        let error = sluice::server::Server::start(snapshot).await.expect_err("the filter refuses its config");
        assert!(error.to_string().contains(message), "{error}");
    }
}

/// The `sluice plugin new --lang go` scaffold, created and built under target/ (so a later run
/// finds it built and only checks it).
fn go_scaffold() -> std::path::PathBuf {
    let parent = sluice_tests::repo_root().join("target/test-scaffolds");
    std::fs::create_dir_all(&parent).unwrap();
    let dir = parent.join("gate-go");
    if !dir.exists() {
        sluice::packages::new_plugin_in(&parent, "gate-go", sluice::packages::Language::Go).unwrap();
    }
    let options = sluice::packages::BuildOptions { target_dir: None, quiet: true };
    sluice::packages::build_plugin(&dir, &options).expect("the scaffold builds")
}

#[tokio::test]
async fn a_scaffolded_go_filter_builds_and_runs() {
    let component = go_scaffold();
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
    let passed = send(&http1_client(), request(&proxy, &[("x-api-version", "2")])).await;
    assert_eq!(passed.status, 200);
    assert_eq!(passed.headers["x-filtered-by"], "gate-go");
}
