//! Plugin packages as OCI artifacts, in the CNCF Wasm artifact layout: an image manifest whose
//! config blob is `application/vnd.wasm.config.v0+json` and whose one layer is the component
//! (`application/wasm`). Sluice's own description of the plugin (name, version, WIT world,
//! capabilities, config schema) travels in the manifest's annotations, so `inspect` can show it
//! without downloading the component.
//!
//! Packages are written and stored as OCI image layouts (`oci-layout`, `index.json`,
//! `blobs/sha256/...`): `sluice plugin pack` writes one, and the local store keeps every pulled
//! package as one under its manifest digest, which is what lets Sluice start offline from
//! packages it pulled before.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::manifest::{OCI_IMAGE_MEDIA_TYPE, OciDescriptor, OciImageManifest};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

mod upload;

use crate::build::{BuildOptions, build_plugin, go_manifest, js_manifest};
use sluice_runtime::{Plugin, Runtime, WIT_PACKAGE, WIT_VERSION};
use upload::BlobUploader;

/// The config blob's media type (CNCF Wasm OCI artifact layout).
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.wasm.config.v0+json";
/// The component layer's media type.
pub const LAYER_MEDIA_TYPE: &str = "application/wasm";
/// The manifest annotation holding [`PackageInfo`] as JSON.
pub const INFO_ANNOTATION: &str = "dev.sluice.plugin";

/// Why a package operation failed.
#[derive(Debug, thiserror::Error)]
pub enum PackageError {
    /// Reading or writing files.
    #[error("{0}")]
    Io(String),
    /// The plugin did not build or is not a valid component.
    #[error("{0}")]
    Build(String),
    /// A malformed reference, layout or manifest.
    #[error("{0}")]
    Invalid(String),
    /// Bytes whose digest is not the one asked for.
    #[error("digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch {
        /// The pinned digest.
        expected: String,
        /// What arrived.
        actual: String,
    },
    /// The registry refused or could not be reached.
    #[error("registry: {0}")]
    Registry(String),
}

fn io(context: impl std::fmt::Display) -> impl FnOnce(std::io::Error) -> PackageError {
    move |err| PackageError::Io(format!("{context}: {err}"))
}

/// What a package says about its plugin.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PackageInfo {
    /// The plugin's name.
    pub name: String,
    /// Its version.
    pub version: String,
    /// What it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The WIT world it was built for, such as `sluice:filter/plugin@0.1.3`.
    pub world: String,
    /// The host interfaces it imports (`log`, `kv`, `callout`, ...): what a tenant must grant.
    pub capabilities: Vec<String>,
    /// A JSON Schema for its config, when the crate ships one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_schema: Option<serde_json::Value>,
}

/// A package in memory: its description, component, and the exact manifest and config bytes
/// (whose digests identify it).
#[derive(Debug, Clone)]
pub struct Package {
    /// The plugin's description.
    pub info: PackageInfo,
    /// The component.
    pub component: Vec<u8>,
    /// The config blob.
    pub config: Vec<u8>,
    /// The image manifest, as stored and pushed.
    pub manifest: Vec<u8>,
}

/// `sha256:<hex>` of `bytes`.
pub fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

impl Package {
    /// Builds the config blob and manifest for `component`.
    pub fn new(info: PackageInfo, component: Vec<u8>) -> Result<Self, PackageError> {
        let layer_digest = digest(&component);
        let config = serde_json::to_vec(&serde_json::json!({
            "architecture": "wasm",
            "os": "wasip2",
            "layerDigests": [layer_digest],
            "component": { "target": info.world, "imports": info.capabilities },
        }))
        .map_err(|err| PackageError::Invalid(err.to_string()))?;
        let mut annotations = BTreeMap::new();
        annotations.insert("org.opencontainers.image.title".to_owned(), info.name.clone());
        annotations.insert("org.opencontainers.image.version".to_owned(), info.version.clone());
        if let Some(description) = &info.description {
            annotations.insert("org.opencontainers.image.description".to_owned(), description.clone());
        }
        annotations.insert(
            INFO_ANNOTATION.to_owned(),
            serde_json::to_string(&info).map_err(|err| PackageError::Invalid(err.to_string()))?,
        );
        let manifest = OciImageManifest {
            schema_version: 2,
            media_type: Some(OCI_IMAGE_MEDIA_TYPE.to_owned()),
            artifact_type: None,
            config: OciDescriptor {
                media_type: CONFIG_MEDIA_TYPE.to_owned(),
                digest: digest(&config),
                size: config.len() as i64,
                ..OciDescriptor::default()
            },
            layers: vec![OciDescriptor {
                media_type: LAYER_MEDIA_TYPE.to_owned(),
                digest: layer_digest,
                size: component.len() as i64,
                ..OciDescriptor::default()
            }],
            subject: None,
            annotations: Some(annotations),
        };
        let manifest = serde_json::to_vec(&manifest).map_err(|err| PackageError::Invalid(err.to_string()))?;
        Ok(Self { info, component, config, manifest })
    }

