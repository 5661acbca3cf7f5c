//! Name resolution for upstream servers written as DNS names (`api.internal:8080`): a caching
//! stub resolver (hickory) that keeps each answer for its TTL, bounded by `[resolver]`'s
//! `min_ttl` and `max_ttl`, and asks again once it has expired. Every new connection to a
//! server asks the resolver, so a changed record is followed within its TTL; connections already
//! open stay on the address they reached until they close or idle out. A server whose name
//! resolves to several addresses is connected to each in turn until one answers.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{NameServerConfigGroup, ResolverConfig, ResolverOpts};
use hickory_resolver::name_server::TokioConnectionProvider;
use hyper_util::client::legacy::connect::dns::Name;

/// `[resolver]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolverSettings {
    /// Name servers to ask; empty means the system's (`/etc/resolv.conf`).
    pub nameservers: Vec<SocketAddr>,
    /// Answers are kept at least this long, whatever their TTL.
    pub min_ttl: Duration,
    /// Answers are kept at most this long, whatever their TTL.
    pub max_ttl: Duration,
    /// How long one query may take.
    pub timeout: Duration,
}

impl Default for ResolverSettings {
    fn default() -> Self {
        Self {
            nameservers: Vec::new(),
            min_ttl: Duration::ZERO,
            max_ttl: Duration::from_secs(3600),
            timeout: Duration::from_secs(2),
        }
    }
}

/// The resolver upstream connections use; cheap to clone, one cache shared by the clones.
#[derive(Clone)]
pub struct DnsResolver {
    inner: Arc<TokioResolver>,
    /// The addresses each name had last, so that a change is logged once.
    last_seen: Arc<Mutex<std::collections::HashMap<String, Vec<IpAddr>>>>,
}

impl std::fmt::Debug for DnsResolver {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("DnsResolver").finish_non_exhaustive()
    }
}

impl DnsResolver {
    /// A resolver with `settings`; reads the system's configuration when no name servers are
    /// given.
    pub fn new(settings: &ResolverSettings) -> std::io::Result<Self> {
        let builder = if settings.nameservers.is_empty() {
            TokioResolver::builder_tokio().map_err(std::io::Error::other)?
        } else {
            let mut group = NameServerConfigGroup::new();
            for address in &settings.nameservers {
                group.merge(NameServerConfigGroup::from_ips_clear(&[address.ip()], address.port(), true));
            }
            TokioResolver::builder_with_config(
                ResolverConfig::from_parts(None, Vec::new(), group),
                TokioConnectionProvider::default(),
            )
        };
        let mut options = ResolverOpts::default();
        options.positive_min_ttl = Some(settings.min_ttl);
        options.positive_max_ttl = Some(settings.max_ttl);
        // A failed lookup is asked again soon rather than remembered for long.
        options.negative_max_ttl = Some(Duration::from_secs(5));
        options.timeout = settings.timeout;
        let resolver = builder.with_options(options).build();
        Ok(Self { inner: Arc::new(resolver), last_seen: Arc::default() })
    }

    /// The addresses of `host` now (from the cache while its answer is valid).
    pub async fn resolve(&self, host: &str) -> std::io::Result<Vec<IpAddr>> {
        let lookup = self.inner.lookup_ip(host).await.map_err(|err| std::io::Error::other(format!("{host}: {err}")))?;
        let addresses: Vec<IpAddr> = lookup.iter().collect();
        if addresses.is_empty() {
            return Err(std::io::Error::other(format!("{host}: no addresses")));
        }
        let mut last_seen = self.last_seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut sorted = addresses.clone();
        sorted.sort();
        if last_seen.get(host) != Some(&sorted) {
            let before = last_seen.insert(host.to_owned(), sorted.clone());
            if let Some(before) = before {
                tracing::info!(name = host, ?before, now = ?sorted, "upstream name resolves to new addresses");
            }
        }
        Ok(addresses)
    }
}

impl DnsResolver {
    /// A TCP connection to `host:port`, trying each address `host` resolves to in turn.
    pub async fn connect(&self, host: &str, port: u16) -> std::io::Result<tokio::net::TcpStream> {
        let addresses = match host.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>() {
            Ok(ip) => vec![ip],
            Err(_) => self.resolve(host).await?,
        };
        let mut last_error = None;
        for ip in addresses {
            match tokio::net::TcpStream::connect(SocketAddr::new(ip, port)).await {
                Ok(stream) => return Ok(stream),
                Err(err) => last_error = Some(err),
            }
        }
        Err(last_error.unwrap_or_else(|| std::io::Error::other(format!("{host}: no addresses"))))
    }
}

impl tower_service::Service<Name> for DnsResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let resolver = self.clone();
        Box::pin(async move {
            // The connector puts the port in; it is the URI's.
            let addresses = resolver.resolve(name.as_str()).await?;
            Ok(addresses.into_iter().map(|ip| SocketAddr::new(ip, 0)).collect::<Vec<_>>().into_iter())
        })
    }
}
