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
    /// JavaScript, on the `@sluice/filter-sdk` package (built with componentize-js).
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
    write_files(&dir, instantiate(language, name))
}

/// A template file: its path in a new filter and its text as it stands in `templates/`.
type TemplateFile = (&'static str, &'static str);

/// The templates, real projects under `templates/` (built and tested there as they are) named
/// `filter-template` and depending on this checkout's SDKs by relative path.
const RUST_TEMPLATE: &[TemplateFile] = &[
    ("Cargo.toml", include_str!("../templates/rust/Cargo.toml")),
    ("src/lib.rs", include_str!("../templates/rust/src/lib.rs")),
    (".gitignore", include_str!("../templates/rust/.gitignore")),
];
const JS_TEMPLATE: &[TemplateFile] = &[
    ("package.json", include_str!("../templates/js/package.json")),
    ("src/filter.js", include_str!("../templates/js/src/filter.js")),
    (".gitignore", include_str!("../templates/js/.gitignore")),
];
const GO_TEMPLATE: &[TemplateFile] = &[
    ("go.mod", include_str!("../templates/go/go.mod")),
    ("main.go", include_str!("../templates/go/main.go")),
    (".gitignore", include_str!("../templates/go/.gitignore")),
];

/// The template's name, and its type (Rust, Go) or class (JavaScript) name.
const TEMPLATE_NAME: &str = "filter-template";
const TEMPLATE_TYPE_NAME: &str = "FilterTemplate";

/// How each template names its SDK, as it stands in `templates/`.
const RUST_TEMPLATE_SDK: &str = r#"sluice-sdk = { path = "../../../../sdk/rust" }"#;
const JS_TEMPLATE_SDK: &str = r#""file:../../../../sdk/js""#;
const GO_TEMPLATE_SDK: &str = "\nreplace sluice.dev/sluice => ../../../../sdk/go\n";

/// The files of a new filter `name` in `language`: the template with its name, its type name and
/// where its SDK is.
fn instantiate(language: Language, name: &str) -> Vec<(&'static str, String)> {
    let (template, sdk_in_template, sdk) = match language {
        Language::Rust => (RUST_TEMPLATE, RUST_TEMPLATE_SDK, sdk_dependency()),
        Language::JavaScript => (JS_TEMPLATE, JS_TEMPLATE_SDK, format!("{:?}", js_sdk_dependency())),
        Language::Go => (GO_TEMPLATE, GO_TEMPLATE_SDK, go_sdk_replace()),
    };
    template
        .iter()
        .map(|(path, text)| {
            let text = text.replace(sdk_in_template, &sdk).replace(TEMPLATE_NAME, name);
            (*path, text.replace(TEMPLATE_TYPE_NAME, &type_name(name)))
        })
        .collect()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_template_names_its_sdk_where_the_scaffold_replaces_it() {
        for (language, template, sdk) in [
            (Language::Rust, RUST_TEMPLATE, RUST_TEMPLATE_SDK),
            (Language::JavaScript, JS_TEMPLATE, JS_TEMPLATE_SDK),
            (Language::Go, GO_TEMPLATE, GO_TEMPLATE_SDK),
        ] {
            assert!(template.iter().any(|(_, text)| text.contains(sdk)), "{language:?} template names its SDK");
            for (path, text) in instantiate(language, "rate-gate") {
                assert!(!text.contains(TEMPLATE_NAME) && !text.contains(TEMPLATE_TYPE_NAME), "{path}: {text}");
                assert!(!text.contains("../../../../sdk"), "{path} points at the checkout's SDK by absolute path");
            }
        }
        let rust = instantiate(Language::Rust, "rate-gate");
        assert!(rust.iter().any(|(path, text)| *path == "src/lib.rs" && text.contains("pub struct RateGate")));
    }
}