    /// The manifest digest: the package's identity, what `@sha256:...` pins.
    pub fn digest(&self) -> String {
        digest(&self.manifest)
    }

    /// Reads a package from its manifest and blobs, checking every digest.
    fn assemble(
        manifest: Vec<u8>,
        mut blob: impl FnMut(&OciDescriptor) -> Result<Vec<u8>, PackageError>,
    ) -> Result<Self, PackageError> {
        let parsed: OciImageManifest = serde_json::from_slice(&manifest)
            .map_err(|err| PackageError::Invalid(format!("not an image manifest: {err}")))?;
        if parsed.config.media_type != CONFIG_MEDIA_TYPE {
            return Err(PackageError::Invalid(format!(
                "not a Wasm artifact: config media type {} (expected {CONFIG_MEDIA_TYPE})",
                parsed.config.media_type
            )));
        }
        let [layer] = parsed.layers.as_slice() else {
            return Err(PackageError::Invalid(format!("expected one layer, found {}", parsed.layers.len())));
        };
        if layer.media_type != LAYER_MEDIA_TYPE {
            return Err(PackageError::Invalid(format!(
                "layer media type {} (expected {LAYER_MEDIA_TYPE})",
                layer.media_type
            )));
        }
        let info_json =
            parsed.annotations.as_ref().and_then(|annotations| annotations.get(INFO_ANNOTATION)).ok_or_else(|| {
                PackageError::Invalid(format!("no {INFO_ANNOTATION} annotation: not a Sluice plugin package"))
            })?;
        let info: PackageInfo = serde_json::from_str(info_json)
            .map_err(|err| PackageError::Invalid(format!("{INFO_ANNOTATION}: {err}")))?;
        let checked = |descriptor: &OciDescriptor, bytes: Vec<u8>| {
            let actual = digest(&bytes);
            if actual == descriptor.digest {
                Ok(bytes)
            } else {
                Err(PackageError::DigestMismatch { expected: descriptor.digest.clone(), actual })
            }
        };
        let config = checked(&parsed.config, blob(&parsed.config)?)?;
        let component = checked(layer, blob(layer)?)?;
        Ok(Self { info, component, config, manifest })
    }

    /// Writes the package as an OCI image layout in `dir`, tagged `tag`.
    pub fn write_layout(&self, dir: &Path, tag: &str) -> Result<(), PackageError> {
        let blobs = dir.join("blobs/sha256");
        std::fs::create_dir_all(&blobs).map_err(io(blobs.display()))?;
        for bytes in [&self.config, &self.component, &self.manifest] {
            let hex = digest(bytes).trim_start_matches("sha256:").to_owned();
            std::fs::write(blobs.join(hex), bytes).map_err(io(dir.display()))?;
        }
        let index = serde_json::json!({
            "schemaVersion": 2,
            "manifests": [{
                "mediaType": OCI_IMAGE_MEDIA_TYPE,
                "digest": self.digest(),
                "size": self.manifest.len(),
                "annotations": { "org.opencontainers.image.ref.name": tag },
            }],
        });
        std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).map_err(io(dir.display()))?;
        std::fs::write(dir.join("index.json"), index.to_string()).map_err(io(dir.display()))
    }

    /// Reads the package an OCI image layout holds (its first manifest).
    pub fn read_layout(dir: &Path) -> Result<Self, PackageError> {
        let index: serde_json::Value = serde_json::from_slice(
            &std::fs::read(dir.join("index.json")).map_err(io(format!("{} is not a package layout", dir.display())))?,
        )
        .map_err(|err| PackageError::Invalid(format!("{}/index.json: {err}", dir.display())))?;
        let manifest_digest = index["manifests"][0]["digest"]
            .as_str()
            .ok_or_else(|| PackageError::Invalid(format!("{}/index.json lists no manifest", dir.display())))?;
        let read_blob = |digest: &str| -> Result<Vec<u8>, PackageError> {
            let hex = digest
                .strip_prefix("sha256:")
                .ok_or_else(|| PackageError::Invalid(format!("unsupported digest {digest}")))?;
            std::fs::read(dir.join("blobs/sha256").join(hex)).map_err(io(format!("blob {digest}")))
        };
        let manifest = read_blob(manifest_digest)?;
        let actual = digest(&manifest);
        if actual != manifest_digest {
            return Err(PackageError::DigestMismatch { expected: manifest_digest.to_owned(), actual });
        }
        Self::assemble(manifest, |descriptor| read_blob(&descriptor.digest))
    }
}

