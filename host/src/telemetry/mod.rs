//! What Sluice reports about itself: the metrics registry behind `/metrics` ([`metrics`]), the
//! traces it exports ([`traces`]), tenants' usage for billing ([`usage`]), the live figures
//! the dashboard shows ([`live`]) and shadow filters' comparisons ([`shadows`]).

pub mod live;
pub mod metrics;
pub mod shadows;
pub mod traces;
pub mod usage;
