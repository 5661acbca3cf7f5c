//! The resolve step: every `[plugin.NAME]` source turned into the component's bytes (and the
//! config schema that comes with it) before anything is compiled. A package comes from the local
//! store when pinned by a digest it holds, else from its registry; a filter's source folder is
//! built with its toolchain; a component file is read. This is the only part of loading a
//! configuration that runs builds or reaches the network: compiling what it returns is pure.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use sluice_packages::BuildOptions;
use sluice_packages::oci::{self, Store};

use super::ConfigError;
use super::file::{ConfigFile, PluginSource};

/// One plugin's component, ready to compile.
pub(super) struct ResolvedPlugin {
    /// The component.
    pub(super) bytes: Vec<u8>,
    /// The JSON Schema its filters' configs must follow, when it ships one.
    pub(super) schema: Option<serde_json::Value>,
}

/// What the resolve step found for a configuration.
pub(super) struct Resolved {
    /// Every plugin by name.
    pub(super) plugins: BTreeMap<String, ResolvedPlugin>,
    /// The plugins' local sources (component files and source folders), for the file watcher.
    pub(super) local_sources: Vec<PathBuf>,
}

/// Resolves the plugins of `file` (whose text is `source`); relative paths are taken from
/// `base_dir`.
pub(super) fn resolve(file: &ConfigFile, source: &str, base_dir: &Path) -> Result<Resolved, ConfigError> {
    let store = match &file.server.package_store {
        Some(path) => Store::at(base_dir.join(path)),
        None => Store::default_location(),
    };
    let mut plugins = BTreeMap::new();
    let mut local_sources = Vec::new();
    for (name, section) in &file.plugin {
        let written = &section.get_ref().source;
        let fail =
            |message: String| ConfigError::at(source, Some(written.span()), format!("plugin.{name}.source"), message);
        let resolved = match written.get_ref() {
            PluginSource::Package(reference) => {
                let package =
                    oci::resolve_blocking(reference, &store).map_err(|err| fail(format!("plugin {name}: {err}")))?;
                ResolvedPlugin { bytes: package.component, schema: package.info.config_schema }
            }
            PluginSource::Path(relative) => {
                let path = base_dir.join(relative);
                let (component, schema) = if path.is_dir() {
                    let options = BuildOptions { target_dir: None, quiet: true };
                    let schema = oci::crate_config_schema(&path).map_err(|err| fail(err.to_string()))?;
                    (sluice_packages::build_plugin(&path, &options).map_err(|err| fail(err.to_string()))?, schema)
                } else {
                    (path.clone(), None)
                };
                let bytes = std::fs::read(&component)
                    .map_err(|err| fail(format!("cannot read {}: {err}", component.display())))?;
                local_sources.push(path);
                ResolvedPlugin { bytes, schema }
            }
        };
        plugins.insert(name.clone(), resolved);
    }
    Ok(Resolved { plugins, local_sources })
}
