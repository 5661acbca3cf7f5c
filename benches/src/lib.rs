//! Shared set-up for Sluice's benchmarks.

use std::path::{Path, PathBuf};

/// The repository's root folder.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("benches/ is inside the repository").to_owned()
}

/// Builds a filter crate of this repository (cached in `target/plugins`) and returns its component.
pub fn plugin(relative: &str) -> PathBuf {
    let options = sluice_packages::BuildOptions { target_dir: Some(repo_root().join("target/plugins")), quiet: true };
    sluice_packages::build_plugin(&repo_root().join(relative), &options)
        .unwrap_or_else(|err| panic!("building {relative}: {err}"))
}

/// Headers a browser sends with a page request; each benchmark adds the few that matter to it.
pub const BROWSER_HEADERS: [(&str, &str); 8] = [
    ("user-agent", "Mozilla/5.0 (X11; Linux x86_64) Gecko/20100101 Firefox/140.0"),
    ("accept", "text/html,application/xhtml+xml"),
    ("accept-language", "en-GB,en;q=0.5"),
    ("accept-encoding", "gzip, deflate, br, zstd"),
    ("cookie", "session=0123456789abcdef; theme=dark"),
    ("referer", "https://shop.example/"),
    ("x-forwarded-for", "203.0.113.7"),
    ("cache-control", "no-cache"),
];
