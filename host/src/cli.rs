//! The `sluice` command line: `run` serves a configuration, `check` only validates it.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use tracing_subscriber::EnvFilter;

use crate::config::Snapshot;
use crate::packages;
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
        /// Worker threads (default: one per CPU).
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
    /// Scaffold a Rust filter crate in a new folder NAME.
    New {
        /// The plugin's name (lower case, digits, dashes).
        name: String,
        /// Where to create it.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
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
}

/// Parses the command line and runs it.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.log_level, cli.log_format);
    match cli.command {
        Command::Check { config } => match Snapshot::from_file(&config).and_then(|snapshot| {
            // Configuring every filter checks its config against its plugin.
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|err| {
                crate::config::ConfigError { file: None, key: String::new(), position: None, message: err.to_string() }
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
        },
        Command::Plugin(PluginCommand::New { name, dir }) => match packages::new_plugin(&dir, &name) {
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
            match packages::build_plugin(&dir, &options) {
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
        Command::Run { config, workers } => {
            let snapshot = match Snapshot::from_file(&config) {
                Ok(snapshot) => snapshot,
                Err(error) => {
                    eprintln!("error: {error}");
                    return ExitCode::FAILURE;
                }
            };
            let mut runtime = match workers {
                // One worker: a single-threaded scheduler does the same work without the
                // cross-thread hand-offs of the work-stealing one.
                Some(1) => tokio::runtime::Builder::new_current_thread(),
                Some(workers) => {
                    let mut runtime = tokio::runtime::Builder::new_multi_thread();
                    runtime.worker_threads(workers.max(1));
                    runtime
                }
                None => tokio::runtime::Builder::new_multi_thread(),
            };
            runtime.enable_all();
            let runtime = match runtime.build() {
                Ok(runtime) => runtime,
                Err(error) => {
                    eprintln!("error: cannot start the runtime: {error}");
                    return ExitCode::FAILURE;
                }
            };
            runtime.block_on(run(snapshot))
        }
    }
}

async fn run(snapshot: Snapshot) -> ExitCode {
    let server = match Server::start(snapshot).await {
        Ok(server) => server,
        Err(error) => {
            tracing::error!(error = %error, "cannot start");
            return ExitCode::FAILURE;
        }
    };
    if let Err(error) = serve_until_shutdown(&server).await {
        tracing::error!(error = %error, "cannot listen for signals");
        return ExitCode::FAILURE;
    }
    match server.shutdown().await {
        ShutdownOutcome::Drained => ExitCode::SUCCESS,
        ShutdownOutcome::Cut(_) => ExitCode::SUCCESS,
    }
}

/// Reloads on SIGHUP; returns on the first SIGTERM or SIGINT.
async fn serve_until_shutdown(server: &Server) -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut hangup = signal(SignalKind::hangup())?;
    let name = loop {
        tokio::select! {
            _ = terminate.recv() => break "SIGTERM",
            _ = interrupt.recv() => break "SIGINT",
            _ = hangup.recv() => {
                tracing::info!("SIGHUP: reloading the configuration");
                // The reloader logs the outcome and keeps it for GET /status; reloads queue up
                // behind each other, and a shutdown signal is heard meanwhile.
                let reloader = server.reloader().clone();
                tokio::spawn(async move { reloader.reload_from_source().await });
            }
        }
    };
    tracing::info!(signal = name, "shutdown requested");
    Ok(())
}

fn init_logging(level: &str, format: LogFormat) {
    // rustls warns once per handshake about some client mistakes (an IP address sent as SNI):
    // at the default levels any client could flood the log, so its warnings are left out.
    let filter = EnvFilter::try_from_env("SLUICE_LOG")
        .or_else(|_| EnvFilter::try_new(format!("{level},rustls=error")))
        .unwrap_or_else(|_| EnvFilter::new("info,rustls=error"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).init(),
    }
}
