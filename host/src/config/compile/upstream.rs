//! `[upstream.NAME]`: servers, pool, balancer, health checks, outlier detection, retries, limits and TLS.

use super::*;

impl Compiler<'_> {
    pub(super) fn upstream(
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

    pub(super) fn upstream_policy(&self, key: &str, section: &UpstreamSection) -> Result<UpstreamPolicy, ConfigError> {
        let hash_key = section.hash_key.as_ref().map_or(HashKey::ClientIp, |written| written.get_ref().0.clone());
        let balancer = match section.balancer.as_ref().map(Spanned::get_ref) {
            None | Some(BalancerName::RoundRobin) => BalancerKind::RoundRobin,
            Some(BalancerName::LeastConnections) => BalancerKind::LeastConnections,
            Some(BalancerName::P2c) => BalancerKind::PowerOfTwoChoices,
            Some(BalancerName::Hash) => BalancerKind::Hash(hash_key),
        };
        if let (Some(written), false) = (&section.hash_key, matches!(balancer, BalancerKind::Hash(_))) {
            return Err(self.spanned_error(written, &format!("{key}.hash_key"), "needs balancer = \"hash\""));
        }

        let health_check = match &section.health_check {
            None => None,
            Some(written) => {
                let check = written.get_ref();
                let check_key = format!("{key}.health_check");
                let kind = match check.kind {
                    CheckKindName::Tcp => CheckKind::Tcp,
                    CheckKindName::Http => {
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
        for condition in &retry_section.on {
            match condition {
                RetryOn::ConnectFailure => retry.on_connect_failure = true,
                RetryOn::Timeout => retry.on_timeout = true,
                RetryOn::Reset => retry.on_reset = true,
                RetryOn::Status(status) => retry.on_statuses.push(*status),
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

    pub(super) fn upstream_tls(
        &self,
        key: &str,
        written: &Spanned<UpstreamTlsSection>,
    ) -> Result<UpstreamTls, ConfigError> {
        let section = written.get_ref();
        let key = format!("{key}.tls");
        let offer_h2 = section.alpn.contains(&UpstreamAlpn::H2);
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
}
