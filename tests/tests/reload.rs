//! Reloading the configuration while traffic flows: atomic swaps under load, failed reloads that
//! change nothing, state carried over, and every trigger (API, admin endpoint, file watch,
//! SIGHUP).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use http::Request;
use sluice::config::Snapshot;
use sluice::server::Server;
use sluice_http::body;
use sluice_tests::{Origin, TestProxy, get, http1_client, init_test_logging, plugin, send};

/// One listener, an `app` upstream, the probe plugin, and a route tagging with `tag`.
fn config(origin: &Origin, tag: &str, extra: &str) -> String {
    format!(
        r#"
[server]
watch = false
[[listener]]
bind = "127.0.0.1:0"
[upstream.app]
servers = [{{ addr = "{origin}" }}]
[plugin.probe]
source = "{probe}"
[[route]]
name = "main"
upstream = "app"
filters = [{{ plugin = "probe", config = {{ tag = "{tag}" }} }}]
{extra}
"#,
        origin = origin.addr,
        probe = plugin("tests/plugins/probe").display(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_swaps_under_load_fail_no_request_and_free_old_generations() {
    let origin = Origin::echo("app").await;
    let mut proxy = TestProxy::start(&config(&origin, "v0", "")).await;
    let server = proxy.take_server();
    let url = proxy.url("/");
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for _ in 0..200 {
        let (url, stop) = (url.clone(), stop.clone());
        clients.push(tokio::spawn(async move {
            let client = http1_client();
            let mut seen = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let request = Request::get(&url).header("host", "app.test").body(body::empty()).expect("request");
                let response = send(&client, request).await;
                let tags: Vec<String> = response
                    .headers
                    .get_all("x-chain-response")
                    .iter()
                    .map(|value| value.to_str().expect("text").to_owned())
                    .collect();
                let hello = response.status == 200 && response.echo().header("x-hello").is_some();
                seen.push((response.status.as_u16(), tags, hello));
            }
            seen
        }));
    }
    let hello = plugin("examples/hello-filter");
    let mut old_generations = Vec::new();
    for version in 1..=20u64 {
        old_generations.push(Arc::downgrade(&server.snapshot()));
        // Even versions also change the routes and put a second plugin in the chain.
        let text = if version.is_multiple_of(2) {
            config(&origin, &format!("v{version}"), "[[route]]\npath_prefix = \"/extra\"\nupstream = \"app\"\n")
                .replace("filters = [{", "filters = [{ plugin = \"hello\" }, {")
                .replacen("[[route]]", &format!("[plugin.hello]\nsource = \"{}\"\n[[route]]", hello.display()), 1)
        } else {
            config(&origin, &format!("v{version}"), "")
        };
        let generation =
            server.reloader().reload_from_toml(&text).await.unwrap_or_else(|err| panic!("reload {version}: {err}"));
        assert_eq!(generation, version + 1);
    }
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    for client in clients {
        let seen = client.await.expect("client task");
        let mut last_version = 0;
        for (status, tags, hello) in seen {
            total += 1;
            assert_eq!(status, 200, "a request failed during the swaps");
            assert_eq!(tags.len(), 1, "one response, one version: {tags:?}");
            let version: u64 = tags[0].trim_start_matches('v').parse().expect("a version");
            assert_eq!(hello, version.is_multiple_of(2) && version > 0, "v{version}'s chain, and only its chain, ran");
            assert!(version >= last_version, "a client went back from v{last_version} to v{version}");
            last_version = version;
        }
    }
    assert!(total >= 200, "every client got at least one answer ({total})");
    assert_eq!(server.reloader().status().generation, 21);
    server.shutdown_within(Duration::from_secs(5)).await;
    for (index, generation) in old_generations.iter().enumerate() {
        assert!(generation.upgrade().is_none(), "generation {} is still held after its requests ended", index + 1);
    }
}

#[tokio::test]
async fn a_failed_reload_keeps_the_running_config_and_says_why() {
    let origin = Origin::echo("app").await;
    let mut proxy = TestProxy::start(&config(&origin, "first", "")).await;
    let server = proxy.take_server();
    let reloader = server.reloader();

    let broken = config(&origin, "second", "[[route]]\nupstream = \"nowhere\"\n");
    let error = reloader.reload_from_toml(&broken).await.expect_err("an unknown upstream is refused");
    assert!(error.to_string().contains("route[1]"), "{error}");
    let syntax = reloader.reload_from_toml("[[listener]\nbind =").await.expect_err("bad TOML");
    assert!(syntax.position.is_some(), "{syntax}");
    let refused = config(&origin, "second", "").replace("tag = \"second\"", "tag = \"second\", refuse = true");
    let error = reloader.reload_from_toml(&refused).await.expect_err("the plugin refuses its config");
    assert!(error.to_string().contains("config refused"), "{error}");

    let status = reloader.status();
    assert_eq!((status.generation, status.attempts), (1, 3));
    assert!(status.last_error.expect("the error is kept").error.contains("config refused"));
    let response = get(&proxy, "app.test", "/").await;
    assert_eq!(response.headers["x-chain-response"], "first", "the first configuration still serves");

    reloader.reload_from_toml(&config(&origin, "second", "")).await.expect("a good reload");
    assert!(reloader.status().last_error.is_none());
    assert_eq!(get(&proxy, "app.test", "/").await.headers["x-chain-response"], "second");
}

#[tokio::test]
async fn unchanged_upstreams_and_filters_keep_their_state() {
    let origin = Origin::echo("app").await;
    let other = Origin::echo("other").await;
    let with_other = |tag: &str, other_weight: u32| {
        config(
            &origin,
            tag,
            &format!("[upstream.other]\nservers = [{{ addr = \"{}\", weight = {other_weight} }}]\n", other.addr),
        )
    };
    let mut proxy = TestProxy::start(&with_other("same", 1)).await;
    let server = proxy.take_server();
    // Warm a pooled connection to the origin.
    get(&proxy, "app.test", "/").await;
    let before = server.snapshot();
    server.reloader().reload_from_toml(&with_other("same", 2)).await.expect("reload");
    let after = server.snapshot();
    assert!(Arc::ptr_eq(&before.upstreams["app"], &after.upstreams["app"]), "an unchanged upstream is kept");
    assert!(!Arc::ptr_eq(&before.upstreams["other"], &after.upstreams["other"]), "a changed one is rebuilt");
    assert!(Arc::ptr_eq(&before.plugins["probe"], &after.plugins["probe"]), "an unchanged plugin is not reloaded");
    let pool = |snapshot: &Snapshot| snapshot.routes.routes()[0].filters[0].pool().expect("prepared").clone();
    assert!(Arc::ptr_eq(&pool(&before), &pool(&after)), "an unchanged filter keeps its warm pool");
    drop(before);
    get(&proxy, "app.test", "/").await;
    assert_eq!(origin.connections_accepted(), 1, "the pooled connection to the kept upstream was reused");

    server.reloader().reload_from_toml(&with_other("changed", 2)).await.expect("reload");
    assert!(!Arc::ptr_eq(&pool(&after), &pool(&server.snapshot())), "a changed filter config gets a new pool");
}

/// A config file in a folder of its own under the target directory.
fn config_file(name: &str, text: &str) -> PathBuf {
    let folder = sluice_tests::repo_root().join("target/test-configs").join(format!("{name}-{}", std::process::id()));
    std::fs::create_dir_all(&folder).expect("test folder");
    let path = folder.join("sluice.toml");
    std::fs::write(&path, text).expect("write config");
    path
}

async fn admin(
    proxy_admin: std::net::SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> (u16, serde_json::Value) {
    let mut request = Request::builder().method(method).uri(format!("http://{proxy_admin}{path}"));
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let response = send(&http1_client(), request.body(body::empty()).expect("request")).await;
    (response.status.as_u16(), serde_json::from_slice(&response.body).unwrap_or_default())
}

#[tokio::test]
async fn the_admin_endpoint_reloads_with_its_token_and_reports_status() {
    init_test_logging();
    let origin = Origin::echo("app").await;
    let token = "a-long-random-reload-token";
    let admin_section = format!("[admin]\nbind = \"127.0.0.1:0\"\nreload_token = \"{token}\"\n");
    let path = config_file("admin-reload", &config(&origin, "one", &admin_section));
    let server =
        Server::start(Snapshot::from_file(&sluice_tests::services(), &path).expect("config")).await.expect("start");
    let admin_addr = server.admin_addr().expect("admin listener");

    let (status, body) = admin(admin_addr, "GET", "/status", None).await;
    assert_eq!((status, body["generation"].as_u64()), (200, Some(1)));
    assert!(body["plugins"]["probe"].as_str().is_some_and(|digest| digest.starts_with("sha256:")));

    assert_eq!(admin(admin_addr, "POST", "/reload", None).await.0, 401);
    assert_eq!(admin(admin_addr, "POST", "/reload", Some("wrong-token-of-some-length")).await.0, 401);
    std::fs::write(&path, config(&origin, "two", &admin_section)).expect("rewrite");
    let (status, body) = admin(admin_addr, "POST", "/reload?wait=true", Some(token)).await;
    assert_eq!((status, body["generation"].as_u64()), (200, Some(2)));

    // Without `wait`, the reload is accepted at once and runs in the background: its outcome
    // shows in `/status` when it is done.
    std::fs::write(&path, config(&origin, "three", &admin_section)).expect("rewrite");
    let mut generations = server.reloader().subscribe();
    let (status, body) = admin(admin_addr, "POST", "/reload", Some(token)).await;
    assert_eq!((status, body["accepted"].as_bool()), (202, Some(true)), "{body}");
    generations.wait_for(|generation| *generation == 3).await.expect("the background reload lands");
    let (_, body) = admin(admin_addr, "GET", "/status", None).await;
    assert_eq!(body["generation"].as_u64(), Some(3));

    std::fs::write(&path, "[[listener]]\nbind = 7\n").expect("break it");
    let (status, body) = admin(admin_addr, "POST", "/reload?wait=true", Some(token)).await;
    assert_eq!(status, 422);
    assert!(body["error"].as_str().is_some_and(|error| error.contains("sluice.toml:2")), "{body}");
    let (_, body) = admin(admin_addr, "GET", "/status", None).await;
    assert_eq!(body["generation"].as_u64(), Some(3));
    assert!(body["last_error"]["error"].as_str().is_some_and(|error| error.contains("listener[0].bind")), "{body}");
    server.shutdown_within(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn without_a_token_reloads_over_http_are_refused() {
    let origin = Origin::echo("app").await;
    let proxy = TestProxy::start(&config(&origin, "one", "[admin]\nbind = \"127.0.0.1:0\"\n")).await;
    let (status, body) = admin(proxy.admin.expect("admin"), "POST", "/reload", Some("anything-at-all-here")).await;
    assert_eq!(status, 403);
    assert!(body["error"].as_str().is_some_and(|error| error.contains("reload_token")));
}

#[tokio::test]
async fn a_changed_file_is_reloaded_by_the_watcher() {
    init_test_logging();
    let origin = Origin::echo("app").await;
    let watched = |tag: &str| config(&origin, tag, "").replace("watch = false", "watch = true");
    let path = config_file("watch", &watched("before"));
    let server =
        Server::start(Snapshot::from_file(&sluice_tests::services(), &path).expect("config")).await.expect("start");
    let mut generations = server.reloader().subscribe();
    std::fs::write(&path, watched("after")).expect("rewrite");
    tokio::time::timeout(Duration::from_secs(60), generations.changed())
        .await
        .expect("the watcher reloads within a minute")
        .expect("the reloader is alive");
    let addr = server.listener_addrs()[0].1;
    let response = send(
        &http1_client(),
        Request::get(format!("http://{addr}/")).header("host", "app.test").body(body::empty()).expect("request"),
    )
    .await;
    assert_eq!(response.headers["x-chain-response"], "after");
    server.shutdown_within(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn sighup_reloads_the_running_binary() {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let origin = Origin::echo("app").await;
    let with_admin = |tag: &str| config(&origin, tag, "[admin]\nbind = \"127.0.0.1:0\"\n");
    let path = config_file("sighup", &with_admin("one"));
    // The binary tests/run.sh builds before the tests (`cargo build --workspace`).
    let mut child = tokio::process::Command::new(sluice_tests::repo_root().join("target/debug/sluice"))
        .args(["--log-format", "json", "run", "--config"])
        .arg(&path)
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start the sluice binary");
    let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let mut wait_for = async |message: &str| {
        while let Some(line) = lines.next_line().await.expect("read the log") {
            let event: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
            if event["message"] == message {
                return event;
            }
        }
        panic!("sluice exited before logging {message:?}");
    };
    wait_for("admin listening").await;
    std::fs::write(&path, with_admin("two")).expect("rewrite");
    let pid = child.id().expect("running").to_string();
    let killed = tokio::process::Command::new("kill").args(["-HUP", &pid]).status().await.expect("kill runs");
    assert!(killed.success());
    let reloaded = wait_for("configuration reloaded").await;
    assert_eq!(reloaded["generation"], 2);
    child.kill().await.expect("stop sluice");
}
