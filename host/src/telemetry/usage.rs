//! Tenants' usage, as operators and billing read it: Prometheus counters on `/metrics`
//! ([`UsageCollector`]) and the `GET /tenants/usage` report ([`usage_report`]), both from the
//! runtime's [`UsageLedger`]. The report's schema is in docs/operations.md ("Usage report").

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric as _};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use serde_json::{Value, json};
use sluice_runtime::metering::{MeterKey, UsageFigures, UsageLedger};

/// Writes every meter's totals as `sluice_tenant_*` series at each scrape. Meters that never
/// counted anything (a route of a configuration that failed to load, say) are left out.
#[derive(Debug)]
pub struct UsageCollector(pub Arc<UsageLedger>);

/// A series: name, help, and its value from a meter's figures.
type Series<T> = (&'static str, &'static str, fn(&UsageFigures) -> T);

/// The series of filter meters.
const FILTER_SERIES: [Series<f64>; 8] = [
    ("tenant_guest_cpu_seconds", "Guest CPU time of filter calls and instance starts", |f| f.guest_cpu_seconds()),
    ("tenant_filter_calls", "Filter calls", |f| f.calls as f64),
    ("tenant_instances_started", "Filter instances started", |f| f.instances_started as f64),
    ("tenant_memory_byte_seconds", "Linear memory held by filter instances over time", |f| f.memory_byte_seconds()),
    ("tenant_callouts", "Callouts sent by filters", |f| f.callouts as f64),
    ("tenant_callout_bytes", "Callout request and response body bytes", |f| f.callout_bytes as f64),
    ("tenant_kv_operations", "Key-value operations by filters", |f| f.kv_operations as f64),
    ("tenant_kv_bytes", "Key and value bytes moved by key-value operations", |f| f.kv_bytes as f64),
];

