//! The configuration exactly as written in TOML.
//!
//! These types mirror the file one to one: every table and key a user can write is a field here,
//! unknown keys are refused (`deny_unknown_fields`), and values that a later step must point back
//! to keep their place in the file (`Spanned`). Nothing here is validated beyond its type; the
//! compile step in [`super::compile`] turns a [`ConfigFile`] into the immutable
//! [`Snapshot`](super::Snapshot) that the server uses.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};
use toml::Spanned;

/// The whole configuration file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// Limits and behaviour shared by every listener.
    #[serde(default)]
    pub server: ServerSection,
    /// The admin listener (`/metrics`, `/healthz`); absent means no admin listener.
    pub admin: Option<AdminSection>,
    /// Where Sluice accepts client connections.
    #[serde(default)]
    pub listener: Vec<Spanned<ListenerSection>>,
    /// Named groups of origin servers, keyed by name.
    #[serde(default)]
    pub upstream: BTreeMap<String, Spanned<UpstreamSection>>,
    /// Routes, in file order; file order breaks ties between equally specific routes.
    #[serde(default)]
    pub route: Vec<Spanned<RouteSection>>,
    /// Tenants and what their filters are granted, keyed by name.
    #[serde(default)]
    pub tenant: BTreeMap<String, Spanned<TenantSection>>,
    /// Filter plugins, keyed by name.
    #[serde(default)]
    pub plugin: BTreeMap<String, Spanned<PluginSection>>,
    /// The HTTP cache store shared by every caching route.
    #[serde(default)]
    pub cache: CacheSection,
    /// How upstream servers written as DNS names are resolved.
    #[serde(default)]
    pub resolver: ResolverSection,
    /// The GeoIP databases that country lists and filters read.
    pub geoip: Option<Spanned<GeoIpSection>>,
    /// Redis servers that tenants' key-value state can live in, keyed by name.
    #[serde(default)]
    pub redis: BTreeMap<String, Spanned<RedisSection>>,
    /// What this instance shares with the others on the same Redis (purges, bans).
    pub cluster: Option<Spanned<ClusterSection>>,
    /// Distributed tracing: where spans are exported and how many requests are sampled.
    pub tracing: Option<Spanned<TracingSection>>,
}

/// `[tracing]`: OpenTelemetry traces of proxied requests, exported over OTLP.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TracingSection {
    /// The collector: `http://host:4318` (its `/v1/traces` is added when no path is given) for
    /// HTTP/protobuf, `http://host:4317` for gRPC.
    pub endpoint: Spanned<String>,
    /// `http/protobuf` or `grpc`.
    #[serde(default = "default_tracing_protocol")]
    pub protocol: Spanned<String>,
    /// The share of traces that start here which are recorded (0 to 1); a request whose client
    /// sent a sampling decision keeps that decision.
    #[serde(default = "default_sampling_ratio")]
    pub sampling_ratio: Spanned<f64>,
    /// `service.name` of every span.
    #[serde(default = "default_service_name")]
    pub service_name: String,
    /// Headers sent with every export (an API key, say).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// How long one export may take.
    #[serde(default = "default_export_timeout")]
    pub export_timeout: HumanDuration,
    /// How long ended spans wait before they are sent (unless a batch fills first).
    #[serde(default = "default_export_interval")]
    pub export_interval: HumanDuration,
    /// Ended spans kept while they wait; past it new ones are dropped.
    #[serde(default = "default_tracing_queue")]
    pub max_queue: usize,
    /// Most spans in one export.
    #[serde(default = "default_tracing_batch")]
    pub max_batch: usize,
}

fn default_tracing_protocol() -> Spanned<String> {
    Spanned::new(0..0, "http/protobuf".to_owned())
}
fn default_sampling_ratio() -> Spanned<f64> {
    Spanned::new(0..0, 1.0)
}
fn default_service_name() -> String {
    "sluice".to_owned()
}
fn default_export_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(10))
}
fn default_export_interval() -> HumanDuration {
    HumanDuration(Duration::from_secs(5))
}
fn default_tracing_queue() -> usize {
    2048
}
fn default_tracing_batch() -> usize {
    512
}

/// `[cluster]`: the instances that share one Redis also share cache purges and bans.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSection {
    /// The `[redis.NAME]` they share.
    pub redis: Spanned<String>,
}

/// `[redis.NAME]`: a Redis that several Sluice instances share.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisSection {
    /// `redis://[user:password@]host:port/db`, or `rediss://` for TLS.
    pub url: Spanned<String>,
    /// The longest one key-value operation may take.
    #[serde(default = "default_redis_timeout")]
    pub timeout: HumanDuration,
    /// The longest a connection attempt may take.
    #[serde(default = "default_redis_connect_timeout")]
    pub connect_timeout: HumanDuration,
    /// Multiplexed connections kept.
    #[serde(default = "default_redis_pool_size")]
    pub pool_size: usize,
    /// Prefix of every key Sluice writes.
    #[serde(default = "default_redis_key_prefix")]
    pub key_prefix: String,
}

