//! Several Sluice instances as one: two instances (each with its own filter runtime, as two
//! processes would have) sharing one real `redis-server` for their tenants' key-value state.
//! A rate limit holds across both, a value one writes the other reads, tenants stay apart, and
//! with Redis gone requests fail only as the filter's policy says, until it is back.

use http::Request;
use sluice::config::Services;
use sluice_http::body;
use sluice_tests::{Collected, Origin, RedisServer, TestProxy, admin_text, http1_client, plugin, send};
use std::net::SocketAddr;

const TOKEN: &str = "scale-out-token-0123456789";

fn config(origin: &Origin, redis_url: &str, timeout: &str) -> String {
    format!(
        r#"
[[listener]]
bind = "127.0.0.1:0"
[admin]
bind = "127.0.0.1:0"
reload_token = "{TOKEN}"
[cluster]
redis = "shared"
[upstream.app]
servers = [{{ addr = "{origin}" }}]
[redis.shared]
url = "{redis_url}"
timeout = "{timeout}"
connect_timeout = "200ms"
[plugin.rate_limit]
source = "{rate_limit}"
[plugin.probe]
source = "{probe}"
[tenant.shop]
kv_backend = "shared"
[tenant.blog]
kv_backend = "shared"

[[route]]
name = "cached"
path_prefix = "/cached"
upstream = "app"
cache = {{ default_ttl = "1h" }}

[[route]]
name = "limited"
path_prefix = "/limited"
tenant = "shop"
upstream = "app"
filters = [{{ plugin = "rate_limit", config = {{ limit = 10, period = "1h", headers = false }} }}]

[[route]]
name = "concurrent"
path_prefix = "/concurrent"
tenant = "shop"
upstream = "app"
filters = [{{ plugin = "rate_limit", config = {{ limit = 20, period = "1h", headers = false }} }}]

[[route]]
name = "approximate"
path_prefix = "/approximate"
tenant = "shop"
upstream = "app"
filters = [{{ plugin = "rate_limit", config = {{ limit = 50, period = "1h", mode = "approximate", flush_interval = "10ms", headers = false }} }}]

[[route]]
name = "strict"
path_prefix = "/strict"
tenant = "shop"
upstream = "app"
filters = [{{ plugin = "rate_limit", config = {{ limit = 1000, period = "1h", allow_on_store_error = false }} }}]

[[route]]
name = "shop-kv"
path_prefix = "/shop/kv"
tenant = "shop"
upstream = "app"
filters = [{{ plugin = "probe", config = {{ tag = "s", kv_echo = {{ key = "greeting", key_from_header = "x-key", set_from_header = "x-set" }} }} }}]

[[route]]
name = "blog-kv"
path_prefix = "/blog/kv"
tenant = "blog"
upstream = "app"
filters = [{{ plugin = "probe", config = {{ tag = "b", kv_echo = {{ key = "greeting", key_from_header = "x-key", set_from_header = "x-set" }} }} }}]
"#,
        origin = origin.addr,
        rate_limit = plugin("plugins/rate-limit").display(),
        probe = plugin("tests/plugins/probe").display(),
    )
}

/// Two instances on one Redis: the first on the suite's services, the second on its own.
async fn two_instances(origin: &Origin, redis: &RedisServer, timeout: &str) -> (TestProxy, TestProxy) {
    let text = config(origin, &redis.url(), timeout);
    let first = TestProxy::start(&text).await;
    let second = TestProxy::start_with(&Services::with_default_cache().unwrap(), &text).await;
    (first, second)
}

async fn get(proxy: &TestProxy, path: &str, headers: &[(&str, &str)]) -> Collected {
    let mut request = Request::get(proxy.url(path)).header("host", "app.test");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    send(&http1_client(), request.body(body::empty()).unwrap()).await
}

/// What the probe found under the key, as the origin saw it.
fn kv_value(response: &Collected) -> String {
    assert_eq!(response.status, 200, "{}", response.text());
    response.echo().header("x-kv-value").unwrap_or_default()
}

