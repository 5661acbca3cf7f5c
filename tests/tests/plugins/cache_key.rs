use sluice_tests::Origin;

use super::{header, proxy_with, request};

const ROUTES: &str = r#"
[[route]]
upstream = "app"
filters = [{ plugin = "cache_key", config = { query_exclude = ["utm_*"], headers = ["accept-language"], device_class = true, response_header = "x-cache-key" } }]
"#;

#[tokio::test]
async fn the_key_is_canonical_and_shown_on_the_response() {
    let origin = Origin::echo("app").await;
    let proxy = proxy_with(&origin, &["cache-key"], ROUTES).await;
    let phone = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) Mobile/15E148";
    let first =
        request(&proxy, "GET", "/shop?b=2&a=1&utm_source=mail", &[("accept-language", "de"), ("user-agent", phone)])
            .await;
    assert_eq!(first.status, 200);
    let key = header(&first, "x-cache-key").expect("the key is shown");
    assert_eq!(key, "m=GET|h=app.test|p=/shop|q=a%3D1&b%3D2|hdr.accept-language=de|d=mobile");
    let reordered =
        request(&proxy, "GET", "/shop?a=%31&b=2", &[("accept-language", "de"), ("user-agent", phone)]).await;
    assert_eq!(header(&reordered, "x-cache-key"), Some(key));
    let desktop = request(
        &proxy,
        "GET",
        "/shop?a=1&b=2",
        &[("accept-language", "de"), ("user-agent", "Mozilla/5.0 (X11; Linux x86_64)")],
    )
    .await;
    assert_ne!(header(&desktop, "x-cache-key"), Some(key));
}

#[tokio::test]
async fn the_cache_shares_entries_by_the_key_the_filter_sets() {
    let origin = Origin::echo("app").await;
    let routes = r#"
[[route]]
name = "keyed"
upstream = "app"
path_prefix = "/keyed"
cache = { default_ttl = "60s" }
filters = [{ plugin = "cache_key", config = { query_exclude = ["utm_*"] } }]

[[route]]
name = "plain"
upstream = "app"
path_prefix = "/plain"
cache = { default_ttl = "60s" }
"#;
    let proxy = proxy_with(&origin, &["cache-key"], routes).await;
    let first = request(&proxy, "GET", "/keyed?b=2&a=1&utm_source=mail", &[]).await;
    assert!(header(&first, "cache-status").is_some_and(|status| status.contains("stored")));
    let shared = request(&proxy, "GET", "/keyed?a=1&b=2&utm_source=ads", &[]).await;
    assert!(header(&shared, "cache-status").is_some_and(|status| status.starts_with("sluice; hit")));
    assert_eq!(shared.echo().uri(), "/keyed?b=2&a=1&utm_source=mail", "the entry the first request stored");
    let other = request(&proxy, "GET", "/keyed?a=2", &[]).await;
    assert!(header(&other, "cache-status").is_some_and(|status| status.contains("fwd=uri-miss")));

    // Without the filter the default key (host, path and query) keeps them apart.
    request(&proxy, "GET", "/plain?a=1&utm_source=mail", &[]).await;
    let apart = request(&proxy, "GET", "/plain?a=1&utm_source=ads", &[]).await;
    assert!(header(&apart, "cache-status").is_some_and(|status| status.contains("fwd=uri-miss")));
    assert_eq!(apart.echo().uri(), "/plain?a=1&utm_source=ads");
}
