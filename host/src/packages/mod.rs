//! Plugin packages: building filter crates into components and scaffolding new ones. (Packing,
//! pushing and pulling OCI artifacts will live here too.)

pub mod build;
pub mod scaffold;

pub use build::{BuildError, BuildOptions, build_plugin, componentize};
pub use scaffold::{ScaffoldError, new_plugin};