/// `[package.metadata.sluice]` of a plugin crate.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct CrateMetadata {
    /// A JSON Schema file for the plugin's config, relative to the crate.
    config_schema: Option<PathBuf>,
}

/// A `[package]` field written as `field.workspace = true`, from the nearest workspace above.
fn workspace_field(crate_dir: &Path, package: Option<&toml::Table>, name: &str) -> Option<String> {
    let inherits = package?.get(name)?.get("workspace")?.as_bool()?;
    if !inherits {
        return None;
    }
    crate_dir.canonicalize().ok()?.ancestors().skip(1).find_map(|folder| {
        let text = std::fs::read_to_string(folder.join("Cargo.toml")).ok()?;
        let root: toml::Table = toml::from_str(&text).ok()?;
        root.get("workspace")?.get("package")?.get(name)?.as_str().map(str::to_owned)
    })
}

/// The JSON Schema a plugin crate names in `[package.metadata.sluice] config-schema`, if any.
pub fn crate_config_schema(crate_dir: &Path) -> Result<Option<serde_json::Value>, PackageError> {
    // A JavaScript filter names its schema in package.json: `"sluice": { "configSchema": "..." }`.
    // A Go filter names it in sluice.toml: `config-schema = "..."`.
    let schema_path = match (js_manifest(crate_dir), go_manifest(crate_dir)) {
        (Some(manifest), _) => manifest.map_err(PackageError::Invalid)?.config_schema.map(PathBuf::from),
        (None, Some(manifest)) => manifest.map_err(PackageError::Invalid)?.config_schema.map(PathBuf::from),
        (None, None) => {
            let manifest_path = crate_dir.join("Cargo.toml");
            let text = std::fs::read_to_string(&manifest_path).map_err(io(manifest_path.display()))?;
            let cargo: toml::Table = toml::from_str(&text)
                .map_err(|err| PackageError::Invalid(format!("{}: {err}", manifest_path.display())))?;
            let metadata: CrateMetadata = cargo
                .get("package")
                .and_then(|package| package.get("metadata"))
                .and_then(|metadata| metadata.get("sluice"))
                .map(|sluice| sluice.clone().try_into())
                .transpose()
                .map_err(|err| {
                    PackageError::Invalid(format!("{}: [package.metadata.sluice]: {err}", manifest_path.display()))
                })?
                .unwrap_or_default();
            metadata.config_schema
        }
    };
    let Some(path) = schema_path else { return Ok(None) };
    let path = crate_dir.join(path);
    let text = std::fs::read_to_string(&path).map_err(io(path.display()))?;
    serde_json::from_str(&text).map(Some).map_err(|err| PackageError::Invalid(format!("{}: {err}", path.display())))
}

/// Builds the plugin crate at `crate_dir` and describes it as a package.
pub fn pack(runtime: &Runtime, crate_dir: &Path, options: &BuildOptions) -> Result<Package, PackageError> {
    let (name, version, description) = package_identity(crate_dir)?;
    let config_schema = crate_config_schema(crate_dir)?;
    let component_path = build_plugin(crate_dir, options).map_err(|err| PackageError::Build(err.to_string()))?;
    let component = std::fs::read(&component_path).map_err(io(component_path.display()))?;
    let plugin = Plugin::load(runtime, &name, &component).map_err(|err| PackageError::Build(err.to_string()))?;
    let info = PackageInfo {
        name,
        version,
        description,
        world: format!("{WIT_PACKAGE}/plugin@{WIT_VERSION}"),
        capabilities: plugin.capabilities(),
        config_schema,
    };
    Package::new(info, component)
}

