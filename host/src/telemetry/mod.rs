//! What Sluice reports about itself: the metrics registry behind `/metrics` ([`metrics`]).

pub mod metrics;
