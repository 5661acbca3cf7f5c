//! Plugin packages: building filter crates into components, scaffolding new ones, and packing,
//! pushing and pulling them as OCI artifacts.

#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

mod adapter_arena;
pub mod build;
mod build_go;
mod build_js;
pub mod oci;
pub mod scaffold;
mod upload;

pub use build::{BuildError, BuildOptions, build_plugin, check_component, componentize};
pub use scaffold::{Language, ScaffoldError, new_plugin, new_plugin_in};
