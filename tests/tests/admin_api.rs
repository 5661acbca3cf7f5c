//! The admin API's reads: routes with their filter chains, plugins, tenants with grants and use,
//! the cache, live per-route figures, paging and search over many routes, and the read token.

use http::Request;
use serde_json::Value;
use sluice_http::body;
use sluice_tests::{Origin, TestProxy, http1_client, plugin, send};

const WRITE_TOKEN: &str = "admin-api-write-token-01";
const READ_TOKEN: &str = "admin-api-read-token-012";

async fn admin_get(proxy: &TestProxy, path: &str, token: Option<&str>) -> (u16, Value) {
    let mut request = Request::get(format!("http://{}{path}", proxy.admin.expect("admin listener")));
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let response = send(&http1_client(), request.body(body::empty()).expect("request")).await;
    (response.status.as_u16(), serde_json::from_slice(&response.body).unwrap_or(Value::Null))
}

fn config(origin: &Origin, admin: &str, extra: &str) -> String {
    format!(
        r#"
[admin]
bind = "127.0.0.1:0"
{admin}
[[listener]]
bind = "127.0.0.1:0"
[upstream.app]
servers = [{{ addr = "{origin}" }}]
health_check = {{ path = "/", interval = "30s" }}
[tenant.acme]
memory_mb = 16
max_instances = 3
[plugin.probe]
source = "{probe}"
[plugin.hello]
source = "{hello}"
[[route]]
name = "shop"
host = ["shop.test"]
path_prefix = "/"
methods = ["GET"]
tenant = "acme"
upstream = "app"
filters = [
  {{ plugin = "hello", on_error = "fail-open", canary = {{ plugin = "probe", percent = 10, config = {{ tag = "one" }} }} }},
]
compression = {{ encodings = ["gzip"] }}
[[route]]
name = "cached"
host = ["app.test"]
upstream = "app"
cache = {{ default_ttl = "1m" }}
{extra}
"#,
        origin = origin.addr,
        probe = plugin("tests/plugins/probe").display(),
        hello = plugin("examples/hello-filter").display(),
    )
}

async fn get(proxy: &TestProxy, host: &str, path: &str) -> u16 {
    let request = Request::get(proxy.url(path)).header("host", host).body(body::empty()).expect("request");
    send(&http1_client(), request).await.status.as_u16()
}

#[tokio::test]
async fn reads_show_routes_plugins_tenants_cache_and_live_figures() {
    let origin = Origin::echo("app").await;
    let proxy = TestProxy::start(&config(&origin, "", "")).await;
    for _ in 0..20 {
        assert_eq!(get(&proxy, "shop.test", "/").await, 200);
    }
    for _ in 0..3 {
        get(&proxy, "app.test", "/page").await;
    }

    let (status, routes) = admin_get(&proxy, "/routes", None).await;
    assert_eq!(status, 200);
    assert_eq!(routes["total"], 2);
    let shop = &routes["routes"][0];
    assert_eq!(shop["name"], "shop");
    assert_eq!(shop["tenant"], "acme");
    assert_eq!(shop["hosts"][0], "shop.test");
    assert_eq!(shop["path"]["prefix"], "/");
    assert_eq!(shop["methods"][0], "GET");
    assert_eq!(shop["action"]["forward"]["upstreams"][0]["upstream"], "app");
    assert_eq!(shop["compression"]["encodings"][0], "gzip");
    let filter = &shop["filters"][0];
    assert_eq!(filter["plugin"], "hello");
    assert_eq!(filter["on_error"], "fail-open");
    assert_eq!(filter["config"], Value::Null);
    assert_eq!(filter["canary"]["config"]["tag"], "one");
    assert!(filter["digest"].as_str().is_some_and(|digest| digest.starts_with("sha256:")), "{filter}");
    assert!(filter["world"].as_str().is_some_and(|world| world.starts_with("sluice:filter@0.1.")), "{filter}");
    assert!(filter["instances"]["warm"].as_u64().is_some_and(|warm| warm >= 1), "{filter}");
    assert_eq!(filter["canary"]["plugin"], "probe");
    assert_eq!(filter["canary"]["percent"], 10);
    assert_eq!(routes["routes"][1]["cache"]["default_ttl_s"], 60);

    let (_, plugins) = admin_get(&proxy, "/plugins", None).await;
    let probe = plugins["plugins"].as_array().unwrap().iter().find(|plugin| plugin["name"] == "probe").unwrap().clone();
    assert!(probe["source"].as_str().is_some_and(|source| source.ends_with("probe.wasm")), "{probe}");
    assert!(probe["capabilities"].as_array().is_some_and(|capabilities| !capabilities.is_empty()), "{probe}");
    assert_eq!(probe["used_by"][0]["route"], "shop");
    assert_eq!(probe["used_by"][0]["place"], "filters[0].canary");

    let (_, tenants) = admin_get(&proxy, "/tenants", None).await;
    let acme = tenants["tenants"].as_array().unwrap().iter().find(|tenant| tenant["name"] == "acme").unwrap().clone();
    assert_eq!(acme["grants"]["memory_bytes"], 16 << 20);
    assert_eq!(acme["grants"]["max_instances"], 3);
    assert_eq!(acme["routes"], 1);
    assert_eq!(acme["since_start"]["requests"], 20, "{acme}");
    assert!(acme["since_start"]["calls"].as_u64().is_some_and(|calls| calls >= 20), "{acme}");
    assert!(tenants["tenants"].as_array().unwrap().iter().any(|tenant| tenant["name"] == "default"));

    let (_, upstreams) = admin_get(&proxy, "/upstreams", None).await;
    assert_eq!(upstreams["app"]["health_check"]["interval_ms"], 30_000);
    assert_eq!(upstreams["app"]["servers"][0]["ejections"], 0);

    let (_, cache) = admin_get(&proxy, "/cache", None).await;
    assert_eq!(cache["entries"], 1, "{cache}");
    assert_eq!(cache["routes"][0]["route"], "cached");

    let (_, live) = admin_get(&proxy, "/live", None).await;
    let shop = live["routes"].as_array().unwrap().iter().find(|route| route["name"] == "shop").unwrap().clone();
    assert_eq!(shop["requests"], 20, "{shop}");
    assert_eq!(shop["server_errors"], 0);
    let chain: Vec<&Value> = shop["filters"].as_array().unwrap().iter().collect();
    let calls: u64 = chain.iter().map(|filter| filter["calls"].as_u64().unwrap()).sum();
    assert!(calls >= 20, "every request called the filter or its canary: {shop}");
    assert!(chain.iter().any(|filter| filter["place"] == "filters[0].canary"), "{shop}");
    assert_eq!(live["totals"]["requests"], 23);
}

