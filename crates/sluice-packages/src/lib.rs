//! Plugin packages: building filter crates into components, scaffolding new ones, and packing,
//! pushing and pulling them as OCI artifacts.

#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

pub mod build;
pub mod oci;
pub mod scaffold;

pub use build::{BuildError, BuildOptions, build_plugin, check_component, componentize};
pub use scaffold::{Language, ScaffoldError, new_plugin, new_plugin_in};
