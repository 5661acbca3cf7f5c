//! Upstreams: named groups of origin servers, the pooled client that reaches them (over
//! cleartext or TLS), the balancer that spreads requests across them, health checks and outlier
//! detection that take failing servers out, retries to another server within a budget, and a
//! limit on requests in flight that answers 503 at once when reached.

#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

mod balancer;
pub mod dns;
pub mod h1;
mod health;
mod limits;
pub mod metrics;
mod retry;
mod send;
mod server;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::Request;
use http::uri::Scheme;
use hyper_rustls::{FixedServerNameResolver, HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::{Client, ResponseFuture};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio_util::sync::CancellationToken;

pub use balancer::{Balancer, BalancerKind, HashKey, PickContext};
pub use dns::{DnsResolver, ResolverSettings};
pub use health::{CheckKind, HealthCheck};
use limits::ConnectionLimits;
pub use limits::{ConnectionLimitReached, LimitedConnection, LimitedConnector};
pub use retry::{RetryBudget, RetryPolicy, TryFailure};
pub use send::{MAX_TRIES, Outgoing, SendError, ServerBody, TryEnd, TryWatcher};
pub use server::{Availability, OutlierPolicy, ServerState, UpstreamServer};
pub use sluice_tls::client::{UpstreamTls, UpstreamTlsSettings};

use metrics::UpstreamMetrics;
use sluice_http::body::ProxyBody;
use sluice_http::worker::PerWorker;

/// How an upstream balances, checks, retries and limits; everything but its servers and pool.
#[derive(Debug, Clone)]
pub struct UpstreamPolicy {
    /// The balancer.
    pub balancer: BalancerKind,
    /// Ramp-up time for a server that just came back.
    pub slow_start: Option<Duration>,
    /// Active health checks, when configured.
    pub health_check: Option<HealthCheck>,
    /// Passive outlier detection, when enabled.
    pub outlier: Option<OutlierPolicy>,
    /// Retries.
    pub retry: RetryPolicy,
    /// Most requests in flight to the upstream; past it new requests get 503 at once.
    pub max_requests: Option<usize>,
    /// Sticky sessions: the cookie that names a client's server.
    pub sticky_cookie: Option<String>,
    /// Most connections open to each server.
    pub max_connections: Option<usize>,
    /// With `max_connections`: most requests per server waiting for a connection.
    pub max_pending: usize,
}

impl Default for UpstreamPolicy {
    fn default() -> Self {
        Self {
            balancer: BalancerKind::RoundRobin,
            slow_start: None,
            health_check: None,
            outlier: Some(OutlierPolicy::default()),
            retry: RetryPolicy::default(),
            max_requests: None,
            sticky_cookie: None,
            max_connections: None,
            max_pending: 1024,
        }
    }
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
    servers: Vec<ServerState>,
    balancer: Balancer,
    /// A pool per worker thread: a pooled connection is driven only by the worker that opened
    /// it, so reusing it takes no lock and wakes no other thread. Under `max_connections` one
    /// pool is shared, so that no worker's idle connections hold the permits another waits for.
    clients: PerWorker<UpstreamClient>,
    /// Sluice's own HTTP/1.1 client, a pool per worker, for the requests it carries (see
    /// [`h1`]); `None` where hyper's carries everything.
    own_clients: Option<PerWorker<h1::H1Client>>,
    /// Whether it speaks TLS to its servers.
    tls: bool,
    /// Resolves servers written as DNS names, for connections and TCP health checks.
    resolver: DnsResolver,
    policy: UpstreamPolicy,
    retry_budget: RetryBudget,
    /// Requests in flight to any server, for `max_requests`.
    in_flight: AtomicUsize,
    /// Stops the health checks when the upstream goes away.
    checks: CancellationToken,
    /// Its configuration section as written; a reload keeps this upstream when it is unchanged.
    fingerprint: String,
    /// Whether the health checks were started.
    checks_started: std::sync::atomic::AtomicBool,
    /// The families its servers and retries report into.
    metrics: Arc<UpstreamMetrics>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.checks.cancel();
    }
}

/// The pooled client of an upstream: one type per transport, so that cleartext upstreams carry
/// no TLS machinery.
#[derive(Clone)]
pub enum UpstreamClient {
    /// HTTP/1.1 over TCP.
    Plain(Client<LimitedConnector<HttpConnector<DnsResolver>>, ProxyBody>),
    /// HTTPS, HTTP/2 where the server chooses it in ALPN.
    Tls(Client<HttpsConnector<LimitedConnector<HttpConnector<DnsResolver>>>, ProxyBody>),
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

/// Whether cleartext upstreams use Sluice's own HTTP/1.1 client: yes, unless the environment
/// says `SLUICE_UPSTREAM_HTTP1=hyper` (for comparing the two, and as a way back).
fn own_http1_client() -> bool {
    std::env::var("SLUICE_UPSTREAM_HTTP1").map_or(true, |client| client != "hyper")
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream").field("name", &self.name).field("servers", &self.servers).finish_non_exhaustive()
    }
}

