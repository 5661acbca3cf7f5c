//! Turns the configuration as written into the [`Snapshot`] the server uses, checking everything
//! a type cannot: references between sections, patterns, addresses, combinations of keys.

mod access;
mod listener;
mod plugin;
mod redis;
mod route;
mod server;
mod tenant;
mod tracing;
mod upstream;

pub(crate) use route::place_in_chain;

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
    BalancerName, CheckKindName, CompressionLevelName, CompressionSection, ConfigFile, EncodingName, FilterEntry,
    HeaderCondition as WrittenHeaderCondition, Http3Field, Http3Section, IsolationSetting, LongCallPriorityValue,
    OnError, PluginSection, ResolverSection, RetryOn, RetrySection, RouteCacheSection, RouteSection, ServerSection,
    TenantSection, TlsSection, UpstreamAlpn, UpstreamSection, UpstreamTlsSection,
};
use super::resolve::{Resolved, ResolvedPlugin};
use super::{ConfigError, Http3Settings, ListenerSpec, ServerSettings, Services, Snapshot};
use crate::routing::{
    Backends, Forward, HeaderCondition, HeaderMatch, HostPattern, Mirror, PathMatch, PathRewrite, Redirect, Route,
    RouteAction, RouteTable,
};
use sluice_cache::CacheSettings;
use sluice_http::compression::{CompressionLevel, CompressionSettings, Encoding};
use sluice_runtime::kv::{KvBackend, KvQuota};
use sluice_runtime::{
    Canary, FailurePolicy, FilterSpec, Isolation, LongCallPriority, Plugin, RouteFilter, Shadow, Tenant,
};
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
    resolved: Resolved,
    source: &str,
    base_dir: &Path,
    previous: Option<&Snapshot>,
) -> Result<Snapshot, ConfigError> {
    let cx = Compiler { source, base_dir, services, watched_files: Default::default() };
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
    let admin_read_token = match file.admin.as_ref().and_then(|admin| admin.read_token.as_deref()) {
        Some(token) if token.len() < 16 => {
            return Err(cx.error(None, "admin.read_token", "must be at least 16 characters (use a random string)"));
        }
        Some(token) => Some(Arc::from(token)),
        None => None,
    };

    let geoip = match &file.geoip {
        Some(section) => Some(Arc::new(cx.geoip(section)?)),
        None => None,
    };
    let listeners = cx.listeners(&file)?;

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

    let mut redis = BTreeMap::new();
    for (name, section) in &file.redis {
        redis.insert(name.clone(), cx.redis(name, section, previous)?);
    }
    let cluster = match &file.cluster {
        None => None,
        Some(section) => {
            let name = &section.get_ref().redis;
            Some(redis.get(name.get_ref()).cloned().ok_or_else(|| {
                let known: Vec<&str> = redis.keys().map(String::as_str).collect();
                cx.spanned_error(
                    name,
                    "cluster.redis",
                    format!("no [redis.{}] section (defined: {})", name.get_ref(), list_or_none(&known)),
                )
            })?)
        }
    };
    let tracing = file.tracing.as_ref().map(|section| cx.tracing(section, previous)).transpose()?;
    let plugin_names: HashSet<String> = file.plugin.keys().cloned().collect();
    let mut tenants = BTreeMap::new();
    for (name, tenant) in &file.tenant {
        let tenant = cx.tenant(name, tenant, &upstreams, &plugin_names, &redis)?;
        tenants.insert(name.clone(), Arc::new(with_running_state(tenant, previous)));
    }
    let default_tenant = Arc::new(with_running_state(Tenant::default_tenant(), previous));
    let mut plugins = BTreeMap::new();
    for (name, plugin) in &file.plugin {
        let Some(component) = resolved.plugins.get(name) else { continue };
        plugins.insert(name.clone(), cx.plugin(name, plugin, component, previous)?);
    }
    let defaults = Defaults {
        server: &server,
        upstreams: &upstreams,
        tenants: &tenants,
        default_tenant: &default_tenant,
        plugins: &plugins,
        geoip: geoip.is_some(),
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

    let plugin_origins = file
        .plugin
        .iter()
        .map(|(name, section)| {
            let origin = match section.get_ref().source.get_ref() {
                crate::config::file::PluginSource::Package(reference) => reference.clone(),
                crate::config::file::PluginSource::Path(path) => path.display().to_string(),
            };
            (name.clone(), origin)
        })
        .collect();
    let mut all_tenants = tenants.clone();
    all_tenants.entry(default_tenant.name.to_string()).or_insert_with(|| default_tenant.clone());
    Ok(Snapshot {
        server,
        admin,
        admin_reload_token,
        admin_read_token,
        tenants: all_tenants,
        plugin_origins,
        listeners,
        upstreams: Arc::new(super::UpstreamTable::new(upstreams)),
        plugins,
        plugin_sources: resolved.local_sources,
        data_files: cx.watched_files.take(),
        redis,
        cluster,
        tracing,
        geoip,
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
    /// Data files the configuration reads (GeoIP databases, address list files): a change to
    /// one reloads it, as a change to the file itself does.
    watched_files: std::cell::RefCell<Vec<std::path::PathBuf>>,
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
    /// Whether `[geoip]` is configured (country rules need it).
    geoip: bool,
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
            (
                "[[route]]\nupstream = \"app\"\naccess = { deny = [\"10.0.0.0/8\", \"10.0.0.0/33\"] }\n",
                "route[0].access.deny[1]",
            ),
            ("[[route]]\nupstream = \"app\"\naccess = { allow = [\"example.com\"] }\n", "route[0].access.allow[0]"),
            (
                "[[route]]\nupstream = \"app\"\naccess = { deny_file = \"/no/such/list\" }\n",
                "route[0].access.deny_file",
            ),
            ("[[route]]\nupstream = \"app\"\ncountries = { deny = [\"FR\"] }\n", "route[0].countries"),
            ("[geoip]\ncountry_database = \"/no/such.mmdb\"\n", "geoip.country_database"),
            ("[tenant.t]\nban_max_duration = \"0s\"\n", "tenant.t.ban_max_duration"),
        ] {
            let error = compile_err(extra);
            assert_eq!(error.key, key, "{error}");
        }
    }

    #[test]
    fn a_bad_line_in_a_list_file_is_named() {
        let list = std::env::temp_dir().join(format!("sluice-deny-{}.txt", std::process::id()));
        std::fs::write(&list, "# ok\n192.0.2.0/24\nnot-an-address\n").unwrap();
        let error =
            compile_err(&format!("[[route]]\nupstream = \"app\"\naccess = {{ deny_file = \"{}\" }}\n", list.display()));
        let _ = std::fs::remove_file(&list);
        assert_eq!(error.key, "route[0].access.deny_file");
        assert!(error.message.contains("line 3") && error.message.contains("not-an-address"), "{error}");
    }

    #[test]
    fn duplicate_route_names_are_refused() {
        let error =
            compile_err("[[route]]\nname = \"a\"\nupstream = \"app\"\n[[route]]\nname = \"a\"\nupstream = \"app\"\n");
        assert!(error.message.contains("used twice"), "{error}");
    }
}
