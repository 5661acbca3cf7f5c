//! Plugin packages: building filter crates into components, scaffolding new ones, and packing,
//! pushing and pulling them as OCI artifacts.

pub mod build;
pub mod oci;
pub mod scaffold;

pub use build::{BuildError, BuildOptions, build_plugin, componentize};
pub use scaffold::{ScaffoldError, new_plugin};
