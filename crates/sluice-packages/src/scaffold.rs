//! `sluice plugin new [--lang rust|js|go] NAME`: a filter, in Rust, JavaScript or Go, that builds
//! and runs as it is.

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

/// The SDK at `relative` (`sdk/rust`, `sdk/js`, `sdk/go`) in this source checkout, when Sluice
/// runs from one.
fn sdk_in_checkout(relative: &str) -> Option<PathBuf> {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").join(relative).canonicalize().ok()
}

/// Where the SDK is: this source checkout's when Sluice runs from one, else the published crate.
fn sdk_dependency() -> String {
    match sdk_in_checkout("sdk/rust") {
        Some(path) => format!("sluice-sdk = {{ path = {:?} }}", path.display().to_string()),
        None => format!("sluice-sdk = \"{}\"", env!("CARGO_PKG_VERSION")),
    }
}

/// The language a new filter is written in (`--lang rust|js|go`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Language {
    /// Rust, on the `sluice-sdk` crate.
    #[default]
    Rust,
    /// JavaScript, on the `@sluice/filter-sdk` package (built with jco).
    #[value(name = "js")]
    JavaScript,
    /// Go, on the `sluice.dev/sluice` module (built for wasip1).
    Go,
}

/// Where the JavaScript SDK is: this source checkout's when Sluice runs from one, else the
/// published package.
fn js_sdk_dependency() -> String {
    match sdk_in_checkout("sdk/js") {
        Some(path) => format!("file:{}", path.display()),
        None => env!("CARGO_PKG_VERSION").to_owned(),
    }
}

/// Where the Go SDK is: this source checkout's when Sluice runs from one (a go.mod `replace`
/// points there, as Go modules cannot be fetched offline), else none.
fn go_sdk_replace() -> String {
    sdk_in_checkout("sdk/go")
        .map(|path| format!("\nreplace sluice.dev/sluice => {}\n", path.display()))
        .unwrap_or_default()
}

/// Creates `parent/name` with a Rust filter crate and returns its path.
pub fn new_plugin(parent: &Path, name: &str) -> Result<PathBuf, ScaffoldError> {
    new_plugin_in(parent, name, Language::Rust)
}

/// Creates `parent/name` with a filter in `language` and returns its path.
pub fn new_plugin_in(parent: &Path, name: &str, language: Language) -> Result<PathBuf, ScaffoldError> {
    let valid = name.chars().next().is_some_and(|first| first.is_ascii_lowercase())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !valid {
        return Err(ScaffoldError::BadName(name.to_owned()));
    }
    let dir = parent.join(name);
    if dir.exists() {
        return Err(ScaffoldError::Exists(dir.display().to_string()));
    }
    match language {
        Language::JavaScript => return write_files(&dir, javascript_files(name)),
        Language::Go => return write_files(&dir, go_files(name)),
        Language::Rust => {}
    }
    let type_name = type_name(name);
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
    write_files(&dir, files.to_vec())
}

fn write_files(dir: &Path, files: Vec<(&str, String)>) -> Result<PathBuf, ScaffoldError> {
    for (relative, contents) in files {
        let path = dir.join(relative);
        let io = |err: std::io::Error| ScaffoldError::Io { path: path.display().to_string(), reason: err.to_string() };
        if let Some(folder) = path.parent() {
            std::fs::create_dir_all(folder).map_err(io)?;
        }
        std::fs::write(&path, contents).map_err(io)?;
    }
    Ok(dir.to_path_buf())
}

/// The filter's type (Rust, Go) or class (JavaScript) name: `rate-gate` is `RateGate`.
fn type_name(name: &str) -> String {
    name.split('-')
        .map(|word| {
            let mut chars = word.chars();
            chars.next().map(|first| first.to_ascii_uppercase().to_string() + chars.as_str()).unwrap_or_default()
        })
        .collect()
}

/// A JavaScript filter doing what the Rust template does.
fn javascript_files(name: &str) -> Vec<(&'static str, String)> {
    let class_name = type_name(name);
    vec![
        (
            "package.json",
            format!(
                r#"{{
  "name": "{name}",
  "version": "0.1.0",
  "type": "module",
  "main": "src/filter.js",
  "private": true,
  "scripts": {{
    "build": "sluice-js-build"
  }},
  "dependencies": {{
    "@sluice/filter-sdk": "{sdk}"
  }}
}}
"#,
                sdk = js_sdk_dependency()
            ),
        ),
        (
            "src/filter.js",
            format!(
                r#"// {name}: a Sluice filter.
//
// Config: {{ required_header = "x-api-version", response_header = "{name}" }}

import {{ Decision, defineFilter }} from '@sluice/filter-sdk';

class {class_name} {{
  constructor(config) {{
    // Requests without this header are refused.
    this.requiredHeader = config.required_header;
    // Added to every response.
    this.responseHeader = config.response_header ?? '{name}';
  }}

  onRequest(request) {{
    if (this.requiredHeader && request.header(this.requiredHeader) === undefined) {{
      return Decision.respond(400, {{ body: `missing header ${{this.requiredHeader}}
` }});
    }}
    return Decision.continue();
  }}

  onResponse(request, response) {{
    response.setHeader('x-filtered-by', this.responseHeader);
    return Decision.continue();
  }}
}}

export const filter = defineFilter({class_name});
"#
            ),
        ),
        (".gitignore", "/node_modules\n/dist\n/target\n".to_owned()),
    ]
}

/// A Go filter doing what the Rust template does.
fn go_files(name: &str) -> Vec<(&'static str, String)> {
    let type_name = type_name(name);
    vec![
        (
            "go.mod",
            format!(
                "module example.com/{name}\n\ngo 1.24\n\nrequire sluice.dev/sluice v0.1.0\n{replace}",
                replace = go_sdk_replace()
            ),
        ),
        (
            "main.go",
            format!(
                r#"// {name}: a Sluice filter.
//
// Config: {{ required_header = "x-api-version", response_header = "{name}" }}
package main

import "sluice.dev/sluice"

// Config is the route's config for this filter.
type Config struct {{
	// Requests without this header are refused.
	RequiredHeader string `json:"required_header"`
	// Added to every response.
	ResponseHeader string `json:"response_header"`
}}

// {type_name} is the filter; one per instance, made from the route's config.
type {type_name} struct {{
	config Config
}}

func (f *{type_name}) OnRequest(req *sluice.Request) sluice.Decision {{
	if f.config.RequiredHeader != "" {{
		if _, present := req.Header(f.config.RequiredHeader); !present {{
			return sluice.Respond(sluice.NewResponse(400).WithText("missing header " + f.config.RequiredHeader + "\n"))
		}}
	}}
	return sluice.Continue()
}}

func (f *{type_name}) OnResponse(req *sluice.Request, resp *sluice.Response) sluice.Decision {{
	_ = resp.SetHeader("x-filtered-by", f.config.ResponseHeader)
	return sluice.Continue()
}}

func init() {{
	sluice.Register(func(config Config) (any, error) {{
		if config.ResponseHeader == "" {{
			config.ResponseHeader = "{name}"
		}}
		return &{type_name}{{config: config}}, nil
	}})
}}

// main is not called: the host calls the filter's phases.
func main() {{}}
"#
            ),
        ),
        (".gitignore", "/target\n".to_owned()),
    ]
}
