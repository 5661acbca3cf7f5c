//! `[tenant.NAME]`: what a tenant's filters are granted (memory, CPU, instances, callouts, key-value
//! and its backend, plugins, bans).

use super::*;

impl Compiler<'_> {
    pub(super) fn tenant(
        &self,
        name: &str,
        written: &Spanned<TenantSection>,
        upstreams: &BTreeMap<String, Arc<Upstream>>,
        plugin_names: &HashSet<String>,
        redis: &BTreeMap<String, Arc<sluice_runtime::kv::RedisKv>>,
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
        if section.call_timeout.0.is_zero() {
            return Err(self.error(None, &format!("{key}.call_timeout"), "must be more than 0"));
        }
        if section.log_lines_per_second == 0 {
            return Err(self.error(None, &format!("{key}.log_lines_per_second"), "must be at least 1"));
        }
        let bans = match &section.ban_max_duration {
            None => None,
            Some(duration) if duration.0 < std::time::Duration::from_millis(1) => {
                return Err(self.error(None, &format!("{key}.ban_max_duration"), "must be at least 1ms"));
            }
            Some(_) if section.ban_max_entries == 0 => {
                return Err(self.error(None, &format!("{key}.ban_max_entries"), "must be at least 1"));
            }
            Some(duration) => Some(sluice_runtime::BanGrant {
                max_duration: duration.0.min(sluice_access::MAX_BAN_DURATION),
                max_entries: section.ban_max_entries,
            }),
        };
        let kv_backend = match &section.kv_backend {
            None => KvBackend::Memory,
            Some(name) if name.get_ref() == "memory" => KvBackend::Memory,
            Some(name) => match redis.get(name.get_ref()) {
                Some(backend) => KvBackend::Redis(backend.clone()),
                None => {
                    let known: Vec<&str> = redis.keys().map(String::as_str).collect();
                    return Err(self.spanned_error(
                        name,
                        &format!("{key}.kv_backend"),
                        format!(
                            "no [redis.{}] section (\"memory\" or one of: {})",
                            name.get_ref(),
                            list_or_none(&known)
                        ),
                    ));
                }
            },
        };
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
            kv_backend,
            plugins,
            cpu_rate: section.cpu_ms_per_second.map(CpuRate::new),
            long_calls: LongCallLane::default(),
            metric_series: section.metric_series,
            log_lines_per_second: section.log_lines_per_second,
            call_timeout: section.call_timeout.0,
            bans,
        })
    }
}
