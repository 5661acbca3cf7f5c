use http::Request;
use sluice_http::body;
use sluice_tests::{Origin, http1_client, send};

use super::{proxy_with, request};

const ROUTES: &str = r#"
[[route]]
path_prefix = "/watch"
upstream = "app"
filters = [{ plugin = "waf", config = { mode = "detect", score_header = "x-waf-score" } }]

[[route]]
upstream = "app"
filters = [{ plugin = "waf", config = { exclusions = [{ path_prefix = "/docs", rules = [941110], targets = ["args:example"] }] } }]
"#;

const BROWSER: (&str, &str) = ("user-agent", "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0");

#[tokio::test]
async fn attacks_in_the_query_and_headers_are_blocked_with_the_request_id() {
    let (origin, answered) = Origin::echo_counted("app").await;
    let proxy = proxy_with(&origin, &["waf"], ROUTES).await;
    let blocked = request(
        &proxy,
        "GET",
        "/products?id=1%27%20UNION%20SELECT%20password%20FROM%20users--",
        &[BROWSER, ("x-request-id", "rid-9")],
    )
    .await;
    assert_eq!(blocked.status, 403);
    assert!(blocked.text().contains("request rid-9"), "{}", blocked.text());
    let scanner = request(&proxy, "GET", "/", &[("user-agent", "sqlmap/1.7.2#stable (https://sqlmap.org)")]).await;
    assert_eq!(scanner.status, 403);
    let ordinary = request(&proxy, "GET", "/search?q=O%27Reilly+%26+friends", &[BROWSER]).await;
    assert_eq!(ordinary.status, 200);
    assert_eq!(answered.load(std::sync::atomic::Ordering::Relaxed), 1, "only the ordinary request went upstream");
}

#[tokio::test]
async fn bodies_are_inspected_as_forms_and_json() {
    let origin = Origin::echo("app").await;
    let proxy = proxy_with(&origin, &["waf"], ROUTES).await;
    let post = |content_type: &'static str, payload: &'static str| {
        let request = Request::post(proxy.url("/api/comments"))
            .header("host", "app.test")
            .header(BROWSER.0, BROWSER.1)
            .header("content-type", content_type)
            .body(body::full(payload))
            .expect("valid request");
        async move { send(&http1_client(), request).await }
    };
    assert_eq!(
        post("application/x-www-form-urlencoded", "comment=%3Cscript%3Ealert(1)%3C%2Fscript%3E").await.status,
        403
    );
    assert_eq!(post("application/json", r#"{"user": {"bio": "<img src=x onerror=alert(1)>"}}"#).await.status, 403);
    assert_eq!(post("application/json", r#"{"user": {"bio": "broken"#).await.status, 403, "malformed JSON");
    let fine = post("application/json", r#"{"user": {"bio": "I like hiking & chess; it's fun"}}"#).await;
    assert_eq!(fine.status, 200);
    let expected = r#"{"user": {"bio": "I like hiking & chess; it's fun"}}"#.len();
    assert_eq!(fine.echo().0["body_bytes"], expected, "the body goes upstream untouched");
}

#[tokio::test]
async fn detect_mode_and_exclusions_let_requests_through() {
    let origin = Origin::echo("app").await;
    let proxy = proxy_with(&origin, &["waf"], ROUTES).await;
    let watched = request(&proxy, "GET", "/watch?q=%3Cscript%3Ealert(1)%3C/script%3E", &[BROWSER]).await;
    assert_eq!(watched.status, 200);
    let score: u32 = watched.echo().header("x-waf-score").expect("the score goes upstream").parse().expect("a number");
    assert!(score >= 5, "score {score}");
    let documented = request(&proxy, "GET", "/docs/xss?example=%3Cscript%3E", &[BROWSER]).await;
    assert_eq!(documented.status, 200, "941110 is excluded for this argument");
    let elsewhere = request(&proxy, "GET", "/blog?example=%3Cscript%3E", &[BROWSER]).await;
    assert_eq!(elsewhere.status, 403);
}