#[tokio::test]
async fn a_rate_limit_holds_across_instances_and_values_are_shared() {
    let origin = Origin::echo("app").await;
    let redis = RedisServer::start().await;
    let (first, second) = two_instances(&origin, &redis, "500ms").await;

    let mut allowed = 0;
    for index in 0..30 {
        let proxy = if index % 2 == 0 { &first } else { &second };
        match get(proxy, "/limited/x", &[]).await.status.as_u16() {
            200 => allowed += 1,
            429 => {}
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!(allowed, 10, "a limit of 10 admits 10 across both instances, not 10 each");

    // Approximate: counted locally, flushed every 10 ms; never more than the limit per filter
    // instance taking part (here one per proxy, the requests coming one at a time).
    let mut allowed = 0;
    for index in 0..150 {
        let proxy = if index % 2 == 0 { &first } else { &second };
        if get(proxy, "/approximate/x", &[]).await.status == 200 {
            allowed += 1;
        }
    }
    assert!((50..=100).contains(&allowed), "approximate mode admitted {allowed} of a limit of 50");

    let written = get(&first, "/shop/kv", &[("x-set", "hello from the first")]).await;
    assert_eq!(kv_value(&written), "hello from the first");
    assert_eq!(kv_value(&get(&second, "/shop/kv", &[]).await), "hello from the first", "the second reads it");
}

#[tokio::test]
async fn concurrent_requests_on_both_instances_take_exactly_the_limit_from_one_bucket() {
    let origin = Origin::echo("app").await;
    let redis = RedisServer::start().await;
    let (first, second) = two_instances(&origin, &redis, "500ms").await;
    // 80 requests at once, half on each instance, against one bucket of 20: each take is one
    // atomic step on the server, so none is lost to a race and none is refused for contention.
    let requests = (0..80).map(|index| {
        let proxy = if index % 2 == 0 { &first } else { &second };
        get(proxy, "/concurrent/x", &[])
    });
    let statuses: Vec<u16> = futures_util::future::join_all(requests).await.iter().map(|r| r.status.as_u16()).collect();
    assert!(statuses.iter().all(|status| *status == 200 || *status == 429), "{statuses:?}");
    assert_eq!(statuses.iter().filter(|status| **status == 200).count(), 20, "{statuses:?}");
}

#[tokio::test]
async fn token_buckets_on_redis_answer_as_the_memory_ones_do() {
    use sluice_runtime::kv::{BucketSpec, KvError, KvQuota, KvStore, RedisKv, RedisSettings};
    let redis = RedisServer::start().await;
    let settings = RedisSettings {
        name: "shared".into(),
        url: redis.url(),
        timeout: std::time::Duration::from_secs(2),
        connect_timeout: std::time::Duration::from_secs(2),
        pool_size: 1,
        key_prefix: "sluice".into(),
    };
    let on_redis = RedisKv::new(settings).unwrap();
    let in_memory = KvStore::default();
    let quota = KvQuota { max_keys: 2, max_bytes: 256 };
    // Three tokens, one an hour: the steps are far apart from the clocks' differences.
    let spec = BucketSpec::new(3, 1, 3_600_000, 1).unwrap();
    for _ in 0..4 {
        let remote = on_redis.take_tokens("shop", quota, "b", spec).await.unwrap();
        let local = in_memory.take_tokens("shop", quota, "b", spec).unwrap();
        assert_eq!((remote.taken, remote.remaining), (local.taken, local.remaining));
        // Both clocks moved on by a few milliseconds at most between the two takes.
        assert!(remote.full_in_ms.abs_diff(local.full_in_ms) < 1000, "{remote:?} / {local:?}");
        assert!(remote.retry_in_ms.abs_diff(local.retry_in_ms) < 1000, "{remote:?} / {local:?}");
    }
    let refused = on_redis.take_tokens("shop", quota, "b", spec).await.unwrap();
    assert!(!refused.taken);
    assert!(refused.retry_in_ms > 3_500_000, "{refused:?}");
    // The bucket is another tenant's key for nobody else; it counts towards its tenant's quota.
    assert!(on_redis.take_tokens("blog", quota, "b", spec).await.unwrap().taken);
    on_redis.set("shop", quota, "text", b"hello", 0).await.unwrap();
    assert_eq!(on_redis.take_tokens("shop", quota, "text", spec).await, Err(KvError::NotANumber));
    assert_eq!(on_redis.take_tokens("shop", quota, "third", spec).await, Err(KvError::QuotaExceeded));
}

#[tokio::test]
async fn a_tenant_cannot_reach_another_tenants_keys_through_any_key() {
    let origin = Origin::echo("app").await;
    let redis = RedisServer::start().await;
    let (first, second) = two_instances(&origin, &redis, "500ms").await;
    assert_eq!(kv_value(&get(&first, "/shop/kv", &[("x-key", "secret"), ("x-set", "s3cret")]).await), "s3cret");
    // Keys a guest might try to climb out of its namespace with, the host's own layout included
    // (`shop` is 73686f70 in hex).
    for key in [
        "secret",
        "../secret",
        ":secret",
        "k:secret",
        "shop:k:secret",
        "t:73686f70:k:secret",
        "sluice:t:73686f70:k:secret",
        "*",
    ] {
        for proxy in [&first, &second] {
            assert_eq!(kv_value(&get(proxy, "/blog/kv", &[("x-key", key)]).await), "none", "blog read {key:?}");
        }
    }
    // And what the blog tenant writes lands in its own namespace.
    assert_eq!(kv_value(&get(&second, "/blog/kv", &[("x-key", "secret"), ("x-set", "blog's")]).await), "blog's");
    assert_eq!(kv_value(&get(&first, "/shop/kv", &[("x-key", "secret")]).await), "s3cret");
}

#[tokio::test]
async fn with_redis_gone_requests_fail_only_as_the_filter_says_and_recover_when_it_returns() {
    let origin = Origin::echo("app").await;
    let redis = RedisServer::start().await;
    let (first, second) = two_instances(&origin, &redis, "50ms").await;
    assert_eq!(kv_value(&get(&first, "/shop/kv", &[("x-set", "before")]).await), "before");

    let port = redis.stop();
    for proxy in [&first, &second] {
        for _ in 0..10 {
            assert_eq!(get(proxy, "/limited/x", &[]).await.status, 200, "the rate limiter fails open by default");
            assert_eq!(get(proxy, "/strict/x", &[]).await.status, 503, "and closed where its config says so");
        }
        let failed = kv_value(&get(proxy, "/shop/kv", &[]).await);
        assert!(failed.contains("Other(\"unavailable: "), "a typed failure reaches the filter: {failed}");
    }
    let page = admin_text(first.admin.unwrap(), "/metrics").await;
    assert!(page.contains("sluice_filter_kv_unavailable_total{tenant=\"shop\"}"), "{page}");

    // Redis returns (empty: it kept nothing); the instances reconnect by themselves.
    let _redis = RedisServer::start_on(port).await;
    for proxy in [&first, &second] {
        let mut attempts = 0;
        while !kv_value(&get(proxy, "/shop/kv", &[("x-set", "after")]).await).eq("after") {
            attempts += 1;
            assert!(attempts < 500, "the instance never reconnected");
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }
    assert_eq!(get(&first, "/strict/x", &[]).await.status, 200);
    let mut allowed = 0;
    for index in 0..12 {
        let proxy = if index % 2 == 0 { &first } else { &second };
        if get(proxy, "/limited/y", &[]).await.status == 200 {
            allowed += 1;
        }
    }
    assert_eq!(allowed, 10, "limits count again, across both");
}

async fn admin_post(admin: SocketAddr, path: &str, json: &str) -> Collected {
    let request = Request::post(format!("http://{admin}{path}"))
        .header("authorization", format!("Bearer {TOKEN}"))
        .body(body::full(json.to_owned()))
        .unwrap();
    send(&http1_client(), request).await
}

/// Polls `check` until it holds: messages between instances take a moment to arrive.
async fn eventually<F: std::future::Future<Output = bool>>(what: &str, mut check: impl FnMut() -> F) {
    for _ in 0..500 {
        if check().await {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("never: {what}");
}

fn cache_status(response: &Collected) -> String {
    response.headers.get("cache-status").map(|value| value.to_str().unwrap().to_owned()).unwrap_or_default()
}

#[tokio::test]
async fn bans_and_purges_made_on_one_instance_reach_the_others() {
    let (origin, answered) = Origin::echo_counted("app").await;
    let redis = RedisServer::start().await;
    let (first, second) = two_instances(&origin, &redis, "500ms").await;
    let (first_admin, second_admin) = (first.admin.unwrap(), second.admin.unwrap());

    // A ban set on the first instance closes the second too.
    let banned =
        admin_post(first_admin, "/blocks", r#"{"address": "127.0.0.1", "duration": "1h", "reason": "shared"}"#).await;
    assert_eq!(banned.status, 201, "{}", banned.text());
    eventually("the second instance refuses the banned client", || async {
        get(&second, "/cached/a", &[]).await.status == 403
    })
    .await;
    // An instance that joins later learns the bans in force.
    let text = config(&origin, &redis.url(), "500ms");
    let third = TestProxy::start_with(&Services::with_default_cache().unwrap(), &text).await;
    eventually("a late instance refuses the banned client", || async {
        get(&third, "/cached/a", &[]).await.status == 403
    })
    .await;
    // And a lift on the second reaches the first and the third.
    let lift = Request::delete(format!("http://{second_admin}/blocks?address=127.0.0.1"))
        .header("authorization", format!("Bearer {TOKEN}"))
        .body(body::empty())
        .unwrap();
    assert_eq!(send(&http1_client(), lift).await.text().trim(), r#"{"lifted":1}"#);
    for proxy in [&first, &third] {
        eventually("the lift reaches every instance", || async { get(proxy, "/cached/a", &[]).await.status == 200 })
            .await;
    }

    // Both instances hold the entry; a purge on the first removes it from the second.
    assert_eq!(get(&second, "/cached/a", &[]).await.status, 200);
    assert!(cache_status(&get(&second, "/cached/a", &[]).await).contains("hit"));
    let purged = admin_post(first_admin, "/cache/purge", r#"{"prefix": "app.test/cached/"}"#).await;
    assert_eq!(purged.status, 200, "{}", purged.text());
    let before = answered.load(std::sync::atomic::Ordering::Relaxed);
    eventually("the second instance forgets the purged entry", || async {
        !cache_status(&get(&second, "/cached/a", &[]).await).contains("hit")
    })
    .await;
    assert!(answered.load(std::sync::atomic::Ordering::Relaxed) > before, "the second went back to the origin");
}