fn default_redis_timeout() -> HumanDuration {
    HumanDuration(std::time::Duration::from_millis(5))
}
fn default_redis_connect_timeout() -> HumanDuration {
    HumanDuration(std::time::Duration::from_millis(500))
}
fn default_redis_pool_size() -> usize {
    2
}
fn default_redis_key_prefix() -> String {
    "sluice".to_owned()
}

/// `[geoip]`: MaxMind-format databases (`.mmdb`) for client locations.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GeoIpSection {
    /// A Country or City database (GeoIP2, GeoLite2, or one with the same fields).
    pub country_database: Option<Spanned<String>>,
    /// An ASN database (autonomous system number and organisation).
    pub asn_database: Option<Spanned<String>>,
}

/// Address lists of a listener or a route: addresses and CIDR ranges, written inline or in files
/// of one per line (`#` starts a comment).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddressListsSection {
    /// Only these may pass.
    pub allow: Option<Vec<Spanned<String>>>,
    /// These never pass; deny wins over allow.
    #[serde(default)]
    pub deny: Vec<Spanned<String>>,
    /// More allowed ranges, from a file.
    pub allow_file: Option<Spanned<String>>,
    /// More denied ranges, from a file.
    pub deny_file: Option<Spanned<String>>,
}

/// A route's `countries`: ISO 3166-1 alpha-2 codes.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CountriesSection {
    /// Only clients located in these may pass (an unknown location does not).
    pub allow: Option<Vec<Spanned<String>>>,
    /// Clients located in these never pass.
    #[serde(default)]
    pub deny: Vec<Spanned<String>>,
}

/// `[resolver]`: name resolution for upstream servers.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ResolverSection {
    /// Name servers (`"10.0.0.2:53"`); empty means the system's.
    pub nameservers: Vec<Spanned<String>>,
    /// Keep answers at least this long.
    pub min_ttl: HumanDuration,
    /// Keep answers at most this long.
    pub max_ttl: HumanDuration,
    /// How long one query may take.
    pub timeout: HumanDuration,
}

impl Default for ResolverSection {
    fn default() -> Self {
        Self {
            nameservers: Vec::new(),
            min_ttl: HumanDuration(Duration::ZERO),
            max_ttl: HumanDuration(Duration::from_secs(3600)),
            timeout: HumanDuration(Duration::from_secs(2)),
        }
    }
}

/// `[tenant.NAME]`: what a tenant's filters may use.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantSection {
    /// Linear memory one filter instance may grow to, in MiB.
    #[serde(default = "default_memory_mb")]
    pub memory_mb: usize,
    /// Guest execution time one filter call may take, in milliseconds.
    #[serde(default = "default_cpu_ms")]
    pub cpu_ms_per_call: u64,
    /// Most instances of one filter alive at once.
    #[serde(default = "default_max_instances")]
    pub max_instances: usize,
    /// Upstreams the tenant's filters may call out to.
    #[serde(default)]
    pub callouts: Vec<Spanned<String>>,
    /// Most key-value keys.
    #[serde(default = "default_kv_max_keys")]
    pub kv_max_keys: usize,
    /// Most key-value bytes (keys and values).
    #[serde(default = "default_kv_max_bytes")]
    pub kv_max_bytes: usize,
    /// The plugins the tenant's routes may run; absent: any.
    pub plugins: Option<Vec<Spanned<String>>>,
    /// Guest CPU milliseconds per second, all the tenant's instances together; absent: no limit.
    pub cpu_ms_per_second: Option<u64>,
    /// Wall-clock time one filter call may take, callouts and pauses included.
    #[serde(default = "default_call_timeout")]
    pub call_timeout: HumanDuration,
    /// Most metric series the tenant's filters may create.
    #[serde(default = "default_metric_series")]
    pub metric_series: usize,
    /// Log lines one instance may write per second (a burst of twice that).
    #[serde(default = "default_log_lines_per_second")]
    pub log_lines_per_second: u32,
    /// The longest ban the tenant's filters may set on a client; absent: they may not ban.
    pub ban_max_duration: Option<HumanDuration>,
    /// Most bans the tenant's filters hold at once.
    #[serde(default = "default_ban_max_entries")]
    pub ban_max_entries: usize,
    /// Where the tenant's key-value namespace lives: `memory` (this process) or a `[redis]`.
    pub kv_backend: Option<Spanned<String>>,
}

fn default_ban_max_entries() -> usize {
    sluice_runtime::DEFAULT_BAN_ENTRIES
}

fn default_call_timeout() -> HumanDuration {
    HumanDuration(sluice_runtime::DEFAULT_CALL_TIMEOUT)
}
fn default_metric_series() -> usize {
    sluice_runtime::DEFAULT_METRIC_SERIES
}
fn default_log_lines_per_second() -> u32 {
    sluice_runtime::DEFAULT_LOG_LINES_PER_SECOND
}

