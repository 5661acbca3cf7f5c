//! TLS for Sluice, on rustls: the listeners' certificates (SNI, reload, client certificate
//! verification) in [`server`], and what upstream connections present and verify in [`client`].
//! It depends on no other Sluice crate.

#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

pub mod client;
pub mod server;
