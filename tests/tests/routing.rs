//! Route selection, path rewriting and redirects through a running proxy.

use http::Request;
use sluice_http::body;
use sluice_tests::{Origin, TestProxy, get, http1_client, send};

/// One origin per route, so the answering origin's name says which route was taken.
async fn precedence_proxy() -> (TestProxy, Vec<Origin>) {
    let names = [
        "exact-host-exact-path",
        "exact-host-regex",
        "exact-host-long-prefix",
        "exact-host-prefix",
        "exact-host-post",
        "exact-host-header",
        "deep-wildcard",
        "wildcard",
        "any-host-prefix",
        "catch-all",
    ];
    let mut origins = Vec::new();
    let mut upstreams = String::new();
    for name in names {
        let origin = Origin::echo(name).await;
        upstreams.push_str(&format!("[upstream.{name}]\nservers = [{{ addr = \"{}\" }}]\n", origin.addr));
        origins.push(origin);
    }
    // Written least specific first, so that file order cannot be what makes the cases pass.
    let config = format!(
        r#"
[[listener]]
bind = "127.0.0.1:0"
{upstreams}
[[route]]
name = "catch-all"
upstream = "catch-all"

[[route]]
name = "any-host-prefix"
path_prefix = "/static"
upstream = "any-host-prefix"

[[route]]
name = "wildcard"
host = "*.example.com"
upstream = "wildcard"

[[route]]
name = "deep-wildcard"
host = "*.eu.example.com"
upstream = "deep-wildcard"

[[route]]
name = "exact-host-prefix"
host = "api.example.com"
path_prefix = "/v1"
upstream = "exact-host-prefix"

[[route]]
name = "exact-host-long-prefix"
host = "api.example.com"
path_prefix = "/v1/users"
upstream = "exact-host-long-prefix"

[[route]]
name = "exact-host-regex"
host = "api.example.com"
path_regex = "^/v1/users/[0-9]+$"
upstream = "exact-host-regex"

[[route]]
name = "exact-host-exact-path"
host = ["api.example.com", "API2.example.com"]
path = "/v1/users/me"
upstream = "exact-host-exact-path"

[[route]]
name = "exact-host-post"
host = "api.example.com"
path_prefix = "/v1"
methods = ["post"]
upstream = "exact-host-post"

[[route]]
name = "exact-host-header"
host = "api.example.com"
path_prefix = "/v1"
headers = [{{ name = "x-canary", value = "1" }}]
upstream = "exact-host-header"
"#
    );
    (TestProxy::start(&config).await, origins)
}

/// Method, host, path, headers, and the route expected to take the request.
type PrecedenceCase<'a> = (&'a str, &'a str, &'a str, &'a [(&'a str, &'a str)], &'a str);

#[tokio::test]
async fn most_specific_route_wins() {
    let (proxy, _origins) = precedence_proxy().await;
    let cases: &[PrecedenceCase] = &[
        // method, host, path, headers, expected route
        ("GET", "api.example.com", "/v1/users/me", &[], "exact-host-exact-path"),
        ("GET", "api2.example.com:8080", "/v1/users/me", &[], "exact-host-exact-path"),
        ("GET", "api.example.com", "/v1/users/42", &[], "exact-host-regex"),
        ("GET", "api.example.com", "/v1/users/abc", &[], "exact-host-long-prefix"),
        ("GET", "api.example.com", "/v1/users", &[], "exact-host-long-prefix"),
        ("GET", "api.example.com", "/v1/usersx", &[], "exact-host-prefix"),
        ("GET", "api.example.com", "/v1/orders", &[], "exact-host-prefix"),
        ("POST", "api.example.com", "/v1/orders", &[], "exact-host-post"),
        ("GET", "api.example.com", "/v1/orders", &[("x-canary", "1")], "exact-host-header"),
        ("GET", "api.example.com", "/v1/orders", &[("x-canary", "0")], "exact-host-prefix"),
        // Nothing on the exact host takes /v2: falls through to the wildcard.
        ("GET", "api.example.com", "/v2", &[], "wildcard"),
        ("GET", "www.example.com", "/", &[], "wildcard"),
        ("GET", "a.b.example.com", "/", &[], "wildcard"),
        ("GET", "fr.eu.example.com", "/", &[], "deep-wildcard"),
        ("GET", "WWW.Example.COM.", "/", &[], "wildcard"),
        // A wildcard does not take the bare domain.
        ("GET", "example.com", "/", &[], "catch-all"),
        ("GET", "other.test", "/static/app.js", &[], "any-host-prefix"),
        ("GET", "other.test", "/staticx", &[], "catch-all"),
        // Dot segments are resolved before matching.
        ("GET", "other.test", "/static/../private", &[], "catch-all"),
    ];
    let client = http1_client();
    for (method, host, path, headers, expected) in cases {
        let mut request = Request::builder().method(*method).uri(proxy.url(path)).header("host", *host);
        for (name, value) in *headers {
            request = request.header(*name, *value);
        }
        let response = send(&client, request.body(body::empty()).unwrap()).await;
        assert_eq!(response.status, 200, "{method} {host}{path}: {}", response.text());
        assert_eq!(response.echo().origin(), *expected, "{method} {host}{path} {headers:?}");
    }
}

