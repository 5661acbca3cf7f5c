//! `[server]` and `[resolver]`: limits, header policy and name resolution shared by every listener and upstream.

use super::*;

impl Compiler<'_> {
    pub(super) fn server(&self, section: &ServerSection) -> Result<ServerSettings, ConfigError> {
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
        if section.send_timeout.0.is_zero() {
            return Err(self.error(None, "server.send_timeout", "must be more than 0"));
        }
        if section.max_connections_per_client == 0 {
            return Err(self.error(None, "server.max_connections_per_client", "must be at least 1"));
        }
        Ok(ServerSettings {
            max_connections: section.max_connections,
            max_connections_per_client: section.max_connections_per_client,
            max_header_bytes: section.max_header_bytes,
            max_headers: section.max_headers,
            max_body_bytes: section.max_body_bytes,
            header_read_timeout: section.header_read_timeout.0,
            idle_timeout: section.idle_timeout.0,
            send_timeout: section.send_timeout.0,
            shutdown_timeout: section.shutdown_timeout.0,
            trusted_proxies,
            hide_headers,
            via_name,
            watch: section.watch,
            long_call_priority,
        })
    }

    pub(super) fn resolver(&self, section: &ResolverSection) -> Result<ResolverSettings, ConfigError> {
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
}