impl Collector for UsageCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let totals: Vec<(MeterKey, UsageFigures)> =
            self.0.totals().into_iter().filter(|(_, figures)| *figures != UsageFigures::default()).collect();
        let (routes, filters): (Vec<_>, Vec<_>) = totals.iter().partition(|(key, _)| key.filter.is_none());
        let filter_labels = |key: &MeterKey| {
            vec![
                ("tenant", key.tenant.to_string()),
                ("route", key.route.to_string()),
                ("filter", key.filter.as_deref().unwrap_or("").to_owned()),
            ]
        };
        for (name, help, value) in FILTER_SERIES {
            let counter = ConstCounter::new(0.0f64);
            let mut family = encoder.encode_descriptor(name, help, None, counter.metric_type())?;
            for (key, figures) in &filters {
                let labels = filter_labels(key);
                ConstCounter::new(value(figures)).encode(family.encode_family(&labels)?)?;
            }
        }
        let gauge = ConstGauge::new(0i64);
        let mut family = encoder.encode_descriptor(
            "tenant_memory_bytes",
            "Linear memory filter instances hold now",
            None,
            gauge.metric_type(),
        )?;
        for (key, figures) in &filters {
            let live = i64::try_from(figures.memory_live_bytes).unwrap_or(i64::MAX);
            ConstGauge::new(live).encode(family.encode_family(&filter_labels(key))?)?;
        }
        let route_series: [Series<u64>; 2] = [
            ("tenant_requests", "Requests answered on the tenant's routes", |f| f.requests),
            ("tenant_response_bytes", "Response body bytes sent on the tenant's routes", |f| f.response_bytes),
        ];
        for (name, help, value) in route_series {
            let counter = ConstCounter::new(0u64);
            let mut family = encoder.encode_descriptor(name, help, None, counter.metric_type())?;
            for (key, figures) in &routes {
                let labels = vec![("tenant", key.tenant.to_string()), ("route", key.route.to_string())];
                ConstCounter::new(value(figures)).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

/// What `GET /tenants/usage` was asked.
#[derive(Debug, Default)]
pub struct UsageQuery {
    /// From when (default: everything the ledger still has).
    pub since: Option<SystemTime>,
    /// The interval length (default: one interval).
    pub interval: Option<Duration>,
    /// Only this tenant.
    pub tenant: Option<String>,
}

impl UsageQuery {
    /// Reads `since` (RFC 3339, or unix seconds), `interval` (`90s`, `1h`, or seconds) and
    /// `tenant` from a query string; the error names the parameter.
    pub fn parse(query: Option<&str>) -> Result<Self, String> {
        let mut parsed = Self::default();
        for (name, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            let value = value.into_owned();
            match &*name {
                "since" => {
                    let since = match value.parse::<u64>() {
                        Ok(seconds) => UNIX_EPOCH + Duration::from_secs(seconds),
                        Err(_) => humantime::parse_rfc3339_weak(&value)
                            .map_err(|err| format!("since: {value:?} is neither RFC 3339 nor unix seconds ({err})"))?,
                    };
                    parsed.since = Some(since);
                }
                "interval" => {
                    let interval = match value.parse::<u64>() {
                        Ok(seconds) => Duration::from_secs(seconds),
                        Err(_) => humantime::parse_duration(&value)
                            .map_err(|err| format!("interval: {value:?} is not a duration ({err})"))?,
                    };
                    if interval < Duration::from_secs(1) {
                        return Err("interval: must be at least 1s".to_owned());
                    }
                    parsed.interval = Some(interval);
                }
                "tenant" => parsed.tenant = Some(value),
                other => return Err(format!("unknown parameter {other:?} (known: since, interval, tenant)")),
            }
        }
        Ok(parsed)
    }
}

fn rfc3339(unix: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(unix)).to_string()
}

/// One meter's figures in the report.
fn figures_json(figures: &UsageFigures, route_level: bool) -> Value {
    if route_level {
        return json!({ "requests": figures.requests, "response_bytes": figures.response_bytes });
    }
    json!({
        "guest_cpu_seconds": figures.guest_cpu_seconds(),
        "calls": figures.calls,
        "instances_started": figures.instances_started,
        "memory_peak_bytes": figures.memory_peak_bytes,
        "memory_byte_seconds": figures.memory_byte_seconds(),
        "callouts": figures.callouts,
        "callout_bytes": figures.callout_bytes,
        "kv_operations": figures.kv_operations,
        "kv_bytes": figures.kv_bytes,
    })
}

/// Every figure of the tenant's meters together.
fn tenant_totals(figures: &UsageFigures) -> Value {
    let mut totals = figures_json(figures, false);
    totals["requests"] = json!(figures.requests);
    totals["response_bytes"] = json!(figures.response_bytes);
    totals
}

/// The usage report, as JSON (see docs/operations.md for its schema).
pub fn usage_report(ledger: &UsageLedger, query: &UsageQuery) -> Value {
    let since = query.since.unwrap_or(UNIX_EPOCH);
    let report = ledger.report(since, query.interval);
    let intervals: Vec<Value> = report
        .intervals
        .iter()
        .map(|interval| {
            // tenant -> (totals, route -> (route figures, filter -> figures))
            type Routes<'a> = BTreeMap<&'a str, (Option<&'a UsageFigures>, BTreeMap<&'a str, &'a UsageFigures>)>;
            let mut tenants: BTreeMap<&str, (UsageFigures, Routes<'_>)> = BTreeMap::new();
            for (key, figures) in &interval.used {
                if query.tenant.as_deref().is_some_and(|wanted| wanted != &*key.tenant) {
                    continue;
                }
                let (totals, routes) = tenants.entry(&key.tenant).or_default();
                totals.absorb(figures);
                let (route_figures, filters) = routes.entry(&key.route).or_default();
                match &key.filter {
                    None => *route_figures = Some(figures),
                    Some(filter) => {
                        filters.insert(filter, figures);
                    }
                }
            }
            let tenants: Vec<Value> = tenants
                .into_iter()
                .map(|(tenant, (totals, routes))| {
                    let routes: Vec<Value> = routes
                        .into_iter()
                        .map(|(route, (route_figures, filters))| {
                            let mut entry = figures_json(&route_figures.copied().unwrap_or_default(), true);
                            entry["route"] = json!(route);
                            entry["filters"] = filters
                                .into_iter()
                                .map(|(filter, figures)| {
                                    let mut entry = figures_json(figures, false);
                                    entry["filter"] = json!(filter);
                                    entry
                                })
                                .collect();
                            entry
                        })
                        .collect();
                    json!({ "tenant": tenant, "usage": tenant_totals(&totals), "routes": routes })
                })
                .collect();
            json!({
                "start": rfc3339(interval.start_unix),
                "end": rfc3339(interval.end_unix),
                "tenants": tenants,
            })
        })
        .collect();
    json!({
        "since": rfc3339(report.since_unix),
        "until": rfc3339(report.until_unix),
        "interval_seconds": report.interval_seconds,
        "resolution_seconds": report.resolution_seconds,
        "available_from": rfc3339(report.available_from_unix),
        "intervals": intervals,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_are_read_and_bad_ones_name_the_parameter() {
        let query = UsageQuery::parse(Some("since=2026-12-01T00%3A00%3A00Z&interval=1h&tenant=acme")).unwrap();
        assert_eq!(query.since, Some(humantime::parse_rfc3339("2026-12-01T00:00:00Z").unwrap()));
        assert_eq!(query.interval, Some(Duration::from_secs(3600)));
        assert_eq!(query.tenant.as_deref(), Some("acme"));
        assert_eq!(
            UsageQuery::parse(Some("since=1700000000")).unwrap().since,
            Some(UNIX_EPOCH + Duration::from_secs(1_700_000_000))
        );
        assert!(UsageQuery::parse(Some("since=yesterday")).unwrap_err().starts_with("since:"));
        assert!(UsageQuery::parse(Some("interval=0")).unwrap_err().starts_with("interval:"));
        assert!(UsageQuery::parse(Some("until=1")).unwrap_err().contains("unknown parameter"));
    }
}