fn default_memory_mb() -> usize {
    64
}
fn default_cpu_ms() -> u64 {
    50
}
fn default_max_instances() -> usize {
    64
}
fn default_kv_max_keys() -> usize {
    100_000
}
fn default_kv_max_bytes() -> usize {
    64 << 20
}

/// `[plugin.NAME]`: where a filter plugin comes from.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginSection {
    /// A component file (`.wasm`), or a filter crate's folder (built on load), relative to the
    /// configuration file; or a package, `oci://REGISTRY/REPOSITORY:TAG[@sha256:DIGEST]`.
    pub source: Spanned<PluginSource>,
}

/// One entry of a route's `filters`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterEntry {
    /// The plugin (a key of `[plugin]`).
    pub plugin: Spanned<String>,
    /// The filter's config, handed to it as JSON.
    pub config: Option<toml::Value>,
    /// `fail-closed` (default) or `fail-open`.
    #[serde(default)]
    pub on_error: OnError,
    /// `instance` (default: warm instances reused) or `request` (a fresh instance per request).
    #[serde(default)]
    pub isolation: IsolationSetting,
    /// Another plugin (a new version) that serves a share of the requests instead.
    pub canary: Option<CanaryEntry>,
    /// Another plugin (or config) that runs beside this one on a copy of what it sees, whose
    /// decisions are compared and never applied.
    pub shadow: Option<ShadowEntry>,
    /// Data files the filter reads (a WAF's rule sets): name to a file or folder, relative to
    /// the configuration file; read when the configuration loads and handed to the filter with
    /// its config (the sandbox has no file system).
    #[serde(default)]
    pub files: std::collections::BTreeMap<String, Spanned<String>>,
}

/// A shadow: another plugin deciding on a share of a filter's requests without effect.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShadowEntry {
    /// The plugin (a key of `[plugin]`), typically a newer version of the filter's.
    pub plugin: Spanned<String>,
    /// Share of requests shadowed, 1 to 100.
    #[serde(default = "all_percent")]
    pub percent: u32,
    /// Its config; default: the filter's own.
    pub config: Option<toml::Value>,
}

fn all_percent() -> u32 {
    100
}

/// A canary: another plugin taking `percent` of a filter's requests.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CanaryEntry {
    /// The plugin (a key of `[plugin]`), typically a newer version of the filter's.
    pub plugin: Spanned<String>,
    /// Share of requests it takes, 1 to 99.
    pub percent: u32,
    /// Send each client (by IP address) always to the same version.
    #[serde(default)]
    pub sticky: bool,
    /// Its config; default: the filter's own.
    pub config: Option<toml::Value>,
}

/// What a failing filter does.
#[derive(Debug, Default, Clone, Copy, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnError {
    /// Answer with an error.
    #[default]
    FailClosed,
    /// Skip the filter.
    FailOpen,
}

/// How instances are shared.
#[derive(Debug, Default, Clone, Copy, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum IsolationSetting {
    /// Warm instances serve request after request.
    #[default]
    Instance,
    /// A fresh instance per request.
    Request,
}

/// `[server]`: connection limits, timeouts and header policy.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSection {
    /// Most client connections open at once across all listeners; further clients wait in the
    /// kernel's accept queue.
    pub max_connections: usize,
    /// Most connections one client address may hold open at once; more are closed at accept.
    /// Trusted proxies are exempt.
    pub max_connections_per_client: usize,
    /// Largest request head (request line plus headers) in bytes; larger gets 431.
    pub max_header_bytes: usize,
    /// Most request headers; more gets 431.
    pub max_headers: usize,
    /// Largest request body in bytes unless a route says otherwise; larger gets 413.
    pub max_body_bytes: u64,
    /// How long a client may take to send a complete request head.
    pub header_read_timeout: HumanDuration,
    /// How long a keep-alive connection may sit with no request in flight.
    pub idle_timeout: HumanDuration,
    /// How long a client may take to read the next part of a response before it is cut off.
    pub send_timeout: HumanDuration,
    /// How long in-flight requests get to finish after SIGTERM/SIGINT.
    pub shutdown_timeout: HumanDuration,
    /// Peers whose X-Forwarded-* and X-Request-Id headers are believed.
    pub trusted_proxies: Vec<Spanned<String>>,
    /// Response headers removed before the response reaches the client.
    pub hide_headers: Vec<String>,
    /// The name this proxy gives itself in `Via`.
    pub via_name: String,
    /// Reload when the configuration file or a local plugin changes.
    pub watch: bool,
    /// Where pulled plugin packages are kept (default: `~/.cache/sluice/packages`).
    pub package_store: Option<String>,
    /// The CPU priority of long filter calls: `"idle"` (default) or a niceness from 0 to 19.
    pub long_call_priority: Option<Spanned<LongCallPriorityValue>>,
}

/// `server.long_call_priority` as written: a name or a niceness.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum LongCallPriorityValue {
    /// `"idle"`.
    Name(String),
    /// A niceness.
    Niceness(i64),
}

