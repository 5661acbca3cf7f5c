//! What Sluice reports about itself: the metrics registry behind `/metrics` ([`metrics`]), the
//! traces it exports ([`traces`]), tenants' usage for billing ([`usage`]) and the live figures
//! the dashboard shows ([`live`]).

pub mod live;
pub mod metrics;
pub mod traces;
pub mod usage;
