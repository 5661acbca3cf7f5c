//! Where filters' callouts go. The runtime knows no upstream code: the proxy hands each call an
//! implementation of [`CalloutUpstreams`] over the upstreams of the configuration the request
//! runs on, and the runtime keeps to the guest-facing side (grants, limits, timeouts).

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;

use sluice_http::body::ProxyBody;

/// An exchange started by [`CalloutUpstreams::send`]: the upstream's response head, or why
/// there is none.
pub type CalloutExchange = Pin<Box<dyn Future<Output = Result<http::Response<ProxyBody>, String>> + Send>>;

/// The upstreams a filter may call out to, by name.
pub trait CalloutUpstreams: Send + Sync + std::fmt::Debug {
    /// Whether an upstream of that name exists.
    fn contains(&self, upstream: &str) -> bool;

    /// Starts sending `request` to a server of `upstream` (the request's URI holds the path and
    /// query only; the upstream picks the server, scheme and authority). `None` when there is no
    /// upstream of that name. The exchange is polled on the proxy's runtime.
    fn send(&self, upstream: &str, client_ip: IpAddr, request: http::Request<ProxyBody>) -> Option<CalloutExchange>;
}

/// No upstreams at all: for calls outside any configuration (tests, benchmarks, `configure`).
#[derive(Debug, Default, Clone, Copy)]
pub struct NoUpstreams;

impl CalloutUpstreams for NoUpstreams {
    fn contains(&self, _upstream: &str) -> bool {
        false
    }

    fn send(&self, _upstream: &str, _client_ip: IpAddr, _request: http::Request<ProxyBody>) -> Option<CalloutExchange> {
        None
    }
}
