//! Write [Sluice](https://github.com/sluice-proxy/sluice) filters in Rust.
//!
//! A filter is a type implementing [`Filter`], exported with [`export_filter!`]. Sluice creates
//! one value of it per Wasm instance (from the route's config, deserialised with serde) and calls
//! only the phases it asks for in [`Filter::phases`]. Every phase has a default that lets the
//! request through, so a filter implements only what it needs:
//!
//! ```
//! use sluice_sdk::{Decision, Filter, Request, export_filter};
//!
//! struct Hello;
//!
//! impl Filter for Hello {
//!     type Config = ();
//!     fn new(_config: ()) -> Result<Self, String> {
//!         Ok(Hello)
//!     }
//!     fn on_request(&mut self, request: &Request) -> Decision {
//!         let _ = request.set_header("x-hello", "world");
//!         Decision::Continue
//!     }
//! }
//!
//! export_filter!(Hello);
//! # fn main() {}
//! ```
//!
//! An instance may serve many requests one after another (unless the route asks for
//! `isolation = "request"`), but never two at once: state kept in `self` between the phases of
//! one request is safe, state kept across requests is shared by them.
//!
//! Host capabilities live in [`log`], [`kv`], [`metrics`], [`callout`], [`clock`], [`random`] and
//! [`client`];
//! each returns a `Result` where the host may refuse.

#![warn(missing_docs, unreachable_pub)]

#[doc(hidden)]
pub mod bindings {
    #![allow(missing_docs, unreachable_pub)]
    wit_bindgen::generate!({
        path: "../../wit",
        world: "sluice:filter/plugin",
        pub_export_macro: true,
        export_macro_name: "__export_bindings",
        default_bindings_module: "sluice_sdk::bindings",
        generate_all,
    });
}

#[cfg(all(target_arch = "wasm32", feature = "allocator"))]
mod allocator;
mod filter;
pub mod host;
mod http;

pub use filter::{BodyAction, Decision, Filter, Phases};
pub use host::{callout, client, clock, kv, log, metrics, random, trace};
pub use http::{LocalResponse, Request, Response};

#[doc(hidden)]
pub mod __private {
    pub use crate::filter::dispatch;
}

/// Exports a [`Filter`] as the component's `sluice:filter` implementation.
///
/// Use it once per filter crate, at the top level. A type that does not implement [`Filter`],
/// or implements a phase with the wrong signature, is a compile error:
///
/// ```compile_fail
/// struct NotAFilter;
/// sluice_sdk::export_filter!(NotAFilter);
/// # fn main() {}
/// ```
///
/// ```compile_fail
/// use sluice_sdk::{Filter, Request};
/// struct WrongPhase;
/// impl Filter for WrongPhase {
///     type Config = ();
///     fn new(_config: ()) -> Result<Self, String> { Ok(WrongPhase) }
///     // A phase must return a `Decision`.
///     fn on_request(&mut self, request: &Request) -> bool { true }
/// }
/// sluice_sdk::export_filter!(WrongPhase);
/// # fn main() {}
/// ```
#[macro_export]
macro_rules! export_filter {
    ($filter:ty) => {
        const _: () = {
            #[doc(hidden)]
            pub struct SluiceFilterExport;

            impl $crate::bindings::exports::sluice::filter::filter::Guest for SluiceFilterExport {
                fn configure(
                    config: ::std::string::String,
                ) -> ::std::result::Result<$crate::Phases, ::std::string::String> {
                    $crate::__private::dispatch::configure::<$filter>(config)
                }
                fn on_request(
                    request: &$crate::bindings::sluice::filter::http::Request,
                ) -> $crate::bindings::sluice::filter::types::Decision {
                    $crate::__private::dispatch::on_request::<$filter>(request)
                }
                fn on_request_body(
                    request: &$crate::bindings::sluice::filter::http::Request,
                    body: ::std::vec::Vec<u8>,
                    end_of_stream: bool,
                ) -> $crate::bindings::sluice::filter::types::BodyAction {
                    $crate::__private::dispatch::on_request_body::<$filter>(request, body, end_of_stream)
                }
                fn on_response(
                    request: &$crate::bindings::sluice::filter::http::Request,
                    response: &$crate::bindings::sluice::filter::http::Response,
                ) -> $crate::bindings::sluice::filter::types::Decision {
                    $crate::__private::dispatch::on_response::<$filter>(request, response)
                }
                fn on_response_body(
                    request: &$crate::bindings::sluice::filter::http::Request,
                    response: &$crate::bindings::sluice::filter::http::Response,
                    body: ::std::vec::Vec<u8>,
                    end_of_stream: bool,
                ) -> $crate::bindings::sluice::filter::types::BodyAction {
                    $crate::__private::dispatch::on_response_body::<$filter>(request, response, body, end_of_stream)
                }
            }

            // The component exports exist only in the Wasm build: a native build (the filter's
            // own unit tests) has no host to call them, and its linker cannot name them.
            #[cfg(target_family = "wasm")]
    $crate::bindings::__export_bindings!(SluiceFilterExport with_types_in $crate::bindings);
        };
    };
}