/// A filter's name, version and description: from Cargo.toml's `[package]` (workspace values
/// followed), from a JavaScript filter's package.json, or from a Go filter's go.mod and
/// sluice.toml.
fn package_identity(crate_dir: &Path) -> Result<(String, String, Option<String>), PackageError> {
    if let Some(manifest) = go_manifest(crate_dir) {
        let manifest = manifest.map_err(PackageError::Invalid)?;
        let version = manifest.version.ok_or_else(|| {
            PackageError::Invalid(format!(
                "{} has no version (a Go filter's package metadata lives there: version = \"0.1.0\")",
                crate_dir.join("sluice.toml").display()
            ))
        })?;
        return Ok((manifest.name, version, manifest.description));
    }
    if let Some(manifest) = js_manifest(crate_dir) {
        let manifest = manifest.map_err(PackageError::Invalid)?;
        let version = manifest.version.ok_or_else(|| {
            PackageError::Invalid(format!("{} has no version", crate_dir.join("package.json").display()))
        })?;
        return Ok((manifest.name, version, manifest.description));
    }
    let manifest_path = crate_dir.join("Cargo.toml");
    let text = std::fs::read_to_string(&manifest_path).map_err(io(manifest_path.display()))?;
    let cargo: toml::Table =
        toml::from_str(&text).map_err(|err| PackageError::Invalid(format!("{}: {err}", manifest_path.display())))?;
    let package = cargo.get("package").and_then(toml::Value::as_table);
    let field =
        |name: &str| package.and_then(|package| package.get(name)).and_then(toml::Value::as_str).map(str::to_owned);
    let name = field("name")
        .ok_or_else(|| PackageError::Invalid(format!("{} has no package name", manifest_path.display())))?;
    let version = field("version")
        .or_else(|| workspace_field(crate_dir, package, "version"))
        .ok_or_else(|| PackageError::Invalid(format!("{} has no package version", manifest_path.display())))?;
    let description = field("description").or_else(|| workspace_field(crate_dir, package, "description"));
    Ok((name, version, description))
}

/// A registry reference with Sluice's rules on top: `oci://` is optional, and a digest pin
/// (`@sha256:...`) is kept.
pub fn parse_reference(text: &str) -> Result<Reference, PackageError> {
    let text = text.strip_prefix("oci://").unwrap_or(text);
    text.parse::<Reference>().map_err(|err| PackageError::Invalid(format!("{text:?} is not an OCI reference: {err}")))
}

/// Whether `registry` (`host[:port]`) is spoken to over plain HTTP: registries on loopback (as
/// Docker allows) and those listed in `SLUICE_INSECURE_REGISTRIES` (comma-separated
/// `host:port`); HTTPS for the rest.
fn plain_http(registry: &str) -> bool {
    let host = match registry.rsplit_once(':') {
        Some((host, port)) if !port.contains(']') => host,
        _ => registry,
    };
    matches!(host, "localhost" | "127.0.0.1" | "[::1]")
        || std::env::var("SLUICE_INSECURE_REGISTRIES")
            .is_ok_and(|list| list.split(',').any(|insecure| insecure.trim() == registry))
}

/// A registry client for `reference`'s registry.
fn client_for(reference: &Reference) -> Client {
    let protocol = if plain_http(reference.resolve_registry()) { ClientProtocol::Http } else { ClientProtocol::Https };
    Client::new(ClientConfig { protocol, ..ClientConfig::default() })
}

/// Credentials for `registry`: `SLUICE_REGISTRY_USERNAME` and `SLUICE_REGISTRY_PASSWORD`, else
/// the Docker config (`$DOCKER_CONFIG/config.json` or `~/.docker/config.json`), else anonymous.
pub fn credentials(registry: &str) -> RegistryAuth {
    if let (Ok(user), Ok(password)) =
        (std::env::var("SLUICE_REGISTRY_USERNAME"), std::env::var("SLUICE_REGISTRY_PASSWORD"))
    {
        return RegistryAuth::Basic(user, password);
    }
    let config = std::env::var_os("DOCKER_CONFIG")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".docker")))
        .map(|dir| dir.join("config.json"));
    let auth = config
        .and_then(|path| std::fs::read(path).ok())
        .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
        .and_then(|json| json["auths"][registry]["auth"].as_str().map(str::to_owned))
        .and_then(|encoded| {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD.decode(encoded).ok()
        })
        .and_then(|decoded| String::from_utf8(decoded).ok())
        .and_then(|pair| pair.split_once(':').map(|(user, password)| (user.to_owned(), password.to_owned())));
    match auth {
        Some((user, password)) => RegistryAuth::Basic(user, password),
        None => RegistryAuth::Anonymous,
    }
}

