//! HTTP basics every layer of Sluice shares: the body type that flows through the proxy and
//! its wrappers ([`body`]), what a connection is doing ([`ConnectionActivity`]), response
//! compression ([`compression`]), request ids ([`request_id`]) and state kept per worker
//! thread ([`worker`]). It depends on no other Sluice crate.

#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

mod activity;
pub mod body;
pub mod compression;
mod request_id;
pub mod worker;

pub use activity::{ConnectionActivity, InFlight};
pub use request_id::{RequestId, X_REQUEST_ID, new_request_id, request_id};