#[tokio::test]
async fn unmatched_requests_get_404_with_request_id() {
    let origin = Origin::echo("app").await;
    let proxy = TestProxy::start(&format!(
        "[[listener]]\nbind = \"127.0.0.1:0\"\n[upstream.app]\nservers = [{{ addr = \"{}\" }}]\n\
         [[route]]\nhost = \"app.test\"\nupstream = \"app\"\n",
        origin.addr
    ))
    .await;
    let response = get(&proxy, "elsewhere.test", "/").await;
    assert_eq!(response.status, 404);
    let request_id = response.headers["x-request-id"].to_str().unwrap().to_owned();
    assert!(response.text().contains(&request_id), "{}", response.text());
}

#[tokio::test]
async fn prefixes_are_stripped_or_replaced() {
    let origin = Origin::echo("app").await;
    let proxy = TestProxy::start(&format!(
        r#"
[[listener]]
bind = "127.0.0.1:0"
[upstream.app]
servers = [{{ addr = "{}" }}]
[[route]]
path_prefix = "/api"
strip_prefix = true
upstream = "app"
[[route]]
path_prefix = "/old/"
rewrite_prefix = "/new/"
upstream = "app"
[[route]]
upstream = "app"
"#,
        origin.addr
    ))
    .await;
    for (path, expected) in [
        ("/api/users?id=7", "/users?id=7"),
        ("/api", "/"),
        ("/old/page", "/new/page"),
        ("/apix", "/apix"),
        ("/a/./b/../c", "/a/c"),
    ] {
        let response = get(&proxy, "app.test", path).await;
        assert_eq!(response.echo().uri(), expected, "{path}");
    }
}

#[tokio::test]
async fn redirects_build_their_location() {
    let proxy = TestProxy::start(
        r#"
[[listener]]
bind = "127.0.0.1:0"
[[route]]
host = "old.test"
redirect = { host = "new.test", status = 308 }
[[route]]
path_prefix = "/docs"
rewrite_prefix = "/manual"
redirect = { scheme = "https", status = 302 }
[[route]]
path = "/home"
redirect = { path = "/", keep_query = false }
"#,
    )
    .await;
    for (host, path, status, location) in [
        ("old.test", "/a/b?c=1", 308, "http://new.test/a/b?c=1"),
        ("site.test:8080", "/docs/intro", 302, "https://site.test:8080/manual/intro"),
        ("site.test", "/home?utm=x", 301, "http://site.test/"),
    ] {
        let response = get(&proxy, host, path).await;
        assert_eq!(response.status, status, "{host}{path}");
        assert_eq!(response.headers["location"], location, "{host}{path}");
    }
}

#[tokio::test]
async fn weighted_servers_share_requests() {
    let heavy = Origin::echo("heavy").await;
    let light = Origin::echo("light").await;
    let proxy = TestProxy::start(&format!(
        "[[listener]]\nbind = \"127.0.0.1:0\"\n[upstream.app]\nservers = [{{ addr = \"{}\", weight = 3 }}, {{ addr = \"{}\" }}]\n\
         [[route]]\nupstream = \"app\"\n",
        heavy.addr, light.addr
    ))
    .await;
    let mut heavy_count = 0;
    for _ in 0..40 {
        if get(&proxy, "app.test", "/").await.echo().origin() == "heavy" {
            heavy_count += 1;
        }
    }
    assert_eq!(heavy_count, 30);
}
