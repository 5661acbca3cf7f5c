//! The metrics registry, exposed on the admin listener's `/metrics` in Prometheus text format.
//! One [`Metrics`] lives as long as the server, across reloads, so counters never reset.

use std::fmt::Write as _;
use std::sync::{Arc, OnceLock};

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// A label value that clones without allocating: route, upstream and listener names are shared.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Name(pub Arc<str>);

impl EncodeLabelValue for Name {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        encoder.write_str(&self.0)
    }
}

impl From<&Arc<str>> for Name {
    fn from(name: &Arc<str>) -> Self {
        Self(name.clone())
    }
}

/// Labels of per-request figures.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RequestLabels {
    /// Route name, or empty when none matched.
    pub route: Name,
    /// Upstream name, or empty when the route forwards nowhere.
    pub upstream: Name,
    /// Response status code.
    pub code: u16,
}

/// Labels of latency figures.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RouteLabels {
    /// Route name.
    pub route: Name,
    /// Upstream name.
    pub upstream: Name,
}

/// Labels of per-listener figures.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ListenerLabels {
    /// Listener name.
    pub listener: Name,
}

/// Labels of failure counts.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ErrorLabels {
    /// Route name, or empty when none matched.
    pub route: Name,
    /// What failed (`upstream_connect`, `upstream_timeout`, ...).
    pub kind: &'static str,
}

/// Labels of cache lookups.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct CacheLabels {
    /// Route name.
    pub route: Name,
    /// `hit`, `stale`, `revalidated`, `stale_if_error`, `miss` or `bypass`.
    pub result: &'static str,
}

/// Labels of access-control refusals.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct AccessLabels {
    /// `listener` or `route`.
    pub scope: &'static str,
    /// The listener's or route's name.
    pub name: Name,
    /// `deny`, `allow`, `countries` or `blocks`.
    pub list: &'static str,
}

