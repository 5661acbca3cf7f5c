use sluice_tests::Origin;

use super::{header, proxy_with, request};

const ROUTES: &str = r#"
[[route]]
upstream = "app"
filters = [{ plugin = "header_rewrite", config = { security_headers = true, request = [
  { op = "set", name = "x-client", value = "{client_ip} via {route} for {request_id}" },
  { op = "remove", name = "x-internal-token" },
  { op = "rename", name = "x-legacy-user", to = "x-user" },
  { op = "add", name = "x-api-version", value = "2", when = { path_prefix = "/api", methods = ["GET"] } },
], response = [
  { op = "remove", name = "x-powered-by" },
  { op = "set", name = "cache-control", value = "no-store", when = { status = ["4xx", "5xx"] } },
  { op = "set", name = "x-served-for", value = "{header.x-user}" },
] } }]
"#;

#[tokio::test]
async fn request_and_response_headers_are_rewritten() {
    let origin = Origin::echo("app").await;
    let proxy = proxy_with(&origin, &["header-rewrite"], ROUTES).await;
    let response = request(
        &proxy,
        "GET",
        "/api/items",
        &[("x-internal-token", "secret"), ("x-legacy-user", "alice"), ("x-request-id", "rid-42")],
    )
    .await;
    assert_eq!(response.status, 200);
    let echo = response.echo();
    assert_eq!(echo.header("x-client").as_deref(), Some("127.0.0.1 via route-1 for rid-42"));
    assert_eq!(echo.header("x-internal-token"), None);
    assert_eq!(echo.header("x-legacy-user"), None);
    assert_eq!(echo.header("x-user").as_deref(), Some("alice"));
    assert_eq!(echo.header("x-api-version").as_deref(), Some("2"));

    assert_eq!(header(&response, "x-powered-by"), None, "the echo origin sends one; the rule removes it");
    assert_eq!(header(&response, "x-served-for"), Some("alice"), "response templates read the rewritten request");
    assert_eq!(header(&response, "strict-transport-security"), Some("max-age=31536000; includeSubDomains"));
    assert_eq!(header(&response, "x-content-type-options"), Some("nosniff"));
    assert_eq!(header(&response, "x-frame-options"), Some("DENY"));
    assert_eq!(header(&response, "cache-control"), None, "200 is not an error status");

    let other = request(&proxy, "POST", "/other", &[]).await;
    assert_eq!(other.echo().header("x-api-version"), None, "the condition is path and method");
}

#[tokio::test]
async fn a_bad_rule_refuses_the_config_with_its_position() {
    let origin = Origin::echo("app").await;
    let path = sluice_tests::plugin("plugins/header-rewrite");
    let config = format!(
        "[[listener]]\nbind = \"127.0.0.1:0\"\n[upstream.app]\nservers = [{{ addr = \"{}\" }}]\n\
         [plugin.rewrite]\nsource = \"{}\"\n[[route]]\nupstream = \"app\"\n\
         filters = [{{ plugin = \"rewrite\", config = {{ request = [{{ op = \"set\", name = \"x\" }}] }} }}]\n",
        origin.addr,
        path.display()
    );
    let snapshot = sluice::config::Snapshot::from_toml(&sluice_tests::services(), &config).expect("valid TOML");
    let error = snapshot.prepare_filters().await.expect_err("the filter refuses its config").to_string();
    assert!(error.contains("request[0]: `set` needs a `value`"), "{error}");
}
