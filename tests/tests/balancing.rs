//! Balancing and resilience end to end, with real origins on port 0: a server killed under load,
//! a server ejected by its health checks and brought back, shares by weight, consistent hashing,
//! the request limit, and the retry budget.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use http::{Request, Response, StatusCode};
use sluice_http::body;
use sluice_tests::{Collected, Origin, OriginFuture, TestClient, TestProxy, http1_client, send};
use tokio::sync::{Notify, Semaphore};

fn proxy_config(origins: &[&Origin], upstream_settings: &str) -> String {
    let servers: Vec<String> = origins.iter().map(|origin| format!("{{ addr = \"{}\" }}", origin.addr)).collect();
    format!(
        "[[listener]]\nbind = \"127.0.0.1:0\"\n[admin]\nbind = \"127.0.0.1:0\"\n\
         [upstream.app]\nservers = [{}]\n{upstream_settings}\n[[route]]\nupstream = \"app\"\n",
        servers.join(", ")
    )
}

async fn get_with(client: &TestClient, proxy: &TestProxy, headers: &[(&str, &str)]) -> Collected {
    let mut request = Request::get(proxy.url("/")).header("host", "app.test");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    send(client, request.body(body::empty()).unwrap()).await
}

/// An origin answering `200 <name>` or, while `failing` is set, `503`; it counts its requests.
async fn switchable(name: &'static str, failing: Arc<AtomicBool>, hits: Arc<AtomicUsize>) -> Origin {
    Origin::start(move |_request| {
        hits.fetch_add(1, Ordering::Relaxed);
        let status = if failing.load(Ordering::Relaxed) { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::OK };
        Box::pin(async move { Response::builder().status(status).body(body::full(name)).unwrap() }) as OriginFuture
    })
    .await
}

/// An origin that holds every request until `gate` gives it a permit; `arrived` gets one permit
/// per request that reached it.
async fn gated_origin() -> (Origin, Arc<Semaphore>, Arc<Semaphore>) {
    let gate = Arc::new(Semaphore::new(0));
    let arrived = Arc::new(Semaphore::new(0));
    let origin = {
        let (gate, arrived) = (gate.clone(), arrived.clone());
        Origin::start(move |_request| {
            let (gate, arrived) = (gate.clone(), arrived.clone());
            Box::pin(async move {
                arrived.add_permits(1);
                gate.acquire().await.unwrap().forget();
                Response::new(body::full("done"))
            }) as OriginFuture
        })
        .await
    };
    (origin, gate, arrived)
}

