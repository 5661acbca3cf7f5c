use sluice_tests::Origin;

use super::{header, proxy_with, request};

#[tokio::test]
async fn a_token_bucket_allows_its_burst_then_answers_429() {
    let origin = Origin::echo("app").await;
    let proxy = proxy_with(
        &origin,
        &["rate-limit"],
        r#"
[[route]]
upstream = "app"
filters = [{ plugin = "rate_limit", config = { limit = 3, period = "1h", key = "header:x-user" } }]
"#,
    )
    .await;
    for remaining in ["2", "1", "0"] {
        let response = request(&proxy, "GET", "/", &[("x-user", "alice")]).await;
        assert_eq!(response.status, 200);
        assert_eq!(header(&response, "ratelimit-remaining"), Some(remaining));
        assert_eq!(header(&response, "ratelimit-limit"), Some("3"));
        assert_eq!(header(&response, "ratelimit-policy"), Some("3;w=3600"));
    }
    let limited = request(&proxy, "GET", "/", &[("x-user", "alice")]).await;
    assert_eq!(limited.status, 429);
    // One token per 20 minutes.
    assert_eq!(header(&limited, "retry-after"), Some("1200"));
    assert_eq!(header(&limited, "ratelimit-remaining"), Some("0"));
    // Another key has its own bucket.
    assert_eq!(request(&proxy, "GET", "/", &[("x-user", "bob")]).await.status, 200);
}

#[tokio::test]
async fn a_sliding_window_is_shared_by_routes_in_one_scope() {
    let origin = Origin::echo("app").await;
    let proxy = proxy_with(
        &origin,
        &["rate-limit"],
        r#"
[[route]]
path_prefix = "/a"
upstream = "app"
filters = [{ plugin = "rate_limit", config = { algorithm = "sliding-window", limit = 2, period = "1h", scope = "shared" } }]

[[route]]
path_prefix = "/b"
upstream = "app"
filters = [{ plugin = "rate_limit", config = { algorithm = "sliding-window", limit = 2, period = "1h", scope = "shared" } }]
"#,
    )
    .await;
    assert_eq!(request(&proxy, "GET", "/a", &[]).await.status, 200);
    assert_eq!(request(&proxy, "GET", "/b", &[]).await.status, 200);
    let limited = request(&proxy, "GET", "/a", &[]).await;
    assert_eq!(limited.status, 429);
    assert!(limited.text().contains("rate limit exceeded"));
    assert!(header(&limited, "retry-after").is_some_and(|secs| secs.parse::<u64>().is_ok_and(|secs| secs >= 1)));
}

#[tokio::test]
async fn limits_can_follow_a_token_claim() {
    let origin = Origin::echo("app").await;
    let proxy = proxy_with(
        &origin,
        &["rate-limit"],
        r#"
[[route]]
upstream = "app"
filters = [{ plugin = "rate_limit", config = { limit = 1, period = "1h", key = "claim:sub" } }]
"#,
    )
    .await;
    // Unsigned tokens are enough here: this filter only reads the claim (jwt-auth verifies).
    let bearer = |subject: &str| {
        use base64::Engine;
        let encode = |json: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json);
        format!("Bearer {}.{}.c2ln", encode(r#"{"alg":"HS256"}"#), encode(&format!(r#"{{"sub":"{subject}"}}"#)))
    };
    assert_eq!(request(&proxy, "GET", "/", &[("authorization", &bearer("alice"))]).await.status, 200);
    assert_eq!(request(&proxy, "GET", "/", &[("authorization", &bearer("alice"))]).await.status, 429);
    assert_eq!(request(&proxy, "GET", "/", &[("authorization", &bearer("bob"))]).await.status, 200);
}

#[tokio::test]
async fn configs_are_checked_against_the_plugin_schema_at_load() {
    let origin = Origin::echo("app").await;
    // The crate itself is the source (its Cargo.toml names the schema); tests/run.sh points
    // SLUICE_PLUGIN_TARGET_DIR at the shared build folder, so this does not rebuild it.
    let config = |filter_config: &str| {
        format!(
            "[[listener]]\nbind = \"127.0.0.1:0\"\n[upstream.app]\nservers = [{{ addr = \"{}\" }}]\n\
             [plugin.rate_limit]\nsource = \"{}\"\n[[route]]\nupstream = \"app\"\n\
             filters = [{{ plugin = \"rate_limit\", config = {filter_config} }}]\n",
            origin.addr,
            sluice_tests::repo_root().join("plugins/rate-limit").display()
        )
    };
    let error =
        sluice::config::Snapshot::from_toml(&sluice_tests::services(), &config("{ limit = \"ten\", period = \"1m\" }"))
            .expect_err("a string limit");
    assert_eq!(error.key, "route[0].filters[0].config");
    assert!(error.message.contains("config/limit"), "{error}");
    assert!(error.position.is_some());
    let error = sluice::config::Snapshot::from_toml(&sluice_tests::services(), &config("{ limit = 5 }"))
        .expect_err("no period");
    assert!(error.message.contains("period"), "{error}");
    sluice::config::Snapshot::from_toml(&sluice_tests::services(), &config("{ limit = 5, period = \"1m\" }"))
        .expect("a valid config loads");
}