/// A registry error with its causes, `outer: inner: innermost`: "error sending request" says
/// little without the "Connection refused" under it.
fn registry_error(err: impl std::error::Error) -> PackageError {
    let mut message = err.to_string();
    let mut cause = err.source();
    while let Some(inner) = cause {
        let text = inner.to_string();
        // Some errors repeat their cause in their own message.
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        cause = inner.source();
    }
    PackageError::Registry(message)
}

/// What a transfer reports as it goes: a blob's name, bytes so far, and its size.
pub type Progress<'a> = &'a (dyn Fn(&str, u64, u64) + Sync);

/// Reports nothing.
pub fn quiet(_blob: &str, _done: u64, _total: u64) {}

/// Pushes `package` to `reference`; returns the manifest digest the registry now serves it under.
pub async fn push(package: &Package, reference: &Reference) -> Result<String, PackageError> {
    push_with_progress(package, reference, &quiet).await
}

/// [`push`], reporting bytes as they are sent.
pub async fn push_with_progress(
    package: &Package,
    reference: &Reference,
    progress: Progress<'_>,
) -> Result<String, PackageError> {
    push_in_chunks(package, reference, upload::CHUNK_BYTES, progress).await
}

/// [`push_with_progress`] sending `chunk_bytes` per request.
pub async fn push_in_chunks(
    package: &Package,
    reference: &Reference,
    chunk_bytes: usize,
    progress: Progress<'_>,
) -> Result<String, PackageError> {
    let client = client_for(reference);
    let registry = reference.resolve_registry();
    let auth = credentials(registry);
    // oci-client negotiates the token (the registry's challenge, the token service); the blobs
    // go up through Sluice's own uploader with it, which reports as chunks are sent.
    let token = client.auth(reference, &auth, RegistryOperation::Push).await.map_err(registry_error)?;
    let credentials = match token {
        Some(token) => RegistryAuth::Bearer(token),
        None => auth,
    };
    let scheme = if plain_http(registry) { "http" } else { "https" };
    let uploader = BlobUploader::new(scheme, registry, reference.repository(), credentials, chunk_bytes)?;
    for (name, blob) in [("config", &package.config), ("component", &package.component)] {
        uploader.upload(name, blob, progress).await?;
    }
    let content_type = http::HeaderValue::from_static(OCI_IMAGE_MEDIA_TYPE);
    client.push_manifest_raw(reference, package.manifest.clone(), content_type).await.map_err(registry_error)?;
    Ok(package.digest())
}

/// Pulls the package at `reference`, checking the digest it is pinned to (if any) and every
/// blob's digest.
pub async fn pull(reference: &Reference) -> Result<Package, PackageError> {
    pull_with_progress(reference, &quiet).await
}

/// [`pull`], reporting bytes as they arrive.
pub async fn pull_with_progress(reference: &Reference, progress: Progress<'_>) -> Result<Package, PackageError> {
    use futures_util::StreamExt;
    let client = client_for(reference);
    let auth = credentials(reference.resolve_registry());
    let (manifest, served_digest) =
        client.pull_manifest_raw(reference, &auth, &[OCI_IMAGE_MEDIA_TYPE]).await.map_err(registry_error)?;
    let actual = digest(&manifest);
    if let Some(pinned) = reference.digest()
        && pinned != actual
    {
        return Err(PackageError::DigestMismatch { expected: pinned.to_owned(), actual });
    }
    if served_digest != actual {
        return Err(PackageError::DigestMismatch { expected: served_digest, actual });
    }
    let parsed: OciImageManifest = serde_json::from_slice(&manifest)
        .map_err(|err| PackageError::Invalid(format!("not an image manifest: {err}")))?;
    let mut blobs = BTreeMap::new();
    let named =
        std::iter::once(("config", &parsed.config)).chain(parsed.layers.iter().map(|layer| ("component", layer)));
    for (name, descriptor) in named {
        let total = u64::try_from(descriptor.size).unwrap_or_default();
        let mut stream = client.pull_blob_stream(reference, descriptor).await.map_err(registry_error)?;
        let mut bytes = Vec::with_capacity(usize::try_from(total).unwrap_or_default());
        progress(name, 0, total);
        while let Some(chunk) = stream.next().await {
            bytes.extend_from_slice(&chunk.map_err(registry_error)?);
            progress(name, bytes.len() as u64, total);
        }
        blobs.insert(descriptor.digest.clone(), bytes);
    }
    Package::assemble(manifest, |descriptor| {
        blobs
            .remove(&descriptor.digest)
            .ok_or_else(|| PackageError::Invalid(format!("blob {} missing", descriptor.digest)))
    })
}

