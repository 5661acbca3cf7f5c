//! Sluice's own filters (plugins/) built into components and run through a real proxy.

mod api_key;
mod cache_key;
mod cors;
mod header_rewrite;
mod jwt_auth;
mod rate_limit;
mod redact;
mod waf;

use http::Request;
use sluice_http::body;
use sluice_tests::{Collected, Origin, TestProxy, http1_client, plugin, send};

/// A proxy with one upstream `app` at `origin`, the named plugins from plugins/, and `rest`
/// (routes, tenants, more upstreams).
async fn proxy_with(origin: &Origin, plugins: &[&str], rest: &str) -> TestProxy {
    let mut config =
        format!("[[listener]]\nbind = \"127.0.0.1:0\"\n[upstream.app]\nservers = [{{ addr = \"{}\" }}]\n", origin.addr);
    for name in plugins {
        let path = plugin(&format!("plugins/{name}"));
        config.push_str(&format!("[plugin.{}]\nsource = \"{}\"\n", name.replace('-', "_"), path.display()));
    }
    config.push_str(rest);
    TestProxy::start(&config).await
}

/// Sends `method path` with `headers` and collects the answer.
async fn request(proxy: &TestProxy, method: &str, path: &str, headers: &[(&str, &str)]) -> Collected {
    let mut builder = Request::builder().method(method).uri(proxy.url(path)).header("host", "app.test");
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    send(&http1_client(), builder.body(body::empty()).expect("valid request")).await
}

/// A response header as text.
fn header<'a>(response: &'a Collected, name: &str) -> Option<&'a str> {
    response.headers.get(name).map(|value| value.to_str().expect("text header"))
}
