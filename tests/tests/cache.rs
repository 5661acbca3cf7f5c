//! The HTTP cache through a running proxy: what is stored and for how long (a matrix of origin
//! headers), revalidation, Vary, coalescing of concurrent misses, purges on the admin API,
//! stale-if-error with the origin down, stale-while-revalidate, compressed variants, and HEAD,
//! only-if-cached and unsafe methods.

use std::collections::HashMap;
use std::io::Read;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use http::{HeaderMap, Request, Response, StatusCode};
use sluice_http::body;
use sluice_tests::{Collected, Origin, TestProxy, http1_client, send};
use tokio::sync::Semaphore;

/// What the scripted origin answers on one path.
#[derive(Clone, Default)]
struct Reply {
    status: u16,
    headers: Vec<(&'static str, String)>,
    /// Answer a request whose `If-None-Match` names this with 304 and `revalidated` headers.
    etag: Option<&'static str>,
    revalidated: Vec<(&'static str, String)>,
}

fn reply(headers: &[(&'static str, &str)]) -> Reply {
    Reply {
        status: 200,
        headers: headers.iter().map(|(name, value)| (*name, (*value).to_owned())).collect(),
        ..Reply::default()
    }
}

/// An origin answering each path as scripted, counting what it answers. Bodies say how many
/// full answers the path has had (`/a #2`), so a test sees whether a body came from the cache.
#[derive(Default)]
struct Script {
    replies: Mutex<HashMap<String, Reply>>,
    full_answers: Mutex<HashMap<String, usize>>,
    requests: Mutex<Vec<(String, HeaderMap)>>,
    /// While set, requests wait for a permit before being answered.
    gate: Mutex<Option<Arc<Semaphore>>>,
}

impl Script {
    fn set(&self, path: &str, reply: Reply) {
        self.replies.lock().unwrap().insert(path.to_owned(), reply);
    }

    /// Requests the origin got for `path`.
    fn seen(&self, path: &str) -> Vec<HeaderMap> {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .filter(|(seen, _)| seen == path)
            .map(|(_, headers)| headers.clone())
            .collect()
    }

    fn answer(&self, path: &str, request_headers: &HeaderMap) -> Response<body::ProxyBody> {
        let reply = self.replies.lock().unwrap().get(path).cloned().unwrap_or_else(|| reply(&[]));
        let if_none_match = request_headers.get("if-none-match").and_then(|value| value.to_str().ok());
        let not_modified = reply.etag.is_some_and(|etag| if_none_match.is_some_and(|sent| sent.contains(etag)));
        let mut response = if not_modified {
            let mut response = Response::new(body::empty());
            *response.status_mut() = StatusCode::NOT_MODIFIED;
            for (name, value) in &reply.revalidated {
                response.headers_mut().append(*name, value.parse().unwrap());
            }
            response
        } else {
            let count = {
                let mut counts = self.full_answers.lock().unwrap();
                let count = counts.entry(path.to_owned()).or_default();
                *count += 1;
                *count
            };
            let language = request_headers.get("accept-language").and_then(|value| value.to_str().ok()).unwrap_or("");
            let mut response = Response::new(body::full(format!("{path} #{count} {language}")));
            *response.status_mut() = StatusCode::from_u16(reply.status).unwrap();
            for (name, value) in &reply.headers {
                response.headers_mut().append(*name, value.parse().unwrap());
            }
            response
        };
        if let Some(etag) = reply.etag {
            response.headers_mut().insert("etag", format!("\"{etag}\"").parse().unwrap());
        }
        response
    }
}

async fn scripted_origin() -> (Origin, Arc<Script>) {
    let script = Arc::new(Script::default());
    let serving = script.clone();
    let origin = Origin::start(move |request| {
        let script = serving.clone();
        Box::pin(async move {
            let path = request.uri().path_and_query().map_or("/", |pq| pq.as_str()).to_owned();
            script.requests.lock().unwrap().push((path.clone(), request.headers().clone()));
            let gate = script.gate.lock().unwrap().clone();
            if let Some(gate) = gate {
                let _permit = gate.acquire().await.expect("gate open");
            }
            script.answer(&path, request.headers())
        })
    })
    .await;
    (origin, script)
}

const TOKEN: &str = "purge-token-0123456789";

async fn proxy(origin: &Origin, cache: &str, extra_route: &str) -> TestProxy {
    TestProxy::start(&format!(
        "[[listener]]\nbind = \"127.0.0.1:0\"\n[admin]\nbind = \"127.0.0.1:0\"\nreload_token = \"{TOKEN}\"\n\
         [upstream.app]\nservers = [{{ addr = \"{}\" }}]\n\
         [[route]]\nname = \"cached\"\nupstream = \"app\"\ncache = {cache}\n{extra_route}",
        origin.addr
    ))
    .await
}

async fn fetch(proxy: &TestProxy, method: &str, path: &str, headers: &[(&str, &str)]) -> Collected {
    sluice_tests::request_as(proxy, "app.test", method, path, headers).await
}

fn cache_status(response: &Collected) -> String {
    response.headers.get("cache-status").map(|value| value.to_str().unwrap().to_owned()).unwrap_or_default()
}

fn http_date(offset_seconds: i64) -> String {
    let now = SystemTime::now();
    let at = if offset_seconds >= 0 {
        now + Duration::from_secs(offset_seconds as u64)
    } else {
        now - Duration::from_secs((-offset_seconds) as u64)
    };
    httpdate::fmt_http_date(at)
}

#[tokio::test]
async fn what_is_stored_and_reused_follows_the_origins_headers() {
    let (origin, script) = scripted_origin().await;
    let proxy = proxy(&origin, "{}", "").await;
    let in_a_minute = http_date(60);
    let ten_days_ago = http_date(-10 * 24 * 3600);
    let now = http_date(0);
    // (path, origin headers, request headers, second answer from the cache?)
    type Case<'a> = (&'a str, Vec<(&'static str, &'a str)>, Vec<(&'a str, &'a str)>, bool);
    let cases: Vec<Case<'_>> = vec![
        ("/max-age", vec![("cache-control", "max-age=60")], vec![], true),
        ("/s-maxage", vec![("cache-control", "max-age=0, s-maxage=60")], vec![], true),
        ("/expires", vec![("date", &now), ("expires", &in_a_minute)], vec![], true),
        ("/heuristic", vec![("date", &now), ("last-modified", &ten_days_ago)], vec![], true),
        ("/no-store", vec![("cache-control", "no-store, max-age=60")], vec![], false),
        ("/private", vec![("cache-control", "private, max-age=60")], vec![], false),
        ("/cookie", vec![("cache-control", "max-age=60"), ("set-cookie", "id=1")], vec![], false),
        ("/aged", vec![("cache-control", "max-age=60"), ("age", "120")], vec![], false),
        ("/expired", vec![("date", &now), ("expires", "0")], vec![], false),
        ("/nothing", vec![], vec![], false),
        ("/vary-star", vec![("cache-control", "max-age=60"), ("vary", "*")], vec![], false),
        ("/authorized", vec![("cache-control", "max-age=60")], vec![("authorization", "Bearer x")], false),
        (
            "/authorized-public",
            vec![("cache-control", "public, max-age=60")],
            vec![("authorization", "Bearer x")],
            true,
        ),
        ("/client-no-store", vec![("cache-control", "max-age=60")], vec![("cache-control", "no-store")], false),
    ];
    for (path, origin_headers, request_headers, reused) in &cases {
        script.set(path, reply(origin_headers));
        let first = fetch(&proxy, "GET", path, request_headers).await;
        assert_eq!(first.status, 200, "{path}");
        assert!(cache_status(&first).starts_with("sluice; fwd=uri-miss"), "{path}: {}", cache_status(&first));
        let second = fetch(&proxy, "GET", path, request_headers).await;
        assert_eq!(second.status, 200, "{path}");
        if *reused {
            assert_eq!(second.text(), format!("{path} #1 "), "{path} comes from the cache");
            assert!(cache_status(&second).starts_with("sluice; hit; ttl="), "{path}: {}", cache_status(&second));
            assert!(second.headers.contains_key("age"), "{path}: a hit says its age");
        } else {
            assert_eq!(second.text(), format!("{path} #2 "), "{path} goes to the origin again");
        }
    }

    // A client's no-cache sends the request on even when a fresh entry exists.
    let forced = fetch(&proxy, "GET", "/max-age", &[("cache-control", "no-cache")]).await;
    assert_eq!(forced.text(), "/max-age #2 ");
    assert!(cache_status(&forced).contains("fwd=request"), "{}", cache_status(&forced));
    // A client's max-age stricter than the entry's age does the same.
    let strict = fetch(&proxy, "GET", "/s-maxage", &[("cache-control", "max-age=0")]).await;
    assert_eq!(strict.text(), "/s-maxage #2 ");
}

#[tokio::test]
async fn stale_entries_are_revalidated_and_a_304_makes_them_fresh_again() {
    let (origin, script) = scripted_origin().await;
    let proxy = proxy(&origin, "{}", "").await;
    script.set(
        "/doc",
        Reply {
            etag: Some("v1"),
            revalidated: vec![("cache-control", "max-age=60".to_owned())],
            ..reply(&[("cache-control", "no-cache"), ("x-version", "one")])
        },
    );
    let first = fetch(&proxy, "GET", "/doc", &[]).await;
    assert_eq!(first.text(), "/doc #1 ");
    assert!(cache_status(&first).contains("stored"), "{}", cache_status(&first));

    // no-cache: stored, but asked about every time; the origin's 304 keeps the stored body.
    let second = fetch(&proxy, "GET", "/doc", &[]).await;
    assert_eq!(second.status, 200);
    assert_eq!(second.text(), "/doc #1 ", "the stored body, not a new one");
    assert_eq!(second.headers["x-version"], "one");
    // The freshness left is whole seconds of the 304's max-age=60, less any second boundary
    // crossed since the origin dated it.
    let status = cache_status(&second);
    assert!(
        status == "sluice; fwd=stale; fwd-status=304; ttl=60; stored"
            || status == "sluice; fwd=stale; fwd-status=304; ttl=59; stored",
        "{status}"
    );
    let conditional = script.seen("/doc");
    assert_eq!(conditional.len(), 2);
    assert_eq!(conditional[1]["if-none-match"], "\"v1\"", "the cache asked with its validator");

    // The 304 said max-age=60: now it is fresh and served without the origin.
    let third = fetch(&proxy, "GET", "/doc", &[]).await;
    assert_eq!(third.text(), "/doc #1 ");
    assert!(cache_status(&third).starts_with("sluice; hit"), "{}", cache_status(&third));
    assert_eq!(script.seen("/doc").len(), 2);

    // A client's own validator is answered from the cache with 304.
    let client_conditional = fetch(&proxy, "GET", "/doc", &[("if-none-match", "\"v1\"")]).await;
    assert_eq!(client_conditional.status, 304);
    assert!(client_conditional.body.is_empty());

    // Revalidation by Last-Modified alone.
    let modified = http_date(-3600);
    script.set("/dated", reply(&[("cache-control", "max-age=0"), ("last-modified", &modified)]));
    fetch(&proxy, "GET", "/dated", &[]).await;
    fetch(&proxy, "GET", "/dated", &[]).await;
    let seen = script.seen("/dated");
    assert_eq!(seen[1]["if-modified-since"].to_str().unwrap(), modified);
}

#[tokio::test]
async fn vary_keeps_one_variant_per_selecting_header_value() {
    let (origin, script) = scripted_origin().await;
    let proxy = proxy(&origin, "{}", "").await;
    script.set("/page", reply(&[("cache-control", "max-age=60"), ("vary", "Accept-Language")]));
    let english = fetch(&proxy, "GET", "/page", &[("accept-language", "en")]).await;
    let french = fetch(&proxy, "GET", "/page", &[("accept-language", "fr")]).await;
    assert_eq!(english.text(), "/page #1 en");
    assert_eq!(french.text(), "/page #2 fr");
    assert!(cache_status(&french).contains("fwd=vary-miss"), "{}", cache_status(&french));
    assert_eq!(fetch(&proxy, "GET", "/page", &[("accept-language", "en")]).await.text(), "/page #1 en");
    assert_eq!(fetch(&proxy, "GET", "/page", &[("accept-language", "fr")]).await.text(), "/page #2 fr");
    let none = fetch(&proxy, "GET", "/page", &[]).await;
    assert_eq!(none.text(), "/page #3 ", "no Accept-Language is a variant of its own");
    assert_eq!(script.seen("/page").len(), 3);
}

#[tokio::test]
async fn a_hundred_concurrent_misses_make_one_origin_request() {
    let (origin, script) = scripted_origin().await;
    let proxy = Arc::new(proxy(&origin, "{}", "").await);
    script.set("/hot", reply(&[("cache-control", "max-age=60")]));
    // The origin holds its answer until every client has sent its request.
    let gate = Arc::new(Semaphore::new(0));
    *script.gate.lock().unwrap() = Some(gate.clone());
    let clients: Vec<_> = (0..100)
        .map(|_| {
            let proxy = proxy.clone();
            tokio::spawn(async move { fetch(&proxy, "GET", "/hot", &[]).await })
        })
        .collect();
    // Wait for the origin's first request: the other 99 are then waiting on it or arriving.
    while script.seen("/hot").is_empty() {
        tokio::task::yield_now().await;
    }
    gate.add_permits(1000);
    let mut stored = 0;
    for client in clients {
        let response = client.await.unwrap();
        assert_eq!(response.status, 200);
        assert_eq!(response.text(), "/hot #1 ");
        let status = cache_status(&response);
        if status.contains("stored") {
            stored += 1;
        } else {
            assert!(status.starts_with("sluice; hit"), "{status}");
        }
    }
    assert_eq!(stored, 1, "one request fetched and stored");
    assert_eq!(script.seen("/hot").len(), 1, "the origin was asked once");
}

async fn purge(proxy: &TestProxy, body: &str, token: &str) -> (u16, String) {
    let request = Request::post(format!("http://{}/cache/purge", proxy.admin.unwrap()))
        .header("authorization", format!("Bearer {token}"))
        .body(body::full(body.to_owned()))
        .unwrap();
    let response = send(&http1_client(), request).await;
    (response.status.as_u16(), response.text())
}

#[tokio::test]
async fn purges_by_key_prefix_and_tag_need_the_token() {
    let (origin, script) = scripted_origin().await;
    let proxy = proxy(&origin, "{}", "").await;
    for (path, tags) in [("/img/a", "images blue"), ("/img/b", "images"), ("/doc/c", "docs, blue"), ("/doc/d", "docs")]
    {
        script.set(path, reply(&[("cache-control", "max-age=600"), ("cache-tag", tags)]));
        fetch(&proxy, "GET", path, &[]).await;
    }
    let cached = |path: &'static str| {
        let proxy = &proxy;
        async move { cache_status(&fetch(proxy, "GET", path, &[]).await).starts_with("sluice; hit") }
    };
    assert!(cached("/img/a").await && cached("/doc/d").await);

    assert_eq!(purge(&proxy, r#"{"tag": "blue"}"#, "wrong-token-0123456789").await.0, 401);
    assert_eq!(purge(&proxy, r#"{"tag": "blue", "key": "x"}"#, TOKEN).await.0, 400);
    assert_eq!(purge(&proxy, "not json", TOKEN).await.0, 400);

    assert_eq!(purge(&proxy, r#"{"tag": "blue"}"#, TOKEN).await, (200, "{\"purged\":2}\n".to_owned()));
    assert!(!cached("/img/a").await, "tagged blue");
    assert!(!cached("/doc/c").await, "tagged blue");
    assert!(cached("/img/b").await && cached("/doc/d").await);

    assert_eq!(purge(&proxy, r#"{"prefix": "app.test/img/"}"#, TOKEN).await, (200, "{\"purged\":2}\n".to_owned()));
    assert!(!cached("/img/b").await);
    assert_eq!(purge(&proxy, r#"{"key": "app.test/doc/d", "route": "other"}"#, TOKEN).await.1, "{\"purged\":0}\n");
    assert_eq!(purge(&proxy, r#"{"key": "app.test/doc/d", "route": "cached"}"#, TOKEN).await.1, "{\"purged\":1}\n");
    assert!(!cached("/doc/d").await);

    let metrics = send(
        &http1_client(),
        Request::get(format!("http://{}/metrics", proxy.admin.unwrap())).body(body::empty()).unwrap(),
    )
    .await
    .text();
    assert!(metrics.contains("sluice_cache_purged_total 5"), "{metrics}");
    assert!(metrics.contains("sluice_cache_lookups_total{route=\"cached\",result=\"hit\"}"), "{metrics}");
    assert!(metrics.contains("sluice_cache_stored_bytes"), "{metrics}");
}

#[tokio::test]
async fn stale_entries_stand_in_when_the_origin_fails_or_is_down() {
    let (origin, script) = scripted_origin().await;
    let proxy = proxy(&origin, "{}", "").await;
    // Stale on arrival (Age past max-age), but allowed to cover errors for ten minutes.
    script.set("/covered", reply(&[("cache-control", "max-age=1, stale-if-error=600"), ("age", "5")]));
    script.set("/strict", reply(&[("cache-control", "max-age=1, stale-if-error=600, must-revalidate"), ("age", "5")]));
    assert_eq!(fetch(&proxy, "GET", "/covered", &[]).await.text(), "/covered #1 ");
    fetch(&proxy, "GET", "/strict", &[]).await;

    script.set("/covered", Reply { status: 503, ..reply(&[]) });
    let covered = fetch(&proxy, "GET", "/covered", &[]).await;
    assert_eq!(covered.status, 200);
    assert_eq!(covered.text(), "/covered #1 ");
    assert!(cache_status(&covered).contains("fwd-status=503") && cache_status(&covered).contains("stale-if-error"));

    drop(origin);
    let down = fetch(&proxy, "GET", "/covered", &[]).await;
    assert_eq!(down.status, 200, "the origin is gone; the stale copy answers");
    assert_eq!(down.text(), "/covered #1 ");
    assert!(cache_status(&down).contains("fwd=stale"), "{}", cache_status(&down));
    let strict = fetch(&proxy, "GET", "/strict", &[]).await;
    assert_eq!(strict.status, 502, "must-revalidate forbids serving it stale");
}

#[tokio::test]
async fn stale_while_revalidate_answers_at_once_and_refreshes_in_the_background() {
    let (origin, script) = scripted_origin().await;
    let proxy = proxy(&origin, "{}", "").await;
    script.set(
        "/feed",
        Reply {
            etag: Some("f1"),
            revalidated: vec![("cache-control", "max-age=600".to_owned())],
            ..reply(&[("cache-control", "max-age=1, stale-while-revalidate=600"), ("age", "5")])
        },
    );
    fetch(&proxy, "GET", "/feed", &[]).await;
    let stale = fetch(&proxy, "GET", "/feed", &[]).await;
    assert_eq!(stale.text(), "/feed #1 ");
    let status = cache_status(&stale);
    assert!(status.starts_with("sluice; hit; ttl=-") && status.ends_with("detail=stale-while-revalidate"), "{status}");

    // The refresh runs after the answer; wait for the entry to come back fresh.
    let refreshed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let response = fetch(&proxy, "GET", "/feed", &[]).await;
            if !cache_status(&response).contains("stale-while-revalidate") {
                return response;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the background refresh completes");
    assert_eq!(refreshed.text(), "/feed #1 ", "a 304 kept the body");
    assert!(cache_status(&refreshed).starts_with("sluice; hit; ttl="), "{}", cache_status(&refreshed));
    let seen = script.seen("/feed");
    assert_eq!(seen.len(), 2, "one background revalidation");
    assert_eq!(seen[1]["if-none-match"], "\"f1\"");
}

#[tokio::test]
async fn compressed_variants_are_stored_once_per_encoding() {
    let (origin, script) = scripted_origin().await;
    let proxy = proxy(&origin, "{}", "compression = { min_bytes = 0 }\n").await;
    script.set("/text", reply(&[("cache-control", "max-age=60"), ("content-type", "text/plain")]));
    let gzip = fetch(&proxy, "GET", "/text", &[("accept-encoding", "gzip")]).await;
    assert_eq!(gzip.headers["content-encoding"], "gzip");
    let again = fetch(&proxy, "GET", "/text", &[("accept-encoding", "gzip, deflate")]).await;
    assert!(cache_status(&again).starts_with("sluice; hit"), "the same encoding chosen: {}", cache_status(&again));
    assert_eq!(again.headers["content-encoding"], "gzip", "stored compressed, not compressed again");
    assert_eq!(again.body, gzip.body, "the very bytes stored");
    let mut decoded = String::new();
    flate2::read::GzDecoder::new(&again.body[..]).read_to_string(&mut decoded).unwrap();
    assert_eq!(decoded, "/text #1 ");

    let brotli = fetch(&proxy, "GET", "/text", &[("accept-encoding", "br")]).await;
    assert_eq!(brotli.headers["content-encoding"], "br");
    assert!(cache_status(&brotli).contains("fwd=vary-miss"), "{}", cache_status(&brotli));
    let plain = fetch(&proxy, "GET", "/text", &[]).await;
    assert!(!plain.headers.contains_key("content-encoding"));
    assert_eq!(plain.text(), "/text #3 ");
    let identity = fetch(&proxy, "GET", "/text", &[("accept-encoding", "identity")]).await;
    assert!(cache_status(&identity).contains("hit"), "{} {:?}", cache_status(&identity), plain.headers);
}

#[tokio::test]
async fn head_only_if_cached_unsafe_methods_and_bypass_rules() {
    let (origin, script) = scripted_origin().await;
    let proxy = proxy(&origin, "{ bypass_cookies = [\"session\"], bypass_headers = [\"x-no-cache\"] }", "").await;
    script.set("/item", reply(&[("cache-control", "max-age=60")]));

    let missing = fetch(&proxy, "GET", "/item", &[("cache-control", "only-if-cached")]).await;
    assert_eq!(missing.status, 504);
    fetch(&proxy, "GET", "/item", &[]).await;
    let head = fetch(&proxy, "HEAD", "/item", &[]).await;
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    assert!(cache_status(&head).starts_with("sluice; hit"), "HEAD is answered from the GET entry");
    assert_eq!(fetch(&proxy, "GET", "/item", &[("cache-control", "only-if-cached")]).await.status, 200);

    let bypassed = fetch(&proxy, "GET", "/item", &[("cookie", "session=abc")]).await;
    assert_eq!(bypassed.text(), "/item #2 ");
    assert_eq!(cache_status(&bypassed), "sluice; fwd=bypass; fwd-status=200");
    assert_eq!(fetch(&proxy, "GET", "/item", &[("x-no-cache", "1")]).await.text(), "/item #3 ");
    assert_eq!(fetch(&proxy, "GET", "/item", &[]).await.text(), "/item #1 ", "bypasses leave the entry alone");

    let changed = fetch(&proxy, "POST", "/item", &[]).await;
    assert_eq!(cache_status(&changed), "sluice; fwd=method; fwd-status=200");
    let after = fetch(&proxy, "GET", "/item", &[]).await;
    assert_eq!(after.text(), "/item #5 ", "a POST to the URI invalidates what is stored for it");
}

#[tokio::test]
async fn routes_without_a_cache_never_store_and_large_bodies_pass_through() {
    let (origin, script) = scripted_origin().await;
    let proxy = proxy(
        &origin,
        "{ max_object_bytes = 4 }",
        "[[route]]\nname = \"plain\"\nupstream = \"app\"\npath_prefix = \"/plain\"\n",
    )
    .await;
    script.set("/plain/x", reply(&[("cache-control", "max-age=60")]));
    fetch(&proxy, "GET", "/plain/x", &[]).await;
    let second = fetch(&proxy, "GET", "/plain/x", &[]).await;
    assert_eq!(second.text(), "/plain/x #2 ");
    assert!(!second.headers.contains_key("cache-status"));

    script.set("/big", reply(&[("cache-control", "max-age=60")]));
    let big = fetch(&proxy, "GET", "/big", &[]).await;
    assert_eq!(big.text(), "/big #1 ", "the client gets all of it");
    assert_eq!(fetch(&proxy, "GET", "/big", &[]).await.text(), "/big #2 ", "but it was too large to keep");
}

#[tokio::test]
async fn a_304_that_sets_a_cookie_gives_it_to_its_client_and_drops_the_entry() {
    let (origin, script) = scripted_origin().await;
    let proxy = proxy(&origin, "{}", "").await;
    script.set(
        "/session",
        Reply {
            etag: Some("v1"),
            revalidated: vec![("set-cookie", "fresh=1".to_owned()), ("cache-control", "max-age=60".to_owned())],
            ..reply(&[("cache-control", "no-cache")])
        },
    );
    assert_eq!(fetch(&proxy, "GET", "/session", &[]).await.text(), "/session #1 ");
    let revalidated = fetch(&proxy, "GET", "/session", &[]).await;
    assert_eq!(revalidated.text(), "/session #1 ", "the stored body");
    assert_eq!(revalidated.headers["set-cookie"], "fresh=1", "the 304's cookie reaches the client it was for");
    assert!(!cache_status(&revalidated).contains("stored"), "{}", cache_status(&revalidated));
    let after = fetch(&proxy, "GET", "/session", &[]).await;
    assert_eq!(after.text(), "/session #2 ", "nothing is stored with another client's cookie");
}
