//! `sluice:filter/client` (0.1.1): where the client of the request is, and banning it from the
//! tenant's routes. A ban needs the tenant's grant (`ban_max_duration`), is capped by it, counts
//! against the tenant's share of the block list, and closes only that tenant's routes.

use super::*;
use crate::bindings::sluice::filter::client;
use sluice_access::{BanError, BanOrigin, BanRequest, BanScope};

/// The longest ban reason kept; longer ones are cut (at a character boundary).
pub const MAX_BAN_REASON_BYTES: usize = 256;

impl client::Host for FilterState {
    fn location(&mut self) -> wasmtime::Result<client::ClientLocation> {
        let location = &self.context()?.client_location;
        Ok(client::ClientLocation {
            country: location.country.map(|country| country.as_str().to_owned()),
            asn: location.asn,
            as_organization: location.as_organization.as_deref().map(str::to_owned),
        })
    }

    fn ban(&mut self, duration_ms: u64, reason: String) -> wasmtime::Result<Result<u64, client::BanError>> {
        let context = self.context()?;
        let Some(grant) = context.tenant.bans else {
            return Ok(Err(client::BanError::NotGranted));
        };
        let duration = Duration::from_millis(duration_ms).min(grant.max_duration);
        // Cut before escaping (a huge reason is never copied whole) and after (escapes lengthen it).
        let escaped = log::escape_line(cut_at_char_boundary(&reason, MAX_BAN_REASON_BYTES));
        let reason = cut_at_char_boundary(&escaped, MAX_BAN_REASON_BYTES).to_owned();
        let request = BanRequest {
            network: ipnet::IpNet::from(context.client_ip),
            scope: BanScope::Tenant(context.tenant.name.clone()),
            duration,
            reason,
            origin: BanOrigin::Filter { route: context.route.clone(), filter: context.filter.clone() },
            tenant_limit: grant.max_entries,
        };
        match self.services.blocks.ban(request) {
            Ok(ban) => {
                tracing::info!(
                    target: "sluice::access",
                    route = %context.route,
                    filter = %context.filter,
                    tenant = %context.tenant.name,
                    request_id = %context.request_id,
                    client.address = %context.client_ip,
                    duration_ms = duration.as_millis() as u64,
                    reason = %ban.reason,
                    "filter banned the client"
                );
                Ok(Ok(u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)))
            }
            Err(BanError::Full { .. }) => Ok(Err(client::BanError::TooMany)),
            Err(error) => Ok(Err(client::BanError::Other(error.to_string()))),
        }
    }
}

/// The longest prefix of `text` within `limit` bytes that ends on a character boundary.
fn cut_at_char_boundary(text: &str, limit: usize) -> &str {
    if text.len() <= limit {
        return text;
    }
    let mut end = limit;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}
