//! The `Cache-Status` response header (RFC 9211) and the lookup outcome counted in metrics.

use http::HeaderValue;

/// How the cache handled one request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CacheStatus {
    /// Served from the cache without going to the origin.
    pub hit: bool,
    /// Why the request went to the origin: `bypass`, `method`, `uri-miss`, `vary-miss`,
    /// `miss`, `request` or `stale`.
    pub forward: Option<&'static str>,
    /// The origin's status when it was asked.
    pub forward_status: Option<u16>,
    /// Freshness left, in seconds; negative when stale.
    pub ttl: Option<i64>,
    /// The response was stored.
    pub stored: bool,
    /// The request waited for another one fetching the same key.
    pub collapsed: bool,
    /// More about it: why it was not stored, or why stale was served.
    pub detail: Option<&'static str>,
}

impl CacheStatus {
    /// A hit with `ttl` seconds of freshness left.
    pub fn hit(ttl: i64) -> Self {
        Self { hit: true, ttl: Some(ttl), ..Self::default() }
    }

    /// Went to the origin for `reason`.
    pub fn forward(reason: &'static str) -> Self {
        Self { forward: Some(reason), ..Self::default() }
    }

    /// The header value, naming this cache `sluice`. Built in one buffer: it is written on every
    /// response of a caching route, hits included.
    pub fn header_value(&self) -> HeaderValue {
        use std::fmt::Write as _;
        let mut text = String::with_capacity(64);
        text.push_str("sluice");
        if self.hit {
            text.push_str("; hit");
        }
        if let Some(forward) = self.forward {
            text.push_str("; fwd=");
            text.push_str(forward);
        }
        if let Some(status) = self.forward_status {
            let _ = write!(text, "; fwd-status={status}");
        }
        if let Some(ttl) = self.ttl {
            let _ = write!(text, "; ttl={ttl}");
        }
        if self.stored {
            text.push_str("; stored");
        }
        if self.collapsed {
            text.push_str("; collapsed");
        }
        if let Some(detail) = self.detail {
            text.push_str("; detail=");
            text.push_str(detail);
        }
        HeaderValue::try_from(text).unwrap_or_else(|_| HeaderValue::from_static("sluice"))
    }

    /// The outcome label in `sluice_cache_lookups_total`.
    pub fn result(&self) -> &'static str {
        match (self.hit, self.forward, self.detail) {
            (true, _, Some("stale-while-revalidate")) => "stale",
            (true, _, _) => "hit",
            (false, Some("stale"), Some("stale-if-error")) => "stale_if_error",
            (false, Some("stale"), _) if self.forward_status == Some(304) => "revalidated",
            (false, Some("bypass" | "method"), _) => "bypass",
            _ => "miss",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_values_follow_rfc_9211() {
        assert_eq!(CacheStatus::hit(42).header_value(), "sluice; hit; ttl=42");
        let mut miss = CacheStatus::forward("uri-miss");
        miss.stored = true;
        assert_eq!(miss.header_value(), "sluice; fwd=uri-miss; stored");
        let revalidated = CacheStatus {
            forward: Some("stale"),
            forward_status: Some(304),
            ttl: Some(60),
            stored: true,
            ..CacheStatus::default()
        };
        assert_eq!(revalidated.header_value(), "sluice; fwd=stale; fwd-status=304; ttl=60; stored");
        assert_eq!(revalidated.result(), "revalidated");
        let swr = CacheStatus { detail: Some("stale-while-revalidate"), ..CacheStatus::hit(-5) };
        assert_eq!(swr.result(), "stale");
        assert_eq!(CacheStatus::forward("bypass").result(), "bypass");
    }
}
