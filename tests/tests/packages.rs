//! Plugin packages against a real registry (Debian's `docker-registry`, started on loopback by
//! each test): pack, push, pull, pinning by digest, and starting offline from the local store.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use sluice::config::Snapshot;
use sluice::packages::BuildOptions;
use sluice::packages::oci::{self, PackageError, Store};
use sluice_tests::{Origin, TestProxy, get, repo_root};
use tokio::io::{AsyncBufReadExt, BufReader};

/// A registry on a free loopback port, storing into its own folder; killed on drop.
struct Registry {
    address: String,
    _process: tokio::process::Child,
}

/// A fresh folder under target/ for one test.
fn scratch(name: &str) -> PathBuf {
    let dir = repo_root().join("target/test-packages").join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch folder");
    dir
}

impl Registry {
    async fn start(dir: &Path) -> Self {
        // The registry takes a fixed address: ask the kernel for a free port, then hand it over.
        let port = std::net::TcpListener::bind("127.0.0.1:0").expect("free port").local_addr().expect("address").port();
        let config = dir.join("registry.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
                dir.join("data").display()
            ),
        )
        .expect("registry config");
        let mut process = tokio::process::Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("docker-registry is installed (tests/run.sh installs it: apt-get install docker-registry)");
        // Ready once it says it listens.
        let mut lines = BufReader::new(process.stderr.take().expect("stderr")).lines();
        while let Some(line) = lines.next_line().await.expect("registry log") {
            if line.contains("listening on") {
                tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
                return Self { address: format!("127.0.0.1:{port}"), _process: process };
            }
        }
        panic!("docker-registry exited before listening");
    }
}

fn pack_hello() -> oci::Package {
    let options = BuildOptions { target_dir: Some(repo_root().join("target/plugins")), quiet: true };
    oci::pack(&repo_root().join("examples/hello-filter"), &options).expect("pack hello-filter")
}

#[tokio::test]
async fn packages_round_trip_through_a_registry() {
    let dir = scratch("round-trip");
    let registry = Registry::start(&dir).await;
    let package = pack_hello();
    assert_eq!(package.info.name, "hello-filter");
    assert_eq!(package.info.world, "sluice:filter/plugin@0.1.0");
    // The layout `pack` writes reads back to the same bytes.
    package.write_layout(&dir.join("layout"), "0.1.0").expect("write layout");
    let from_disk = oci::Package::read_layout(&dir.join("layout")).expect("read layout");
    assert_eq!(from_disk.digest(), package.digest());
    // A blob changed on disk is caught by its digest.
    let tampered = dir.join("tampered");
    package.write_layout(&tampered, "0.1.0").expect("write layout");
    let layer = oci::digest(&package.component);
    std::fs::write(tampered.join("blobs/sha256").join(layer.trim_start_matches("sha256:")), b"\0asm evil")
        .expect("tamper");
    assert!(matches!(oci::Package::read_layout(&tampered), Err(PackageError::DigestMismatch { .. })));

    let reference =
        oci::parse_reference(&format!("oci://{}/filters/hello:0.1.0", registry.address)).expect("reference");
    let pushed = oci::push(&package, &reference).await.expect("push");
    assert_eq!(pushed, package.digest());
    let pulled = oci::pull(&reference).await.expect("pull");
    assert_eq!(pulled.digest(), package.digest());
    assert_eq!(pulled.component, package.component);
    assert_eq!(pulled.info, package.info);
    // The manifest is a CNCF Wasm artifact.
    let manifest: serde_json::Value = serde_json::from_slice(&pulled.manifest).expect("json");
    assert_eq!(manifest["config"]["mediaType"], "application/vnd.wasm.config.v0+json");
    assert_eq!(manifest["layers"][0]["mediaType"], "application/wasm");
    assert_eq!(manifest["annotations"]["org.opencontainers.image.title"], "hello-filter");

    let pinned =
        oci::parse_reference(&format!("{}/filters/hello:0.1.0@{}", registry.address, package.digest())).expect("ref");
    assert_eq!(oci::pull(&pinned).await.expect("pinned pull").digest(), package.digest());
}

fn config(origin: &Origin, store: &Path, source: &str) -> String {
    format!(
        "[server]\nwatch = false\npackage_store = \"{store}\"\n[[listener]]\nbind = \"127.0.0.1:0\"\n\
         [upstream.app]\nservers = [{{ addr = \"{origin}\" }}]\n[plugin.hello]\nsource = \"{source}\"\n\
         [[route]]\nupstream = \"app\"\nfilters = [{{ plugin = \"hello\" }}]\n",
        store = store.display(),
        origin = origin.addr,
    )
}

