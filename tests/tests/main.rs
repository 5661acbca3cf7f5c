//! Sluice's integration tests, one binary with a module per area: end-to-end tests (an origin,
//! a proxy and a client on port 0), runtime tests that call components directly, the command
//! line as users run it, and checks of the code's shape.

mod abuse;
mod access;
mod admin_api;
mod architecture;
mod balancing;
mod cache;
mod cache_conformance;
mod cache_semantics;
mod cli;
mod compression;
mod dashboard;
mod dns;
mod filters;
mod forwarding;
mod fuzz;
mod go;
mod guest_limits;
mod hostile;
mod http3;
mod js;
mod languages;
mod limits;
mod metering;
mod packages;
mod plugins;
mod reload;
mod routing;
mod runtime;
mod scale_out;
mod shadow;
mod shutdown;
mod streaming;
mod templates;
mod tls;
mod traces;
mod upstream_http1;
mod workers;