impl Default for ServerSection {
    fn default() -> Self {
        Self {
            max_connections: 10_000,
            max_connections_per_client: 512,
            max_header_bytes: 64 * 1024,
            max_headers: 100,
            max_body_bytes: 100 * 1024 * 1024,
            header_read_timeout: HumanDuration(Duration::from_secs(10)),
            idle_timeout: HumanDuration(Duration::from_secs(60)),
            send_timeout: HumanDuration(Duration::from_secs(60)),
            shutdown_timeout: HumanDuration(Duration::from_secs(30)),
            trusted_proxies: Vec::new(),
            hide_headers: vec!["server".into(), "x-powered-by".into()],
            via_name: "sluice".into(),
            watch: true,
            package_store: None,
            long_call_priority: None,
        }
    }
}

/// `[admin]`: the operator's listener.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminSection {
    /// Address to listen on; loopback unless you mean otherwise.
    #[serde(default = "default_admin_bind")]
    pub bind: Spanned<String>,
    /// The bearer token `POST /reload` requires; without one, reloads over HTTP are refused.
    pub reload_token: Option<String>,
    /// The bearer token the read endpoints (`/metrics`, `/routes`, `/live`, ...) require; without
    /// one, they answer anyone who reaches the listener.
    pub read_token: Option<String>,
}

fn default_admin_bind() -> Spanned<String> {
    Spanned::new(0..0, "127.0.0.1:9901".to_owned())
}

/// `[[listener]]`: one address Sluice accepts clients on.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerSection {
    /// Name used in logs and metrics; defaults to the bind address.
    pub name: Option<String>,
    /// `host:port` to listen on; port 0 picks a free port.
    pub bind: Spanned<String>,
    /// Terminate TLS on this listener.
    pub tls: Option<Spanned<TlsSection>>,
    /// Answer every request with a permanent redirect to HTTPS on this port (443 is left out of
    /// the URL). For plain HTTP listeners.
    pub redirect_to_https: Option<u16>,
    /// Client addresses refused on every route of this listener.
    pub access: Option<Spanned<AddressListsSection>>,
    /// HTTP/3 on the listener's port over UDP (TLS listeners only): `true`, or its settings.
    pub http3: Option<Spanned<Http3Field>>,
}

/// `http3 = true` or `http3 = { ... }` on a listener.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Http3Field {
    /// On (`true`) with the defaults, or off.
    Switch(bool),
    /// On, with these settings.
    Settings(Http3Section),
}

/// A listener's HTTP/3 settings.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Http3Section {
    /// How long clients may remember that HTTP/3 is offered (`Alt-Svc`'s `ma`); `0s` advertises
    /// nothing.
    pub alt_svc_max_age: HumanDuration,
    /// Most request streams a client may have open at once on one connection.
    pub max_streams: u32,
}

impl Default for Http3Section {
    fn default() -> Self {
        Self { alt_svc_max_age: HumanDuration(Duration::from_secs(24 * 3600)), max_streams: 100 }
    }
}

/// `tls = { ... }` on a listener.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    /// Certificates with their keys; the first is served when SNI matches none.
    pub certificates: Vec<Spanned<CertificateEntry>>,
    /// Verify client certificates against this CA bundle.
    pub client_ca: Option<Spanned<String>>,
    /// With `client_ca`: refuse clients without a certificate (otherwise it is optional).
    #[serde(default = "default_true")]
    pub client_auth_required: bool,
    /// ALPN protocols offered, in preference order.
    #[serde(default = "default_alpn")]
    pub alpn: Vec<String>,
    /// Sessions kept for stateful resumption.
    #[serde(default = "default_session_cache")]
    pub session_cache: usize,
    /// How often certificate files are checked for changes.
    #[serde(default = "default_reload_interval")]
    pub reload_interval: HumanDuration,
    /// `Strict-Transport-Security` on every response of this listener.
    pub hsts: Option<HstsSection>,
}

/// One certificate and its key.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateEntry {
    /// PEM certificate chain, leaf first; relative to the configuration file.
    pub cert: Spanned<String>,
    /// PEM private key; relative to the configuration file.
    pub key: Spanned<String>,
}

/// HTTP Strict Transport Security.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HstsSection {
    /// How long browsers remember to use HTTPS only.
    #[serde(default = "default_hsts_max_age")]
    pub max_age: HumanDuration,
    /// Apply to subdomains too.
    #[serde(default)]
    pub include_subdomains: bool,
    /// Ask to be preloaded into browsers.
    #[serde(default)]
    pub preload: bool,
}

fn default_alpn() -> Vec<String> {
    vec!["h2".into(), "http/1.1".into()]
}
fn default_upstream_alpn() -> Vec<UpstreamAlpn> {
    vec![UpstreamAlpn::H2, UpstreamAlpn::Http11]
}
fn default_session_cache() -> usize {
    10_000
}
fn default_reload_interval() -> HumanDuration {
    HumanDuration(Duration::from_secs(5))
}
fn default_hsts_max_age() -> HumanDuration {
    HumanDuration(Duration::from_secs(365 * 24 * 3600))
}

