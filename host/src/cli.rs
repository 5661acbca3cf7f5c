//! The `sluice` command line: `run` serves a configuration, `check` only validates it.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use tracing_subscriber::EnvFilter;

use sluice_packages as packages;

use crate::config::{ConfigError, Services, Snapshot};
use crate::server::{Server, ShutdownOutcome};

/// A reverse proxy whose routes run chains of sandboxed WebAssembly filters.
#[derive(Debug, Parser)]
#[command(name = "sluice", version, about)]
pub struct Cli {
    /// Log level, or a full filter such as `info,sluice::access=warn`. `SLUICE_LOG` overrides it.
    #[arg(long, global = true, default_value = "info")]
    pub log_level: String,
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve a configuration until SIGTERM or SIGINT.
    Run {
        /// The configuration file.
        #[arg(long, short)]
        config: PathBuf,
        /// Worker threads, each serving its own share of connections (default: one per CPU).
        #[arg(long)]
        workers: Option<usize>,
    },
    /// Validate a configuration and exit: 0 when it would serve, 1 when not.
    Check {
        /// The configuration file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Create and build filter plugins.
    #[command(subcommand)]
    Plugin(PluginCommand),
}

/// `sluice plugin ...`.
#[derive(Debug, Subcommand)]
pub enum PluginCommand {
    /// Scaffold a filter project (Rust, JavaScript or Go) in a new folder NAME.
    New {
        /// The plugin's name (lower case, digits, dashes).
        name: String,
        /// Where to create it.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// The language: `rust`, `js` or `go`.
        #[arg(long, value_enum, default_value = "rust")]
        lang: packages::Language,
    },
    /// Build a filter crate into a component and print its path.
    Build {
        /// The crate's folder.
        #[arg(default_value = ".")]
        dir: PathBuf,
        /// Cargo's target directory (default: the crate's target/).
        #[arg(long)]
        target_dir: Option<PathBuf>,
    },
    /// Build a filter crate and pack it as an OCI artifact (an OCI image layout folder).
    Pack {
        /// The crate's folder.
        #[arg(default_value = ".")]
        dir: PathBuf,
        /// Where to write the package (default: target/sluice/packages/NAME-VERSION in the crate).
        #[arg(long, short)]
        output: Option<PathBuf>,
        /// Cargo's target directory.
        #[arg(long)]
        target_dir: Option<PathBuf>,
    },
    /// Push a packed plugin (a folder written by `pack`) to a registry: REF is host/repo:tag.
    Push {
        /// The package folder.
        package: PathBuf,
        /// Where to push it, such as registry.example.com/filters/waf:1.2.0.
        reference: String,
    },
    /// Pull a plugin package into the local store and print its digest.
    Pull {
        /// host/repo:tag, optionally pinned with @sha256:...
        reference: String,
    },
    /// Show a package's name, version, world, capabilities and config schema: from a registry
    /// reference, a package folder, or a filter's own folder (built first, nothing fetched).
    Inspect {
        /// A reference (host/repo:tag), a package folder, or a filter's folder.
        target: String,
        /// Cargo's target directory, when TARGET is a filter's folder.
        #[arg(long)]
        target_dir: Option<PathBuf>,
    },
}

/// Parses the command line and runs it.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.log_level, cli.log_format);
    match cli.command {
        Command::Check { config } => {
            match services().and_then(|services| Snapshot::from_file(&services, &config)).and_then(|snapshot| {
                // Configuring every filter checks its config against its plugin.
                let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|err| {
                    ConfigError { file: None, key: String::new(), position: None, message: err.to_string() }
                })?;
                runtime.block_on(snapshot.prepare_filters())?;
                Ok(snapshot)
            }) {
                Ok(snapshot) => {
                    println!(
                        "{}: ok ({} listeners, {} upstreams, {} routes)",
                        config.display(),
                        snapshot.listeners.len(),
                        snapshot.upstreams.len(),
                        snapshot.routes.routes().len()
                    );
                    ExitCode::SUCCESS
                }
                Err(error) => {
                    eprintln!("error: {error}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Plugin(PluginCommand::New { name, dir, lang }) => match packages::new_plugin_in(&dir, &name, lang) {
            Ok(created) => {
                println!("created {}", created.display());
                println!("build it with: sluice plugin build {}", created.display());
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("error: {error}");
                ExitCode::FAILURE
            }
        },
        Command::Plugin(PluginCommand::Build { dir, target_dir }) => {
            let options = packages::BuildOptions { target_dir, quiet: false };
            match build_and_check(&dir, &options) {
                Ok(component) => {
                    println!("{}", component.display());
                    ExitCode::SUCCESS
                }
                Err(error) => {
                    eprintln!("error: {error}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Plugin(
            command @ (PluginCommand::Pack { .. }
            | PluginCommand::Push { .. }
            | PluginCommand::Pull { .. }
            | PluginCommand::Inspect { .. }),
        ) => match package_command(command) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("error: {error}");
                ExitCode::FAILURE
            }
        },
        Command::Run { config, workers } => {
            let workers = workers.unwrap_or_else(sluice_http::worker::workers).max(1);
            // Before the config is compiled: its upstreams keep one connection pool per worker.
            sluice_http::worker::set_workers(workers);
            let snapshot = match services().and_then(|services| Snapshot::from_file(&services, &config)) {
                Ok(snapshot) => snapshot,
                Err(error) => {
                    eprintln!("error: {error}");
                    return ExitCode::FAILURE;
                }
            };
            // The control plane (admin, reloads, health checks, signals) runs here; requests are
            // served on the worker threads, each a runtime of its own.
            let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(runtime) => runtime,
                Err(error) => {
                    eprintln!("error: cannot start the runtime: {error}");
                    return ExitCode::FAILURE;
                }
            };
            runtime.block_on(run(snapshot, workers))
        }
    }
}

/// The process's filter runtime and metric families, made once here and handed down.
fn services() -> Result<Services, ConfigError> {
    Services::with_default_cache().map_err(|err| ConfigError::at("", None, "", err.to_string()))
}

/// `sluice plugin build`: builds the filter, then loads it as the host would, so that one that
/// does not fit the world fails here rather than in a proxy.
fn build_and_check(dir: &std::path::Path, options: &packages::BuildOptions) -> Result<PathBuf, String> {
    let component = packages::build_plugin(dir, options).map_err(|err| err.to_string())?;
    let runtime = sluice_runtime::Runtime::with_default_cache().map_err(|err| err.to_string())?;
    let bytes = std::fs::read(&component).map_err(|err| format!("cannot read {}: {err}", component.display()))?;
    let name = component.file_stem().map_or_else(String::new, |stem| stem.to_string_lossy().into_owned());
    packages::check_component(&runtime, &name, &bytes).map_err(|err| err.to_string())?;
    Ok(component)
}

async fn run(snapshot: Snapshot, workers: usize) -> ExitCode {
    // Signals are taken over before the first listener opens: a SIGTERM that comes as soon as
    // Sluice says it listens must drain, not kill (the default action) a process still starting.
    let signals = match ShutdownSignals::listen() {
        Ok(signals) => signals,
        Err(error) => {
            tracing::error!(error = %error, "cannot listen for signals");
            return ExitCode::FAILURE;
        }
    };
    let server = match Server::start_workers(snapshot, workers).await {
        Ok(server) => server,
        Err(error) => {
            tracing::error!(error = %error, "cannot start");
            return ExitCode::FAILURE;
        }
    };
    signals.serve_until_shutdown(&server).await;
    match server.shutdown().await {
        ShutdownOutcome::Drained => ExitCode::SUCCESS,
        ShutdownOutcome::Cut(_) => ExitCode::SUCCESS,
    }
}

/// The signals Sluice answers: SIGHUP reloads, SIGTERM and SIGINT shut down.
struct ShutdownSignals {
    terminate: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
    hangup: tokio::signal::unix::Signal,
}

impl ShutdownSignals {
    fn listen() -> std::io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
            hangup: signal(SignalKind::hangup())?,
        })
    }

    /// Reloads on SIGHUP; returns on the first SIGTERM or SIGINT.
    async fn serve_until_shutdown(mut self, server: &Server) {
        let name = loop {
            tokio::select! {
                _ = self.terminate.recv() => break "SIGTERM",
                _ = self.interrupt.recv() => break "SIGINT",
                _ = self.hangup.recv() => {
                    tracing::info!("SIGHUP: reloading the configuration");
                    // The reloader logs the outcome and keeps it for GET /status; reloads queue up
                    // behind each other, and a shutdown signal is heard meanwhile.
                    let reloader = server.reloader().clone();
                    tokio::spawn(async move { reloader.reload_from_source().await });
                }
            }
        };
        tracing::info!(signal = name, "shutdown requested");
    }
}

