//! `sluice plugin build` for a JavaScript filter (a folder with a package.json): install its npm
//! dependencies (and the SDK's, which npm leaves out for a linked `file:` package), then run the
//! SDK's `sluice-js-build`, which bundles the filter and componentizes it with componentize-js. The result
//! is checked against the world like a Rust filter's. A component newer than every source it
//! comes from (the filter's files, the SDK, the WIT) is not built again.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::{BuildError, BuildOptions, component_path, run_tool, stale, temporary_beside};

/// The SDK's package name, as a filter's package.json depends on it.
const SDK_PACKAGE: &str = "@sluice/filter-sdk";

/// What Sluice reads from a JavaScript filter's package.json.
#[derive(Debug)]
pub(crate) struct JsManifest {
    /// The package name without its npm scope (`@team/gate` is `gate`).
    pub(crate) name: String,
    pub(crate) version: Option<String>,
    pub(crate) description: Option<String>,
    /// `"sluice": { "configSchema": "..." }`, relative to the filter's folder.
    pub(crate) config_schema: Option<String>,
}

/// The manifest of the JavaScript filter in `dir`; `None` when `dir` is not one (it has a
/// Cargo.toml, or no package.json).
pub(crate) fn js_manifest(dir: &Path) -> Option<Result<JsManifest, String>> {
    let path = dir.join("package.json");
    if dir.join("Cargo.toml").exists() || !path.exists() {
        return None;
    }
    let parsed =
        std::fs::read_to_string(&path).map_err(|err| format!("cannot read {}: {err}", path.display())).and_then(
            |text| serde_json::from_str::<serde_json::Value>(&text).map_err(|err| format!("{}: {err}", path.display())),
        );
    Some(parsed.and_then(|manifest| {
        let field = |pointer: &str| manifest.pointer(pointer).and_then(serde_json::Value::as_str).map(str::to_owned);
        let name = field("/name").ok_or_else(|| format!("{} has no name", path.display()))?;
        Ok(JsManifest {
            name: name.rsplit('/').next().unwrap_or(&name).to_owned(),
            version: field("/version"),
            description: field("/description"),
            config_schema: field("/sluice/configSchema"),
        })
    }))
}

/// Builds the JavaScript filter in `dir`, described by `manifest`, into
/// `<target>/sluice/<name>.wasm`.
pub(super) fn build_js_plugin(
    dir: &Path,
    manifest: &JsManifest,
    options: &BuildOptions,
    target_dir: &Path,
) -> Result<PathBuf, BuildError> {
    let name = &manifest.name;
    node_version()?;

    if stale(&dir.join("node_modules"), &[dir.join("package.json")]) {
        npm_install(dir, options)?;
    }
    let sdk = dir.join("node_modules").join(SDK_PACKAGE).canonicalize().map_err(|_| {
        BuildError::NotACrate(format!("{} does not depend on {SDK_PACKAGE} (add it to package.json)", dir.display()))
    })?;
    if stale(&sdk.join("node_modules"), &[sdk.join("package.json")]) {
        npm_install(&sdk, options)?;
    }

    let out = component_path(target_dir, name)?;
    let sources = [dir.to_path_buf(), sdk.join("src"), sdk.join("bin"), sdk.join("../../wit")];
    if stale(&out, &sources) {
        let temporary = temporary_beside(&out, "wasm");
        let mut build = Command::new("node");
        build.arg(sdk.join("bin/build.js")).arg("--out").arg(&temporary).arg(dir).current_dir(dir);
        let built = run_tool(&mut build, options, npm_failed(dir));
        if let Err(error) = built {
            let _ = std::fs::remove_file(&temporary);
            return Err(error);
        }
        std::fs::rename(&temporary, &out)
            .map_err(|err| BuildError::Io(format!("cannot write {}: {err}", out.display())))?;
    }
    Ok(out)
}

fn node_version() -> Result<(), BuildError> {
    let missing = || BuildError::NoNode;
    let output = Command::new("node").arg("--version").output().map_err(|_| missing())?;
    let version = String::from_utf8_lossy(&output.stdout);
    let major = version.trim().trim_start_matches('v').split('.').next().and_then(|major| major.parse::<u32>().ok());
    match major {
        Some(major) if major >= 18 => Ok(()),
        _ => Err(missing()),
    }
}

fn npm_install(dir: &Path, options: &BuildOptions) -> Result<(), BuildError> {
    let mut npm = Command::new("npm");
    // The lock file's versions, without rewriting it. Not `npm ci`: npm 11 refuses its own lock
    // files when they list platform-specific optional packages (jco's and rolldown's bindings).
    npm.args(["install", "--no-save", "--no-audit", "--no-fund"]).current_dir(dir);
    run_tool(&mut npm, options, npm_failed(dir))
}

fn npm_failed(dir: &Path) -> impl FnOnce(String) -> BuildError {
    let dir = dir.display().to_string();
    move |output| BuildError::Npm { dir, output }
}