/// `[upstream.NAME]`: a group of origin servers.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamSection {
    /// The servers; at least one.
    pub servers: Vec<Spanned<ServerEntry>>,
    /// How long to wait for a TCP connection to a server.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: HumanDuration,
    /// How long an idle pooled connection is kept.
    #[serde(default = "default_pool_idle_timeout")]
    pub pool_idle_timeout: HumanDuration,
    /// Most idle pooled connections kept per server.
    #[serde(default = "default_pool_max_idle")]
    pub pool_max_idle_per_server: usize,
    /// Speak TLS to the servers.
    pub tls: Option<Spanned<UpstreamTlsSection>>,
    /// `"round-robin"`, `"least-connections"`, `"p2c"` or `"hash"`.
    pub balancer: Option<Spanned<BalancerName>>,
    /// With `balancer = "hash"`: `"client-ip"`, `"header:NAME"` or `"cookie:NAME"`.
    pub hash_key: Option<Spanned<HashKeySetting>>,
    /// Ramp-up time for a server that just came back.
    pub slow_start: Option<HumanDuration>,
    /// Active health checks.
    pub health_check: Option<Spanned<HealthCheckSection>>,
    /// Passive outlier detection.
    #[serde(default)]
    pub outlier_detection: OutlierSection,
    /// Retries.
    pub retry: Option<Spanned<RetrySection>>,
    /// Most requests in flight to the upstream; past it, 503 at once.
    pub max_requests: Option<usize>,
    /// Sticky sessions: the cookie that names a client's server.
    pub sticky_cookie: Option<Spanned<String>>,
    /// Most connections open to each server.
    pub max_connections: Option<usize>,
    /// With `max_connections`: most requests per server waiting for a connection.
    #[serde(default = "default_max_pending")]
    pub max_pending: usize,
}

fn default_max_pending() -> usize {
    1024
}

/// `health_check = { ... }` on an upstream.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckSection {
    /// `"http"` (default) or `"tcp"`.
    #[serde(default)]
    pub kind: CheckKindName,
    /// Path (and query) of HTTP checks.
    #[serde(default = "default_check_path")]
    pub path: Spanned<String>,
    /// Statuses that pass an HTTP check; any 2xx or 3xx when empty.
    #[serde(default)]
    pub expected_statuses: Vec<u16>,
    /// Time between checks.
    #[serde(default = "default_check_interval")]
    pub interval: HumanDuration,
    /// Time a check may take.
    #[serde(default = "default_check_timeout")]
    pub timeout: HumanDuration,
    /// Passes in a row that bring a server back.
    #[serde(default = "default_rise")]
    pub rise: u32,
    /// Failures in a row that take a server out.
    #[serde(default = "default_fall")]
    pub fall: u32,
}

fn default_check_path() -> Spanned<String> {
    Spanned::new(0..0, "/".to_owned())
}
fn default_check_interval() -> HumanDuration {
    HumanDuration(Duration::from_secs(5))
}
fn default_check_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(2))
}
fn default_rise() -> u32 {
    2
}
fn default_fall() -> u32 {
    3
}

/// `outlier_detection = { ... }` on an upstream.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutlierSection {
    /// Off: servers are never ejected for failing requests.
    pub enabled: bool,
    /// Failures in a row (5xx or connection failures) that eject a server.
    pub consecutive_failures: u32,
    /// The first ejection's length; each further one doubles it.
    pub base_ejection: HumanDuration,
    /// The longest ejection.
    pub max_ejection: HumanDuration,
    /// Most servers ejected at once, in percent of the upstream.
    pub max_ejected_percent: u32,
}

impl Default for OutlierSection {
    fn default() -> Self {
        Self {
            enabled: true,
            consecutive_failures: 5,
            base_ejection: HumanDuration(Duration::from_secs(30)),
            max_ejection: HumanDuration(Duration::from_secs(300)),
            max_ejected_percent: 50,
        }
    }
}

/// `retry = { ... }` on an upstream.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetrySection {
    /// Tries after the first, each on another server.
    pub retries: u32,
    /// What a retry follows: `"connect-failure"`, `"timeout"`, `"reset"` or a status such as `"503"`.
    pub on: Vec<RetryOn>,
    /// Time allowed for each try's response head.
    pub per_try_timeout: Option<HumanDuration>,
    /// Methods retried after the server saw the request; idempotent ones by default.
    pub methods: Option<Vec<Spanned<String>>>,
    /// Retries may add at most this share of requests.
    pub budget_ratio: f64,
    /// Retries always allowed per second.
    pub budget_min_per_second: f64,
}

impl Default for RetrySection {
    fn default() -> Self {
        Self {
            retries: 1,
            on: vec![RetryOn::ConnectFailure, RetryOn::Reset],
            per_try_timeout: None,
            methods: None,
            budget_ratio: 0.2,
            budget_min_per_second: 10.0,
        }
    }
}

