//! What Sluice reports about itself: the metrics registry behind `/metrics` ([`metrics`]) and
//! the traces it exports ([`traces`]).

pub mod metrics;
pub mod traces;
