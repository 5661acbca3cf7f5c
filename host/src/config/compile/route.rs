//! `[[route]]`: conditions, action, filters (with canaries), compression and caching of each route.

use super::*;

/// Most files, bytes and folder depth one filter's data files may have: they are copied into
/// each of its instances.
const DATA_FILES_MOST: usize = 4096;
const DATA_BYTES_MOST: usize = 16 << 20;
const DATA_FOLDER_DEPTH: usize = 8;

#[derive(Default)]
struct DataFileBudget {
    files: usize,
    bytes: usize,
}

impl Compiler<'_> {
    pub(super) fn compression(
        &self,
        route_key: &str,
        written: &Spanned<CompressionSection>,
    ) -> Result<CompressionSettings, ConfigError> {
        let key = format!("{route_key}.compression");
        let section = written.get_ref();
        let encodings: Vec<Encoding> = section
            .encodings
            .iter()
            .map(|name| match name {
                EncodingName::Zstd => Encoding::Zstd,
                EncodingName::Br => Encoding::Brotli,
                EncodingName::Gzip => Encoding::Gzip,
            })
            .collect();
        if encodings.is_empty() {
            return Err(self.spanned_error(written, &format!("{key}.encodings"), "name at least one encoding"));
        }
        let level = match section.level {
            CompressionLevelName::Fastest => CompressionLevel::Fastest,
            CompressionLevelName::Default => CompressionLevel::Default,
            CompressionLevelName::Best => CompressionLevel::Best,
        };
        Ok(CompressionSettings {
            encodings,
            min_bytes: section.min_bytes,
            content_types: section.content_types.iter().map(|prefix| prefix.to_ascii_lowercase()).collect(),
            level,
        })
    }

    pub(super) fn route_cache(
        &self,
        route_key: &str,
        written: &Spanned<RouteCacheSection>,
    ) -> Result<CacheSettings, ConfigError> {
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
        let targeted_fields = section
            .targeted_fields
            .iter()
            .enumerate()
            .map(|(index, name)| header_name(name, &format!("targeted_fields[{index}]")))
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
            targeted_fields,
            heuristics: section.heuristics,
        })
    }

    /// One version of a route's filter: its plugin (checked against the tenant's grant) with its
    /// config (checked against the plugin's schema).
    pub(super) fn filter_spec(
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
        let config = if written.files.is_empty() {
            config
        } else {
            self.with_data_files(as_json, &written.files, entry, filter_key)?
        };
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

    pub(super) fn route(
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
                let canary_filter = self.other_version(&version, &canary.plugin, config, canary_key, position)?;
                filter = filter.with_canary(Canary {
                    filter: Box::new(canary_filter),
                    percent: canary.percent,
                    sticky: canary.sticky,
                });
            }
            if let Some(shadow) = &written.shadow {
                let shadow_key = format!("{filter_key}.shadow");
                if !(1..=100).contains(&shadow.percent) {
                    return Err(self.spanned_error(entry, &format!("{shadow_key}.percent"), "must be 1 to 100"));
                }
                let config = shadow.config.as_ref().or(written.config.as_ref());
                let shadow_filter = self.other_version(&version, &shadow.plugin, config, shadow_key, position)?;
                filter = filter.with_shadow(Shadow { filter: Box::new(shadow_filter), percent: shadow.percent });
            }
            filters.push(filter);
        }

        let access = self.access_rules(&key, route.access.as_ref(), route.countries.as_ref(), defaults.geoip)?;

        let usage = self.services.runtime.services().usage.meter(sluice_runtime::metering::MeterKey {
            tenant: tenant.name.clone(),
            route: name.clone(),
            filter: None,
        });
        let live = self.services.live.route(&name);
        let filter_live = filters
            .iter()
            .map(|filter| crate::routing::FilterLiveFigures {
                filter: live.filter(place_in_chain(&filter.key), &filter.spec.plugin.name),
                canary: filter
                    .canary
                    .as_ref()
                    .map(|canary| live.filter(place_in_chain(&canary.filter.key), &canary.filter.spec.plugin.name)),
                shadow: filter.shadow.as_ref().map(|shadow| {
                    self.services.shadows.tally(
                        &name,
                        place_in_chain(&shadow.filter.key),
                        &shadow.filter.spec.plugin.name,
                    )
                }),
            })
            .collect();
        Ok(Route {
            live,
            filter_live,
            name,
            access,
            hosts,
            path,
            methods,
            headers,
            action,
            max_body_bytes: route.max_body_bytes.unwrap_or(server.max_body_bytes),
            filters,
            max_filter_body_bytes: route.max_filter_body_bytes,
            alt_svc: route.alt_svc,
            compression: match &route.compression {
                Some(section) => Some(Arc::new(self.compression(&key, section)?)),
                None => None,
            },
            cache: match &route.cache {
                Some(section) if section.get_ref().enabled => Some(Arc::new(self.route_cache(&key, section)?)),
                _ => None,
            },
            figures: Default::default(),
            usage,
            tenant,
        })
    }

    /// The filter's config with its data files added under `files`: `{ NAME: { root, files:
    /// { RELATIVE_PATH: TEXT } } }`, each folder read whole (hidden files skipped). The files are
    /// watched: a change reloads the configuration.
    fn with_data_files(
        &self,
        config: serde_json::Value,
        files: &std::collections::BTreeMap<String, Spanned<String>>,
        entry: &Spanned<FilterEntry>,
        filter_key: &str,
    ) -> Result<String, ConfigError> {
        let mut config = match config {
            serde_json::Value::Null => serde_json::Map::new(),
            serde_json::Value::Object(map) => map,
            _ => {
                return Err(self.spanned_error(
                    entry,
                    &format!("{filter_key}.config"),
                    "a filter with `files` needs a table (or no) config: its files are added to it",
                ));
            }
        };
        if config.contains_key("files") {
            return Err(self.spanned_error(
                entry,
                &format!("{filter_key}.config.files"),
                "`files` is where the filter's data files go; name the config key otherwise",
            ));
        }
        let mut budget = DataFileBudget::default();
        let mut all = serde_json::Map::new();
        for (name, written_path) in files {
            let key = format!("{filter_key}.files.{name}");
            if name.is_empty() || name.contains(['/', '\\']) {
                return Err(self.spanned_error(written_path, &key, "a data file's name is one word, without slashes"));
            }
            let path = self.base_dir.join(written_path.get_ref());
            let metadata = std::fs::metadata(&path).map_err(|err| {
                self.spanned_error(written_path, &key, format!("cannot read {}: {err}", path.display()))
            })?;
            let mut read = serde_json::Map::new();
            let root = if metadata.is_dir() {
                self.read_data_folder(&path, "", &mut read, &mut budget, &key, written_path)?;
                path.clone()
            } else {
                let file_name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                let text = self.read_data_file(&path, &mut budget, &key, written_path)?;
                read.insert(file_name, serde_json::Value::String(text));
                path.parent().map(Path::to_path_buf).unwrap_or_default()
            };
            let root = std::fs::canonicalize(&root).unwrap_or(root);
            all.insert(
                name.clone(),
                serde_json::json!({ "root": root.to_string_lossy(), "files": serde_json::Value::Object(read) }),
            );
        }
        config.insert("files".into(), serde_json::Value::Object(all));
        Ok(serde_json::Value::Object(config).to_string())
    }

    fn read_data_folder(
        &self,
        folder: &Path,
        prefix: &str,
        read: &mut serde_json::Map<String, serde_json::Value>,
        budget: &mut DataFileBudget,
        key: &str,
        written: &Spanned<String>,
    ) -> Result<(), ConfigError> {
        if prefix.matches('/').count() >= DATA_FOLDER_DEPTH {
            return Err(self.spanned_error(written, key, format!("folders nested deeper than {DATA_FOLDER_DEPTH}")));
        }
        let mut entries: Vec<_> = std::fs::read_dir(folder)
            .and_then(|entries| entries.collect::<Result<Vec<_>, _>>())
            .map_err(|err| self.spanned_error(written, key, format!("cannot read {}: {err}", folder.display())))?;
        entries.sort_by_key(|entry| entry.file_name());
        for entry in entries {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            let path = entry.path();
            let relative = format!("{prefix}{name}");
            let file_type = std::fs::metadata(&path)
                .map_err(|err| self.spanned_error(written, key, format!("cannot read {}: {err}", path.display())))?;
            if file_type.is_dir() {
                self.read_data_folder(&path, &format!("{relative}/"), read, budget, key, written)?;
            } else if file_type.is_file() {
                let text = self.read_data_file(&path, budget, key, written)?;
                read.insert(relative, serde_json::Value::String(text));
            }
        }
        Ok(())
    }

    fn read_data_file(
        &self,
        path: &Path,
        budget: &mut DataFileBudget,
        key: &str,
        written: &Spanned<String>,
    ) -> Result<String, ConfigError> {
        budget.files += 1;
        if budget.files > DATA_FILES_MOST {
            return Err(self.spanned_error(written, key, format!("more than {DATA_FILES_MOST} files")));
        }
        let bytes = std::fs::read(path)
            .map_err(|err| self.spanned_error(written, key, format!("cannot read {}: {err}", path.display())))?;
        budget.bytes += bytes.len();
        if budget.bytes > DATA_BYTES_MOST {
            return Err(self.spanned_error(written, key, format!("more than {} MiB of files", DATA_BYTES_MOST >> 20)));
        }
        self.watched_files.borrow_mut().push(path.to_path_buf());
        String::from_utf8(bytes)
            .map_err(|_| self.spanned_error(written, key, format!("{} is not UTF-8 text", path.display())))
    }

    /// Another version of a filter (a canary or a shadow): `plugin` with `config`, written at
    /// `key`.
    fn other_version(
        &self,
        version: &FilterVersion<'_>,
        plugin: &Spanned<String>,
        config: Option<&toml::Value>,
        key: String,
        position: Option<(usize, usize)>,
    ) -> Result<RouteFilter, ConfigError> {
        let spec = self.filter_spec(version, plugin, config, &key)?;
        Ok(RouteFilter::new(spec, key, position))
    }

    pub(super) fn path_match(&self, key: &str, route: &RouteSection) -> Result<PathMatch, ConfigError> {
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

    pub(super) fn path_rewrite(&self, key: &str, route: &RouteSection) -> Result<PathRewrite, ConfigError> {
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

    pub(super) fn header_match(
        &self,
        key: &str,
        written: &Spanned<WrittenHeaderCondition>,
    ) -> Result<HeaderMatch, ConfigError> {
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

/// A filter's place in its route's chain, `filters[0]` or `filters[0].canary`, from its key
/// in the file (`route[3].filters[0]`).
pub(crate) fn place_in_chain(key: &str) -> &str {
    key.split_once('.').map_or(key, |(_, place)| place)
}
