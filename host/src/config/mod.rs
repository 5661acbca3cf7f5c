//! Configuration, in three steps: the TOML file read into the types it is written in
//! ([`file`]); plugin sources resolved to components (`resolve`: the store, a registry or a
//! build); then one pure compile into the immutable [`Snapshot`] that every request reads, one
//! function per section (`compile`). Each step's errors name file, key, line and column.

mod compile;
pub(crate) use compile::place_in_chain;
mod error;
pub mod file;
mod resolve;
mod upstream_table;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;
use http::header::HeaderName;
use ipnet::IpNet;

pub use error::ConfigError;
pub use upstream_table::UpstreamTable;

use crate::routing::RouteTable;
use sluice_runtime::{Plugin, Runtime, RuntimeError};
use sluice_tls::server::TlsSettings;
use sluice_upstream::metrics::UpstreamMetrics;

/// What every generation of the configuration is compiled against, made once when Sluice starts
/// (by the CLI, or by a test) and shared by all of them: the filter runtime and the families the
/// upstreams report into. Two `Services` make two independent proxies in one process.
#[derive(Debug, Clone)]
pub struct Services {
    /// The filter runtime: engine, compiled plugins, host services.
    pub runtime: Arc<Runtime>,
    /// Upstream health and load metrics.
    pub upstream_metrics: Arc<UpstreamMetrics>,
    /// Every route's live figures, by name, for the dashboard (kept across generations).
    pub live: Arc<crate::telemetry::live::LiveBoard>,
    /// Every shadow filter's comparisons with the filter it shadows (kept across generations).
    pub shadows: Arc<crate::telemetry::shadows::ShadowBoard>,
}

impl Services {
    /// Services over `runtime`.
    pub fn new(runtime: Runtime) -> Self {
        Self {
            runtime: Arc::new(runtime),
            upstream_metrics: Arc::default(),
            live: Arc::default(),
            shadows: Arc::default(),
        }
    }

    /// Services whose runtime caches compiled components where users expect them
    /// ([`Runtime::with_default_cache`]).
    pub fn with_default_cache() -> Result<Self, RuntimeError> {
        Runtime::with_default_cache().map(Self::new)
    }

    /// Services for unit tests: a runtime without a disk cache.
    #[cfg(test)]
    pub(crate) fn for_tests() -> Self {
        Self::new(Runtime::new(None).expect("the filter runtime starts"))
    }
}

/// The whole compiled configuration. A request loads it once and finishes on it, whatever
/// reloads happen meanwhile.
#[derive(Debug)]
pub struct Snapshot {
    /// Limits and header policy shared by all listeners.
    pub server: ServerSettings,
    /// The admin listener's address, when there is one.
    pub admin: Option<SocketAddr>,
    /// The token `POST /reload` on the admin listener requires.
    pub admin_reload_token: Option<Arc<str>>,
    /// The token the admin listener's read endpoints require, when set (`admin.read_token`).
    pub admin_read_token: Option<Arc<str>>,
    /// Every tenant by name, `default` among them.
    pub tenants: BTreeMap<String, Arc<sluice_runtime::Tenant>>,
    /// Where each plugin comes from, as written (`oci://...` or a path).
    pub plugin_origins: BTreeMap<String, String>,
    /// Client listeners.
    pub listeners: Vec<ListenerSpec>,
    /// Upstreams by name (shared with filter callouts).
    pub upstreams: Arc<UpstreamTable>,
    /// Plugins by name, compiled and checked.
    pub plugins: BTreeMap<String, Arc<Plugin>>,
    /// Local plugin sources (component files and crate folders), for the file watcher.
    pub plugin_sources: Vec<PathBuf>,
    /// Data files it read (GeoIP databases, address list files), for the file watcher.
    pub data_files: Vec<PathBuf>,
    /// The Redis backends by name (carried over a reload while their settings stay).
    pub redis: BTreeMap<String, Arc<sluice_runtime::kv::RedisKv>>,
    /// The Redis that `[cluster]` shares purges and bans through.
    pub cluster: Option<Arc<sluice_runtime::kv::RedisKv>>,
    /// The tracer, when `[tracing]` is configured.
    pub tracing: Option<Arc<crate::telemetry::traces::Tracing>>,
    /// The GeoIP databases, when `[geoip]` names any.
    pub geoip: Option<Arc<sluice_access::GeoIp>>,
    /// The routes.
    pub routes: RouteTable,
    /// The HTTP cache store's size (`[cache] max_bytes`), bound at start.
    pub cache_max_bytes: u64,
    /// Resolves upstream servers written as DNS names (kept across reloads while unchanged).
    pub resolver: sluice_upstream::DnsResolver,
    /// `[resolver]` as compiled.
    pub resolver_settings: sluice_upstream::ResolverSettings,
    /// The file it came from, if any.
    pub source: Option<PathBuf>,
    /// What it was compiled against; the next generation compiles against the same.
    pub services: Services,
}

