//! The authenticator against tokens signed by an independent implementation (jsonwebtoken),
//! with the key pairs under tests/keys (generated with openssl for these tests).

use std::cell::Cell;

use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use jwt_auth::auth::{AuthError, Authenticator, Config};
use serde_json::{Value, json};

const NOW: u64 = 1_900_000_000;
const SECRET: &str = "a-shared-secret-of-at-least-32-bytes!";

fn key_file(name: &str) -> String {
    std::fs::read_to_string(format!("{}/tests/keys/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

fn sign(algorithm: Algorithm, kid: Option<&str>, claims: &Value) -> String {
    let key = match algorithm {
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => EncodingKey::from_secret(SECRET.as_bytes()),
        Algorithm::RS256
        | Algorithm::RS384
        | Algorithm::RS512
        | Algorithm::PS256
        | Algorithm::PS384
        | Algorithm::PS512 => EncodingKey::from_rsa_pem(key_file("rsa.key").as_bytes()).unwrap(),
        Algorithm::ES256 => EncodingKey::from_ec_pem(key_file("ec.key").as_bytes()).unwrap(),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(key_file("ed25519.key").as_bytes()).unwrap(),
        other => panic!("not used here: {other:?}"),
    };
    let mut header = Header::new(algorithm);
    header.kid = kid.map(str::to_owned);
    encode(&header, claims, &key).unwrap()
}

fn claims() -> Value {
    json!({"sub": "alice", "iss": "https://id.example", "aud": ["api", "web"], "exp": NOW + 300, "nbf": NOW - 10})
}

fn authenticator(config: Value) -> Authenticator {
    let config: Config = serde_json::from_value(config).unwrap();
    Authenticator::new(&config).unwrap()
}

fn all_keys() -> Value {
    json!({"keys": [
        {"alg": "HS256", "secret": SECRET},
        {"alg": "HS384", "secret": SECRET},
        {"alg": "HS512", "secret": SECRET},
        {"pem": key_file("rsa.pub")},
        {"pem": key_file("ec.pub")},
        {"pem": key_file("ed25519.pub")},
    ]})
}

fn check(auth: &mut Authenticator, token: &str) -> Result<Value, AuthError> {
    auth.authenticate(Some(token), NOW * 1000, || Err("no JWKS here".into()), |_| {}).map(Value::Object)
}

#[test]
fn every_supported_algorithm_verifies() {
    let mut auth = authenticator(all_keys());
    for algorithm in [
        Algorithm::HS256,
        Algorithm::HS384,
        Algorithm::HS512,
        Algorithm::RS256,
        Algorithm::RS384,
        Algorithm::RS512,
        Algorithm::PS256,
        Algorithm::PS384,
        Algorithm::PS512,
        Algorithm::ES256,
        Algorithm::EdDSA,
    ] {
        let token = sign(algorithm, None, &claims());
        let verified = check(&mut auth, &token).unwrap_or_else(|err| panic!("{algorithm:?}: {err:?}"));
        assert_eq!(verified["sub"], "alice");
    }
}

#[test]
fn tampering_and_forgery_fail() {
    let mut auth = authenticator(all_keys());
    let token = sign(Algorithm::RS256, None, &claims());
    // Another payload under the same signature.
    let mut parts: Vec<&str> = token.split('.').collect();
    let forged_payload = base64_url(&serde_json::to_vec(&json!({"sub": "mallory", "exp": NOW + 300})).unwrap());
    parts[1] = &forged_payload;
    assert!(matches!(check(&mut auth, &parts.join(".")), Err(AuthError::Invalid(why)) if why.contains("signature")));
    // alg: none.
    let none = format!("{}.{}.", base64_url(br#"{"alg":"none"}"#), base64_url(br#"{"sub":"x"}"#));
    assert!(matches!(check(&mut auth, &none), Err(AuthError::Invalid(why)) if why.contains("\"none\"")));
    // Algorithm confusion: HS256 "signed" with the RSA public key as the secret.
    let rsa_public = key_file("rsa.pub");
    let confused =
        encode(&Header::new(Algorithm::HS256), &claims(), &EncodingKey::from_secret(rsa_public.as_bytes())).unwrap();
    assert!(check(&mut auth, &confused).is_err());
    // Garbage.
    assert!(check(&mut auth, "abc").is_err());
    assert_eq!(auth.authenticate(None, 0, || unreachable!(), |_| {}), Err(AuthError::Missing));
}

fn base64_url(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[test]
fn claims_are_checked_with_leeway() {
    let mut auth = authenticator(json!({
        "keys": [{"alg": "HS256", "secret": SECRET}],
        "issuers": ["https://id.example"], "audiences": ["api"], "leeway": 30, "required_claims": ["sub"]
    }));
    let with = |patch: Value| {
        let mut claims = claims();
        for (key, value) in patch.as_object().unwrap() {
            if value.is_null() {
                claims.as_object_mut().unwrap().remove(key);
            } else {
                claims[key] = value.clone();
            }
        }
        sign(Algorithm::HS256, None, &claims)
    };
    assert!(check(&mut auth, &with(json!({}))).is_ok());
    assert!(check(&mut auth, &with(json!({"exp": NOW - 20}))).is_ok(), "within leeway");
    assert!(
        matches!(check(&mut auth, &with(json!({"exp": NOW - 31}))), Err(AuthError::Invalid(why)) if why.contains("expired"))
    );
    assert!(
        matches!(check(&mut auth, &with(json!({"exp": null}))), Err(AuthError::Invalid(why)) if why.contains("no expiry"))
    );
    assert!(check(&mut auth, &with(json!({"nbf": NOW + 20}))).is_ok(), "within leeway");
    assert!(
        matches!(check(&mut auth, &with(json!({"nbf": NOW + 31}))), Err(AuthError::Invalid(why)) if why.contains("not valid yet"))
    );
    assert!(
        matches!(check(&mut auth, &with(json!({"iss": "https://evil.example"}))), Err(AuthError::Invalid(why)) if why.contains("issuer"))
    );
    assert!(check(&mut auth, &with(json!({"aud": "api"}))).is_ok(), "aud as a string");
    assert!(
        matches!(check(&mut auth, &with(json!({"aud": ["other"]}))), Err(AuthError::Invalid(why)) if why.contains("audience"))
    );
    assert!(
        matches!(check(&mut auth, &with(json!({"sub": null}))), Err(AuthError::Invalid(why)) if why.contains("sub"))
    );
}

#[test]
fn key_ids_and_algorithm_lists_narrow_the_keys() {
    let mut auth = authenticator(json!({
        "keys": [{"kid": "one", "pem": key_file("ec.pub")}, {"kid": "two", "alg": "HS256", "secret": SECRET}],
        "algorithms": ["ES256"]
    }));
    assert!(check(&mut auth, &sign(Algorithm::ES256, Some("one"), &claims())).is_ok());
    assert!(check(&mut auth, &sign(Algorithm::ES256, Some("two"), &claims())).is_err(), "kid two is the HMAC key");
    assert!(
        matches!(check(&mut auth, &sign(Algorithm::HS256, Some("two"), &claims())), Err(AuthError::Invalid(why)) if why.contains("not accepted"))
    );
}

fn jwk_set() -> Value {
    // The EC public key as a JWK: x and y are the point's coordinates.
    use p256::pkcs8::DecodePublicKey;
    let key = p256::PublicKey::from_public_key_pem(&key_file("ec.pub")).unwrap();
    let point = p256::elliptic_curve::sec1::ToEncodedPoint::to_encoded_point(&key, false);
    json!({"keys": [
        {"kty": "EC", "crv": "P-256", "kid": "ec-1", "x": base64_url(point.x().unwrap()), "y": base64_url(point.y().unwrap())},
        {"kty": "RSA", "use": "enc", "kid": "enc-1", "n": "AQAB", "e": "AQAB"},
        {"kty": "oct", "kid": "hs-1", "alg": "HS256", "k": base64_url(SECRET.as_bytes())}
    ]})
}

#[test]
fn inline_jwk_sets_verify() {
    let mut auth = authenticator(json!({"jwks": jwk_set()}));
    assert!(check(&mut auth, &sign(Algorithm::ES256, Some("ec-1"), &claims())).is_ok());
    assert!(check(&mut auth, &sign(Algorithm::HS256, Some("hs-1"), &claims())).is_ok());
    assert!(check(&mut auth, &sign(Algorithm::ES256, Some("missing"), &claims())).is_err());
}

#[test]
fn fetched_jwk_sets_are_cached_and_refetched_for_new_key_ids_at_most_once_per_interval() {
    let mut auth = authenticator(
        json!({"jwks_url": {"upstream": "idp", "path": "/jwks", "cache_ttl": 600, "refresh_interval": 30}}),
    );
    let fetches = Cell::new(0);
    let body = serde_json::to_vec(&jwk_set()).unwrap();
    let mut at = |seconds: u64, token: &str| {
        auth.authenticate(
            Some(token),
            (NOW + seconds) * 1000,
            || {
                fetches.set(fetches.get() + 1);
                Ok(body.clone())
            },
            |_| {},
        )
    };
    let long_lived = json!({"sub": "alice", "exp": NOW + 3600});
    let good = sign(Algorithm::ES256, Some("ec-1"), &long_lived);
    let unknown = sign(Algorithm::ES256, Some("rotated"), &long_lived);
    assert!(at(0, &good).is_ok());
    assert!(at(1, &good).is_ok());
    assert_eq!(fetches.get(), 1, "cached");
    assert!(at(2, &unknown).is_err());
    assert_eq!(fetches.get(), 1, "an unknown kid right after a fetch waits for the refresh interval");
    assert!(at(40, &unknown).is_err());
    assert_eq!(fetches.get(), 2, "after the interval an unknown kid refetches");
    assert!(at(100, &good).is_ok());
    assert_eq!(fetches.get(), 2);
    assert!(at(700, &good).is_ok());
    assert_eq!(fetches.get(), 3, "past the TTL");
}

#[test]
fn a_failed_refresh_keeps_the_stale_keys() {
    let mut auth = authenticator(json!({"jwks_url": {"upstream": "idp", "path": "/jwks", "cache_ttl": 60}}));
    let body = serde_json::to_vec(&jwk_set()).unwrap();
    let good = sign(Algorithm::ES256, Some("ec-1"), &claims());
    assert!(auth.authenticate(Some(&good), NOW * 1000, || Ok(body), |_| {}).is_ok());
    let logged = Cell::new(false);
    // Another token, so its signature is checked (not remembered) and the stale set consulted.
    let other = sign(Algorithm::ES256, Some("ec-1"), &json!({"sub": "bob", "exp": NOW + 300}));
    let outcome = auth.authenticate(
        Some(&other),
        (NOW + 120) * 1000,
        || Err("connection refused".into()),
        |line| logged.set(line.contains("connection refused")),
    );
    assert!(outcome.is_ok());
    assert!(logged.get());
}

#[test]
fn bad_configs_are_refused() {
    let refused = |config: Value| Authenticator::new(&serde_json::from_value(config).unwrap()).unwrap_err();
    assert!(refused(json!({})).contains("no keys"));
    assert!(refused(json!({"keys": [{"secret": SECRET}]})).contains("needs alg"));
    assert!(refused(json!({"keys": [{"alg": "HS256", "secret": "short"}]})).contains("at least 32"));
    assert!(refused(json!({"keys": [{"pem": key_file("rsa.key")}]})).contains("keys[0]"));
    assert!(refused(json!({"keys": [{"alg": "HS256", "secret": SECRET, "pem": "x"}]})).contains("exactly one"));
    assert!(
        refused(json!({"keys": [{"alg": "HS256", "secret": SECRET}], "algorithms": ["none"]}))
            .contains("not supported")
    );
}

#[test]
fn a_remembered_token_still_has_its_claims_checked() {
    let mut auth = authenticator(json!({"keys": [{"alg": "HS256", "secret": SECRET}], "leeway": 0}));
    let token = sign(Algorithm::HS256, None, &json!({"sub": "alice", "exp": NOW + 10}));
    let at = |seconds: u64, auth: &mut Authenticator| {
        auth.authenticate(Some(&token), (NOW + seconds) * 1000, || unreachable!(), |_| {})
    };
    assert!(at(0, &mut auth).is_ok());
    assert!(at(5, &mut auth).is_ok(), "from memory");
    assert!(matches!(at(11, &mut auth), Err(AuthError::Invalid(why)) if why.contains("expired")));
}
