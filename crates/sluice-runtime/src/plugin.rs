//! A plugin: a compiled component checked against the `sluice:filter` world, with its imports
//! resolved once so that instances start cheaply.

use std::path::Path;
use std::sync::Arc;

use sha2::{Digest, Sha256};
use wasmtime::component::Component;
use wasmtime::component::types::ComponentItem;

use super::Runtime;
use super::bindings::PluginPre;
use super::host::FilterState;

/// The WIT package this host implements.
pub const WIT_PACKAGE: &str = "sluice:filter";
/// Its version.
pub const WIT_VERSION: &str = "0.1.3";

/// A plugin could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// The file could not be read.
    #[error("cannot read {path}: {reason}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// The bytes are not a valid component.
    #[error("not a valid WebAssembly component: {0}")]
    Invalid(String),
    /// The component targets another version of the interface.
    #[error(
        "built for {found}; this Sluice serves {WIT_PACKAGE}@{WIT_VERSION}: rebuild the plugin against this version"
    )]
    IncompatibleWorld {
        /// The interface version it was built for.
        found: String,
    },
    /// The component does not fit the world (missing export, unknown import).
    #[error("does not implement the {WIT_PACKAGE} world: {0}")]
    WorldMismatch(String),
}

/// A loaded plugin, shared by every route filter that uses it.
pub struct Plugin {
    /// Name from the configuration.
    pub name: Arc<str>,
    /// `sha256:` digest of the component's bytes.
    pub digest: String,
    /// Imports resolved, ready to instantiate.
    pub(crate) pre: PluginPre<FilterState>,
    /// Whether the component imports WASI (then each instance gets a WASI context).
    pub(crate) uses_wasi: bool,
    /// Whether every host function it imports answers at once (no `kv`, no `callout`, no
    /// WASI): then its store is not an async one, and a call may run as a plain synchronous
    /// call on the worker instead of on a fiber (see `FilterPool`).
    pub(crate) answers_at_once: bool,
    /// The host capabilities it imports (`log`, `kv`, `metrics`, `callout`, `clock`, `random`,
    /// and `wasi` for any WASI interface).
    capabilities: Vec<String>,
    /// The JSON Schema its configs must satisfy, when its package or crate ships one.
    config_schema: Option<Arc<jsonschema::Validator>>,
    /// That schema as written, for the admin API.
    config_schema_source: Option<Arc<serde_json::Value>>,
    /// The `sluice:filter` version its `filter` export was built against (`0.1.3`).
    world_version: String,
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin").field("name", &self.name).field("digest", &self.digest).finish_non_exhaustive()
    }
}

impl Plugin {
    /// Loads a component file.
    pub fn load_file(runtime: &Runtime, name: &str, path: &Path) -> Result<Self, PluginError> {
        let bytes = std::fs::read(path)
            .map_err(|err| PluginError::Read { path: path.display().to_string(), reason: err.to_string() })?;
        Self::load(runtime, name, &bytes)
    }

    /// The `sha256:` digest that identifies a component's bytes.
    pub fn digest_of(bytes: &[u8]) -> String {
        format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
    }

    /// Compiles (or takes from the cache) and checks a component.
    pub fn load(runtime: &Runtime, name: &str, bytes: &[u8]) -> Result<Self, PluginError> {
        let digest = Self::digest_of(bytes);
        // A component's preamble has layer 1 where a core module's has 0.
        if bytes.starts_with(b"\0asm") && bytes.get(6..8) == Some(&[0, 0]) {
            return Err(PluginError::Invalid(
                "this is a core module, not a component: build it with `sluice plugin build`".into(),
            ));
        }
        let component =
            Component::new(runtime.engine(), bytes).map_err(|err| PluginError::Invalid(format!("{err:#}")))?;
        let World { uses_wasi, capabilities, version: world_version } = check_world(runtime, &component)?;
        let answers_at_once =
            !uses_wasi && !capabilities.iter().any(|name| WAITING_CAPABILITIES.contains(&name.as_str()));
        let instance_pre =
            runtime.linker.instantiate_pre(&component).map_err(|err| PluginError::WorldMismatch(format!("{err:#}")))?;
        let pre = PluginPre::new(instance_pre).map_err(|err| PluginError::WorldMismatch(format!("{err:#}")))?;
        Ok(Self {
            name: name.into(),
            digest,
            pre,
            uses_wasi,
            answers_at_once,
            capabilities,
            config_schema: None,
            config_schema_source: None,
            world_version,
        })
    }

