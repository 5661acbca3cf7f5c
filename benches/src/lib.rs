//! Shared set-up for Sluice's benchmarks.

use std::path::{Path, PathBuf};

/// The repository's root folder.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("benches/ is inside the repository").to_owned()
}

/// Builds a filter crate of this repository (cached in `target/plugins`) and returns its component.
pub fn plugin(relative: &str) -> PathBuf {
    let options = sluice::packages::BuildOptions { target_dir: Some(repo_root().join("target/plugins")), quiet: true };
    sluice::packages::build_plugin(&repo_root().join(relative), &options)
        .unwrap_or_else(|err| panic!("building {relative}: {err}"))
}