/// `[server]`, validated.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    /// Most client connections at once.
    pub max_connections: usize,
    /// Most connections one client address may hold open at once (trusted proxies exempt).
    pub max_connections_per_client: usize,
    /// Largest request head in bytes.
    pub max_header_bytes: usize,
    /// Most request headers.
    pub max_headers: usize,
    /// Default largest request body.
    pub max_body_bytes: u64,
    /// Time allowed for a complete request head.
    pub header_read_timeout: Duration,
    /// Time a connection may sit with nothing in flight.
    pub idle_timeout: Duration,
    /// Time a client may take to read the next part of a response.
    pub send_timeout: Duration,
    /// Time in-flight requests get after a shutdown signal.
    pub shutdown_timeout: Duration,
    /// Peers whose forwarding headers are believed.
    pub trusted_proxies: Vec<IpNet>,
    /// Response headers removed before the client sees them.
    pub hide_headers: Vec<HeaderName>,
    /// This proxy's `Via` entry, such as `1.1 sluice`, without the protocol version.
    pub via_name: HeaderValue,
    /// Reload when the configuration file or a local plugin changes.
    pub watch: bool,
    /// The CPU priority of the long-call threads.
    pub long_call_priority: sluice_runtime::LongCallPriority,
}

/// A client listener.
#[derive(Debug, Clone)]
pub struct ListenerSpec {
    /// Name for logs and metrics.
    pub name: Arc<str>,
    /// Where it listens.
    pub bind: SocketAddr,
    /// TLS termination, when the listener speaks HTTPS.
    pub tls: Option<TlsSettings>,
    /// `Strict-Transport-Security` value for its responses.
    pub hsts: Option<HeaderValue>,
    /// Redirect everything to HTTPS on this port.
    pub redirect_to_https: Option<u16>,
    /// Client addresses refused on every route of the listener.
    pub access: Arc<sluice_access::AccessRules>,
    /// HTTP/3 beside it, when on.
    pub http3: Option<Http3Settings>,
}

/// A listener's HTTP/3 side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Http3Settings {
    /// `Alt-Svc`'s max-age on the listener's TCP responses; zero advertises nothing.
    pub alt_svc_max_age: Duration,
    /// Most request streams open at once per connection.
    pub max_streams: u32,
}

impl Snapshot {
    /// Each route's name and its chain's places (`filters[0]`, `filters[0].canary`): what the
    /// live figures keep.
    pub fn live_places(&self) -> Vec<(Arc<str>, Vec<String>)> {
        use crate::config::place_in_chain;
        self.routes
            .routes()
            .iter()
            .map(|route| {
                let places = route
                    .filters
                    .iter()
                    .flat_map(|filter| filter.versions())
                    .map(|version| place_in_chain(&version.key).to_owned())
                    .collect();
                (route.name.clone(), places)
            })
            .collect()
    }

    /// Reads and compiles a configuration file.
    pub fn from_file(services: &Services, path: &Path) -> Result<Self, ConfigError> {
        Self::read_and_compile(services, path, None)
    }

    /// Reads and compiles a configuration file to replace `previous`, against its services:
    /// unchanged upstreams (with their pools and health state) and unchanged plugins are taken
    /// over rather than rebuilt.
    pub fn from_file_after(path: &Path, previous: &Snapshot) -> Result<Self, ConfigError> {
        Self::read_and_compile(&previous.services, path, Some(previous))
    }

