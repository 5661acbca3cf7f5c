//! Turns the configuration as written into the [`Snapshot`] the server uses, checking everything
//! a type cannot: references between sections, patterns, addresses, combinations of keys.

use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::sync::Arc;

use http::header::HeaderName;
use http::uri::{Authority, PathAndQuery};
use http::{HeaderValue, Method, StatusCode};
use ipnet::IpNet;
use regex::Regex;
use toml::Spanned;

use std::path::Path;

use super::file::{
    CompressionSection, ConfigFile, FilterEntry, HeaderCondition as WrittenHeaderCondition, IsolationSetting,
    LongCallPriorityValue, OnError, PluginSection, ResolverSection, RetrySection, RouteCacheSection, RouteSection,
    ServerSection, TenantSection, TlsSection, UpstreamSection, UpstreamTlsSection,
};
use super::{ConfigError, ListenerSpec, ServerSettings, Services, Snapshot};
use crate::routing::{
    Backends, Forward, HeaderCondition, HeaderMatch, HostPattern, Mirror, PathMatch, PathRewrite, Redirect, Route,
    RouteAction, RouteTable,
};
use sluice_cache::CacheSettings;
use sluice_http::compression::{CompressionLevel, CompressionSettings, Encoding};
use sluice_packages::BuildOptions;
use sluice_packages::oci::{self, Store};
use sluice_runtime::kv::KvQuota;
use sluice_runtime::{Canary, FailurePolicy, FilterSpec, Isolation, LongCallPriority, Plugin, RouteFilter, Tenant};
use sluice_runtime::{CpuRate, LongCallLane};
use sluice_tls::server::{self as tls, CertificatePaths, TlsSettings};
use sluice_upstream::{
    BalancerKind, CheckKind, DnsResolver, HashKey, HealthCheck, OutlierPolicy, PoolSettings, ResolverSettings,
    RetryPolicy, Upstream, UpstreamPolicy, UpstreamServer, UpstreamTls, UpstreamTlsSettings,
};

/// The most memory a tenant may grant one instance (the pooling allocator's slot size).
const MAX_TENANT_MEMORY: usize = 1 << 30;

/// hyper refuses a smaller read buffer, and no real client sends a head that small anyway.
const MIN_HEADER_BYTES: usize = 8192;

/// Compiles `file`, whose text is `source` (for error positions); relative plugin paths are
/// taken from `base_dir`.
pub(super) fn compile(
    services: &Services,
    file: ConfigFile,
    source: &str,
    base_dir: &Path,
    previous: Option<&Snapshot>,
) -> Result<Snapshot, ConfigError> {
    let cx = Compiler { source, base_dir, services };
    // Each upstream's section as written, without positions: an upstream whose section did not
    // change keeps its running state (pools, health, ejections) across a reload.
    let written: toml::Table = toml::from_str(source).unwrap_or_default();
    let written_upstreams = written.get("upstream").and_then(toml::Value::as_table);
    let server = cx.server(&file.server)?;
    let admin = match &file.admin {
        Some(admin) => Some(cx.socket_addr(&admin.bind, "admin.bind")?),
        None => None,
    };
    let admin_reload_token = match file.admin.as_ref().and_then(|admin| admin.reload_token.as_deref()) {
        Some(token) if token.len() < 16 => {
            return Err(cx.error(None, "admin.reload_token", "must be at least 16 characters (use a random string)"));
        }
        Some(token) => Some(Arc::from(token)),
        None => None,
    };

    if file.listener.is_empty() {
        return Err(cx.error(None, "listener", "at least one [[listener]] is required"));
    }
    let mut listeners = Vec::new();
    let mut listener_names = HashSet::new();
    for (index, listener) in file.listener.iter().enumerate() {
        let key = format!("listener[{index}]");
        let bind = cx.socket_addr(&listener.get_ref().bind, &format!("{key}.bind"))?;
        let name: Arc<str> = listener.get_ref().name.clone().unwrap_or_else(|| bind.to_string()).into();
        if !listener_names.insert(name.clone()) {
            return Err(cx.error(Some(listener.span()), &key, format!("listener name {name:?} is used twice")));
        }
        let tls = match &listener.get_ref().tls {
            Some(tls) => Some(cx.tls(&key, tls)?),
            None => None,
        };
        let hsts = listener.get_ref().tls.as_ref().and_then(|tls| tls.get_ref().hsts.as_ref()).map(|hsts| {
            let mut value = format!("max-age={}", hsts.max_age.0.as_secs());
            if hsts.include_subdomains {
                value.push_str("; includeSubDomains");
            }
            if hsts.preload {
                value.push_str("; preload");
            }
            HeaderValue::try_from(value).expect("digits and ASCII words form a valid header value")
        });
        let redirect_to_https = listener.get_ref().redirect_to_https;
        if redirect_to_https.is_some() && tls.is_some() {
            return Err(cx.error(
                None,
                &format!("{key}.redirect_to_https"),
                "is for plain HTTP listeners; this one has `tls`",
            ));
        }
        listeners.push(ListenerSpec { name, bind, tls, hsts, redirect_to_https });
    }

    let resolver_settings = cx.resolver(&file.resolver)?;
    let resolver = match previous.filter(|previous| previous.resolver_settings == resolver_settings) {
        Some(previous) => previous.resolver.clone(),
        None => DnsResolver::new(&resolver_settings)
            .map_err(|err| cx.error(None, "resolver", format!("cannot set up name resolution: {err}")))?,
    };
    let mut upstreams = BTreeMap::new();
    for (name, upstream) in &file.upstream {
        // A changed [resolver] changes every upstream that resolves names through it.
        let fingerprint = format!(
            "{}|{resolver_settings:?}",
            written_upstreams.and_then(|sections| sections.get(name)).map(ToString::to_string).unwrap_or_default()
        );
        let unchanged = previous
            .and_then(|previous| previous.upstreams.get(name))
            .filter(|running| running.fingerprint() == fingerprint);
        let compiled = match unchanged {
            Some(running) => running.clone(),
            None => Arc::new(cx.upstream(name, upstream, &resolver)?.with_fingerprint(fingerprint)),
        };
        upstreams.insert(name.clone(), compiled);
    }

    let plugin_names: HashSet<String> = file.plugin.keys().cloned().collect();
    let mut tenants = BTreeMap::new();
    for (name, tenant) in &file.tenant {
        let tenant = cx.tenant(name, tenant, &upstreams, &plugin_names)?;
        tenants.insert(name.clone(), Arc::new(with_running_state(tenant, previous)));
    }
    let default_tenant = Arc::new(with_running_state(Tenant::default_tenant(), previous));
    let store = match &file.server.package_store {
        Some(path) => Store::at(base_dir.join(path)),
        None => Store::default_location(),
    };
    let mut plugins = BTreeMap::new();
    let mut plugin_sources = Vec::new();
    for (name, plugin) in &file.plugin {
        plugins.insert(name.clone(), cx.plugin(name, plugin, previous, &store)?);
        let source = plugin.get_ref().source.get_ref();
        if !source.starts_with("oci://") {
            plugin_sources.push(base_dir.join(source));
        }
    }
    let defaults = Defaults {
        server: &server,
        upstreams: &upstreams,
        tenants: &tenants,
        default_tenant: &default_tenant,
        plugins: &plugins,
    };

    let mut routes = Vec::new();
    let mut route_names = HashSet::new();
    for (index, route) in file.route.iter().enumerate() {
        let compiled = cx.route(index, route, &defaults)?;
        if !route_names.insert(compiled.name.clone()) {
            return Err(cx.error(
                Some(route.span()),
                &format!("route[{index}].name"),
                format!("route name {:?} is used twice", compiled.name),
            ));
        }
        routes.push(Arc::new(compiled));
    }

    Ok(Snapshot {
        server,
        admin,
        admin_reload_token,
        listeners,
        upstreams: Arc::new(super::UpstreamTable::new(upstreams)),
        plugins,
        plugin_sources,
        routes: RouteTable::new(routes),
        cache_max_bytes: file.cache.max_bytes,
        resolver,
        resolver_settings,
        source: None,
        services: services.clone(),
    })
}

