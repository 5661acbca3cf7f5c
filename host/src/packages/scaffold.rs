//! `sluice plugin new NAME`: a Rust filter crate that builds and runs as it is.

use std::path::{Path, PathBuf};

/// Why a plugin could not be scaffolded.
#[derive(Debug, thiserror::Error)]
pub enum ScaffoldError {
    /// The name is not a valid crate name.
    #[error("{0:?} is not a valid plugin name: use lower-case letters, digits and dashes, starting with a letter")]
    BadName(String),
    /// The folder exists.
    #[error("{0} already exists")]
    Exists(String),
    /// Writing failed.
    #[error("cannot write {path}: {reason}")]
    Io {
        /// What.
        path: String,
        /// Why.
        reason: String,
    },
}

/// Where the SDK is: this source checkout's when Sluice runs from one, else the published crate.
fn sdk_dependency() -> String {
    let in_checkout = Path::new(env!("CARGO_MANIFEST_DIR")).join("../sdk/rust");
    match in_checkout.canonicalize() {
        Ok(path) => format!("sluice-sdk = {{ path = {:?} }}", path.display().to_string()),
        Err(_) => format!("sluice-sdk = \"{}\"", env!("CARGO_PKG_VERSION")),
    }
}

/// Creates `parent/name` with a filter crate and returns its path.
pub fn new_plugin(parent: &Path, name: &str) -> Result<PathBuf, ScaffoldError> {
    let valid = name.chars().next().is_some_and(|first| first.is_ascii_lowercase())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !valid {
        return Err(ScaffoldError::BadName(name.to_owned()));
    }
    let dir = parent.join(name);
    if dir.exists() {
        return Err(ScaffoldError::Exists(dir.display().to_string()));
    }
    let type_name: String = name
        .split('-')
        .map(|word| {
            let mut chars = word.chars();
            chars.next().map(|first| first.to_ascii_uppercase().to_string() + chars.as_str()).unwrap_or_default()
        })
        .collect();
    let files = [
        (
            "Cargo.toml",
            format!(
                r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"

[lib]
crate-type = ["cdylib", "rlib"]

[dependencies]
{sdk}
serde = {{ version = "1", features = ["derive"] }}

[profile.release]
opt-level = "s"
lto = true
strip = "debuginfo"
panic = "abort"

# A filter builds on its own, not as part of an enclosing workspace.
[workspace]
"#,
                sdk = sdk_dependency()
            ),
        ),
        (
            "src/lib.rs",
            format!(
                r#"//! {name}: a Sluice filter.

use serde::Deserialize;
use sluice_sdk::{{Decision, Filter, LocalResponse, Request, Response, export_filter}};

/// The route's config for this filter.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {{
    /// Requests without this header are refused.
    pub required_header: Option<String>,
    /// Added to every response.
    pub response_header: String,
}}

impl Default for Config {{
    fn default() -> Self {{
        Self {{ required_header: None, response_header: "{name}".into() }}
    }}
}}

pub struct {type_name} {{
    config: Config,
}}

impl Filter for {type_name} {{
    type Config = Config;

    fn new(config: Config) -> Result<Self, String> {{
        Ok(Self {{ config }})
    }}

    fn on_request(&mut self, request: &Request) -> Decision {{
        match &self.config.required_header {{
            Some(name) if request.header(name).is_none() => {{
                Decision::Respond(LocalResponse::new(400).body(format!("missing header {{name}}\n")))
            }}
            _ => Decision::Continue,
        }}
    }}

    fn on_response(&mut self, _request: &Request, response: &Response) -> Decision {{
        let _ = response.set_header("x-filtered-by", &self.config.response_header);
        Decision::Continue
    }}
}}

export_filter!({type_name});
"#
            ),
        ),
        (".gitignore", "/target\n".to_owned()),
    ];
    for (relative, contents) in files {
        let path = dir.join(relative);
        let io = |err: std::io::Error| ScaffoldError::Io { path: path.display().to_string(), reason: err.to_string() };
        if let Some(folder) = path.parent() {
            std::fs::create_dir_all(folder).map_err(io)?;
        }
        std::fs::write(&path, contents).map_err(io)?;
    }
    Ok(dir)
}