/// The local content-addressed store of pulled packages: one OCI layout per manifest digest,
/// plus the last digest seen for each tag.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

impl Store {
    /// The store at `$SLUICE_PACKAGE_STORE`, else `$XDG_CACHE_HOME/sluice/packages`, else
    /// `~/.cache/sluice/packages`.
    pub fn default_location() -> Self {
        let root = std::env::var_os("SLUICE_PACKAGE_STORE").map(PathBuf::from).unwrap_or_else(|| {
            sluice_runtime::sluice_cache_home().unwrap_or_else(|| std::env::temp_dir().join("sluice")).join("packages")
        });
        Self { root }
    }

    /// A store at `root`.
    pub fn at(root: PathBuf) -> Self {
        Self { root }
    }

    fn package_dir(&self, manifest_digest: &str) -> PathBuf {
        self.root.join(manifest_digest.replace(':', "-"))
    }

    fn tag_file(&self, reference: &Reference) -> PathBuf {
        let name = format!(
            "{}/{}:{}",
            reference.resolve_registry(),
            reference.repository(),
            reference.tag().unwrap_or("latest")
        );
        self.root.join("tags").join(hex::encode(Sha256::digest(name.as_bytes())))
    }

    /// The stored package with this manifest digest.
    pub fn get(&self, manifest_digest: &str) -> Option<Package> {
        Package::read_layout(&self.package_dir(manifest_digest))
            .ok()
            .filter(|package| package.digest() == manifest_digest)
    }

    /// Stores `package`, remembering it as what `reference`'s tag pointed to.
    pub fn put(&self, package: &Package, reference: &Reference) -> Result<PathBuf, PackageError> {
        let dir = self.package_dir(&package.digest());
        let staging = self.root.join(format!(".staging-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&staging);
        package.write_layout(&staging, &package.info.version)?;
        if !dir.exists() {
            std::fs::create_dir_all(&self.root).map_err(io(self.root.display()))?;
            // Whole layouts appear at once: a reader never sees half a package.
            if std::fs::rename(&staging, &dir).is_err() && !dir.exists() {
                return Err(PackageError::Io(format!("cannot store {}", dir.display())));
            }
        }
        let _ = std::fs::remove_dir_all(&staging);
        let tag_file = self.tag_file(reference);
        std::fs::create_dir_all(tag_file.parent().expect("tags folder")).map_err(io(self.root.display()))?;
        std::fs::write(&tag_file, package.digest()).map_err(io(tag_file.display()))?;
        Ok(dir)
    }

    /// The package a tag pointed to when it was last pulled.
    pub fn get_tag(&self, reference: &Reference) -> Option<Package> {
        let digest = std::fs::read_to_string(self.tag_file(reference)).ok()?;
        self.get(digest.trim())
    }
}

/// Resolves `oci://...` to a package: from the store when pinned by a digest it holds, else from
/// the registry (then stored). A tag without a pin is pulled each time, and falls back to the
/// stored copy when the registry cannot be reached.
pub async fn resolve(source: &str, store: &Store) -> Result<Package, PackageError> {
    let reference = parse_reference(source)?;
    if let Some(pinned) = reference.digest()
        && let Some(package) = store.get(pinned)
    {
        return Ok(package);
    }
    match pull(&reference).await {
        Ok(package) => {
            store.put(&package, &reference)?;
            Ok(package)
        }
        Err(error @ PackageError::Registry(_)) if reference.digest().is_none() => {
            let stored = store.get_tag(&reference).ok_or(error)?;
            tracing::warn!(reference = %source, digest = %stored.digest(), "registry unreachable; using the stored package");
            Ok(stored)
        }
        Err(error) => Err(error),
    }
}

/// [`resolve`] for synchronous callers (configuration compiling), on a thread of its own so
/// that it works inside or outside an async runtime.
pub fn resolve_blocking(source: &str, store: &Store) -> Result<Package, PackageError> {
    let (source, store) = (source.to_owned(), store.clone());
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|err| PackageError::Io(format!("cannot start a runtime for the pull: {err}")))?;
        runtime.block_on(resolve(&source, &store))
    })
    .join()
    .unwrap_or_else(|_| Err(PackageError::Io("the pull panicked".into())))
}