/// What every version of one route filter shares.
struct FilterVersion<'a> {
    route: &'a Arc<str>,
    tenant: &'a Arc<Tenant>,
    entry: &'a Spanned<FilterEntry>,
    defaults: &'a Defaults<'a>,
}

struct Compiler<'a> {
    source: &'a str,
    base_dir: &'a Path,
    services: &'a Services,
}

/// `tenant` with the running state (long-call lane, CPU budget) of the running config's tenant of
/// the same name: warm pools carried over a reload keep using that state, and the new
/// generation's pools must share it rather than start afresh beside it.
fn with_running_state(mut tenant: Tenant, previous: Option<&Snapshot>) -> Tenant {
    let running = previous.and_then(|previous| {
        previous.routes.routes().iter().map(|route| &route.tenant).find(|running| running.name == tenant.name)
    });
    if let Some(running) = running {
        tenant.take_running_state_from(running);
    }
    tenant
}

/// What routes refer to, compiled before them.
struct Defaults<'a> {
    server: &'a ServerSettings,
    upstreams: &'a BTreeMap<String, Arc<Upstream>>,
    tenants: &'a BTreeMap<String, Arc<Tenant>>,
    /// The tenant of routes that name none: one for all of them.
    default_tenant: &'a Arc<Tenant>,
    plugins: &'a BTreeMap<String, Arc<Plugin>>,
}