fn init_logging(level: &str, format: LogFormat) {
    // rustls warns once per handshake about some client mistakes (an IP address sent as SNI):
    // at the default levels any client could flood the log, so its warnings are left out.
    let filter = EnvFilter::try_from_env("SLUICE_LOG")
        .or_else(|_| EnvFilter::try_new(format!("{level},rustls=error")))
        .unwrap_or_else(|_| EnvFilter::new("info,rustls=error"));
    // Colour codes only for a person at a terminal, and never when NO_COLOR is set: a log file or
    // a CI log gets plain text.
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr()) && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(colour);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).init(),
    }
}

/// `sluice plugin pack|push|pull|inspect`.
fn package_command(command: PluginCommand) -> Result<(), packages::oci::PackageError> {
    use packages::oci::{self, Package, PackageError, Store};
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|err| PackageError::Io(err.to_string()))?;
    let megabytes = |bytes: usize| bytes as f64 / 1_048_576.0;
    // One line per blob, rewritten in place as bytes move; when not a terminal (a CI log), a line
    // at the start and at each further tenth.
    let interactive = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let tenths_shown = std::sync::Mutex::new(std::collections::HashMap::<String, u64>::new());
    let progress = move |blob: &str, done: u64, total: u64| {
        let line = format!("  {blob}: {:.2} of {:.2} MB", done as f64 / 1_048_576.0, total as f64 / 1_048_576.0);
        if interactive {
            eprint!("\r{line}{}", if done >= total { "\n" } else { "" });
            return;
        }
        let tenth = (done * 10).checked_div(total).unwrap_or(10);
        let mut shown = tenths_shown.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if done == 0 || shown.get(blob) != Some(&tenth) {
            shown.insert(blob.to_owned(), tenth);
            eprintln!("{line}");
        }
    };
    match command {
        PluginCommand::Pack { dir, output, target_dir } => {
            let options = packages::BuildOptions { target_dir, quiet: false };
            let filter_runtime =
                sluice_runtime::Runtime::with_default_cache().map_err(|err| PackageError::Build(err.to_string()))?;
            let package = oci::pack(&filter_runtime, &dir, &options)?;
            let output = output.unwrap_or_else(|| {
                dir.join("target/sluice/packages").join(format!("{}-{}", package.info.name, package.info.version))
            });
            package.write_layout(&output, &package.info.version)?;
            eprintln!(
                "packed {} {} ({:.2} MB, capabilities: {}) into {}",
                package.info.name,
                package.info.version,
                megabytes(package.component.len()),
                package.info.capabilities.join(", "),
                output.display()
            );
            println!("{}", package.digest());
        }
        PluginCommand::Push { package, reference } => {
            let package = Package::read_layout(&package)?;
            let reference = oci::parse_reference(&reference)?;
            eprintln!(
                "pushing {} {} ({:.2} MB) to {reference}",
                package.info.name,
                package.info.version,
                megabytes(package.component.len())
            );
            let digest = runtime.block_on(oci::push_with_progress(&package, &reference, &progress))?;
            eprintln!(
                "pushed; pin it as oci://{}/{}:{}@{digest}",
                reference.resolve_registry(),
                reference.repository(),
                reference.tag().unwrap_or("latest")
            );
            println!("{digest}");
        }
        PluginCommand::Pull { reference } => {
            let parsed = oci::parse_reference(&reference)?;
            eprintln!("pulling {parsed}");
            let package = runtime.block_on(oci::pull_with_progress(&parsed, &progress))?;
            let stored = Store::default_location().put(&package, &parsed)?;
            eprintln!(
                "pulled {} {} ({:.2} MB) into {}",
                package.info.name,
                package.info.version,
                megabytes(package.component.len()),
                stored.display()
            );
            println!("{}", package.digest());
        }
        PluginCommand::Inspect { target, target_dir } => {
            let path = PathBuf::from(&target);
            let package = if path.join("index.json").exists() {
                Package::read_layout(&path)?
            } else if path.is_dir() {
                // A filter's own folder (a crate, an npm package, a Go module): what it would
                // pack to, built here. A folder is never a registry reference.
                let options = packages::BuildOptions { target_dir, quiet: false };
                let filter_runtime = sluice_runtime::Runtime::with_default_cache()
                    .map_err(|err| PackageError::Build(err.to_string()))?;
                oci::pack(&filter_runtime, &path, &options)?
            } else {
                runtime.block_on(oci::pull(&oci::parse_reference(&target)?))?
            };
            let report = serde_json::json!({
                "digest": package.digest(),
                "name": package.info.name,
                "version": package.info.version,
                "description": package.info.description,
                "world": package.info.world,
                "capabilities": package.info.capabilities,
                "component_bytes": package.component.len(),
                "config_schema": package.info.config_schema,
            });
            println!("{}", serde_json::to_string_pretty(&report).unwrap_or_default());
        }
        PluginCommand::New { .. } | PluginCommand::Build { .. } => unreachable!("handled by main"),
    }
    Ok(())
}
