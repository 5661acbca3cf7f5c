//! A filter written in JavaScript with the JS SDK (`examples/js-sign-filter`), built by
//! `sluice plugin build` (npm, rolldown, componentize-js) and run through the proxy: its signatures are
//! checked with an independent HMAC implementation, and a config it refuses fails the start.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use sluice_tests::{Origin, TestProxy, get, plugin};

const SECRET: &str = "a-secret-shared-with-clients";

fn config(origin: &Origin, secret: &str) -> String {
    format!(
        "[[listener]]\nbind = \"127.0.0.1:0\"\n[upstream.app]\nservers = [{{ addr = \"{origin}\" }}]\n\
         [plugin.sign]\nsource = \"{sign}\"\n\
         [[route]]\npath_prefix = \"/signed\"\nupstream = \"app\"\n\
         filters = [{{ plugin = \"sign\", config = {{ secret = \"{secret}\", header = \"x-body-signature\" }} }}]\n\
         [[route]]\nupstream = \"app\"\n",
        origin = origin.addr,
        sign = plugin("examples/js-sign-filter").display(),
    )
}

#[tokio::test]
async fn a_javascript_filter_signs_response_bodies() {
    let origin = Origin::echo("app").await;
    let proxy = TestProxy::start(&config(&origin, SECRET)).await;
    for path in ["/signed/a", "/signed/b?query=1"] {
        let response = get(&proxy, "app.test", path).await;
        assert_eq!(response.status, 200);
        let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
        mac.update(&response.body);
        let expected = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
        assert_eq!(response.headers["x-body-signature"], expected.as_str(), "{path}");
        assert_eq!(response.headers["x-signed-by"], "sluice-js");
        assert_eq!(response.echo().uri(), path, "the body is the origin's, unchanged");
    }
    let unsigned = get(&proxy, "app.test", "/plain").await;
    assert!(!unsigned.headers.contains_key("x-body-signature"));
}

#[tokio::test]
async fn a_config_the_javascript_filter_refuses_fails_the_start() {
    let origin = Origin::echo("app").await;
    let snapshot = sluice::config::Snapshot::from_toml(&sluice_tests::services(), &config(&origin, "short"))
        .expect("the file itself is valid");
    let error = sluice::server::Server::start(snapshot).await.expect_err("the filter refuses its config");
    assert!(error.to_string().contains("config.secret must be a string of at least 16 characters"), "{error}");
}

#[tokio::test]
async fn a_scaffolded_javascript_filter_builds_and_runs() {
    sluice_tests::assert_scaffold_gates_requests(sluice_packages::Language::JavaScript, "gate-js").await;
}

#[tokio::test]
async fn instances_whose_heap_creeps_up_are_retired_before_their_memory_limit() {
    use std::sync::Arc;

    use sluice_runtime::{CallContext, FailurePolicy, FilterPool, FilterSpec, Isolation, Plugin, RequestHead, Tenant};

    // The JavaScript engine's heap grows with every call (it is not collected between calls), so
    // under a 16 MiB limit an instance would fail after about a thousand calls.
    let runtime = sluice_tests::filter_runtime();
    let plugin =
        // A scaffold of its own: two test processes building one scaffold folder at once race in
        // npm's install.
        Plugin::load_file(&runtime, "gate", &sluice_tests::scaffold(sluice_packages::Language::JavaScript, "heap-js"))
            .unwrap();
    let tenant = Arc::new(Tenant { memory_bytes: 16 << 20, ..Tenant::default_tenant() });
    let spec = FilterSpec {
        route: "r".into(),
        name: "gate".into(),
        plugin: Arc::new(plugin),
        config: "null".into(),
        on_error: FailurePolicy::FailClosed,
        isolation: Isolation::Instance,
        tenant: tenant.clone(),
    };
    let pool = FilterPool::prepare(runtime.clone(), spec).await.unwrap();
    let context = CallContext {
        route: "r".into(),
        filter: "gate".into(),
        tenant,
        request_id: "test".into(),
        client_ip: "127.0.0.1".parse().unwrap(),
        client_identity: None,
        client_location: Default::default(),
        upstreams: Arc::new(sluice_runtime::NoUpstreams),
        deadline: None,
    };
    let mut retired = 0;
    let mut last_memory = 0;
    for call in 0..3000 {
        let mut instance = pool.checkout(context.clone()).await.unwrap();
        if instance.memory_bytes() < last_memory {
            retired += 1;
        }
        let mut head = RequestHead { parts: http::Request::get("/").body(()).unwrap().into_parts().0, cache_key: None };
        instance.on_request(&mut head).await.unwrap_or_else(|error| panic!("call {call}: {error:?}"));
        last_memory = instance.memory_bytes();
        assert!(last_memory <= 16 << 20);
    }
    assert!(retired >= 1, "a fresh instance replaced a grown one");
    let labels = vec![
        ("route".to_owned(), "r".to_owned()),
        ("filter".to_owned(), "gate".to_owned()),
        ("tenant".to_owned(), "default".to_owned()),
    ];
    let counted = runtime.services().retirements.get_or_create(&labels).get();
    assert_eq!(counted, retired, "each retirement is counted");
}

#[test]
fn a_javascript_filter_packs_as_a_plugin_package() {
    let dir = sluice_tests::repo_root().join("examples/js-sign-filter");
    let options = sluice_packages::BuildOptions {
        target_dir: Some(sluice_tests::repo_root().join("target/plugins")),
        quiet: true,
    };
    let package =
        sluice_packages::oci::pack(&sluice_tests::filter_runtime(), &dir, &options).expect("the JS filter packs");
    assert_eq!(package.info.name, "sign-filter");
    assert_eq!(package.info.version, "0.1.0");
    assert!(package.info.description.as_deref().is_some_and(|text| text.contains("HMAC-SHA256")));
    assert_eq!(package.info.world, "sluice:filter/plugin@0.1.3");
    // componentize-js imports every interface of the world; no WASI (every WASI feature is
    // disabled in its build).
    assert_eq!(
        package.info.capabilities,
        ["callout", "client", "clock", "kv", "log", "metrics", "random"].map(String::from)
    );
}