impl Compiler<'_> {
    fn error(&self, span: Option<Range<usize>>, key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::at(self.source, span, key, message)
    }

    fn spanned_error<T>(&self, value: &Spanned<T>, key: &str, message: impl Into<String>) -> ConfigError {
        self.error(Some(value.span()), key, message)
    }

    fn socket_addr(&self, written: &Spanned<String>, key: &str) -> Result<SocketAddr, ConfigError> {
        written.get_ref().parse().map_err(|_| {
            self.spanned_error(
                written,
                key,
                format!("{:?} is not an address of the form \"127.0.0.1:8080\" or \"[::1]:8080\"", written.get_ref()),
            )
        })
    }

    fn server(&self, section: &ServerSection) -> Result<ServerSettings, ConfigError> {
        if section.max_connections == 0 {
            return Err(self.error(None, "server.max_connections", "must be at least 1"));
        }
        if section.max_header_bytes < MIN_HEADER_BYTES {
            return Err(self.error(None, "server.max_header_bytes", format!("must be at least {MIN_HEADER_BYTES}")));
        }
        if section.max_headers == 0 {
            return Err(self.error(None, "server.max_headers", "must be at least 1"));
        }
        let mut trusted_proxies = Vec::new();
        for (index, written) in section.trusted_proxies.iter().enumerate() {
            let text = written.get_ref();
            let net = text.parse::<IpNet>().or_else(|_| text.parse::<IpAddr>().map(IpNet::from)).map_err(|_| {
                self.spanned_error(
                    written,
                    &format!("server.trusted_proxies[{index}]"),
                    format!("{text:?} is not an IP address or CIDR range such as \"10.0.0.0/8\""),
                )
            })?;
            trusted_proxies.push(net);
        }
        let mut hide_headers = Vec::new();
        for (index, name) in section.hide_headers.iter().enumerate() {
            let header = HeaderName::try_from(name.as_str()).map_err(|_| {
                self.error(None, &format!("server.hide_headers[{index}]"), format!("{name:?} is not a header name"))
            })?;
            hide_headers.push(header);
        }
        let via_name = HeaderValue::try_from(format!("1.1 {}", section.via_name))
            .map_err(|_| self.error(None, "server.via_name", "must be printable text"))?;
        let long_call_priority = match &section.long_call_priority {
            None => LongCallPriority::Idle,
            Some(written) => match written.get_ref() {
                LongCallPriorityValue::Name(name) if name == "idle" => LongCallPriority::Idle,
                LongCallPriorityValue::Niceness(niceness @ 0..=19) => {
                    LongCallPriority::Niceness(u8::try_from(*niceness).unwrap_or(19))
                }
                _ => {
                    return Err(self.spanned_error(
                        written,
                        "server.long_call_priority",
                        "must be \"idle\" or a niceness from 0 to 19",
                    ));
                }
            },
        };
        Ok(ServerSettings {
            max_connections: section.max_connections,
            max_header_bytes: section.max_header_bytes,
            max_headers: section.max_headers,
            max_body_bytes: section.max_body_bytes,
            header_read_timeout: section.header_read_timeout.0,
            idle_timeout: section.idle_timeout.0,
            shutdown_timeout: section.shutdown_timeout.0,
            trusted_proxies,
            hide_headers,
            via_name,
            watch: section.watch,
            long_call_priority,
        })
    }

    fn resolver(&self, section: &ResolverSection) -> Result<ResolverSettings, ConfigError> {
        let mut nameservers = Vec::new();
        for (index, written) in section.nameservers.iter().enumerate() {
            let key = format!("resolver.nameservers[{index}]");
            let text = written.get_ref();
            // A bare address means the standard port.
            let address =
                text.parse::<SocketAddr>().or_else(|_| text.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)));
            nameservers.push(address.map_err(|_| {
                self.spanned_error(
                    written,
                    &key,
                    format!("{text:?} is not an address such as \"10.0.0.2\" or \"10.0.0.2:53\""),
                )
            })?);
        }
        if section.min_ttl.0 > section.max_ttl.0 {
            return Err(self.error(None, "resolver.min_ttl", "must not be longer than resolver.max_ttl"));
        }
        Ok(ResolverSettings {
            nameservers,
            min_ttl: section.min_ttl.0,
            max_ttl: section.max_ttl.0,
            timeout: section.timeout.0,
        })
    }

    fn upstream(
        &self,
        name: &str,
        section: &Spanned<UpstreamSection>,
        resolver: &DnsResolver,
    ) -> Result<Upstream, ConfigError> {
        let key = format!("upstream.{name}");
        let upstream = section.get_ref();
        if upstream.servers.is_empty() {
            return Err(self.spanned_error(
                section,
                &format!("{key}.servers"),
                "an upstream needs at least one server",
            ));
        }
        let mut servers = Vec::new();
        for (index, server) in upstream.servers.iter().enumerate() {
            let entry = server.get_ref();
            let authority = entry
                .addr
                .get_ref()
                .parse::<Authority>()
                .ok()
                .filter(|authority| authority.port_u16().is_some() && !authority.as_str().contains('@'))
                .ok_or_else(|| {
                    self.spanned_error(
                        &entry.addr,
                        &format!("{key}.servers[{index}].addr"),
                        format!("{:?} is not a server address of the form \"host:port\"", entry.addr.get_ref()),
                    )
                })?;
            if entry.weight == 0 {
                return Err(self.spanned_error(
                    server,
                    &format!("{key}.servers[{index}].weight"),
                    "must be at least 1",
                ));
            }
            servers.push(UpstreamServer { authority, weight: entry.weight });
        }
        let pool = PoolSettings {
            connect_timeout: upstream.connect_timeout.0,
            idle_timeout: upstream.pool_idle_timeout.0,
            max_idle_per_server: upstream.pool_max_idle_per_server,
        };
        let tls = match &upstream.tls {
            Some(tls) => Some(self.upstream_tls(&key, tls)?),
            None => None,
        };
        let policy = self.upstream_policy(&key, upstream)?;
        Ok(Upstream::new(name, servers, pool, tls, policy, resolver.clone(), self.services.upstream_metrics.clone()))
    }

    fn upstream_policy(&self, key: &str, section: &UpstreamSection) -> Result<UpstreamPolicy, ConfigError> {
        let hash_key = match &section.hash_key {
            None => HashKey::ClientIp,
            Some(written) => {
                let text = written.get_ref();
                let parsed = match text.split_once(':') {
                    None if text == "client-ip" => Some(HashKey::ClientIp),
                    Some(("header", name)) => HeaderName::try_from(name).ok().map(HashKey::Header),
                    Some(("cookie", name)) if !name.is_empty() => Some(HashKey::Cookie(name.to_owned())),
                    _ => None,
                };
                parsed.ok_or_else(|| {
                    self.spanned_error(
                        written,
                        &format!("{key}.hash_key"),
                        format!("{text:?} is not \"client-ip\", \"header:NAME\" or \"cookie:NAME\""),
                    )
                })?
            }
        };
        let balancer = match section.balancer.as_ref().map(|written| (written, written.get_ref().as_str())) {
            None | Some((_, "round-robin")) => BalancerKind::RoundRobin,
            Some((_, "least-connections")) => BalancerKind::LeastConnections,
            Some((_, "p2c")) => BalancerKind::PowerOfTwoChoices,
            Some((_, "hash")) => BalancerKind::Hash(hash_key),
            Some((written, other)) => {
                return Err(self.spanned_error(
                    written,
                    &format!("{key}.balancer"),
                    format!(
                        "unknown balancer {other:?}: use \"round-robin\", \"least-connections\", \"p2c\" or \"hash\""
                    ),
                ));
            }
        };
        if let (Some(written), false) = (&section.hash_key, matches!(balancer, BalancerKind::Hash(_))) {
            return Err(self.spanned_error(written, &format!("{key}.hash_key"), "needs balancer = \"hash\""));
        }

        let health_check = match &section.health_check {
            None => None,
            Some(written) => {
                let check = written.get_ref();
                let check_key = format!("{key}.health_check");
                let kind = match check.kind.get_ref().as_str() {
                    "tcp" => CheckKind::Tcp,
                    "http" => {
                        let path = PathAndQuery::try_from(check.path.get_ref().as_str())
                            .ok()
                            .filter(|path| path.as_str().starts_with('/'))
                            .ok_or_else(|| {
                                self.spanned_error(
                                    &check.path,
                                    &format!("{check_key}.path"),
                                    "must be a path starting with /",
                                )
                            })?;
                        let mut expected = Vec::new();
                        for (index, &status) in check.expected_statuses.iter().enumerate() {
                            let status = StatusCode::from_u16(status).ok().filter(|_| (100..600).contains(&status));
                            expected.push(status.ok_or_else(|| {
                                self.spanned_error(
                                    written,
                                    &format!("{check_key}.expected_statuses[{index}]"),
                                    "must be a status from 100 to 599",
                                )
                            })?);
                        }
                        CheckKind::Http { path, expected }
                    }
                    other => {
                        return Err(self.spanned_error(
                            &check.kind,
                            &format!("{check_key}.kind"),
                            format!("unknown check {other:?}: use \"http\" or \"tcp\""),
                        ));
                    }
                };
                if check.interval.0.is_zero() || check.timeout.0.is_zero() || check.rise == 0 || check.fall == 0 {
                    return Err(self.spanned_error(
                        written,
                        &check_key,
                        "interval and timeout must be above zero, rise and fall at least 1",
                    ));
                }
                Some(HealthCheck {
                    kind,
                    interval: check.interval.0,
                    timeout: check.timeout.0,
                    rise: check.rise,
                    fall: check.fall,
                })
            }
        };

        let outlier = &section.outlier_detection;
        let outlier = outlier.enabled.then(|| OutlierPolicy {
            consecutive_failures: outlier.consecutive_failures.max(1),
            base_ejection: outlier.base_ejection.0,
            max_ejection: outlier.max_ejection.0.max(outlier.base_ejection.0),
            max_ejected_percent: outlier.max_ejected_percent.min(100),
        });

        let default_retry = Spanned::new(0..0, RetrySection::default());
        let written_retry = section.retry.as_ref().unwrap_or(&default_retry);
        let retry_section = written_retry.get_ref();
        let retry_key = format!("{key}.retry");
        let mut retry = RetryPolicy {
            retries: retry_section.retries,
            on_connect_failure: false,
            on_timeout: false,
            on_reset: false,
            on_statuses: Vec::new(),
            per_try_timeout: retry_section.per_try_timeout.map(|timeout| timeout.0),
            budget_ratio: retry_section.budget_ratio,
            budget_min_per_second: retry_section.budget_min_per_second,
            ..RetryPolicy::default()
        };
        for (index, condition) in retry_section.on.iter().enumerate() {
            match condition.get_ref().as_str() {
                "connect-failure" => retry.on_connect_failure = true,
                "timeout" => retry.on_timeout = true,
                "reset" => retry.on_reset = true,
                status => match status.parse::<u16>().ok().and_then(|code| StatusCode::from_u16(code).ok()) {
                    Some(status) if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS => {
                        retry.on_statuses.push(status);
                    }
                    _ => {
                        return Err(self.spanned_error(
                            condition,
                            &format!("{retry_key}.on[{index}]"),
                            format!(
                                "{status:?} is not \"connect-failure\", \"timeout\", \"reset\" or a status from 500 to 599 (or 429)"
                            ),
                        ));
                    }
                },
            }
        }
        if retry.retries as usize >= sluice_upstream::MAX_TRIES {
            return Err(self.spanned_error(
                written_retry,
                &format!("{retry_key}.retries"),
                format!("at most {}", sluice_upstream::MAX_TRIES - 1),
            ));
        }
        if let Some(methods) = &retry_section.methods {
            retry.methods = Vec::new();
            for (index, method) in methods.iter().enumerate() {
                let parsed = Method::from_bytes(method.get_ref().to_ascii_uppercase().as_bytes()).map_err(|_| {
                    self.spanned_error(method, &format!("{retry_key}.methods[{index}]"), "not an HTTP method")
                })?;
                retry.methods.push(parsed);
            }
        }
        if !(0.0..=10.0).contains(&retry.budget_ratio) || !(0.0..=1e6).contains(&retry.budget_min_per_second) {
            return Err(self.spanned_error(
                written_retry,
                &retry_key,
                "budget_ratio must be 0 to 10 and budget_min_per_second 0 or more",
            ));
        }
        let sticky_cookie = match &section.sticky_cookie {
            None => None,
            Some(written) => {
                let name = written.get_ref();
                let valid = !name.is_empty()
                    && name.bytes().all(|byte| byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte));
                if !valid {
                    return Err(self.spanned_error(
                        written,
                        &format!("{key}.sticky_cookie"),
                        "not a valid cookie name",
                    ));
                }
                Some(name.clone())
            }
        };
        if section.max_requests == Some(0) {
            return Err(self.error(None, &format!("{key}.max_requests"), "must be at least 1"));
        }
        if section.max_connections == Some(0) {
            return Err(self.error(None, &format!("{key}.max_connections"), "must be at least 1"));
        }
        Ok(UpstreamPolicy {
            balancer,
            slow_start: section.slow_start.map(|window| window.0).filter(|window| !window.is_zero()),
            health_check,
            outlier,
            retry,
            max_requests: section.max_requests,
            sticky_cookie,
            max_connections: section.max_connections,
            max_pending: section.max_pending,
        })
    }

    fn upstream_tls(&self, key: &str, written: &Spanned<UpstreamTlsSection>) -> Result<UpstreamTls, ConfigError> {
        let section = written.get_ref();
        let key = format!("{key}.tls");
        let mut offer_h2 = false;
        for (index, protocol) in section.alpn.iter().enumerate() {
            match protocol.get_ref().as_str() {
                "h2" => offer_h2 = true,
                "http/1.1" => {}
                other => {
                    return Err(self.spanned_error(
                        protocol,
                        &format!("{key}.alpn[{index}]"),
                        format!("unknown protocol {other:?}: use \"h2\" or \"http/1.1\""),
                    ));
                }
            }
        }
        let client_certificate = match (&section.client_cert, &section.client_key) {
            (Some(cert), Some(key)) => Some(CertificatePaths {
                cert: self.base_dir.join(cert.get_ref()),
                key: self.base_dir.join(key.get_ref()),
            }),
            (None, None) => None,
            (Some(cert), None) => {
                return Err(self.spanned_error(cert, &format!("{key}.client_key"), "client_cert needs client_key"));
            }
            (None, Some(client_key)) => {
                return Err(self.spanned_error(
                    client_key,
                    &format!("{key}.client_cert"),
                    "client_key needs client_cert",
                ));
            }
        };
        let settings = UpstreamTlsSettings {
            ca: section.ca.as_ref().map(|ca| self.base_dir.join(ca.get_ref())),
            server_name: section.server_name.as_ref().map(|name| name.get_ref().clone()),
            client_certificate,
            offer_h2,
        };
        UpstreamTls::load(&settings).map_err(|error| {
            // Point at the setting the error is about.
            let message = error.to_string();
            let (span, field) = if section.ca.as_ref().is_some_and(|ca| message.contains(ca.get_ref().as_str())) {
                (section.ca.as_ref().map(|ca| ca.span()), "ca")
            } else if message.starts_with("server_name") {
                (section.server_name.as_ref().map(|name| name.span()), "server_name")
            } else if section.client_cert.is_some() && !message.contains("system roots") {
                (section.client_cert.as_ref().map(|cert| cert.span()), "client_cert")
            } else {
                (Some(written.span()), "")
            };
            let key = if field.is_empty() { key.clone() } else { format!("{key}.{field}") };
            self.error(span, &key, message)
        })
    }

    fn tls(&self, key: &str, written: &Spanned<TlsSection>) -> Result<TlsSettings, ConfigError> {
        let section = written.get_ref();
        if section.certificates.is_empty() {
            return Err(self.spanned_error(
                written,
                &format!("{key}.tls.certificates"),
                "at least one certificate is required",
            ));
        }
        let certificates: Vec<CertificatePaths> = section
            .certificates
            .iter()
            .map(|entry| CertificatePaths {
                cert: self.base_dir.join(entry.get_ref().cert.get_ref()),
                key: self.base_dir.join(entry.get_ref().key.get_ref()),
            })
            .collect();
        let alpn = section.alpn.iter().map(|protocol| protocol.as_bytes().to_vec()).collect();
        let settings = TlsSettings {
            certificates,
            client_ca: section.client_ca.as_ref().map(|ca| self.base_dir.join(ca.get_ref())),
            client_auth_required: section.client_auth_required,
            alpn,
            session_cache: section.session_cache,
            reload_interval: section.reload_interval.0.max(std::time::Duration::from_millis(100)),
        };
        if let Err(error) = tls::check(&settings) {
            // Point at the certificate entry the error is about, when it names a file of one.
            let message = error.to_string();
            let entry = section.certificates.iter().enumerate().find(|(_, entry)| {
                let written = entry.get_ref();
                message.contains(written.cert.get_ref().as_str()) || message.contains(written.key.get_ref().as_str())
            });
            return Err(match entry {
                Some((index, entry)) => self.spanned_error(entry, &format!("{key}.tls.certificates[{index}]"), message),
                None => self.spanned_error(written, &format!("{key}.tls"), message),
            });
        }
        Ok(settings)
    }

    fn tenant(
        &self,
        name: &str,
        written: &Spanned<TenantSection>,
        upstreams: &BTreeMap<String, Arc<Upstream>>,
        plugin_names: &HashSet<String>,
    ) -> Result<Tenant, ConfigError> {
        let key = format!("tenant.{name}");
        let section = written.get_ref();
        let memory_bytes = section.memory_mb.saturating_mul(1 << 20);
        if memory_bytes == 0 || memory_bytes > MAX_TENANT_MEMORY {
            return Err(self.error(
                None,
                &format!("{key}.memory_mb"),
                format!("must be 1 to {}", MAX_TENANT_MEMORY >> 20),
            ));
        }
        if section.cpu_ms_per_call == 0 {
            return Err(self.error(None, &format!("{key}.cpu_ms_per_call"), "must be at least 1"));
        }
        if section.max_instances == 0 {
            return Err(self.error(None, &format!("{key}.max_instances"), "must be at least 1"));
        }
        if section.cpu_ms_per_second == Some(0) {
            return Err(self.error(None, &format!("{key}.cpu_ms_per_second"), "must be at least 1"));
        }
        let mut callouts = std::collections::BTreeSet::new();
        for (index, upstream) in section.callouts.iter().enumerate() {
            if !upstreams.contains_key(upstream.get_ref()) {
                return Err(self.spanned_error(
                    upstream,
                    &format!("{key}.callouts[{index}]"),
                    format!("no upstream named {:?}", upstream.get_ref()),
                ));
            }
            callouts.insert(upstream.get_ref().clone());
        }
        let plugins = match &section.plugins {
            None => None,
            Some(granted) => {
                let mut names = std::collections::BTreeSet::new();
                for (index, plugin) in granted.iter().enumerate() {
                    if !plugin_names.contains(plugin.get_ref()) {
                        return Err(self.spanned_error(
                            plugin,
                            &format!("{key}.plugins[{index}]"),
                            format!("no plugin named {:?}", plugin.get_ref()),
                        ));
                    }
                    names.insert(plugin.get_ref().clone());
                }
                Some(names)
            }
        };
        Ok(Tenant {
            name: name.into(),
            memory_bytes,
            cpu_per_call: std::time::Duration::from_millis(section.cpu_ms_per_call),
            max_instances: section.max_instances,
            callouts,
            kv: KvQuota { max_keys: section.kv_max_keys, max_bytes: section.kv_max_bytes },
            plugins,
            cpu_rate: section.cpu_ms_per_second.map(CpuRate::new),
            long_calls: LongCallLane::default(),
        })
    }

    fn plugin(
        &self,
        name: &str,
        written: &Spanned<PluginSection>,
        previous: Option<&Snapshot>,
        store: &Store,
    ) -> Result<Arc<Plugin>, ConfigError> {
        let key = format!("plugin.{name}.source");
        let source = &written.get_ref().source;
        let runtime = &self.services.runtime;
        let fail = |message: String| self.spanned_error(source, &key, message);
        // The component's bytes and the config schema that comes with them.
        let (bytes, schema) = if source.get_ref().starts_with("oci://") {
            // A package: from the local store when pinned by a digest it holds, else pulled.
            let package =
                oci::resolve_blocking(source.get_ref(), store).map_err(|err| fail(format!("plugin {name}: {err}")))?;
            (package.component, package.info.config_schema)
        } else {
            let path = self.base_dir.join(source.get_ref());
            let (component, schema) = if path.is_dir() {
                let options = BuildOptions { target_dir: None, quiet: true };
                let schema = oci::crate_config_schema(&path).map_err(|err| fail(err.to_string()))?;
                (sluice_packages::build_plugin(&path, &options).map_err(|err| fail(err.to_string()))?, schema)
            } else {
                (path, None)
            };
            let bytes =
                std::fs::read(&component).map_err(|err| fail(format!("cannot read {}: {err}", component.display())))?;
            (bytes, schema)
        };
        // The same bytes under the same name: the running plugin, compiled and checked already.
        let digest = Plugin::digest_of(&bytes);
        if let Some(running) = previous.and_then(|previous| previous.plugins.get(name)).filter(|p| p.digest == digest) {
            return Ok(running.clone());
        }
        Plugin::load(runtime, name, &bytes)
            .and_then(|plugin| match &schema {
                Some(schema) => plugin.with_config_schema(schema),
                None => Ok(plugin),
            })
            .map(Arc::new)
            .map_err(|err| fail(format!("plugin {name}: {err}")))
    }

    fn compression(
        &self,
        route_key: &str,
        written: &Spanned<CompressionSection>,
    ) -> Result<CompressionSettings, ConfigError> {
        let key = format!("{route_key}.compression");
        let section = written.get_ref();
        let mut encodings = Vec::new();
        for (index, token) in section.encodings.iter().enumerate() {
            let encoding = Encoding::from_token(token).ok_or_else(|| {
                self.spanned_error(
                    written,
                    &format!("{key}.encodings[{index}]"),
                    format!("{token:?}: use zstd, br or gzip"),
                )
            })?;
            encodings.push(encoding);
        }
        if encodings.is_empty() {
            return Err(self.spanned_error(written, &format!("{key}.encodings"), "name at least one encoding"));
        }
        let level = match section.level.as_str() {
            "fastest" => CompressionLevel::Fastest,
            "default" => CompressionLevel::Default,
            "best" => CompressionLevel::Best,
            other => {
                return Err(self.spanned_error(
                    written,
                    &format!("{key}.level"),
                    format!("{other:?}: use fastest, default or best"),
                ));
            }
        };
        Ok(CompressionSettings {
            encodings,
            min_bytes: section.min_bytes,
            content_types: section.content_types.iter().map(|prefix| prefix.to_ascii_lowercase()).collect(),
            level,
        })
    }

    fn route_cache(&self, route_key: &str, written: &Spanned<RouteCacheSection>) -> Result<CacheSettings, ConfigError> {
        let key = format!("{route_key}.cache");
        let section = written.get_ref();
        let header_name = |name: &Spanned<String>, field: &str| {
            HeaderName::try_from(name.get_ref().as_str()).map_err(|_| {
                let at = if name.span().is_empty() { written.span() } else { name.span() };
                self.error(Some(at), &format!("{key}.{field}"), format!("{:?} is not a header name", name.get_ref()))
            })
        };
        let bypass_headers = section
            .bypass_headers
            .iter()
            .enumerate()
            .map(|(index, name)| header_name(name, &format!("bypass_headers[{index}]")))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(CacheSettings {
            default_ttl: section.default_ttl.0,
            max_object_bytes: section.max_object_bytes,
            stale_while_revalidate: section.stale_while_revalidate.0,
            stale_if_error: section.stale_if_error.0,
            keep_stale: section.keep_stale.0,
            bypass_headers,
            bypass_cookies: section.bypass_cookies.clone(),
            tag_header: header_name(&section.tag_header, "tag_header")?,
            lock_timeout: section.lock_timeout.0,
        })
    }

    /// One version of a route's filter: its plugin (checked against the tenant's grant) with its
    /// config (checked against the plugin's schema).
    fn filter_spec(
        &self,
        version: &FilterVersion<'_>,
        plugin_name: &Spanned<String>,
        config: Option<&toml::Value>,
        filter_key: &str,
    ) -> Result<FilterSpec, ConfigError> {
        let (defaults, tenant, entry) = (version.defaults, version.tenant, version.entry);
        let plugin = defaults.plugins.get(plugin_name.get_ref()).cloned().ok_or_else(|| {
            let known: Vec<&str> = defaults.plugins.keys().map(String::as_str).collect();
            self.spanned_error(
                plugin_name,
                &format!("{filter_key}.plugin"),
                format!("no plugin named {:?} (defined: {})", plugin_name.get_ref(), list_or_none(&known)),
            )
        })?;
        if let Some(granted) = &tenant.plugins
            && !granted.contains(plugin_name.get_ref())
        {
            return Err(self.spanned_error(
                plugin_name,
                &format!("{filter_key}.plugin"),
                format!(
                    "tenant {} may not use plugin {:?} (its plugins: {})",
                    tenant.name,
                    plugin_name.get_ref(),
                    list_or_none(&granted.iter().map(String::as_str).collect::<Vec<_>>())
                ),
            ));
        }
        let config = match config {
            Some(value) => serde_json::to_string(value)
                .map_err(|err| self.spanned_error(entry, &format!("{filter_key}.config"), err.to_string()))?,
            None => "null".to_owned(),
        };
        let as_json: serde_json::Value = serde_json::from_str(&config).unwrap_or_default();
        plugin.check_config(&as_json).map_err(|reason| {
            self.spanned_error(entry, &format!("{filter_key}.config"), format!("plugin {}: {reason}", plugin.name))
        })?;
        let written = entry.get_ref();
        Ok(FilterSpec {
            route: version.route.clone(),
            name: plugin.name.clone(),
            plugin,
            config,
            on_error: match written.on_error {
                OnError::FailClosed => FailurePolicy::FailClosed,
                OnError::FailOpen => FailurePolicy::FailOpen,
            },
            isolation: match written.isolation {
                IsolationSetting::Instance => Isolation::Instance,
                IsolationSetting::Request => Isolation::Request,
            },
            tenant: tenant.clone(),
        })
    }

    fn route(
        &self,
        index: usize,
        written: &Spanned<RouteSection>,
        defaults: &Defaults<'_>,
    ) -> Result<Route, ConfigError> {
        let (server, upstreams) = (defaults.server, defaults.upstreams);
        let key = format!("route[{index}]");
        let route = written.get_ref();
        let name: Arc<str> = route.name.clone().unwrap_or_else(|| format!("route-{}", index + 1)).into();

        let mut hosts = Vec::new();
        if let Some(written_hosts) = &route.host {
            for (host_index, host) in written_hosts.get_ref().0.iter().enumerate() {
                let pattern = HostPattern::parse(host).map_err(|message| {
                    self.spanned_error(written_hosts, &format!("{key}.host[{host_index}]"), message)
                })?;
                hosts.push(pattern);
            }
        }

        let path = self.path_match(&key, route)?;

        let mut methods = Vec::new();
        for (method_index, method) in route.methods.iter().enumerate() {
            let text = method.get_ref();
            let parsed = Method::from_bytes(text.to_ascii_uppercase().as_bytes()).map_err(|_| {
                self.spanned_error(
                    method,
                    &format!("{key}.methods[{method_index}]"),
                    format!("{text:?} is not a method"),
                )
            })?;
            methods.push(parsed);
        }

        let mut headers = Vec::new();
        for (header_index, condition) in route.headers.iter().enumerate() {
            headers.push(self.header_match(&format!("{key}.headers[{header_index}]"), condition)?);
        }

        let rewrite = self.path_rewrite(&key, route)?;

        let lookup = |name: &Spanned<String>, at: &str| {
            upstreams.get(name.get_ref()).cloned().ok_or_else(|| {
                let known: Vec<&str> = upstreams.keys().map(String::as_str).collect();
                self.spanned_error(
                    name,
                    at,
                    format!("no upstream named {:?} (defined: {})", name.get_ref(), list_or_none(&known)),
                )
            })
        };
        let forwards = route.upstream.is_some() || route.backends.is_some();
        if let (Some(_), Some(backends)) = (&route.upstream, &route.backends) {
            return Err(self.spanned_error(
                backends,
                &format!("{key}.backends"),
                "a route has either `upstream` or `backends`, not both",
            ));
        }
        let action = match (forwards, &route.redirect) {
            (false, Some(_)) if route.mirror.is_some() => {
                let mirror = route.mirror.as_ref().expect("checked");
                return Err(self.spanned_error(
                    mirror,
                    &format!("{key}.mirror"),
                    "a redirect route forwards nothing to mirror",
                ));
            }
            (true, Some(redirect)) => {
                return Err(self.spanned_error(
                    redirect,
                    &format!("{key}.redirect"),
                    "a route has either `upstream` or `redirect`, not both",
                ));
            }
            (false, None) => {
                return Err(self.spanned_error(written, &key, "a route needs `upstream` or `redirect`"));
            }
            (true, None) => {
                let backends = match (&route.upstream, &route.backends) {
                    (Some(upstream_name), _) => Backends::single(lookup(upstream_name, &format!("{key}.upstream"))?),
                    (None, Some(entries)) => {
                        if entries.get_ref().is_empty() {
                            return Err(self.spanned_error(entries, &format!("{key}.backends"), "list at least one"));
                        }
                        let mut choices = Vec::new();
                        for (index, entry) in entries.get_ref().iter().enumerate() {
                            let at = format!("{key}.backends[{index}]");
                            let upstream = lookup(&entry.get_ref().upstream, &format!("{at}.upstream"))?;
                            if entry.get_ref().weight == 0 {
                                return Err(self.spanned_error(entry, &format!("{at}.weight"), "must be at least 1"));
                            }
                            choices.push((upstream, entry.get_ref().weight));
                        }
                        Backends::weighted(choices)
                    }
                    (None, None) => unreachable!("forwarding routes name an upstream or backends"),
                };
                let mirror = match &route.mirror {
                    None => None,
                    Some(written_mirror) => {
                        let section = written_mirror.get_ref();
                        if !(section.percent > 0.0 && section.percent <= 100.0) {
                            return Err(self.spanned_error(
                                written_mirror,
                                &format!("{key}.mirror.percent"),
                                "must be above 0 and at most 100",
                            ));
                        }
                        let upstream = lookup(&section.upstream, &format!("{key}.mirror.upstream"))?;
                        Some(Mirror { upstream, percent: section.percent })
                    }
                };
                if route.timeout.0.is_zero() {
                    return Err(self.error(None, &format!("{key}.timeout"), "must be more than zero"));
                }
                RouteAction::Forward(Forward {
                    backends,
                    mirror,
                    rewrite,
                    timeout: route.timeout.0,
                    preserve_host: route.preserve_host,
                })
            }
            (false, Some(redirect)) => {
                let section = redirect.get_ref();
                let status = StatusCode::from_u16(section.status)
                    .ok()
                    .filter(|status| matches!(status.as_u16(), 301 | 302 | 303 | 307 | 308))
                    .ok_or_else(|| {
                        self.spanned_error(
                            redirect,
                            &format!("{key}.redirect.status"),
                            "must be 301, 302, 303, 307 or 308",
                        )
                    })?;
                if let Some(scheme) = &section.scheme
                    && scheme != "http"
                    && scheme != "https"
                {
                    return Err(self.spanned_error(
                        redirect,
                        &format!("{key}.redirect.scheme"),
                        "must be \"http\" or \"https\"",
                    ));
                }
                if let Some(host) = &section.host
                    && host.parse::<Authority>().is_err()
                {
                    return Err(self.spanned_error(
                        redirect,
                        &format!("{key}.redirect.host"),
                        format!("{host:?} is not a host"),
                    ));
                }
                if let Some(path) = &section.path
                    && !path.starts_with('/')
                {
                    return Err(self.spanned_error(redirect, &format!("{key}.redirect.path"), "must start with \"/\""));
                }
                RouteAction::Redirect(Redirect {
                    status,
                    scheme: section.scheme.clone(),
                    host: section.host.clone(),
                    path: section.path.clone(),
                    rewrite,
                    keep_query: section.keep_query,
                })
            }
        };

        let tenant = match &route.tenant {
            Some(tenant) => defaults.tenants.get(tenant.get_ref()).cloned().ok_or_else(|| {
                let known: Vec<&str> = defaults.tenants.keys().map(String::as_str).collect();
                self.spanned_error(
                    tenant,
                    &format!("{key}.tenant"),
                    format!("no tenant named {:?} (defined: {})", tenant.get_ref(), list_or_none(&known)),
                )
            })?,
            None => defaults.default_tenant.clone(),
        };

        let mut filters = Vec::new();
        for (filter_index, entry) in route.filters.iter().enumerate() {
            let filter_key = format!("{key}.filters[{filter_index}]");
            let written = entry.get_ref();
            let position = ConfigError::at(self.source, Some(entry.span()), "", "").position;
            let version = FilterVersion { route: &name, tenant: &tenant, entry, defaults };
            let spec = self.filter_spec(&version, &written.plugin, written.config.as_ref(), &filter_key)?;
            let mut filter = RouteFilter::new(spec, filter_key.clone(), position);
            if let Some(canary) = &written.canary {
                let canary_key = format!("{filter_key}.canary");
                if !(1..=99).contains(&canary.percent) {
                    return Err(self.spanned_error(entry, &format!("{canary_key}.percent"), "must be 1 to 99"));
                }
                let config = canary.config.as_ref().or(written.config.as_ref());
                let spec = self.filter_spec(&version, &canary.plugin, config, &canary_key)?;
                filter = filter.with_canary(Canary {
                    filter: Box::new(RouteFilter::new(spec, canary_key, position)),
                    percent: canary.percent,
                    sticky: canary.sticky,
                });
            }
            filters.push(filter);
        }

        Ok(Route {
            name,
            hosts,
            path,
            methods,
            headers,
            action,
            max_body_bytes: route.max_body_bytes.unwrap_or(server.max_body_bytes),
            tenant,
            filters,
            max_filter_body_bytes: route.max_filter_body_bytes,
            compression: match &route.compression {
                Some(section) => Some(Arc::new(self.compression(&key, section)?)),
                None => None,
            },
            cache: match &route.cache {
                Some(section) if section.get_ref().enabled => Some(Arc::new(self.route_cache(&key, section)?)),
                _ => None,
            },
        })
    }

    fn path_match(&self, key: &str, route: &RouteSection) -> Result<PathMatch, ConfigError> {
        let given = [&route.path, &route.path_prefix, &route.path_regex].iter().filter(|path| path.is_some()).count();
        if given > 1 {
            let second = route.path_regex.as_ref().or(route.path_prefix.as_ref()).expect("two are set");
            return Err(self.spanned_error(second, key, "use only one of `path`, `path_prefix` and `path_regex`"));
        }
        let must_be_absolute = |written: &Spanned<String>, field: &str| {
            if written.get_ref().starts_with('/') {
                Ok(written.get_ref().clone())
            } else {
                Err(self.spanned_error(written, &format!("{key}.{field}"), "must start with \"/\""))
            }
        };
        if let Some(path) = &route.path {
            return Ok(PathMatch::Exact(must_be_absolute(path, "path")?));
        }
        if let Some(prefix) = &route.path_prefix {
            return Ok(PathMatch::Prefix(must_be_absolute(prefix, "path_prefix")?));
        }
        if let Some(pattern) = &route.path_regex {
            let regex = Regex::new(pattern.get_ref()).map_err(|err| {
                self.spanned_error(pattern, &format!("{key}.path_regex"), format!("invalid regular expression: {err}"))
            })?;
            return Ok(PathMatch::Regex(regex));
        }
        Ok(PathMatch::Any)
    }

    fn path_rewrite(&self, key: &str, route: &RouteSection) -> Result<PathRewrite, ConfigError> {
        let replacement = match (&route.rewrite_prefix, route.strip_prefix) {
            (Some(rewrite), true) => {
                return Err(self.spanned_error(
                    rewrite,
                    &format!("{key}.rewrite_prefix"),
                    "use either `strip_prefix` or `rewrite_prefix`, not both",
                ));
            }
            (Some(rewrite), false) => {
                if !rewrite.get_ref().starts_with('/') {
                    return Err(self.spanned_error(rewrite, &format!("{key}.rewrite_prefix"), "must start with \"/\""));
                }
                rewrite.get_ref().clone()
            }
            (None, true) => String::new(),
            (None, false) => return Ok(PathRewrite::None),
        };
        let Some(prefix) = &route.path_prefix else {
            let field = if route.strip_prefix { "strip_prefix" } else { "rewrite_prefix" };
            return Err(self.error(None, &format!("{key}.{field}"), "needs a `path_prefix` to replace"));
        };
        Ok(PathRewrite::Prefix { prefix: prefix.get_ref().clone(), replacement })
    }

    fn header_match(&self, key: &str, written: &Spanned<WrittenHeaderCondition>) -> Result<HeaderMatch, ConfigError> {
        let condition = written.get_ref();
        let name = HeaderName::try_from(condition.name.get_ref().as_str()).map_err(|_| {
            self.spanned_error(
                &condition.name,
                &format!("{key}.name"),
                format!("{:?} is not a header name", condition.name.get_ref()),
            )
        })?;
        let condition = match (&condition.value, &condition.regex, condition.present) {
            (Some(value), None, None) => HeaderCondition::Equals(value.clone()),
            (None, Some(pattern), None) => HeaderCondition::Regex(Regex::new(pattern.get_ref()).map_err(|err| {
                self.spanned_error(pattern, &format!("{key}.regex"), format!("invalid regular expression: {err}"))
            })?),
            (None, None, Some(true)) => HeaderCondition::Present,
            (None, None, Some(false)) => HeaderCondition::Absent,
            _ => {
                return Err(self.spanned_error(
                    written,
                    key,
                    "a header condition needs exactly one of `value`, `regex` and `present`",
                ));
            }
        };
        Ok(HeaderMatch { name, condition })
    }
}

