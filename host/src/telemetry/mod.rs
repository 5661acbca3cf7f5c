//! What Sluice reports about itself: the metrics registry behind `/metrics` ([`metrics`]), the
//! traces it exports ([`traces`]) and tenants' usage for billing ([`usage`]).

pub mod metrics;
pub mod traces;
pub mod usage;
