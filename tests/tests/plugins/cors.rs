use std::sync::atomic::Ordering;

use sluice_tests::Origin;

use super::{header, proxy_with, request};

const ROUTES: &str = r#"
[[route]]
upstream = "app"
filters = [{ plugin = "cors", config = { allowed_origins = ["https://app.example.com", "https://*.example.org"], allowed_methods = ["GET", "PUT"], allowed_headers = ["content-type", "x-token"], exposed_headers = ["x-total"], allow_credentials = true, max_age = 120 } }]
"#;

#[tokio::test]
async fn preflights_are_answered_without_the_upstream() {
    let (origin, answered) = Origin::echo_counted("app").await;
    let proxy = proxy_with(&origin, &["cors"], ROUTES).await;
    let preflight = request(
        &proxy,
        "OPTIONS",
        "/items",
        &[
            ("origin", "https://shop.example.org"),
            ("access-control-request-method", "PUT"),
            ("access-control-request-headers", "Content-Type, X-Token"),
        ],
    )
    .await;
    assert_eq!(preflight.status, 204);
    assert_eq!(header(&preflight, "access-control-allow-origin"), Some("https://shop.example.org"));
    assert_eq!(header(&preflight, "access-control-allow-methods"), Some("GET, PUT"));
    assert_eq!(header(&preflight, "access-control-allow-headers"), Some("content-type, x-token"));
    assert_eq!(header(&preflight, "access-control-allow-credentials"), Some("true"));
    assert_eq!(header(&preflight, "access-control-max-age"), Some("120"));

    let refused = request(
        &proxy,
        "OPTIONS",
        "/items",
        &[("origin", "https://evil.test"), ("access-control-request-method", "GET")],
    )
    .await;
    assert_eq!(refused.status, 403);
    assert!(refused.text().contains("origin https://evil.test is not allowed"));
    let bad_method = request(
        &proxy,
        "OPTIONS",
        "/items",
        &[("origin", "https://app.example.com"), ("access-control-request-method", "DELETE")],
    )
    .await;
    assert_eq!(bad_method.status, 403);
    assert_eq!(answered.load(Ordering::Relaxed), 0, "no preflight reached the upstream");
}

#[tokio::test]
async fn responses_to_allowed_origins_are_marked_and_others_left_alone() {
    let (origin, answered) = Origin::echo_counted("app").await;
    let proxy = proxy_with(&origin, &["cors"], ROUTES).await;
    let allowed = request(&proxy, "GET", "/items", &[("origin", "https://app.example.com")]).await;
    assert_eq!(allowed.status, 200);
    assert_eq!(header(&allowed, "access-control-allow-origin"), Some("https://app.example.com"));
    assert_eq!(header(&allowed, "access-control-expose-headers"), Some("x-total"));
    assert_eq!(header(&allowed, "vary"), Some("Origin"));

    let other = request(&proxy, "GET", "/items", &[("origin", "https://evil.test")]).await;
    assert_eq!(other.status, 200, "the browser, not the proxy, withholds the response");
    assert_eq!(header(&other, "access-control-allow-origin"), None);
    let same_origin = request(&proxy, "GET", "/items", &[]).await;
    assert_eq!(header(&same_origin, "access-control-allow-origin"), None);
    assert_eq!(answered.load(Ordering::Relaxed), 3);
}