async fn admin_upstreams(proxy: &TestProxy) -> serde_json::Value {
    let admin = proxy.admin.expect("admin listener");
    let request = Request::get(format!("http://{admin}/upstreams")).body(body::empty()).unwrap();
    serde_json::from_slice(&send(&http1_client(), request).await.body).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_one_of_three_servers_under_load_fails_no_get() {
    let a = Origin::echo("a").await;
    let b = Origin::echo("b").await;
    let c = Origin::echo("c").await;
    let proxy = Arc::new(TestProxy::start(&proxy_config(&[&a, &b, &c], "")).await);
    let served = Arc::new(AtomicUsize::new(0));
    let halfway = Arc::new(Notify::new());
    let clients = 8;
    let per_client = 150;
    let mut load = Vec::new();
    for _ in 0..clients {
        let (proxy, served, halfway) = (proxy.clone(), served.clone(), halfway.clone());
        load.push(tokio::spawn(async move {
            let client = http1_client();
            let mut failures = Vec::new();
            for _ in 0..per_client {
                let answer = get_with(&client, &proxy, &[]).await;
                if answer.status != StatusCode::OK {
                    failures.push(answer.status);
                }
                if served.fetch_add(1, Ordering::Relaxed) + 1 == clients * per_client / 3 {
                    halfway.notify_one();
                }
            }
            failures
        }));
    }
    // A third of the way through, server b dies: its listener and open connections go.
    halfway.notified().await;
    drop(b);
    let mut failures = Vec::new();
    for task in load {
        failures.extend(task.await.unwrap());
    }
    assert!(failures.is_empty(), "failed GETs after a server died: {failures:?}");
    // Passive outlier detection took it out of balancing.
    let servers = admin_upstreams(&proxy).await["app"]["servers"].clone();
    assert_eq!(servers[1]["state"], "ejected", "{servers}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_failing_its_health_checks_is_taken_out_and_comes_back() {
    let failing = Arc::new(AtomicBool::new(false));
    let good = switchable("good", Arc::default(), Arc::default()).await;
    let flaky = switchable("flaky", failing.clone(), Arc::default()).await;
    let proxy = TestProxy::start(&proxy_config(
        &[&good, &flaky],
        "health_check = { path = \"/health\", interval = \"20ms\", timeout = \"1s\", rise = 2, fall = 2 }\n\
         outlier_detection = { enabled = false }",
    ))
    .await;
    let client = http1_client();
    let served_by = |answer: &Collected| answer.text();

    failing.store(true, Ordering::Relaxed);
    // Until the checks notice, some requests still reach it; then none do.
    let mut streak = 0;
    for _ in 0..100_000 {
        let answer = get_with(&client, &proxy, &[]).await;
        streak = if answer.status == StatusCode::OK && served_by(&answer) == "good" { streak + 1 } else { 0 };
        if streak == 50 {
            break;
        }
    }
    assert_eq!(streak, 50, "the failing server was never taken out");
    assert_eq!(admin_upstreams(&proxy).await["app"]["servers"][1]["state"], "unhealthy");

    failing.store(false, Ordering::Relaxed);
    let mut back = false;
    for _ in 0..100_000 {
        if served_by(&get_with(&client, &proxy, &[]).await) == "flaky" {
            back = true;
            break;
        }
    }
    assert!(back, "the recovered server never came back");
    assert_eq!(admin_upstreams(&proxy).await["app"]["servers"][1]["state"], "available");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_answering_503_is_ejected_while_retries_hide_it() {
    let failing = Arc::new(AtomicBool::new(true));
    let flaky_hits = Arc::new(AtomicUsize::new(0));
    let good = switchable("good", Arc::default(), Arc::default()).await;
    let flaky = switchable("flaky", failing, flaky_hits.clone()).await;
    let proxy = TestProxy::start(&proxy_config(
        &[&good, &flaky],
        "retry = { retries = 1, on = [\"503\"] }\noutlier_detection = { consecutive_failures = 3, base_ejection = \"1h\" }",
    ))
    .await;
    let client = http1_client();
    for _ in 0..200 {
        let answer = get_with(&client, &proxy, &[]).await;
        assert_eq!((answer.status, answer.text()), (StatusCode::OK, "good".to_owned()));
    }
    // Three failures ejected it; nothing more was sent its way.
    assert_eq!(flaky_hits.load(Ordering::Relaxed), 3);
    assert_eq!(admin_upstreams(&proxy).await["app"]["servers"][1]["state"], "ejected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_thousand_requests_follow_the_weights_within_five_percent() {
    let origins = [Origin::echo("one").await, Origin::echo("two").await, Origin::echo("five").await];
    let config = format!(
        "[[listener]]\nbind = \"127.0.0.1:0\"\n[upstream.app]\nservers = [{{ addr = \"{}\", weight = 1 }}, \
         {{ addr = \"{}\", weight = 2 }}, {{ addr = \"{}\", weight = 5 }}]\n[[route]]\nupstream = \"app\"\n",
        origins[0].addr, origins[1].addr, origins[2].addr
    );
    let proxy = Arc::new(TestProxy::start(&config).await);
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let proxy = proxy.clone();
        tasks.push(tokio::spawn(async move {
            let client = http1_client();
            let mut counts: HashMap<String, usize> = HashMap::new();
            for _ in 0..625 {
                *counts.entry(get_with(&client, &proxy, &[]).await.echo().origin().to_owned()).or_default() += 1;
            }
            counts
        }));
    }
    let mut counts: HashMap<String, usize> = HashMap::new();
    for task in tasks {
        for (origin, count) in task.await.unwrap() {
            *counts.entry(origin).or_default() += count;
        }
    }
    for (origin, weight) in [("one", 1.0), ("two", 2.0), ("five", 5.0)] {
        let share = counts[origin] as f64 / 10_000.0;
        let expected = weight / 8.0;
        assert!((share - expected).abs() <= expected * 0.05, "{origin}: {share} against {expected} ({counts:?})");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hashing_keeps_each_client_on_one_server_and_only_a_lost_servers_clients_move() {
    let a = Origin::echo("a").await;
    let b = Origin::echo("b").await;
    let c = Origin::echo("c").await;
    let proxy =
        TestProxy::start(&proxy_config(&[&a, &b, &c], "balancer = \"hash\"\nhash_key = \"header:x-user\"")).await;
    let client = http1_client();
    let mut placement = HashMap::new();
    for user in 0..60 {
        let user = format!("user-{user}");
        let first = get_with(&client, &proxy, &[("x-user", &user)]).await.echo().origin().to_owned();
        for _ in 0..3 {
            assert_eq!(get_with(&client, &proxy, &[("x-user", &user)]).await.echo().origin(), first);
        }
        placement.insert(user, first);
    }
    let servers_used: std::collections::HashSet<&String> = placement.values().collect();
    assert_eq!(servers_used.len(), 3, "60 users all hashed to {servers_used:?}");

    drop(b);
    for (user, before) in &placement {
        let now = get_with(&client, &proxy, &[("x-user", user)]).await;
        assert_eq!(now.status, StatusCode::OK);
        if before != "b" {
            assert_eq!(now.echo().origin(), before, "{user} moved although its server is up");
        } else {
            assert_ne!(now.echo().origin(), "b");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_request_limit_answers_503_at_once_and_recovers() {
    let (origin, gate, arrived) = gated_origin().await;
    let proxy = Arc::new(TestProxy::start(&proxy_config(&[&origin], "max_requests = 2")).await);
    let held: Vec<_> = (0..2)
        .map(|_| {
            let proxy = proxy.clone();
            tokio::spawn(async move { get_with(&http1_client(), &proxy, &[]).await.status })
        })
        .collect();
    // Both held requests reached the origin: the limit is taken.
    arrived.acquire_many(2).await.unwrap().forget();
    let over = get_with(&http1_client(), &proxy, &[]).await;
    assert_eq!(over.status, StatusCode::SERVICE_UNAVAILABLE, "{}", over.text());

    gate.add_permits(2);
    for request in held {
        assert_eq!(request.await.unwrap(), StatusCode::OK);
    }
    gate.add_permits(1);
    assert_eq!(get_with(&http1_client(), &proxy, &[]).await.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_retry_budget_caps_extra_load_when_every_server_fails() {
    let hits = Arc::new(AtomicUsize::new(0));
    let failing = Arc::new(AtomicBool::new(true));
    let a = switchable("a", failing.clone(), hits.clone()).await;
    let b = switchable("b", failing.clone(), hits.clone()).await;
    let c = switchable("c", failing.clone(), hits.clone()).await;
    let proxy = TestProxy::start(&proxy_config(
        &[&a, &b, &c],
        "retry = { retries = 2, on = [\"503\"], budget_ratio = 0.1, budget_min_per_second = 0 }\n\
         outlier_detection = { enabled = false }",
    ))
    .await;
    let client = http1_client();
    let requests = 300;
    for _ in 0..requests {
        assert_eq!(get_with(&client, &proxy, &[]).await.status, StatusCode::SERVICE_UNAVAILABLE);
    }
    // Without a budget every request would be tried three times (900 hits); the budget allows a
    // tenth more than the requests, and the one retry it starts with.
    let hits = hits.load(Ordering::Relaxed);
    assert!(hits > requests, "no retries at all: {hits}");
    assert!(hits <= requests + requests / 10 + 1, "{hits} hits for {requests} requests");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_splits_its_requests_between_upstreams_by_weight() {
    let stable = Origin::echo("stable").await;
    let canary = Origin::echo("canary").await;
    let proxy = TestProxy::start(&format!(
        "[[listener]]\nbind = \"127.0.0.1:0\"\n[upstream.stable]\nservers = [{{ addr = \"{}\" }}]\n\
         [upstream.canary]\nservers = [{{ addr = \"{}\" }}]\n\
         [[route]]\nbackends = [{{ upstream = \"stable\", weight = 9 }}, {{ upstream = \"canary\", weight = 1 }}]\n",
        stable.addr, canary.addr
    ))
    .await;
    let client = http1_client();
    let requests = 2000;
    let mut to_canary = 0;
    for _ in 0..requests {
        if get_with(&client, &proxy, &[]).await.echo().origin() == "canary" {
            to_canary += 1;
        }
    }
    // A random draw per request: a tenth, give or take well over four standard deviations.
    let share = f64::from(to_canary) / f64::from(requests);
    assert!((0.07..=0.13).contains(&share), "canary got {share}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirrored_requests_reach_the_shadow_and_its_answers_are_dropped() {
    let main = Origin::echo("main").await;
    let seen = Arc::new(Semaphore::new(0));
    let shadow = {
        let seen = seen.clone();
        Origin::start(move |request| {
            let seen = seen.clone();
            Box::pin(async move {
                // The copy carries the client's request: path and headers.
                if request.uri().path() == "/" && request.headers().contains_key("x-forwarded-for") {
                    seen.add_permits(1);
                }
                Response::builder().status(StatusCode::INTERNAL_SERVER_ERROR).body(body::full("shadow")).unwrap()
            }) as OriginFuture
        })
        .await
    };
    let proxy = TestProxy::start(&format!(
        "[[listener]]\nbind = \"127.0.0.1:0\"\n[upstream.main]\nservers = [{{ addr = \"{}\" }}]\n\
         [upstream.shadow]\nservers = [{{ addr = \"{}\" }}]\n\
         [[route]]\nupstream = \"main\"\nmirror = {{ upstream = \"shadow\", percent = 100 }}\n",
        main.addr, shadow.addr
    ))
    .await;
    let client = http1_client();
    for _ in 0..20 {
        let answer = get_with(&client, &proxy, &[]).await;
        assert_eq!((answer.status, answer.echo().origin().to_owned()), (StatusCode::OK, "main".to_owned()));
    }
    // Every copy arrives, in the background.
    seen.acquire_many(20).await.unwrap().forget();
}

#[test]
fn route_backends_and_mirrors_are_checked_with_their_key() {
    let config = |route: &str| {
        format!(
            "[[listener]]\nbind = \"127.0.0.1:0\"\n[upstream.a]\nservers = [{{ addr = \"127.0.0.1:9\" }}]\n\
             [[route]]\n{route}\n"
        )
    };
    let error = sluice::config::Snapshot::from_toml(
        &sluice_tests::services(),
        &config("upstream = \"a\"\nbackends = [{ upstream = \"a\" }]"),
    )
    .unwrap_err();
    assert_eq!(error.key, "route[0].backends");
    let error = sluice::config::Snapshot::from_toml(
        &sluice_tests::services(),
        &config("backends = [{ upstream = \"a\" }, { upstream = \"b\" }]"),
    )
    .unwrap_err();
    assert_eq!(error.key, "route[0].backends[1].upstream");
    let error = sluice::config::Snapshot::from_toml(
        &sluice_tests::services(),
        &config("upstream = \"a\"\nmirror = { upstream = \"a\", percent = 0 }"),
    )
    .unwrap_err();
    assert_eq!(error.key, "route[0].mirror.percent");
    let upstream = |settings: &str| {
        format!(
            "[[listener]]\nbind = \"127.0.0.1:0\"\n[upstream.a]\nservers = [{{ addr = \"127.0.0.1:9\" }}]\n{settings}\n\
             [[route]]\nupstream = \"a\"\n"
        )
    };
    let error = sluice::config::Snapshot::from_toml(&sluice_tests::services(), &upstream("retry = { on = [\"418\"] }"))
        .unwrap_err();
    assert_eq!(error.key, "upstream.a.retry.on[0]");
    let error = sluice::config::Snapshot::from_toml(&sluice_tests::services(), &upstream("balancer = \"fastest\""))
        .unwrap_err();
    assert_eq!(error.key, "upstream.a.balancer");
    let error =
        sluice::config::Snapshot::from_toml(&sluice_tests::services(), &upstream("hash_key = \"header:x-user\""))
            .unwrap_err();
    assert_eq!(error.key, "upstream.a.hash_key");
    assert!(error.message.contains("balancer = \"hash\""), "{error}");
    let error = sluice::config::Snapshot::from_toml(
        &sluice_tests::services(),
        &upstream("health_check = { kind = \"http\", path = \"health\" }"),
    )
    .unwrap_err();
    assert_eq!(error.key, "upstream.a.health_check.path");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sticky_cookie_keeps_a_client_on_its_server_until_the_server_goes() {
    let a = Origin::echo("a").await;
    let b = Origin::echo("b").await;
    let c = Origin::echo("c").await;
    let mut origins = HashMap::from([("a", a), ("b", b), ("c", c)]);
    let ordered = [&origins["a"], &origins["b"], &origins["c"]];
    let proxy = TestProxy::start(&proxy_config(&ordered, "sticky_cookie = \"srv\"")).await;
    let client = http1_client();

    let first = get_with(&client, &proxy, &[]).await;
    let set_cookie = first.headers["set-cookie"].to_str().unwrap().to_owned();
    assert!(set_cookie.starts_with("srv=") && set_cookie.contains("HttpOnly"), "{set_cookie}");
    let cookie = set_cookie.split(';').next().unwrap().to_owned();
    let home = first.echo().origin().to_owned();
    for _ in 0..10 {
        let again = get_with(&client, &proxy, &[("cookie", &cookie)]).await;
        assert_eq!(again.echo().origin(), home);
        assert!(!again.headers.contains_key("set-cookie"), "the cookie was already right");
    }

    // Its server dies: the client is served elsewhere and told its new server.
    drop(origins.remove(home.as_str()));
    let moved = get_with(&client, &proxy, &[("cookie", &cookie)]).await;
    assert_eq!(moved.status, StatusCode::OK);
    assert_ne!(moved.echo().origin(), home);
    let new_cookie = moved.headers["set-cookie"].to_str().unwrap();
    assert!(!new_cookie.starts_with(&cookie), "{new_cookie}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_connection_limit_answers_503_at_once_and_recovers() {
    let (origin, gate, arrived) = gated_origin().await;
    let proxy = Arc::new(TestProxy::start(&proxy_config(&[&origin], "max_connections = 1\nmax_pending = 0")).await);
    let held = {
        let proxy = proxy.clone();
        tokio::spawn(async move { get_with(&http1_client(), &proxy, &[]).await.status })
    };
    // The one connection is busy with the held request; no request may wait for it.
    arrived.acquire().await.unwrap().forget();
    let over = get_with(&http1_client(), &proxy, &[]).await;
    assert_eq!(over.status, StatusCode::SERVICE_UNAVAILABLE, "{}", over.text());

    gate.add_permits(1);
    assert_eq!(held.await.unwrap(), StatusCode::OK);
    // The connection is free again (pooled): requests flow.
    gate.add_permits(2);
    for _ in 0..2 {
        assert_eq!(get_with(&http1_client(), &proxy, &[]).await.status, StatusCode::OK);
    }
    assert_eq!(origin.connections_accepted(), 1);
}
