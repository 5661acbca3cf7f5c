//! The cache's finer rules through a running proxy, with this repository's own cases for what the
//! published HTTP Caching Tests suite does not cover (see `cache_conformance.rs`): targeted
//! fields (`CDN-Cache-Control`, RFC 9213), ranges answered from stored responses, stored parts
//! reused and completed, invalidation by `Location` and `Content-Location`, `must-understand`,
//! a HEAD freshening the stored GET, 204s, `no-cache` naming fields, and entity tags with obs-text.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use http::{HeaderMap, Method, Request, Response, StatusCode};
use sluice_http::body;
use sluice_tests::{Collected, Origin, TestProxy, http1_client, send};

/// An origin whose answers the request describes: `?NAME=VALUE` query pairs become response
/// headers (`status` sets the status), `x-reply-NAME` request headers override them, and the body
/// is `0123456789` unless `body` says otherwise. With `ranges=yes` a single `Range` is honoured
/// (`lie=yes` makes the 206 one byte shorter than its Content-Range). Every answer carries
/// `x-count`, how many requests its path and query have had, so a test sees what came from it.
#[derive(Default)]
struct Described {
    counts: Mutex<HashMap<String, usize>>,
    seen: Mutex<Vec<(Method, String, HeaderMap)>>,
}

impl Described {
    fn seen(&self, path_and_query: &str) -> Vec<HeaderMap> {
        let seen = self.seen.lock().unwrap();
        seen.iter().filter(|(_, seen, _)| seen == path_and_query).map(|(_, _, headers)| headers.clone()).collect()
    }

    fn answer(&self, method: &Method, path_and_query: &str, request: &HeaderMap) -> Response<body::ProxyBody> {
        let count = {
            let mut counts = self.counts.lock().unwrap();
            let count = counts.entry(path_and_query.to_owned()).or_default();
            *count += 1;
            *count
        };
        self.seen.lock().unwrap().push((method.clone(), path_and_query.to_owned(), request.clone()));
        let query = path_and_query.split_once('?').map_or("", |(_, query)| query);
        let mut pairs: Vec<(String, String)> = url::form_urlencoded::parse(query.as_bytes())
            .map(|(name, value)| (name.into_owned(), value.into_owned()))
            .collect();
        for (name, value) in request {
            if let Some(reply) = name.as_str().strip_prefix("x-reply-") {
                pairs.retain(|(existing, _)| existing != reply);
                pairs.push((reply.to_owned(), value.to_str().unwrap().to_owned()));
            }
        }
        let setting = |name: &str| pairs.iter().find(|(key, _)| key == name).map(|(_, value)| value.clone());
        let whole = setting("body").unwrap_or_else(|| "0123456789".to_owned());
        let mut status = setting("status").map_or(StatusCode::OK, |status| status.parse().unwrap());
        let mut content = whole.clone();
        let mut content_range = None;
        if setting("ranges").as_deref() == Some("yes")
            && let Some(range) = request.get("range").and_then(|value| value.to_str().ok())
        {
            let (first, last) = range.trim_start_matches("bytes=").split_once('-').unwrap();
            let first: usize = first.parse().unwrap();
            let last: usize = if last.is_empty() { whole.len() - 1 } else { last.parse().unwrap() };
            let served_last = if setting("lie").as_deref() == Some("yes") { last - 1 } else { last };
            content = whole[first..=served_last].to_owned();
            content_range = Some(format!("bytes {first}-{last}/{}", whole.len()));
            status = StatusCode::PARTIAL_CONTENT;
        }
        let mut response = Response::new(body::full(content));
        *response.status_mut() = status;
        for (name, value) in &pairs {
            if !matches!(name.as_str(), "status" | "body" | "ranges" | "lie") {
                response
                    .headers_mut()
                    .append(http::HeaderName::try_from(name.as_str()).unwrap(), value.parse().unwrap());
            }
        }
        if let Some(content_range) = content_range {
            response.headers_mut().insert("content-range", content_range.parse().unwrap());
        }
        response.headers_mut().insert("x-count", count.into());
        response
    }
}

async fn described_origin() -> (Origin, Arc<Described>) {
    let described = Arc::new(Described::default());
    let serving = described.clone();
    let origin = Origin::start(move |request| {
        let described = serving.clone();
        Box::pin(async move {
            let path = request.uri().path_and_query().map_or("/", |pq| pq.as_str()).to_owned();
            described.answer(request.method(), &path, request.headers())
        })
    })
    .await;
    (origin, described)
}