#[tokio::test]
async fn reads_need_the_read_token_when_one_is_set_and_writes_need_the_write_token() {
    let origin = Origin::echo("app").await;
    let admin = format!("reload_token = \"{WRITE_TOKEN}\"\nread_token = \"{READ_TOKEN}\"");
    let proxy = TestProxy::start(&config(&origin, &admin, "")).await;
    for path in ["/routes", "/plugins", "/tenants", "/live", "/status", "/upstreams", "/cache", "/metrics", "/blocks"] {
        assert_eq!(admin_get(&proxy, path, None).await.0, 401, "{path} without a token");
        assert_eq!(admin_get(&proxy, path, Some("wrong-token-but-long")).await.0, 401, "{path}");
        assert_eq!(admin_get(&proxy, path, Some(READ_TOKEN)).await.0, 200, "{path} with the read token");
        assert_eq!(admin_get(&proxy, path, Some(WRITE_TOKEN)).await.0, 200, "{path} with the write token");
    }
    assert_eq!(admin_get(&proxy, "/tenants/usage", None).await.0, 401);
    // Health and the dashboard's own files say nothing about the proxy.
    for path in ["/healthz", "/", "/dashboard.js", "/dashboard.css"] {
        let request = Request::get(format!("http://{}{path}", proxy.admin.unwrap())).body(body::empty()).unwrap();
        let response = send(&http1_client(), request).await;
        assert_eq!(response.status, 200, "{path}");
        if path == "/" {
            let policy = response.headers.get("content-security-policy").expect("a CSP").to_str().unwrap();
            assert!(policy.contains("default-src 'none'"), "{policy}");
        }
    }
    // The read token changes nothing.
    let purge = Request::post(format!("http://{}/cache/purge", proxy.admin.unwrap()))
        .header("authorization", format!("Bearer {READ_TOKEN}"))
        .body(body::full(r#"{"prefix": "app.test/"}"#))
        .unwrap();
    assert_eq!(send(&http1_client(), purge).await.status, 401);
    let purge = Request::post(format!("http://{}/cache/purge", proxy.admin.unwrap()))
        .header("authorization", format!("Bearer {WRITE_TOKEN}"))
        .body(body::full(r#"{"prefix": "app.test/"}"#))
        .unwrap();
    assert_eq!(send(&http1_client(), purge).await.status, 200);
}

#[tokio::test]
async fn a_short_read_token_is_refused_with_its_key() {
    let origin = Origin::echo("app").await;
    let error =
        sluice::config::Snapshot::from_toml(&sluice_tests::services(), &config(&origin, "read_token = \"short\"", ""))
            .expect_err("a short token is refused");
    assert_eq!(error.key, "admin.read_token");
}

#[tokio::test]
async fn a_thousand_routes_are_searched_and_paged() {
    let origin = Origin::echo("app").await;
    let bulk: String = (0..1000)
        .map(|index| format!("[[route]]\nname = \"route-{index:04}\"\nhost = [\"bulk.test\"]\npath = \"/r/{index}\"\nupstream = \"app\"\n"))
        .collect();
    let proxy = TestProxy::start(&config(&origin, "", &bulk)).await;
    assert_eq!(get(&proxy, "bulk.test", "/r/999").await, 200);

    let (_, all) = admin_get(&proxy, "/routes?limit=0", None).await;
    assert_eq!((all["total"].as_u64(), all["routes"].as_array().map(Vec::len)), (Some(1002), Some(0)));
    let (_, found) = admin_get(&proxy, "/routes?search=ROUTE-099", None).await;
    let names: Vec<&str> =
        found["routes"].as_array().unwrap().iter().map(|route| route["name"].as_str().unwrap()).collect();
    assert_eq!(found["total"], 10);
    assert_eq!(names.first().copied(), Some("route-0990"));
    let (_, page) = admin_get(&proxy, "/live?search=route-&offset=995&limit=50", None).await;
    let names: Vec<&str> =
        page["routes"].as_array().unwrap().iter().map(|route| route["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["route-0995", "route-0996", "route-0997", "route-0998", "route-0999"]);
    assert_eq!(page["routes"][4]["requests"], 1);
    assert_eq!(admin_get(&proxy, "/routes?offset=many", None).await.0, 400);
}
