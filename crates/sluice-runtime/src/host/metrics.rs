//! `sluice:filter/metrics`: counters, gauges and histograms a filter writes, under its tenant's and
//! plugin's labels.
//!
//! What a guest writes ends up on `/metrics`, which every tenant and the operator share, so each
//! observation is checked before it gets there: the metric name and label keys must be valid
//! Prometheus names (`[a-zA-Z_][a-zA-Z0-9_]*`, not `__`-prefixed, not the host's own `tenant`,
//! `plugin` and `name`), a key may appear once, and there are at most [`MAX_LABELS`] labels of
//! bounded length. Labels are sorted by key, so one set in two orders is one series. Each
//! tenant may create at most its `metric_series` grant of series; an observation that would create
//! more, or that fails a check, is dropped and counted in
//! `sluice_filter_metrics_dropped_total{tenant, reason}` instead.

use std::collections::{HashMap, HashSet};
use std::hash::BuildHasher;
use std::sync::{Mutex, RwLock};

use super::*;
use crate::bindings::sluice::filter::metrics;

/// Most labels a guest may give one observation.
pub const MAX_LABELS: usize = 8;
/// Longest metric name or label key, in bytes.
pub const MAX_NAME_BYTES: usize = 64;
/// Longest label value, in bytes.
pub const MAX_LABEL_VALUE_BYTES: usize = 256;

/// Why an observation was dropped (the `reason` label of the dropped counter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dropped {
    InvalidName,
    InvalidLabel,
    DuplicateLabel,
    TooManyLabels,
    SeriesLimit,
}

impl Dropped {
    fn reason(self) -> &'static str {
        match self {
            Self::InvalidName => "invalid_name",
            Self::InvalidLabel => "invalid_label",
            Self::DuplicateLabel => "duplicate_label",
            Self::TooManyLabels => "too_many_labels",
            Self::SeriesLimit => "series_limit",
        }
    }
}

/// Whether `name` is a Prometheus label name a guest may use.
fn valid_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    name.len() <= MAX_NAME_BYTES
        && bytes.next().is_some_and(|first| first.is_ascii_alphabetic() || first == b'_')
        && bytes.all(|byte| byte.is_ascii_alphanumeric() || byte == b'_')
        && !name.starts_with("__")
}

/// The observation's full label set (host labels first, the guest's sorted after), or why it may
/// not be recorded.
pub(crate) fn checked_labels(
    tenant: &str,
    plugin: &str,
    name: String,
    mut labels: Vec<(String, String)>,
) -> Result<PluginMetricLabels, Dropped> {
    if !valid_name(&name) {
        return Err(Dropped::InvalidName);
    }
    if labels.len() > MAX_LABELS {
        return Err(Dropped::TooManyLabels);
    }
    for (key, value) in &labels {
        if !valid_name(key)
            || matches!(key.as_str(), "tenant" | "plugin" | "name")
            || value.len() > MAX_LABEL_VALUE_BYTES
        {
            return Err(Dropped::InvalidLabel);
        }
    }
    labels.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    if labels.windows(2).any(|pair| pair[0].0 == pair[1].0) {
        return Err(Dropped::DuplicateLabel);
    }
    let mut all = Vec::with_capacity(labels.len() + 3);
    all.push(("tenant".to_owned(), tenant.to_owned()));
    all.push(("plugin".to_owned(), plugin.to_owned()));
    all.push(("name".to_owned(), name));
    all.extend(labels);
    Ok(all)
}

/// The series each tenant's filters have created (as hashes of their label sets and kind), to
/// hold them to their grant, each tenant's behind a lock of its own. Series are never removed
/// from `/metrics`, so neither are they here.
#[derive(Debug, Default)]
pub struct SeriesBudget {
    by_tenant: RwLock<HashMap<Arc<str>, TenantSeries>>,
    hasher: std::collections::hash_map::RandomState,
}

/// One tenant's series, by hash.
type TenantSeries = Arc<Mutex<HashSet<u64>>>;

impl SeriesBudget {
    fn series_of(&self, tenant: &Arc<str>) -> TenantSeries {
        if let Some(series) = self.by_tenant.read().unwrap_or_else(|poisoned| poisoned.into_inner()).get(tenant) {
            return series.clone();
        }
        let mut by_tenant = self.by_tenant.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        by_tenant.entry(tenant.clone()).or_default().clone()
    }

