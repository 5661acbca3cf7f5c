use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use http::Response;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::{Value, json};
use sluice_tests::{Origin, repo_root};

use super::{header, proxy_with, request};

fn key_file(name: &str) -> String {
    std::fs::read_to_string(repo_root().join("plugins/jwt-auth/tests/keys").join(name)).expect("test key")
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("after 1970").as_secs()
}

fn token(algorithm: Algorithm, kid: Option<&str>, claims: Value) -> String {
    let key = match algorithm {
        Algorithm::RS256 | Algorithm::PS256 => EncodingKey::from_rsa_pem(key_file("rsa.key").as_bytes()),
        Algorithm::ES256 => EncodingKey::from_ec_pem(key_file("ec.key").as_bytes()),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(key_file("ed25519.key").as_bytes()),
        other => panic!("not used here: {other:?}"),
    }
    .expect("test key parses");
    let mut header = Header::new(algorithm);
    header.kid = kid.map(str::to_owned);
    encode(&header, &claims, &key).expect("signs")
}

fn claims() -> Value {
    json!({"sub": "alice", "scope": "read write", "iss": "https://id.example", "aud": "api", "exp": now() + 600})
}

fn static_key_routes() -> String {
    format!(
        r#"
[[route]]
upstream = "app"
[[route.filters]]
plugin = "jwt_auth"
[route.filters.config]
issuers = ["https://id.example"]
audiences = ["api"]
forward_claims = {{ sub = "x-user", scope = "x-scope" }}
[[route.filters.config.keys]]
pem = '''
{rsa}'''
[[route.filters.config.keys]]
pem = '''
{ed}'''
"#,
        rsa = key_file("rsa.pub"),
        ed = key_file("ed25519.pub"),
    )
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

#[tokio::test]
async fn valid_tokens_pass_with_their_claims_forwarded() {
    let origin = Origin::echo("app").await;
    let proxy = proxy_with(&origin, &["jwt-auth"], &static_key_routes()).await;
    for algorithm in [Algorithm::RS256, Algorithm::PS256, Algorithm::EdDSA] {
        let auth = bearer(&token(algorithm, None, claims()));
        let response = request(&proxy, "GET", "/", &[("authorization", &auth), ("x-user", "mallory")]).await;
        assert_eq!(response.status, 200, "{algorithm:?}: {}", response.text());
        let echo = response.echo();
        assert_eq!(echo.header("x-user").as_deref(), Some("alice"), "the client's x-user is replaced");
        assert_eq!(echo.header("x-scope").as_deref(), Some("read write"));
        assert_eq!(echo.header("authorization"), Some(auth), "the token is forwarded by default");
    }
}

#[tokio::test]
async fn failures_get_401_with_a_bearer_challenge() {
    let (origin, answered) = Origin::echo_counted("app").await;
    let proxy = proxy_with(&origin, &["jwt-auth"], &static_key_routes()).await;
    let missing = request(&proxy, "GET", "/", &[("x-request-id", "rid-1")]).await;
    assert_eq!(missing.status, 401);
    assert_eq!(header(&missing, "www-authenticate"), Some("Bearer realm=\"sluice\""));
    assert!(missing.text().contains("rid-1"));

    let mut expired = claims();
    expired["exp"] = json!(now() - 3600);
    let cases = [
        (token(Algorithm::RS256, None, expired), "expired"),
        (token(Algorithm::ES256, None, claims()), "signature"),
        (
            token(Algorithm::RS256, None, json!({"sub": "a", "iss": "https://other", "aud": "api", "exp": now() + 60})),
            "issuer",
        ),
        ("not.a.token".to_owned(), "base64url"),
    ];
    for (token, why) in cases {
        let response = request(&proxy, "GET", "/", &[("authorization", &bearer(&token))]).await;
        assert_eq!(response.status, 401);
        let challenge = header(&response, "www-authenticate").expect("a challenge");
        assert!(challenge.starts_with("Bearer realm=\"sluice\", error=\"invalid_token\""), "{challenge}");
        assert!(challenge.contains(why), "{challenge} should say {why}");
    }
    assert_eq!(answered.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn keys_come_from_a_jwks_endpoint_fetched_by_callout_and_cached() {
    let origin = Origin::echo("app").await;
    let fetches = Arc::new(AtomicUsize::new(0));
    let counter = fetches.clone();
    let idp = Origin::start(move |_request| {
        counter.fetch_add(1, Ordering::Relaxed);
        Box::pin(async move {
            let mut response = Response::new(sluice_http::body::full(key_file("jwks.json")));
            response.headers_mut().insert("content-type", "application/json".parse().expect("header"));
            response
        })
    })
    .await;
    let routes = format!(
        r#"
[upstream.idp]
servers = [{{ addr = "{idp}" }}]
[tenant.shop]
callouts = ["idp"]
[[route]]
upstream = "app"
tenant = "shop"
filters = [{{ plugin = "jwt_auth", config = {{ jwks_url = {{ upstream = "idp", path = "/.well-known/jwks.json" }}, forward_claims = {{ sub = "x-user" }} }} }}]
"#,
        idp = idp.addr
    );
    let proxy = proxy_with(&origin, &["jwt-auth"], &routes).await;
    for kid in ["rsa-1", "ec-1", "rsa-1", "ec-1", "rsa-1"] {
        let algorithm = if kid == "rsa-1" { Algorithm::RS256 } else { Algorithm::ES256 };
        let response =
            request(&proxy, "GET", "/", &[("authorization", &bearer(&token(algorithm, Some(kid), claims())))]).await;
        assert_eq!(response.status, 200, "{kid}: {}", response.text());
        assert_eq!(response.echo().header("x-user").as_deref(), Some("alice"));
    }
    // One instance served these one after another: one fetch, not one per request.
    assert_eq!(fetches.load(Ordering::Relaxed), 1);
    let unknown =
        request(&proxy, "GET", "/", &[("authorization", &bearer(&token(Algorithm::ES256, Some("gone"), claims())))])
            .await;
    assert_eq!(unknown.status, 401);
}

#[tokio::test]
async fn a_jwks_upstream_the_tenant_was_not_granted_fails_closed() {
    let origin = Origin::echo("app").await;
    let idp = Origin::echo("idp").await;
    let routes = format!(
        r#"
[upstream.idp]
servers = [{{ addr = "{idp}" }}]
[[route]]
upstream = "app"
filters = [{{ plugin = "jwt_auth", config = {{ jwks_url = {{ upstream = "idp", path = "/jwks" }} }} }}]
"#,
        idp = idp.addr
    );
    let proxy = proxy_with(&origin, &["jwt-auth"], &routes).await;
    let response =
        request(&proxy, "GET", "/", &[("authorization", &bearer(&token(Algorithm::RS256, Some("rsa-1"), claims())))])
            .await;
    assert_eq!(response.status, 401);
}