impl Upstream {
    /// An upstream over `servers` (at least one) with its own pool, speaking TLS when `tls` is
    /// given.
    pub fn new(
        name: &str,
        servers: Vec<UpstreamServer>,
        pool: PoolSettings,
        tls: Option<UpstreamTls>,
        policy: UpstreamPolicy,
        resolver: DnsResolver,
        metrics: Arc<UpstreamMetrics>,
    ) -> Self {
        let mut connector = HttpConnector::new_with_resolver(resolver.clone());
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
        if tls.is_some() {
            // The connector speaks TLS to `https` URIs; without this it would refuse them.
            connector.enforce_http(false);
        }
        let limits = policy.max_connections.map(|max_connections| {
            let per_server = servers
                .iter()
                .map(|server| {
                    let limits = ConnectionLimits::new(max_connections, policy.max_pending);
                    (server.authority.to_string(), Arc::new(limits))
                })
                .collect();
            Arc::new(per_server)
        });
        // Connection limits are per server across all workers: the connector's counts are shared.
        let connector = LimitedConnector::new(connector, limits);
        let speaks_tls = tls.is_some();
        // A pool per worker, except under a connection limit: connections idle in one worker's
        // pool would hold permits that requests on another worker wait for.
        let per_worker = |make: Box<dyn Fn() -> UpstreamClient + Send + Sync>| match policy.max_connections {
            None => PerWorker::new(make),
            Some(_) => PerWorker::shared(make),
        };
        let clients = match tls {
            None => per_worker(Box::new(move || UpstreamClient::Plain(builder.build(connector.clone())))),
            Some(tls) => {
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
                per_worker(Box::new(move || UpstreamClient::Tls(builder.build(https.clone()))))
            }
        };
        let own_clients = (!speaks_tls && policy.max_connections.is_none() && own_http1_client()).then(|| {
            let (count, resolver) = (servers.len(), resolver.clone());
            PerWorker::new(move || h1::H1Client::new(count, &pool, resolver.clone()))
        });
        let weights: Vec<u32> = servers.iter().map(|server| server.weight).collect();
        let balancer = Balancer::new(policy.balancer.clone(), &weights, policy.slow_start);
        let retry_budget = RetryBudget::new(policy.retry.budget_ratio, policy.retry.budget_min_per_second);
        Self {
            servers: servers.into_iter().map(|server| ServerState::new(name, server, &metrics)).collect(),
            name: name.into(),
            balancer,
            clients,
            own_clients,
            tls: speaks_tls,
            resolver,
            policy,
            retry_budget,
            in_flight: AtomicUsize::new(0),
            checks: CancellationToken::new(),
            fingerprint: String::new(),
            checks_started: std::sync::atomic::AtomicBool::new(false),
            metrics,
        }
    }

    /// Starts the active health checks, if configured; they end when the upstream is dropped.
    /// Needs a tokio runtime.
    /// Records the configuration it was compiled from (see [`Upstream::fingerprint`]).
    pub fn with_fingerprint(mut self, fingerprint: String) -> Self {
        self.fingerprint = fingerprint;
        self
    }

    /// Its configuration section as written, without positions in the file.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// Starts its active health checks, once: a reload that keeps the upstream keeps its checks.
    pub fn start_health_checks(self: &Arc<Self>) {
        if self.checks_started.swap(true, Ordering::Relaxed) {
            return;
        }
        if let Some(check) = &self.policy.health_check {
            health::spawn(self, check.clone(), self.checks.clone());
        }
    }

    /// The scheme of request URIs to this upstream's servers.
    pub fn scheme(&self) -> Scheme {
        if self.tls { Scheme::HTTPS } else { Scheme::HTTP }
    }

    /// The server for a request (ignoring none): for callouts and tests; proxied requests go
    /// through [`Upstream::send`], which also retries and limits.
    pub fn pick_server(&self, context: &PickContext<'_>) -> &UpstreamServer {
        let index = self.balancer.pick(&self.servers, context, &[]).unwrap_or(0);
        &self.servers[index].server
    }

    /// The servers with their live state, in configured order.
    pub fn servers(&self) -> &[ServerState] {
        &self.servers
    }

    /// The balancing, checking and retry settings.
    pub fn policy(&self) -> &UpstreamPolicy {
        &self.policy
    }

    /// The pooled client that carries requests to the servers: the calling worker's own.
    pub fn client(&self) -> &UpstreamClient {
        self.clients.get()
    }
}