#[tokio::test]
async fn routes_run_pinned_packages_and_start_offline_from_the_store() {
    let dir = scratch("pinned");
    let registry = Registry::start(&dir).await;
    let package = pack_hello();
    let reference = oci::parse_reference(&format!("{}/filters/hello:0.1.0", registry.address)).expect("reference");
    oci::push(&package, &reference).await.expect("push");
    let source = format!("oci://{}/filters/hello:0.1.0@{}", registry.address, package.digest());
    let origin = Origin::echo("app").await;
    let store = dir.join("store");

    let proxy = TestProxy::start(&config(&origin, &store, &source)).await;
    let response = get(&proxy, "app.test", "/").await;
    assert_eq!(response.echo().header("x-hello").as_deref(), Some("from a Wasm filter"));
    assert!(Store::at(store.clone()).get(&package.digest()).is_some(), "the pull was stored");

    // With the registry gone, the pinned package comes from the store.
    drop(registry);
    let offline = TestProxy::start(&config(&origin, &store, &source)).await;
    assert_eq!(get(&offline, "app.test", "/").await.echo().header("x-hello").as_deref(), Some("from a Wasm filter"));

    // A tag with nothing stored and no registry: the error names the source.
    let missing = format!("oci://{}/filters/other:1.0.0", reference.resolve_registry());
    let error = Snapshot::from_toml(&config(&origin, &store, &missing)).expect_err("nothing to load");
    assert_eq!(error.key, "plugin.hello.source");
    assert!(error.message.contains("registry"), "{error}");
}

#[tokio::test]
async fn a_digest_that_does_not_match_is_refused() {
    let dir = scratch("mismatch");
    let registry = Registry::start(&dir).await;
    let package = pack_hello();
    let reference = oci::parse_reference(&format!("{}/filters/hello:0.1.0", registry.address)).expect("reference");
    oci::push(&package, &reference).await.expect("push");
    let wrong = format!("sha256:{}", "ab".repeat(32));
    let pinned = oci::parse_reference(&format!("{}/filters/hello:0.1.0@{wrong}", registry.address)).expect("reference");
    match oci::pull(&pinned).await {
        // Registries answer a digest reference with the blob of that digest, or not at all.
        Err(PackageError::DigestMismatch { .. } | PackageError::Registry(_)) => {}
        other => panic!("a wrong pin must fail, got {:?}", other.map(|package| package.digest())),
    }
    let origin = Origin::echo("app").await;
    let source = format!("oci://{}/filters/hello:0.1.0@{wrong}", registry.address);
    let error = Snapshot::from_toml(&config(&origin, &dir.join("store"), &source)).expect_err("refused");
    assert_eq!(error.key, "plugin.hello.source");
}

#[tokio::test]
async fn the_cli_packs_pushes_and_inspects() {
    let dir = scratch("cli");
    let registry = Registry::start(&dir).await;
    // The binary tests/run.sh builds before the tests.
    let sluice = |args: &[&str]| {
        let output = std::process::Command::new(repo_root().join("target/debug/sluice"))
            .args(args)
            .env("SLUICE_PACKAGE_STORE", dir.join("store"))
            .env("SLUICE_PLUGIN_TARGET_DIR", repo_root().join("target/plugins"))
            .output()
            .expect("run sluice");
        assert!(output.status.success(), "sluice {args:?}: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8(output.stdout).expect("text").trim().to_owned()
    };
    let layout = dir.join("package");
    let hello = repo_root().join("examples/hello-filter");
    let packed = sluice(&["plugin", "pack", hello.to_str().expect("path"), "-o", layout.to_str().expect("path")]);
    let reference = format!("{}/filters/hello:0.1.0", registry.address);
    let pushed = sluice(&["plugin", "push", layout.to_str().expect("path"), &reference]);
    assert_eq!(pushed, packed, "the registry serves the package under the digest pack printed");
    let pulled = sluice(&["plugin", "pull", &reference]);
    assert_eq!(pulled, packed);
    let inspected: serde_json::Value = serde_json::from_str(&sluice(&["plugin", "inspect", &reference])).expect("json");
    assert_eq!(inspected["name"], "hello-filter");
    assert_eq!(inspected["digest"], packed.as_str());
    assert_eq!(inspected["world"], "sluice:filter/plugin@0.1.0");
    assert!(
        inspected["capabilities"].as_array().is_some_and(|list| list.iter().any(|cap| cap == "log")),
        "{inspected}"
    );
}
