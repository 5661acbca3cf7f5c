//! Sluice: a reverse proxy whose routes run chains of sandboxed WebAssembly filters.
//!
//! The crate is laid out as the request flows: [`server`] accepts connections, [`config`] holds
//! the compiled [`Snapshot`](config::Snapshot) each request reads, [`routing`] picks a route,
//! [`pipeline`] carries the request through it, [`upstream`] reaches the origin servers, and
//! [`admin`] reports on all of it.

#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

pub mod admin;
pub mod cli;
pub mod config;
pub mod pipeline;
pub mod reload;
pub mod routing;
pub mod server;
pub mod telemetry;