/// Every figure Sluice keeps.
pub struct Metrics {
    registry: Registry,
    /// One `/metrics` encoding at a time.
    scrapes: tokio::sync::Mutex<()>,
    /// Requests answered.
    pub requests: Family<RequestLabels, Counter>,
    /// Time from request head to the end of the response body.
    pub request_duration: Family<RouteLabels, Histogram>,
    /// Client connections open now.
    pub active_connections: Family<ListenerLabels, Gauge>,
    /// Client connections accepted.
    pub connections: Family<ListenerLabels, Counter>,
    /// Client connections closed at accept: their address already held its limit.
    pub connections_refused: Family<ListenerLabels, Counter>,
    /// Requests that ended in a proxy-made error response.
    pub errors: Family<ErrorLabels, Counter>,
    /// Requests on caching routes, by how the cache answered.
    pub cache_lookups: Family<CacheLabels, Counter>,
    /// Bytes held by the HTTP cache.
    pub cache_bytes: Gauge,
    /// Keys held by the HTTP cache.
    pub cache_entries: Gauge,
    /// Keys removed by purges.
    pub cache_purged: Counter,
    /// Requests refused by access control, by listener or route and list.
    pub access_refused: Family<AccessLabels, Counter>,
    /// Bans in force now (operators' and filters').
    pub bans_active: Gauge,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A registry with every family registered.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("sluice");
        let requests = Family::default();
        registry.register("http_requests", "HTTP requests answered", requests.clone());
        let request_duration = Family::<RouteLabels, Histogram>::new_with_constructor(|| {
            // 0.5 ms to about 32 s: proxy overhead at the bottom, slow origins at the top.
            Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(0.0005, 2.0, 17))
        });
        registry.register(
            "http_request_duration_seconds",
            "Time from request head to the end of the response body",
            request_duration.clone(),
        );
        let active_connections = Family::default();
        registry.register("connections_active", "Client connections open now", active_connections.clone());
        let connections = Family::default();
        registry.register("connections", "Client connections accepted", connections.clone());
        let connections_refused = Family::default();
        registry.register(
            "connections_refused",
            "Client connections closed at accept because their address already held max_connections_per_client",
            connections_refused.clone(),
        );
        let errors = Family::default();
        registry.register("proxy_errors", "Requests answered with a proxy-made error", errors.clone());
        let cache_lookups = Family::default();
        registry.register("cache_lookups", "Requests on caching routes by cache result", cache_lookups.clone());
        let cache_bytes = Gauge::default();
        registry.register("cache_stored_bytes", "Bytes held by the HTTP cache", cache_bytes.clone());
        let cache_entries = Gauge::default();
        registry.register("cache_entries", "Keys held by the HTTP cache", cache_entries.clone());
        let cache_purged = Counter::default();
        registry.register("cache_purged", "Cache keys removed by purges", cache_purged.clone());
        let access_refused = Family::default();
        registry.register(
            "access_refused",
            "Requests refused by access control (address lists, country lists, bans)",
            access_refused.clone(),
        );
        let bans_active = Gauge::default();
        registry.register("access_bans_active", "Client bans in force now", bans_active.clone());
        Self {
            registry,
            access_refused,
            bans_active,
            scrapes: tokio::sync::Mutex::new(()),
            requests,
            request_duration,
            active_connections,
            connections,
            connections_refused,
            errors,
            cache_lookups,
            cache_bytes,
            cache_entries,
            cache_purged,
        }
    }

    /// Adds the upstreams' health and load figures.
    pub fn register_upstream_metrics(&mut self, upstreams: &sluice_upstream::metrics::UpstreamMetrics) {
        upstreams.register(&mut self.registry);
    }

    /// Adds the figures filters write through the `metrics` host interface.
    pub fn register_filter_metrics(&mut self, services: &sluice_runtime::HostServices) {
        self.registry.register_collector(Box::new(super::usage::UsageCollector(services.usage.clone())));
        self.registry.register("filter_counter", "Counters written by filters", services.counters.clone());
        self.registry.register("filter_gauge", "Gauges written by filters", services.gauges.clone());
        self.registry.register("filter_histogram", "Histograms written by filters", services.histograms.clone());
        self.registry.register("filter_failures", "Filter calls that failed", services.failures.clone());
        self.registry.register(
            "filter_instances_retired",
            "Warm filter instances retired as their memory neared the tenant's limit",
            services.retirements.clone(),
        );
        self.registry.register(
            "filter_long_calls",
            "Filter calls that ran past their first milliseconds and moved to the long-call threads",
            services.long_calls.clone(),
        );
        self.registry.register(
            "filter_metrics_dropped",
            "Metric observations from filters that were not recorded (invalid names or labels, or past the tenant's series grant)",
            services.metrics_dropped.clone(),
        );
        self.registry.register(
            "filter_kv_unavailable",
            "Key-value calls that failed because the tenant's backend (Redis) failed or did not answer in time",
            services.kv_unavailable.clone(),
        );
        self.registry.register(
            "filter_log_lines_dropped",
            "Filter log and WASI output lines dropped past the instance's rate",
            services.log_lines_dropped.clone(),
        );
    }

    /// Adds the comparisons of shadow filters with the filters they shadow.
    pub fn register_shadow_metrics(&mut self, shadows: &Arc<crate::telemetry::shadows::ShadowBoard>) {
        self.registry.register_collector(Box::new(crate::telemetry::shadows::ShadowCollector(shadows.clone())));
    }

    /// The registry in Prometheus text format, encoded on a blocking thread, one scrape at a
    /// time: a large page never holds up a worker, and scrapes cannot pile up.
    pub async fn encode_off_workers(self: &Arc<Self>) -> String {
        let _one_at_a_time = self.scrapes.lock().await;
        let metrics = self.clone();
        tokio::task::spawn_blocking(move || metrics.encode())
            .await
            .unwrap_or_else(|_| "# metrics could not be encoded\n".to_owned())
    }

    /// The registry in Prometheus text format.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        if prometheus_client::encoding::text::encode(&mut text, &self.registry).is_err() {
            text.clear();
            let _ = writeln!(text, "# metrics could not be encoded");
        }
        text
    }
}

/// Distinct upstreams a route keeps handles for (a traffic split has a few).
const UPSTREAMS_PER_ROUTE: usize = 4;

/// Distinct status codes a route and upstream keep counters for.
const CODES_PER_UPSTREAM: usize = 8;