async fn proxy(origin: &Origin, cache: &str) -> TestProxy {
    TestProxy::start(&format!(
        "[[listener]]\nbind = \"127.0.0.1:0\"\n[upstream.app]\nservers = [{{ addr = \"{}\" }}]\n\
         [[route]]\nname = \"cached\"\nupstream = \"app\"\ncache = {cache}\n",
        origin.addr
    ))
    .await
}

async fn fetch(proxy: &TestProxy, method: &str, path: &str, headers: &[(&str, &str)]) -> Collected {
    sluice_tests::request_as(proxy, "app.test", method, path, headers).await
}

fn header(response: &Collected, name: &str) -> String {
    response.headers.get(name).map(|value| value.to_str().unwrap().to_owned()).unwrap_or_default()
}

/// Whether the second of two GETs of `path` came from the cache.
async fn reused(proxy: &TestProxy, path: &str) -> bool {
    let first = fetch(proxy, "GET", path, &[]).await;
    assert!(first.status.as_u16() < 400 || first.status.as_u16() > 505, "{path}: {}", first.status);
    header(&fetch(proxy, "GET", path, &[]).await, "x-count") == header(&first, "x-count")
}

#[tokio::test]
async fn targeted_fields_replace_cache_control_for_this_cache() {
    let (origin, _) = described_origin().await;
    let proxy = proxy(&origin, "{}").await;
    let cases = [
        ("/a?cdn-cache-control=max-age%3D60&cache-control=no-store", true),
        ("/b?cdn-cache-control=max-age%3D60&cache-control=max-age%3D0&expires=0", true),
        ("/c?cdn-cache-control=no-store&cache-control=max-age%3D60", false),
        ("/d?cdn-cache-control=max-age%3D0&cache-control=max-age%3D60", false),
        ("/e?cdn-cache-control=private&cache-control=max-age%3D60", false),
        ("/f?cdn-cache-control=no-cache&cache-control=max-age%3D60", false),
        // Not a valid Structured Field (a string where max-age needs an integer; an unknown
        // token): ignored, so Cache-Control decides.
        ("/g?cdn-cache-control=max-age%3D%2260%22&cache-control=no-store", false),
        ("/h?cdn-cache-control=max-age%3D60%2C%20%26%26&cache-control=no-store", false),
        ("/i?cdn-cache-control=MaX-AgE%3D60&cache-control=no-store", false),
        ("/j?cdn-cache-control=max-age%3D60%2C%20foo&cache-control=no-store", true),
    ];
    for (path, expected) in cases {
        assert_eq!(reused(&proxy, path).await, expected, "{path}");
    }
    // The field goes on to the client: a CDN in front may obey it too.
    let forwarded = fetch(&proxy, "GET", "/a?cdn-cache-control=max-age%3D60&cache-control=no-store", &[]).await;
    assert_eq!(header(&forwarded, "cdn-cache-control"), "max-age=60");

    // A route may name its own field first; the first one present wins.
    let own = self::proxy(&origin, "{ targeted_fields = [\"sluice-cache-control\", \"cdn-cache-control\"] }").await;
    assert!(!reused(&own, "/k?sluice-cache-control=no-store&cdn-cache-control=max-age%3D60").await);
    assert!(reused(&own, "/l?cdn-cache-control=max-age%3D60&cache-control=no-store").await);
    let none = self::proxy(&origin, "{ targeted_fields = [] }").await;
    assert!(!reused(&none, "/m?cdn-cache-control=max-age%3D60&cache-control=no-store").await);
}

