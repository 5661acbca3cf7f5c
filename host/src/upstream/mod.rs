//! Upstreams: named groups of origin servers, the pooled client that reaches them (over
//! cleartext or TLS) and the balancer that spreads requests across them.

mod balancer;
pub mod tls;

use std::sync::Arc;
use std::time::Duration;

use http::Request;
use http::uri::{Authority, Scheme};
use hyper_rustls::{FixedServerNameResolver, HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::{Client, ResponseFuture};
use hyper_util::rt::{TokioExecutor, TokioTimer};

pub use balancer::WeightedRoundRobin;
pub use tls::{UpstreamTls, UpstreamTlsSettings};

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
    client: UpstreamClient,
}

/// The pooled client of an upstream: one type per transport, so that cleartext upstreams carry
/// no TLS machinery.
#[derive(Clone)]
pub enum UpstreamClient {
    /// HTTP/1.1 over TCP.
    Plain(Client<HttpConnector, ProxyBody>),
    /// HTTPS, HTTP/2 where the server chooses it in ALPN.
    Tls(Client<HttpsConnector<HttpConnector>, ProxyBody>),
}

impl UpstreamClient {
    /// Sends a request whose URI names the server (see [`Upstream::scheme`]).
    pub fn request(&self, request: Request<ProxyBody>) -> ResponseFuture {
        match self {
            Self::Plain(client) => client.request(request),
            Self::Tls(client) => client.request(request),
        }
    }
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream").field("name", &self.name).field("servers", &self.servers).finish_non_exhaustive()
    }
}

impl Upstream {
    /// An upstream over `servers` (at least one) with its own pool, speaking TLS when `tls` is
    /// given.
    pub fn new(name: &str, servers: Vec<UpstreamServer>, pool: PoolSettings, tls: Option<UpstreamTls>) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(pool.connect_timeout));
        connector.set_nodelay(true);
        connector.set_keepalive(Some(Duration::from_secs(60)));
        let mut builder = Client::builder(TokioExecutor::new());
        builder
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(pool.idle_timeout)
            .pool_max_idle_per_host(pool.max_idle_per_server)
            // Header case and order are the client's business; keep what the origin sent.
            .http1_preserve_header_case(false);
        let client = match tls {
            None => UpstreamClient::Plain(builder.build(connector)),
            Some(tls) => {
                // The connector speaks TLS to `https` URIs; without this it would refuse them.
                connector.enforce_http(false);
                let https = HttpsConnectorBuilder::new().with_tls_config(tls.config).https_only();
                let https = match tls.server_name {
                    Some(name) => https.with_server_name_resolver(FixedServerNameResolver::new(name)),
                    None => https,
                };
                let https = if tls.offer_h2 {
                    https.enable_http1().enable_http2().wrap_connector(connector)
                } else {
                    https.enable_http1().wrap_connector(connector)
                };
                builder.timer(TokioTimer::new());
                UpstreamClient::Tls(builder.build(https))
            }
        };
        let balancer = WeightedRoundRobin::new(servers.iter().map(|server| server.weight).collect());
        Self { name: name.into(), servers, balancer, client }
    }

    /// The scheme of request URIs to this upstream's servers.
    pub fn scheme(&self) -> Scheme {
        match self.client {
            UpstreamClient::Plain(_) => Scheme::HTTP,
            UpstreamClient::Tls(_) => Scheme::HTTPS,
        }
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
    pub fn client(&self) -> &UpstreamClient {
        &self.client
    }
}