    /// Whether `tenant` may write the series `labels` of metric kind `kind`: one it has already,
    /// or a new one within `limit`.
    pub(crate) fn admit(&self, tenant: &Arc<str>, limit: usize, kind: u8, labels: &PluginMetricLabels) -> bool {
        let hash = self.hasher.hash_one((kind, labels));
        let series = self.series_of(tenant);
        let mut series = series.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if series.contains(&hash) {
            return true;
        }
        if series.len() >= limit {
            return false;
        }
        series.insert(hash);
        true
    }

    /// How many series `tenant` has.
    pub fn count(&self, tenant: &str) -> usize {
        let by_tenant = self.by_tenant.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        by_tenant.get(tenant).map_or(0, |series| series.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).len())
    }
}

impl FilterState {
    /// The labels to record under, or `None` (counted as dropped) when the observation may not be
    /// recorded.
    fn admitted_labels(
        &self,
        kind: u8,
        name: String,
        labels: Vec<(String, String)>,
    ) -> wasmtime::Result<Option<PluginMetricLabels>> {
        let context = self.context()?;
        let tenant = &context.tenant;
        let checked = checked_labels(&tenant.name, &context.filter, name, labels).and_then(|labels| {
            if self.services.metric_series.admit(&tenant.name, tenant.metric_series, kind, &labels) {
                Ok(labels)
            } else {
                Err(Dropped::SeriesLimit)
            }
        });
        Ok(match checked {
            Ok(labels) => Some(labels),
            Err(dropped) => {
                let labels = vec![
                    ("tenant".to_owned(), tenant.name.to_string()),
                    ("reason".to_owned(), dropped.reason().to_owned()),
                ];
                self.services.metrics_dropped.get_or_create(&labels).inc();
                None
            }
        })
    }
}

impl metrics::Host for FilterState {
    fn counter_add(&mut self, name: String, labels: Vec<(String, String)>, value: u64) -> wasmtime::Result<()> {
        if let Some(labels) = self.admitted_labels(0, name, labels)? {
            self.services.counters.get_or_create(&labels).inc_by(value);
        }
        Ok(())
    }

    fn gauge_set(&mut self, name: String, labels: Vec<(String, String)>, value: i64) -> wasmtime::Result<()> {
        if let Some(labels) = self.admitted_labels(1, name, labels)? {
            self.services.gauges.get_or_create(&labels).set(value);
        }
        Ok(())
    }

    fn histogram_record(&mut self, name: String, labels: Vec<(String, String)>, value: f64) -> wasmtime::Result<()> {
        if let Some(labels) = self.admitted_labels(2, name, labels)?
            && value.is_finite()
        {
            self.services.histograms.get_or_create(&labels).observe(value);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(key, value)| (key.to_string(), value.to_string())).collect()
    }

    #[test]
    fn label_keys_must_be_prometheus_names_and_unique() {
        let check = |name: &str, pairs: &[(&str, &str)]| checked_labels("t", "p", name.to_owned(), labels(pairs));
        assert!(check("hits", &[("code", "200"), ("method", "GET")]).is_ok());
        assert_eq!(check("bad name", &[]), Err(Dropped::InvalidName));
        assert_eq!(check("hits", &[("a\"}x", "1")]), Err(Dropped::InvalidLabel));
        assert_eq!(check("hits", &[("__name__", "1")]), Err(Dropped::InvalidLabel));
        assert_eq!(check("hits", &[("tenant", "victim")]), Err(Dropped::InvalidLabel));
        assert_eq!(check("hits", &[("a", "1"), ("a", "2")]), Err(Dropped::DuplicateLabel));
        let many: Vec<(String, String)> = (0..9).map(|i| (format!("k{i}"), "v".to_owned())).collect();
        assert_eq!(checked_labels("t", "p", "hits".into(), many), Err(Dropped::TooManyLabels));
        // One set in two orders is one series.
        assert_eq!(check("hits", &[("b", "1"), ("a", "2")]), check("hits", &[("a", "2"), ("b", "1")]));
    }

    #[test]
    fn a_tenant_creates_series_up_to_its_grant() {
        let budget = SeriesBudget::default();
        let tenant: Arc<str> = "t".into();
        let series = |i: usize| vec![("k".to_owned(), i.to_string())];
        assert!((0..3).all(|i| budget.admit(&tenant, 3, 0, &series(i))));
        assert!(!budget.admit(&tenant, 3, 0, &series(3)), "a fourth series is refused");
        assert!(budget.admit(&tenant, 3, 0, &series(1)), "an existing one still counts");
        assert!(budget.admit(&"other".into(), 3, 0, &series(3)), "other tenants have their own");
        assert_eq!(budget.count("t"), 3);
    }
}