/// `tls = { ... }` on an upstream.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTlsSection {
    /// CA bundle the servers' certificates must chain to; the system's roots when absent.
    pub ca: Option<Spanned<String>>,
    /// Name for SNI and certificate verification, instead of each server's host.
    pub server_name: Option<Spanned<String>>,
    /// PEM certificate chain presented to servers that ask for one.
    pub client_cert: Option<Spanned<String>>,
    /// The key of `client_cert`.
    pub client_key: Option<Spanned<String>>,
    /// ALPN protocols offered: `"h2"` and/or `"http/1.1"`.
    #[serde(default = "default_upstream_alpn")]
    pub alpn: Vec<UpstreamAlpn>,
}

fn default_connect_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(5))
}
fn default_pool_idle_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(90))
}
fn default_pool_max_idle() -> usize {
    256
}

/// One origin server of an upstream.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerEntry {
    /// `host:port` of the server.
    pub addr: Spanned<String>,
    /// Share of requests relative to the other servers.
    #[serde(default = "default_weight")]
    pub weight: u32,
}

fn default_weight() -> u32 {
    1
}

/// One entry of a route's `backends`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendEntry {
    /// The upstream.
    pub upstream: Spanned<String>,
    /// Its share of the route's requests, relative to the other entries.
    #[serde(default = "default_weight")]
    pub weight: u32,
}

/// `mirror = { ... }` on a route.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MirrorSection {
    /// The shadow upstream.
    pub upstream: Spanned<String>,
    /// Share of requests copied, in percent.
    #[serde(default = "default_mirror_percent")]
    pub percent: f64,
}

fn default_mirror_percent() -> f64 {
    100.0
}

/// `[[route]]`: which requests it takes and what it does with them.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSection {
    /// Name used in logs and metrics; defaults to `route-N` (its position, from 1).
    pub name: Option<String>,
    /// Hosts matched exactly (`api.example.com`) or by wildcard (`*.example.com`); absent
    /// matches any host.
    pub host: Option<Spanned<OneOrMany<String>>>,
    /// Path matched exactly.
    pub path: Option<Spanned<String>>,
    /// Path matched by prefix, on segment boundaries unless it ends in `/`.
    pub path_prefix: Option<Spanned<String>>,
    /// Path matched by regular expression (whole path; anchor it yourself if you need to).
    pub path_regex: Option<Spanned<String>>,
    /// Methods accepted; absent means any.
    #[serde(default)]
    pub methods: Vec<Spanned<String>>,
    /// Header conditions, all of which must hold.
    #[serde(default)]
    pub headers: Vec<Spanned<HeaderCondition>>,
    /// The upstream that serves the route.
    pub upstream: Option<Spanned<String>>,
    /// Instead of `upstream`: several upstreams sharing the requests by weight.
    pub backends: Option<Spanned<Vec<Spanned<BackendEntry>>>>,
    /// Copy a share of requests to a shadow upstream.
    pub mirror: Option<Spanned<MirrorSection>>,
    /// Redirect instead of forwarding.
    pub redirect: Option<Spanned<RedirectSection>>,
    /// Remove the matched `path_prefix` before forwarding.
    #[serde(default)]
    pub strip_prefix: bool,
    /// Replace the matched `path_prefix` with this before forwarding.
    pub rewrite_prefix: Option<Spanned<String>>,
    /// How long to wait for the upstream's response headers.
    #[serde(default = "default_route_timeout")]
    pub timeout: HumanDuration,
    /// Largest request body on this route; defaults to `server.max_body_bytes`.
    pub max_body_bytes: Option<u64>,
    /// Keep the client's Host header when forwarding (otherwise the server address is sent).
    #[serde(default = "default_true")]
    pub preserve_host: bool,
    /// The tenant the route belongs to; its grants apply to the route's filters.
    pub tenant: Option<Spanned<String>>,
    /// The filter chain, in request order.
    #[serde(default)]
    pub filters: Vec<Spanned<FilterEntry>>,
    /// Largest body a filter gets buffered whole (request bodies, buffered response bodies).
    #[serde(default = "default_filter_body_bytes")]
    pub max_filter_body_bytes: usize,
    /// Compress responses for clients that accept it.
    pub compression: Option<Spanned<CompressionSection>>,
    /// Store responses in the HTTP cache and answer from it.
    pub cache: Option<Spanned<RouteCacheSection>>,
    /// Client addresses refused on this route, before any filter runs.
    pub access: Option<Spanned<AddressListsSection>>,
    /// Client countries refused on this route (needs `[geoip]`).
    pub countries: Option<Spanned<CountriesSection>>,
    /// Advertise the listener's HTTP/3 (`Alt-Svc`) on this route's responses.
    #[serde(default = "default_true")]
    pub alt_svc: bool,
}

