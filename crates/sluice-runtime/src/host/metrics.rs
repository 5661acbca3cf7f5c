//! `sluice:filter/metrics`: counters, gauges and histograms a filter writes, under its tenant's and plugin's labels.

use super::*;
use crate::bindings::sluice::filter::metrics;

impl metrics::Host for FilterState {
    fn counter_add(&mut self, name: String, labels: Vec<(String, String)>, value: u64) -> wasmtime::Result<()> {
        let labels = self.metric_labels(name, labels)?;
        self.services.counters.get_or_create(&labels).inc_by(value);
        Ok(())
    }

    fn gauge_set(&mut self, name: String, labels: Vec<(String, String)>, value: i64) -> wasmtime::Result<()> {
        let labels = self.metric_labels(name, labels)?;
        self.services.gauges.get_or_create(&labels).set(value);
        Ok(())
    }

    fn histogram_record(&mut self, name: String, labels: Vec<(String, String)>, value: f64) -> wasmtime::Result<()> {
        let labels = self.metric_labels(name, labels)?;
        self.services.histograms.get_or_create(&labels).observe(value);
        Ok(())
    }
}
