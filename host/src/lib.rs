//! Sluice: a reverse proxy whose routes run chains of sandboxed WebAssembly filters.
//!
//! This crate is the proxy itself, on top of the crates under `crates/` (HTTP basics, TLS,
//! upstreams, the cache, the filter runtime, the plugin toolchain). Its modules, lowest first:
//! [`telemetry`] (metrics), [`routing`] (the route table), [`config`] (the file, resolved and
//! compiled into the [`Snapshot`](config::Snapshot) each request reads), [`pipeline`] (one
//! request's phases), [`reload`], [`cluster`] (purges and bans shared with other instances),
//! [`admin`] (the admin listener), [`server`] (listeners and connections) and [`cli`]. A module only uses those below it; the suite checks that there is
//! no cycle. docs/architecture.md draws the whole picture.

#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

pub mod admin;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod pipeline;
pub mod reload;
pub mod routing;
pub mod server;
pub mod telemetry;