    fn read_and_compile(services: &Services, path: &Path, previous: Option<&Snapshot>) -> Result<Self, ConfigError> {
        let source = std::fs::read_to_string(path).map_err(|err| {
            ConfigError::at("", None, "", format!("cannot read the configuration: {err}")).in_file(path)
        })?;
        let base_dir = path.parent().unwrap_or(Path::new("."));
        let mut snapshot = Self::compile(services, &source, base_dir, previous).map_err(|err| err.in_file(path))?;
        snapshot.source = Some(path.to_owned());
        Ok(snapshot)
    }

    /// Compiles configuration text; relative plugin paths are taken from the current directory.
    pub fn from_toml(services: &Services, source: &str) -> Result<Self, ConfigError> {
        Self::compile(services, source, Path::new("."), None)
    }

    /// [`Snapshot::from_toml`] replacing `previous`, against its services (see
    /// [`Snapshot::from_file_after`]).
    pub fn from_toml_after(source: &str, previous: &Snapshot) -> Result<Self, ConfigError> {
        Self::compile(&previous.services, source, Path::new("."), Some(previous))
    }

    fn compile(
        services: &Services,
        source: &str,
        base_dir: &Path,
        previous: Option<&Snapshot>,
    ) -> Result<Self, ConfigError> {
        let deserializer = toml::Deserializer::parse(source)
            .map_err(|err| ConfigError::at(source, err.span(), "", err.message().to_owned()))?;
        let file: file::ConfigFile = serde_path_to_error::deserialize(deserializer).map_err(|err| {
            // `Spanned` shows up in the path as a private field; users never wrote it.
            let key = err.path().to_string().replace(".$__serde_spanned_private_value", "");
            let inner = err.into_inner();
            ConfigError::at(
                source,
                inner.span(),
                if key == "." { String::new() } else { key },
                inner.message().to_owned(),
            )
        })?;
        let resolved = resolve::resolve(&file, source, base_dir)?;
        compile::compile(services, file, resolved, source, base_dir, previous)
    }

    /// Takes over `previous`'s warm instance pools for filters that did not change (same route,
    /// plugin bytes, config, tenant grants and policies), so a reload does not cold-start them.
    pub fn adopt_filter_pools(&self, previous: &Snapshot) {
        for route in self.routes.routes() {
            let Some(old_route) = previous.routes.routes().iter().find(|old| old.name == route.name) else { continue };
            let old_versions: Vec<&sluice_runtime::RouteFilter> =
                old_route.filters.iter().flat_map(|filter| filter.versions()).collect();
            for filter in route.filters.iter().flat_map(|filter| filter.versions()) {
                // A canary promoted to the main version keeps its warm pool too.
                if let Some(pool) =
                    old_versions.iter().find(|old| filter.spec.same_filter_as(&old.spec)).and_then(|old| old.pool())
                {
                    filter.adopt(pool.clone());
                }
            }
        }
    }

    /// The names of the filter plugins and their digests, for status pages.
    pub fn plugin_digests(&self) -> BTreeMap<&str, &str> {
        self.plugins.iter().map(|(name, plugin)| (name.as_str(), plugin.digest.as_str())).collect()
    }

    /// Starts and configures the first instance of every route filter, which checks each
    /// filter's config against its plugin. Call once before serving.
    pub async fn prepare_filters(&self) -> Result<(), ConfigError> {
        let runtime = &self.services.runtime;
        for route in self.routes.routes() {
            for filter in route.filters.iter().flat_map(|filter| filter.versions()) {
                if let Err(error) = filter.prepare(runtime).await {
                    let mut message = format!("filter {}: {}", filter.spec.name, error.kind);
                    if let Some(guest) = &error.guest_message {
                        message.push_str(&format!(" ({guest})"));
                    }
                    return Err(ConfigError {
                        file: self.source.clone(),
                        key: filter.key.clone(),
                        position: filter.position,
                        message,
                    });
                }
            }
        }
        Ok(())
    }
}
