//! Upstream health and load as Prometheus metrics. One set of families is made when Sluice
//! starts and handed to every configuration's upstreams, so that they report into the same
//! series across reloads; the admin listener registers them.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Labels of a per-server series.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServerLabels {
    /// The upstream's name.
    pub upstream: String,
    /// The server's `host:port`.
    pub server: String,
}

/// Labels of a per-upstream series.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamLabels {
    /// The upstream's name.
    pub upstream: String,
}

/// The upstream metric families.
#[derive(Debug, Default)]
pub struct UpstreamMetrics {
    healthy: Family<ServerLabels, Gauge>,
    in_flight: Family<ServerLabels, Gauge>,
    ejections: Family<ServerLabels, Counter>,
    retries: Family<UpstreamLabels, Counter>,
    retries_refused: Family<UpstreamLabels, Counter>,
    overflows: Family<UpstreamLabels, Counter>,
}

impl UpstreamMetrics {
    /// Adds the families to a registry.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "upstream_server_healthy",
            "Whether the server passes its active health checks (1) or not (0)",
            self.healthy.clone(),
        );
        registry.register(
            "upstream_server_in_flight",
            "Requests sent to the server and not yet finished",
            self.in_flight.clone(),
        );
        registry.register(
            "upstream_server_ejections",
            "Times passive outlier detection ejected the server",
            self.ejections.clone(),
        );
        registry.register("upstream_retries", "Tries sent again to another server", self.retries.clone());
        registry.register("upstream_retries_refused", "Retries the retry budget refused", self.retries_refused.clone());
        registry.register(
            "upstream_overflows",
            "Requests answered 503 at once because the upstream's request limit was reached",
            self.overflows.clone(),
        );
    }

    fn server(upstream: &str, server: &str) -> ServerLabels {
        ServerLabels { upstream: upstream.to_owned(), server: server.to_owned() }
    }

    fn upstream(upstream: &str) -> UpstreamLabels {
        UpstreamLabels { upstream: upstream.to_owned() }
    }

    pub(crate) fn healthy(&self, upstream: &str, server: &str) -> Gauge {
        self.healthy.get_or_create(&Self::server(upstream, server)).clone()
    }

    pub(crate) fn in_flight(&self, upstream: &str, server: &str) -> Gauge {
        self.in_flight.get_or_create(&Self::server(upstream, server)).clone()
    }

    pub(crate) fn ejections(&self, upstream: &str, server: &str) -> Counter {
        self.ejections.get_or_create(&Self::server(upstream, server)).clone()
    }

    pub(crate) fn retried(&self, upstream: &str) {
        self.retries.get_or_create(&Self::upstream(upstream)).inc();
    }

    pub(crate) fn retry_refused(&self, upstream: &str) {
        self.retries_refused.get_or_create(&Self::upstream(upstream)).inc();
    }

    pub(crate) fn overflowed(&self, upstream: &str) {
        self.overflows.get_or_create(&Self::upstream(upstream)).inc();
    }
}
