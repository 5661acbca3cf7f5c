//! Upstreams: named groups of origin servers, the pooled client that reaches them and the
//! balancer that spreads requests across them.

mod balancer;

use std::sync::Arc;
use std::time::Duration;

use http::uri::Authority;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

pub use balancer::WeightedRoundRobin;

use crate::body::ProxyBody;

/// One origin server.
#[derive(Debug, Clone)]
pub struct UpstreamServer {
    /// `host:port`, as sent in the request URI.
    pub authority: Authority,
    /// Share of requests relative to the other servers.
    pub weight: u32,
}

/// Settings of an upstream's connection pool.
#[derive(Debug, Clone, Copy)]
pub struct PoolSettings {
    /// How long to wait for a TCP connection.
    pub connect_timeout: Duration,
    /// How long an idle connection is kept.
    pub idle_timeout: Duration,
    /// Most idle connections kept per server.
    pub max_idle_per_server: usize,
}

/// A named group of servers with its connection pool.
pub struct Upstream {
    /// Name used in logs and metrics.
    pub name: Arc<str>,
    servers: Vec<UpstreamServer>,
    balancer: WeightedRoundRobin,
    client: Client<HttpConnector, ProxyBody>,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream").field("name", &self.name).field("servers", &self.servers).finish_non_exhaustive()
    }
}

impl Upstream {
    /// An upstream over `servers` (at least one) with its own pool.
    pub fn new(name: &str, servers: Vec<UpstreamServer>, pool: PoolSettings) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(pool.connect_timeout));
        connector.set_nodelay(true);
        connector.set_keepalive(Some(Duration::from_secs(60)));
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(pool.idle_timeout)
            .pool_max_idle_per_host(pool.max_idle_per_server)
            // Header case and order are the client's business; keep what the origin sent.
            .http1_preserve_header_case(false)
            .build(connector);
        let balancer = WeightedRoundRobin::new(servers.iter().map(|server| server.weight).collect());
        Self { name: name.into(), servers, balancer, client }
    }

    /// The server for the next request.
    pub fn pick_server(&self) -> &UpstreamServer {
        &self.servers[self.balancer.next()]
    }

    /// The servers, in configured order.
    pub fn servers(&self) -> &[UpstreamServer] {
        &self.servers
    }

    /// The pooled client that carries requests to the servers.
    pub fn client(&self) -> &Client<HttpConnector, ProxyBody> {
        &self.client
    }
}