fn list_or_none(names: &[&str]) -> String {
    if names.is_empty() { "none".to_owned() } else { names.join(", ") }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "[[listener]]\nbind = \"127.0.0.1:0\"\n[upstream.app]\nservers = [{ addr = \"127.0.0.1:9\" }]\n";

    fn compile_err(extra: &str) -> ConfigError {
        Snapshot::from_toml(&crate::config::Services::for_tests(), &format!("{BASE}{extra}"))
            .expect_err("config should be refused")
    }

    #[test]
    fn minimal_config_compiles() {
        let snapshot = Snapshot::from_toml(
            &crate::config::Services::for_tests(),
            &format!("{BASE}[[route]]\nupstream = \"app\"\n"),
        )
        .unwrap();
        assert_eq!(snapshot.routes.routes().len(), 1);
        assert_eq!(&*snapshot.routes.routes()[0].name, "route-1");
    }

    #[test]
    fn a_tenants_running_state_carries_over_a_reload() {
        let config = |extra: &str| {
            format!(
                "{BASE}[tenant.acme]\ncpu_ms_per_second = 100\n{extra}\
                 [[route]]\nupstream = \"app\"\ntenant = \"acme\"\n\
                 [[route]]\nupstream = \"app\"\n[[route]]\nupstream = \"app\"\n"
            )
        };
        let first = Snapshot::from_toml(&crate::config::Services::for_tests(), &config("")).unwrap();
        let second = Snapshot::from_toml_after(&config("[tenant.other]\n"), &first).unwrap();
        let fresh = Snapshot::from_toml(&crate::config::Services::for_tests(), &config("")).unwrap();
        let tenant = |snapshot: &Snapshot, route: usize| snapshot.routes.routes()[route].tenant.clone();
        let same_lane = |a: &Tenant, b: &Tenant| a.long_calls.is_same_lane(&b.long_calls);

        assert!(same_lane(&tenant(&first, 0), &tenant(&second, 0)), "acme keeps its lane over the reload");
        assert!(!same_lane(&tenant(&first, 0), &tenant(&fresh, 0)), "a fresh start has fresh lanes");
        // Routes that name no tenant share the default tenant's lane, over reloads too.
        assert!(same_lane(&tenant(&first, 1), &tenant(&first, 2)));
        assert!(same_lane(&tenant(&first, 1), &tenant(&second, 2)));

        // The CPU budget too: what the running generation spent, the next one cannot spend again.
        let spent = tenant(&first, 0).cpu_rate.clone().unwrap();
        assert!(!spent.charge(std::time::Duration::from_millis(100)).is_zero());
        let next = tenant(&second, 0).cpu_rate.clone().unwrap();
        assert!(!next.charge(std::time::Duration::from_millis(1)).is_zero());
        let unspent = tenant(&fresh, 0).cpu_rate.clone().unwrap();
        assert!(unspent.charge(std::time::Duration::from_millis(1)).is_zero());
    }

    #[test]
    fn unknown_upstream_points_at_its_value() {
        let error = compile_err("[[route]]\nupstream = \"nope\"\n");
        assert_eq!(error.key, "route[0].upstream");
        assert_eq!(error.position, Some((6, 12)));
        assert!(error.message.contains("defined: app"), "{error}");
    }

    #[test]
    fn unknown_key_is_refused_with_its_path() {
        let error = compile_err("[[route]]\nupstream = \"app\"\ncolour = \"red\"\n");
        assert_eq!(error.key, "route[0].colour");
        assert_eq!(error.position, Some((7, 1)));
    }

    #[test]
    fn bad_values_are_refused() {
        for (extra, key) in [
            ("[[route]]\nupstream = \"app\"\npath_regex = \"(\"\n", "route[0].path_regex"),
            ("[[route]]\nupstream = \"app\"\npath = \"relative\"\n", "route[0].path"),
            ("[[route]]\nupstream = \"app\"\nstrip_prefix = true\n", "route[0].strip_prefix"),
            ("[[route]]\nredirect = { status = 200 }\n", "route[0].redirect.status"),
            ("[[route]]\nupstream = \"app\"\nhost = \"a.*.com\"\n", "route[0].host[0]"),
            ("[[route]]\nupstream = \"app\"\nheaders = [{ name = \"x\" }]\n", "route[0].headers[0]"),
            ("[[route]]\nupstream = \"app\"\ntimeout = \"soon\"\n", "route[0].timeout"),
            ("[upstream.bad]\nservers = [{ addr = \"no-port\" }]\n", "upstream.bad.servers[0].addr"),
            ("[server]\ntrusted_proxies = [\"10.0.0.0/33\"]\n", "server.trusted_proxies[0]"),
            ("[resolver]\nnameservers = [\"dns.example\"]\n", "resolver.nameservers[0]"),
            ("[resolver]\nmin_ttl = \"2h\"\n", "resolver.min_ttl"),
            ("[server]\nlong_call_priority = 20\n", "server.long_call_priority"),
            ("[server]\nlong_call_priority = \"background\"\n", "server.long_call_priority"),
            (
                "[[route]]\nupstream = \"app\"\ncache = { bypass_headers = [\"bad header\"] }\n",
                "route[0].cache.bypass_headers[0]",
            ),
            ("[[route]]\nupstream = \"app\"\ncache = { tag_header = \"\" }\n", "route[0].cache.tag_header"),
        ] {
            let error = compile_err(extra);
            assert_eq!(error.key, key, "{error}");
        }
    }

    #[test]
    fn duplicate_route_names_are_refused() {
        let error =
            compile_err("[[route]]\nname = \"a\"\nupstream = \"app\"\n[[route]]\nname = \"a\"\nupstream = \"app\"\n");
        assert!(error.message.contains("used twice"), "{error}");
    }
}