/// A route's per-request figures, found in the families once per upstream and status code and
/// then reached without hashing labels or taking a family's lock. Past the slots it has, a
/// request's figures are looked up in the families as before, so nothing is lost.
#[derive(Debug, Default)]
pub struct RouteFigures {
    upstreams: [OnceLock<UpstreamFigures>; UPSTREAMS_PER_ROUTE],
}

#[derive(Debug)]
struct UpstreamFigures {
    upstream: Name,
    duration: Histogram,
    codes: [OnceLock<(u16, Counter)>; CODES_PER_UPSTREAM],
}

impl RouteFigures {
    /// Counts one request of route `route` to `upstream` answered with `code` after `seconds`.
    pub fn record(&self, metrics: &Metrics, route: &Name, upstream: &Name, code: u16, seconds: f64) {
        let found = self.upstreams.iter().find_map(|slot| {
            let figures = slot.get_or_init(|| UpstreamFigures {
                upstream: upstream.clone(),
                duration: metrics
                    .request_duration
                    .get_or_create(&RouteLabels { route: route.clone(), upstream: upstream.clone() })
                    .clone(),
                codes: Default::default(),
            });
            (figures.upstream == *upstream).then_some(figures)
        });
        let Some(figures) = found else {
            return metrics.record_request(route, upstream, code, seconds);
        };
        figures.duration.observe(seconds);
        let counter = figures.codes.iter().find_map(|slot| {
            let (slot_code, counter) = slot.get_or_init(|| {
                let labels = RequestLabels { route: route.clone(), upstream: upstream.clone(), code };
                (code, metrics.requests.get_or_create(&labels).clone())
            });
            (*slot_code == code).then_some(counter)
        });
        match counter {
            Some(counter) => {
                counter.inc();
            }
            None => {
                metrics
                    .requests
                    .get_or_create(&RequestLabels { route: route.clone(), upstream: upstream.clone(), code })
                    .inc();
            }
        }
    }
}

impl Metrics {
    /// Counts one request by its labels (for requests no route took, and past a route's slots).
    pub fn record_request(&self, route: &Name, upstream: &Name, code: u16, seconds: f64) {
        self.requests.get_or_create(&RequestLabels { route: route.clone(), upstream: upstream.clone(), code }).inc();
        self.request_duration
            .get_or_create(&RouteLabels { route: route.clone(), upstream: upstream.clone() })
            .observe(seconds);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_figures_count_into_the_same_series_as_the_families() {
        let metrics = Metrics::new();
        let figures = RouteFigures::default();
        let route = Name("api".into());
        // More upstreams and codes than the route has slots for: every request still counts.
        for upstream in 0..UPSTREAMS_PER_ROUTE + 2 {
            let upstream = Name(format!("app{upstream}").into());
            for code in 200..200 + CODES_PER_UPSTREAM as u16 + 3 {
                figures.record(&metrics, &route, &upstream, code, 0.001);
                figures.record(&metrics, &route, &upstream, code, 0.001);
            }
        }
        metrics.record_request(&route, &Name("app0".into()), 200, 0.001);
        let text = metrics.encode();
        assert!(text.contains("sluice_http_requests_total{route=\"api\",upstream=\"app0\",code=\"200\"} 3"), "{text}");
        assert!(text.contains("sluice_http_requests_total{route=\"api\",upstream=\"app5\",code=\"210\"} 2"), "{text}");
        assert!(
            text.contains("sluice_http_request_duration_seconds_count{route=\"api\",upstream=\"app5\"} 22"),
            "{text}"
        );
        assert!(
            text.contains("sluice_http_request_duration_seconds_count{route=\"api\",upstream=\"app0\"} 23"),
            "{text}"
        );
    }

    #[test]
    fn families_show_up_with_labels() {
        let metrics = Metrics::new();
        let route = Name("api".into());
        metrics
            .requests
            .get_or_create(&RequestLabels { route: route.clone(), upstream: Name("app".into()), code: 200 })
            .inc();
        metrics.request_duration.get_or_create(&RouteLabels { route, upstream: Name("app".into()) }).observe(0.002);
        let text = metrics.encode();
        assert!(text.contains("sluice_http_requests_total{route=\"api\",upstream=\"app\",code=\"200\"} 1"), "{text}");
        assert!(
            text.contains("sluice_http_request_duration_seconds_count{route=\"api\",upstream=\"app\"} 1"),
            "{text}"
        );
    }
}