#[tokio::test]
async fn ranges_are_answered_from_a_stored_whole_response() {
    let (origin, _) = described_origin().await;
    let proxy = proxy(&origin, "{}").await;
    let path = "/r?cache-control=max-age%3D60&etag=%22v1%22";
    assert_eq!(fetch(&proxy, "GET", path, &[]).await.text(), "0123456789");
    let cases = [
        ("bytes=2-4", 206, "234", "bytes 2-4/10"),
        ("bytes=7-", 206, "789", "bytes 7-9/10"),
        ("bytes=-2", 206, "89", "bytes 8-9/10"),
        ("bytes=5-500", 206, "56789", "bytes 5-9/10"),
        ("bytes=10-", 416, "", "bytes */10"),
        ("bytes=0-1,4-5", 200, "0123456789", ""),
        ("bytes=4-2", 200, "0123456789", ""),
    ];
    for (range, status, text, content_range) in cases {
        let answer = fetch(&proxy, "GET", path, &[("range", range)]).await;
        assert_eq!(answer.status.as_u16(), status, "{range}");
        assert_eq!(answer.text(), text, "{range}");
        assert_eq!(header(&answer, "content-range"), content_range, "{range}");
        assert_eq!(header(&answer, "x-count"), "1", "{range} comes from the cache");
        assert!(header(&answer, "cache-status").starts_with("sluice; hit"), "{range}");
    }
    let current = fetch(&proxy, "GET", path, &[("range", "bytes=0-0"), ("if-range", "\"v1\"")]).await;
    assert_eq!((current.status.as_u16(), current.text().as_str()), (206, "0"));
    let changed = fetch(&proxy, "GET", path, &[("range", "bytes=0-0"), ("if-range", "\"v0\"")]).await;
    assert_eq!((changed.status.as_u16(), changed.text().as_str()), (200, "0123456789"), "If-Range not met: all of it");
}

#[tokio::test]
async fn stored_parts_answer_ranges_inside_them_and_are_completed_by_their_validator() {
    let (origin, described) = described_origin().await;
    let proxy = proxy(&origin, "{}").await;
    let path = "/p?cache-control=max-age%3D60&etag=%22v1%22&ranges=yes";
    let part = fetch(&proxy, "GET", path, &[("range", "bytes=0-4")]).await;
    assert_eq!((part.status.as_u16(), part.text().as_str()), (206, "01234"));
    assert!(header(&part, "cache-status").contains("stored"), "{}", header(&part, "cache-status"));

    let inside = fetch(&proxy, "GET", path, &[("range", "bytes=1-3")]).await;
    assert_eq!((inside.status.as_u16(), inside.text().as_str()), (206, "123"));
    assert_eq!(header(&inside, "content-range"), "bytes 1-3/10");
    assert_eq!(header(&inside, "x-count"), "1", "from the stored part");

    // The whole: the stored five bytes, and the origin asked for the rest under If-Range.
    let whole = fetch(&proxy, "GET", path, &[]).await;
    assert_eq!((whole.status.as_u16(), whole.text().as_str()), (200, "0123456789"));
    assert_eq!(header(&whole, "content-length"), "10");
    assert!(header(&whole, "content-range").is_empty());
    let asked = described.seen(path).pop().unwrap();
    assert_eq!(asked["range"], "bytes=5-");
    assert_eq!(asked["if-range"], "\"v1\"");
    let again = fetch(&proxy, "GET", path, &[]).await;
    assert_eq!((again.text().as_str(), header(&again, "x-count").as_str()), ("0123456789", "2"), "now stored whole");

    // A part shorter than its Content-Range claims is passed on but not stored.
    let lying = "/q?cache-control=max-age%3D60&etag=%22v1%22&ranges=yes&lie=yes";
    let first = fetch(&proxy, "GET", lying, &[("range", "bytes=0-4")]).await;
    assert_eq!(first.text(), "0123");
    let second = fetch(&proxy, "GET", lying, &[("range", "bytes=0-4")]).await;
    assert_eq!(header(&second, "x-count"), "2");
}

