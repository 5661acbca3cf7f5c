//! One route chaining filters written in three languages, Rust (`tests/plugins/probe`),
//! JavaScript (`examples/js-sign-filter`) and Go (`tests/plugins/go-probe`), exercising every
//! phase, and swapped for a new version of the chain while clients keep sending.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use hmac::{Hmac, Mac};
use http::{Request, Response};
use http_body_util::BodyExt;
use sha2::Sha256;
use sluice_http::body;
use sluice_tests::{Origin, TestProxy, http1_client, plugin, send};

/// An origin that answers with the body it got and, in `x-seen-chain`, the request's `x-chain`
/// values (what the request filters added).
async fn body_echo_origin() -> Origin {
    Origin::start(|request| {
        Box::pin(async move {
            let chain: Vec<String> = request
                .headers()
                .get_all("x-chain")
                .iter()
                .map(|value| value.to_str().unwrap_or_default().to_owned())
                .collect();
            let received = request.into_body().collect().await.map(|body| body.to_bytes()).unwrap_or_default();
            let mut response = Response::new(body::full(received));
            response.headers_mut().insert("x-seen-chain", chain.join(",").parse().unwrap());
            response
        })
    })
    .await
}

/// Version `version` of the chain: JS signs with a secret of that version; the Rust probe
/// upper-cases request bodies, the Go probe upper-cases the response body as it streams and
/// counts its chunks. Request phases run js, rust, go; response phases go, rust, js, so the
/// signature covers the body as the client gets it.
fn config(origin: &Origin, version: u32) -> String {
    format!(
        r#"
[server]
watch = false
[[listener]]
bind = "127.0.0.1:0"
[upstream.app]
servers = [{{ addr = "{origin}" }}]
[plugin.sign]
source = "{sign}"
[plugin.rust]
source = "{rust}"
[plugin.go]
source = "{go}"
[[route]]
name = "polyglot"
upstream = "app"
filters = [
  {{ plugin = "sign", config = {{ secret = "{secret}" }} }},
  {{ plugin = "rust", config = {{ tag = "rust-v{version}", upper_request_body = true }} }},
  {{ plugin = "go", config = {{ tag = "go-v{version}", upper_response_body = true }} }},
]
"#,
        origin = origin.addr,
        sign = plugin("examples/js-sign-filter").display(),
        rust = plugin("tests/plugins/probe").display(),
        go = plugin("tests/plugins/go-probe").display(),
        secret = secret(version),
    )
}

fn secret(version: u32) -> String {
    format!("chain-secret-of-version-{version}")
}

/// What a client saw: the chain version it was served by.
fn check(status: http::StatusCode, headers: &http::HeaderMap, sent: &str, body: &[u8]) -> u32 {
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(body));
    let response_tags: Vec<&str> = headers.get_all("x-chain-response").iter().map(|v| v.to_str().unwrap()).collect();
    let version: u32 = response_tags
        .first()
        .and_then(|tag| tag.strip_prefix("go-v"))
        .and_then(|version| version.parse().ok())
        .unwrap_or_else(|| panic!("no Go tag in {response_tags:?}"));
    // Response phases in reverse chain order, one version throughout.
    assert_eq!(response_tags, [format!("go-v{version}"), format!("rust-v{version}")]);
    // Request phases in chain order (the JS filter has no request phase).
    assert_eq!(headers["x-seen-chain"], format!("rust-v{version},go-v{version}").as_str());
    // Rust upper-cased the request body (the origin echoed it), Go streamed it back upper-cased
    // and counted one chunk, JS signed what the client got with that version's secret.
    let expected = format!("{}[1 chunks]", sent.to_ascii_uppercase());
    assert_eq!(body, expected.as_bytes());
    let mut mac = Hmac::<Sha256>::new_from_slice(secret(version).as_bytes()).unwrap();
    mac.update(body);
    assert_eq!(headers["x-signature"], format!("sha256={}", hex::encode(mac.finalize().into_bytes())).as_str());
    assert_eq!(headers["x-signed-by"], "sluice-js");
    version
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rust_a_javascript_and_a_go_filter_chain_and_swap_under_load() {
    let origin = body_echo_origin().await;
    let mut proxy = TestProxy::start(&config(&origin, 1)).await;
    let server = proxy.take_server();
    let url = proxy.url("/upload");
    let stop = Arc::new(AtomicBool::new(false));
    // Each client adds a permit once it has its first answer.
    let answered = Arc::new(tokio::sync::Semaphore::new(0));
    let mut clients = Vec::new();
    for client_index in 0..32 {
        let (url, stop, answered) = (url.clone(), stop.clone(), answered.clone());
        clients.push(tokio::spawn(async move {
            let client = http1_client();
            let mut versions = Vec::new();
            let mut sequence = 0;
            // Each client goes on until it is told to stop and has seen the swap.
            while !stop.load(Ordering::Relaxed) || versions.last() != Some(&2) {
                sequence += 1;
                let sent = format!("payload {client_index}/{sequence} from a client");
                let request = Request::post(&url)
                    .header("host", "app.test")
                    .body(sluice_tests::full(sent.clone()))
                    .expect("request");
                let response = send(&client, request).await;
                versions.push(check(response.status, &response.headers, &sent, &response.body));
                if versions.len() == 1 {
                    answered.add_permits(1);
                }
            }
            versions
        }));
    }
    // Let every client through version 1 at least once before swapping.
    let _all_answered = answered.acquire_many(32).await.expect("the clients' semaphore is never closed");
    let warm =
        send(&http1_client(), Request::post(&url).header("host", "app.test").body(sluice_tests::full("warm")).unwrap())
            .await;
    assert_eq!(check(warm.status, &warm.headers, "warm", &warm.body), 1);
    let generation = server.reloader().reload_from_toml(&config(&origin, 2)).await.expect("the swap");
    assert_eq!(generation, 2);
    // After the swap, new requests see version 2.
    let after = send(
        &http1_client(),
        Request::post(&url).header("host", "app.test").body(sluice_tests::full("after")).unwrap(),
    )
    .await;
    assert_eq!(check(after.status, &after.headers, "after", &after.body), 2);
    stop.store(true, Ordering::Relaxed);

    for client in clients {
        let versions = client.await.expect("a client failed");
        assert!(versions.windows(2).all(|pair| pair[0] <= pair[1]), "a client went back a version: {versions:?}");
        // Every client was answered before the swap and went on until it saw it.
        assert_eq!((versions.first(), versions.last()), (Some(&1), Some(&2)), "{versions:?}");
    }
    server.shutdown_within(Duration::from_secs(5)).await;
}
