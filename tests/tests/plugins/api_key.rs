use sluice_tests::Origin;

use super::{header, proxy_with, request};

/// SHA-256 of `k-billing-1234` and `k-search-5678`.
fn routes() -> String {
    let billing = sha256_hex("k-billing-1234");
    let search = sha256_hex("k-search-5678");
    format!(
        r#"
[[route]]
name = "reports"
path_prefix = "/reports"
upstream = "app"
filters = [{{ plugin = "api_key", config = {{ keys = [{{ consumer = "billing", sha256 = "{billing}" }}, {{ consumer = "search", sha256 = "{search}" }}], query_param = "api_key", allowed_consumers = ["billing"] }} }}]

[[route]]
upstream = "app"
filters = [{{ plugin = "api_key", config = {{ keys = [{{ consumer = "billing", sha256 = "{billing}" }}, {{ consumer = "search", sha256 = "{search}" }}], query_param = "api_key" }} }}]
"#
    )
}

fn sha256_hex(text: &str) -> String {
    let output = std::process::Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().expect("stdin").write_all(text.as_bytes())?;
            child.wait_with_output()
        })
        .expect("sha256sum runs");
    String::from_utf8(output.stdout).expect("hex").split_whitespace().next().expect("a digest").to_owned()
}

#[tokio::test]
async fn known_keys_pass_and_name_their_consumer() {
    let origin = Origin::echo("app").await;
    let proxy = proxy_with(&origin, &["api-key"], &routes()).await;
    let response = request(&proxy, "GET", "/items", &[("x-api-key", "k-search-5678"), ("x-consumer", "admin")]).await;
    assert_eq!(response.status, 200);
    let echo = response.echo();
    assert_eq!(echo.header("x-consumer").as_deref(), Some("search"), "the client's own x-consumer is replaced");
    assert_eq!(echo.header("x-api-key"), None, "the key does not go upstream");

    let by_query = request(&proxy, "GET", "/items?page=2&api_key=k-billing-1234&sort=a%20b", &[]).await;
    assert_eq!(by_query.status, 200);
    assert_eq!(by_query.echo().uri(), "/items?page=2&sort=a%20b");
    assert_eq!(by_query.echo().header("x-consumer").as_deref(), Some("billing"));
}

#[tokio::test]
async fn missing_and_unknown_keys_get_401_and_other_consumers_403() {
    let origin = Origin::echo("app").await;
    let proxy = proxy_with(&origin, &["api-key"], &routes()).await;
    let missing = request(&proxy, "GET", "/items", &[]).await;
    assert_eq!(missing.status, 401);
    assert_eq!(header(&missing, "www-authenticate"), Some("ApiKey realm=\"sluice\""));
    let wrong = request(&proxy, "GET", "/items", &[("x-api-key", "k-search-0000")]).await;
    assert_eq!(wrong.status, 401);
    assert!(wrong.text().contains("unknown API key"));
    let forbidden = request(&proxy, "GET", "/reports/q3", &[("x-api-key", "k-search-5678")]).await;
    assert_eq!(forbidden.status, 403);
    assert!(forbidden.text().contains("consumer search may not use this route"));
    let allowed = request(&proxy, "GET", "/reports/q3", &[("x-api-key", "k-billing-1234")]).await;
    assert_eq!(allowed.status, 200);
}