/// A route's `cache`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RouteCacheSection {
    /// Off keeps the table in the file but the route uncached.
    pub enabled: bool,
    /// Lifetime of storable responses that state none; `0s` stores only what the origin marks.
    pub default_ttl: HumanDuration,
    /// Largest body stored, in bytes.
    pub max_object_bytes: usize,
    /// Serve stale this long while refreshing, when the origin does not say.
    pub stale_while_revalidate: HumanDuration,
    /// Serve stale this long when the origin fails, when the origin does not say.
    pub stale_if_error: HumanDuration,
    /// Keep stale entries that have a validator this long, to revalidate them.
    pub keep_stale: HumanDuration,
    /// Requests with any of these headers skip the cache.
    pub bypass_headers: Vec<Spanned<String>>,
    /// Requests with any of these cookies skip the cache.
    pub bypass_cookies: Vec<String>,
    /// Response header whose values tag entries for purging.
    pub tag_header: Spanned<String>,
    /// Longest wait for another request fetching the same key.
    pub lock_timeout: HumanDuration,
    /// Targeted cache-control fields (RFC 9213) obeyed over `Cache-Control`, first found wins.
    pub targeted_fields: Vec<Spanned<String>>,
    /// Heuristic freshness (a tenth of the time since `Last-Modified`) for responses without
    /// an explicit lifetime.
    pub heuristics: bool,
}

impl Default for RouteCacheSection {
    fn default() -> Self {
        Self {
            enabled: true,
            default_ttl: HumanDuration(Duration::ZERO),
            max_object_bytes: 8 * 1024 * 1024,
            stale_while_revalidate: HumanDuration(Duration::ZERO),
            stale_if_error: HumanDuration(Duration::ZERO),
            keep_stale: HumanDuration(Duration::from_secs(3600)),
            bypass_headers: Vec::new(),
            bypass_cookies: Vec::new(),
            tag_header: Spanned::new(0..0, "cache-tag".to_owned()),
            lock_timeout: HumanDuration(Duration::from_secs(5)),
            targeted_fields: vec![Spanned::new(0..0, "cdn-cache-control".to_owned())],
            heuristics: true,
        }
    }
}

/// `[cache]`: the process-wide HTTP cache store.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheSection {
    /// Most bytes the store holds (bodies and headers); least recently used go first.
    pub max_bytes: u64,
}

impl Default for CacheSection {
    fn default() -> Self {
        Self { max_bytes: sluice_cache::DEFAULT_MAX_BYTES }
    }
}

fn default_filter_body_bytes() -> usize {
    1 << 20
}

/// A route's `compression`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CompressionSection {
    /// Encodings offered, most preferred first: `zstd`, `br`, `gzip`.
    pub encodings: Vec<EncodingName>,
    /// Bodies declared smaller than this many bytes are sent as they are.
    pub min_bytes: u64,
    /// Content types compressed (prefixes).
    pub content_types: Vec<String>,
    /// `fastest`, `default` or `best`.
    pub level: CompressionLevelName,
}

impl Default for CompressionSection {
    fn default() -> Self {
        Self {
            encodings: vec![EncodingName::Zstd, EncodingName::Br, EncodingName::Gzip],
            min_bytes: 1024,
            content_types: [
                "text/",
                "application/json",
                "application/javascript",
                "application/xml",
                "application/xhtml+xml",
                "application/ld+json",
                "application/wasm",
                "image/svg+xml",
            ]
            .map(String::from)
            .to_vec(),
            level: CompressionLevelName::Default,
        }
    }
}

fn default_route_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(60))
}
fn default_true() -> bool {
    true
}

/// A condition on one request header.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderCondition {
    /// Header name (case-insensitive).
    pub name: Spanned<String>,
    /// Exact value required.
    pub value: Option<String>,
    /// Regular expression the value must match.
    pub regex: Option<Spanned<String>>,
    /// `true`: the header must be present; `false`: it must be absent.
    pub present: Option<bool>,
}

/// `redirect = { ... }` on a route.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedirectSection {
    /// Status: 301, 302, 303, 307 or 308.
    #[serde(default = "default_redirect_status")]
    pub status: u16,
    /// Scheme of the target; defaults to the request's.
    pub scheme: Option<String>,
    /// Host (and optional port) of the target; defaults to the request's.
    pub host: Option<String>,
    /// Path of the target; defaults to the request's path after any prefix rewrite.
    pub path: Option<String>,
    /// Keep the query string.
    #[serde(default = "default_true")]
    pub keep_query: bool,
}

fn default_redirect_status() -> u16 {
    301
}

/// A value written either once or as a list.
#[derive(Debug)]
pub struct OneOrMany<T>(pub Vec<T>);

impl<T> Default for OneOrMany<T> {
    fn default() -> Self {
        Self(Vec::new())
    }
}

impl<'de> Deserialize<'de> for OneOrMany<String> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct OneOrManyVisitor;
        impl<'de> Visitor<'de> for OneOrManyVisitor {
            type Value = OneOrMany<String>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string or a list of strings")
            }
            fn visit_str<E: de::Error>(self, value: &str) -> Result<Self::Value, E> {
                Ok(OneOrMany(vec![value.to_owned()]))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut values = Vec::new();
                while let Some(value) = seq.next_element()? {
                    values.push(value);
                }
                Ok(OneOrMany(values))
            }
        }
        deserializer.deserialize_any(OneOrManyVisitor)
    }
}