#[tokio::test]
async fn successful_unsafe_requests_invalidate_their_uri_and_the_uris_they_name_on_its_host() {
    let (origin, _) = described_origin().await;
    let proxy = proxy(&origin, "{}").await;
    let cached = ["/a?cache-control=max-age%3D60", "/b?cache-control=max-age%3D60", "/c?cache-control=max-age%3D60"];
    let count = |path| {
        let proxy = &proxy;
        async move { header(&fetch(proxy, "GET", path, &[]).await, "x-count") }
    };
    for path in cached {
        assert_eq!(count(path).await, "1");
        assert_eq!(count(path).await, "1", "{path} is stored");
    }
    // A failed change changes nothing.
    let failed = fetch(&proxy, "POST", cached[0], &[("x-reply-status", "500")]).await;
    assert_eq!(failed.status, 500);
    assert_eq!(count(cached[0]).await, "1");
    // A successful one invalidates its own URI, and what Location and Content-Location name on
    // the same host, but not another host's.
    let changed = fetch(
        &proxy,
        "PUT",
        cached[0],
        &[
            ("x-reply-location", "/b?cache-control=max-age%3D60"),
            ("x-reply-content-location", "http://app.test/c?cache-control=max-age%3D60"),
        ],
    )
    .await;
    assert_eq!(changed.status, 200);
    assert_eq!(count(cached[0]).await, "4", "its own URI is fetched again (its count has the POST and PUT)");
    assert_eq!(count(cached[1]).await, "2", "Location's URI is fetched again");
    assert_eq!(count(cached[2]).await, "2", "Content-Location's URI is fetched again");

    assert_eq!(count("/d?cache-control=max-age%3D60").await, "1");
    let elsewhere =
        fetch(&proxy, "DELETE", "/e", &[("x-reply-location", "http://other.test/d?cache-control=max-age%3D60")]).await;
    assert_eq!(elsewhere.status, 200);
    assert_eq!(count("/d?cache-control=max-age%3D60").await, "1", "another host's URI is left alone");
}

#[tokio::test]
async fn must_understand_head_freshening_204s_and_fields_kept_from_the_store() {
    let (origin, _) = described_origin().await;
    let proxy = proxy(&origin, "{}").await;
    // must-understand: an unknown status is not stored, a known one is even under no-store.
    assert!(!reused(&proxy, "/u?status=599&cache-control=max-age%3D60%2C%20must-understand").await);
    assert!(reused(&proxy, "/k?cache-control=no-store%2C%20must-understand%2C%20max-age%3D60").await);
    // A 204 has no body to wait for: it is stored at once.
    assert!(reused(&proxy, "/n?status=204&cache-control=max-age%3D60").await);
    // `public` gives a status with no heuristic rule a heuristic lifetime.
    let last_week = httpdate::fmt_http_date(std::time::SystemTime::now() - std::time::Duration::from_secs(7 * 86400));
    let heuristic = format!("/x?status=599&cache-control=public&last-modified={}", last_week.replace(' ', "%20"));
    assert!(reused(&proxy, &heuristic).await);

    // no-cache naming a field: stored and reused without it.
    let path = "/s?cache-control=max-age%3D60%2C%20no-cache%3D%22set-cookie%22&set-cookie=id%3D1";
    let first = fetch(&proxy, "GET", path, &[]).await;
    assert_eq!(header(&first, "set-cookie"), "id=1", "the client it was meant for gets its cookie");
    let second = fetch(&proxy, "GET", path, &[]).await;
    assert_eq!(header(&second, "x-count"), "1");
    assert!(!second.headers.contains_key("set-cookie"), "no one else gets it");

    // A stale entry (max-age=0, with a validator): a HEAD's 200 freshens it for later GETs.
    let stale = "/h?cache-control=max-age%3D0&etag=%22v1%22";
    assert_eq!(header(&fetch(&proxy, "GET", stale, &[]).await, "x-count"), "1");
    let head = fetch(&proxy, "HEAD", stale, &[("x-reply-cache-control", "max-age=60"), ("x-reply-x-new", "yes")]).await;
    assert_eq!(head.status, 200);
    let freshened = fetch(&proxy, "GET", stale, &[]).await;
    assert!(header(&freshened, "cache-status").starts_with("sluice; hit"), "{}", header(&freshened, "cache-status"));
    assert_eq!(freshened.text(), "0123456789");
    assert_eq!(header(&freshened, "x-new"), "yes", "the HEAD's fields");
    assert_eq!(header(&freshened, "cache-control"), "max-age=60");
}

#[tokio::test]
async fn entity_tags_with_obs_text_match_the_clients_if_none_match() {
    let (origin, _) = described_origin().await;
    let proxy = proxy(&origin, "{}").await;
    let path = "/o?cache-control=max-age%3D60&etag=%22caf%C3%A9%22";
    let first = fetch(&proxy, "GET", path, &[]).await;
    let etag = first.headers["etag"].clone();
    assert_eq!(etag.as_bytes(), "\"café\"".as_bytes());
    let mut request = Request::get(proxy.url(path)).header("host", "app.test");
    request = request.header("if-none-match", etag);
    let conditional = send(&http1_client(), request.body(body::empty()).unwrap()).await;
    assert_eq!(conditional.status, 304, "the stored tag matches byte for byte");
}