    /// Attaches the JSON Schema its configs must satisfy.
    pub fn with_config_schema(mut self, schema: &serde_json::Value) -> Result<Self, PluginError> {
        let validator = jsonschema::validator_for(schema)
            .map_err(|err| PluginError::Invalid(format!("its config schema is not a valid JSON Schema: {err}")))?;
        self.config_schema = Some(Arc::new(validator));
        self.config_schema_source = Some(Arc::new(schema.clone()));
        Ok(self)
    }

    /// Checks a filter config (JSON) against the plugin's schema; the error names the first
    /// place that does not fit.
    pub fn check_config(&self, config: &serde_json::Value) -> Result<(), String> {
        let Some(schema) = &self.config_schema else { return Ok(()) };
        match schema.iter_errors(config).next() {
            None => Ok(()),
            Some(error) => {
                let at = error.instance_path.to_string();
                let at = if at.is_empty() { "the config".to_owned() } else { format!("config{at}") };
                Err(format!("{at}: {error} (by the plugin's config schema)"))
            }
        }
    }

    /// The host capabilities the component imports: what its tenant must grant it.
    pub fn capabilities(&self) -> Vec<String> {
        self.capabilities.clone()
    }

    /// The JSON Schema its configs must satisfy, as written, when it has one.
    pub fn config_schema(&self) -> Option<&serde_json::Value> {
        self.config_schema_source.as_deref()
    }

    /// The `sluice:filter` world it was built against, such as `sluice:filter@0.1.3`.
    pub fn world(&self) -> String {
        format!("{WIT_PACKAGE}@{}", self.world_version)
    }
}

/// The capabilities whose host functions may wait (for Redis, for an upstream): a component that
/// imports one needs an async store.
const WAITING_CAPABILITIES: [&str; 2] = ["kv", "callout"];

/// What a component's imports and exports say about it.
struct World {
    /// Whether it imports WASI.
    uses_wasi: bool,
    /// The host capabilities it imports.
    capabilities: Vec<String>,
    /// The `sluice:filter` version of its `filter` export.
    version: String,
}

/// Checks the component's `sluice:filter` imports and exports against this host's version and
/// says whether it imports WASI.
fn check_world(runtime: &Runtime, component: &Component) -> Result<World, PluginError> {
    let ty = component.component_type();
    let engine = runtime.engine();
    let mut uses_wasi = false;
    let names = ty
        .imports(engine)
        .map(|(name, item)| (name, item, false))
        .chain(ty.exports(engine).map(|(name, item)| (name, item, true)));
    let mut exports_filter = None;
    let mut capabilities = std::collections::BTreeSet::new();
    for (name, item, is_export) in names {
        if name.starts_with("wasi:") {
            uses_wasi = true;
            continue;
        }
        let Some(rest) = name.strip_prefix(WIT_PACKAGE).and_then(|rest| rest.strip_prefix('/')) else {
            if !is_export {
                return Err(PluginError::WorldMismatch(format!("imports {name}, which Sluice does not provide")));
            }
            continue;
        };
        let (interface, version) = rest.split_once('@').unwrap_or((rest, ""));
        if !compatible(version) {
            return Err(PluginError::IncompatibleWorld { found: format!("{WIT_PACKAGE}@{version}") });
        }
        if is_export && interface == "filter" && matches!(item.ty, ComponentItem::ComponentInstance(_)) {
            exports_filter = Some(version.to_owned());
        }
        if !is_export && !matches!(interface, "types" | "http" | "trace") {
            capabilities.insert(interface.to_owned());
        }
    }
    let Some(version) = exports_filter else {
        return Err(PluginError::WorldMismatch(format!("it does not export {WIT_PACKAGE}/filter")));
    };
    if uses_wasi {
        capabilities.insert("wasi".to_owned());
    }
    Ok(World { uses_wasi, capabilities: capabilities.into_iter().collect(), version })
}

/// Semver compatibility with [`WIT_VERSION`]: for 0.x the minor version must match.
fn compatible(version: &str) -> bool {
    let mut ours = WIT_VERSION.split('.');
    let mut theirs = version.split('.');
    let (our_major, our_minor) = (ours.next(), ours.next());
    let (their_major, their_minor) = (theirs.next(), theirs.next());
    if our_major != their_major {
        return false;
    }
    our_major != Some("0") || our_minor == their_minor
}

#[cfg(test)]
mod tests {
    use super::compatible;

    #[test]
    fn versions_follow_semver() {
        assert!(compatible("0.1.0"));
        assert!(compatible("0.1.7"));
        assert!(!compatible("0.2.0"));
        assert!(!compatible("1.0.0"));
        assert!(!compatible(""));
    }
}