/// A duration written as text: `"250ms"`, `"5s"`, `"2m"`, `"1h 30m"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct DurationVisitor;
        impl Visitor<'_> for DurationVisitor {
            type Value = HumanDuration;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a duration such as \"500ms\", \"5s\" or \"2m\"")
            }
            fn visit_str<E: de::Error>(self, value: &str) -> Result<Self::Value, E> {
                humantime::parse_duration(value)
                    .map(HumanDuration)
                    .map_err(|err| E::custom(format!("invalid duration {value:?}: {err}")))
            }
        }
        deserializer.deserialize_str(DurationVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_text() {
        let section: ServerSection =
            toml::from_str("idle_timeout = \"1m 30s\"\nheader_read_timeout = \"250ms\"").unwrap();
        assert_eq!(section.idle_timeout.0, Duration::from_secs(90));
        assert_eq!(section.header_read_timeout.0, Duration::from_millis(250));
    }

    #[test]
    fn host_is_one_or_many() {
        let one: RouteSection = toml::from_str("host = \"a.example\"").unwrap();
        assert_eq!(one.host.unwrap().get_ref().0.len(), 1);
        let many: RouteSection = toml::from_str("host = [\"a.example\", \"*.b.example\"]").unwrap();
        assert_eq!(many.host.unwrap().get_ref().0.len(), 2);
        let bad = toml::from_str::<RouteSection>("host = 3").unwrap_err();
        assert!(bad.to_string().contains("a string or a list"), "{bad}");
    }
}

/// `balancer` on an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BalancerName {
    /// Smooth weighted round-robin.
    RoundRobin,
    /// Fewest requests in flight.
    LeastConnections,
    /// Power of two choices over latency.
    P2c,
    /// Maglev hashing of `hash_key`.
    Hash,
}

/// `hash_key` on an upstream: what the hash balancer hashes.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct HashKeySetting(pub sluice_upstream::HashKey);

impl TryFrom<String> for HashKeySetting {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        use sluice_upstream::HashKey;
        let parsed = match text.split_once(':') {
            None if text == "client-ip" => Some(HashKey::ClientIp),
            Some(("header", name)) => http::HeaderName::try_from(name).ok().map(HashKey::Header),
            Some(("cookie", name)) if !name.is_empty() => Some(HashKey::Cookie(name.to_owned())),
            _ => None,
        };
        parsed.map(Self).ok_or_else(|| format!("{text:?} is not \"client-ip\", \"header:NAME\" or \"cookie:NAME\""))
    }
}

/// `kind` of a health check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckKindName {
    /// A request to `path`, passing on the expected statuses.
    #[default]
    Http,
    /// A TCP connection.
    Tcp,
}

/// One entry of a retry's `on`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum RetryOn {
    /// No connection could be made.
    ConnectFailure,
    /// No response head within the try's timeout.
    Timeout,
    /// The connection broke before a response head.
    Reset,
    /// The server answered with this status (500 to 599, or 429).
    Status(http::StatusCode),
}

impl TryFrom<String> for RetryOn {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        match text.as_str() {
            "connect-failure" => Ok(Self::ConnectFailure),
            "timeout" => Ok(Self::Timeout),
            "reset" => Ok(Self::Reset),
            status => match status.parse::<u16>().ok().and_then(|code| http::StatusCode::from_u16(code).ok()) {
                Some(status) if status.is_server_error() || status == http::StatusCode::TOO_MANY_REQUESTS => {
                    Ok(Self::Status(status))
                }
                _ => Err(format!(
                    "{status:?} is not \"connect-failure\", \"timeout\", \"reset\" or a status from 500 to 599 (or 429)"
                )),
            },
        }
    }
}

/// One of an upstream's `tls.alpn` protocols.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum UpstreamAlpn {
    /// HTTP/2.
    #[serde(rename = "h2")]
    H2,
    /// HTTP/1.1.
    #[serde(rename = "http/1.1")]
    Http11,
}

/// One of a route's compression `encodings`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EncodingName {
    /// Zstandard.
    Zstd,
    /// Brotli.
    Br,
    /// gzip.
    Gzip,
}

/// A route's compression `level`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CompressionLevelName {
    /// Least CPU.
    Fastest,
    /// Each encoder's default.
    #[default]
    Default,
    /// Smallest output.
    Best,
}

/// Where a plugin comes from.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(from = "String")]
pub enum PluginSource {
    /// A package in a registry: the whole `oci://...` reference.
    Package(String),
    /// A component file or a filter's source folder, relative to the configuration file.
    Path(std::path::PathBuf),
}

impl From<String> for PluginSource {
    fn from(text: String) -> Self {
        match text.strip_prefix("oci://") {
            Some(_) => Self::Package(text),
            None => Self::Path(text.into()),
        }
    }
}
