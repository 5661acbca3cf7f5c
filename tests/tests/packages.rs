//! Plugin packages against a real registry (Debian's `docker-registry`, started on loopback by
//! each test): pack, push, pull, pinning by digest, and starting offline from the local store.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use sluice::config::Snapshot;
use sluice_packages::BuildOptions;
use sluice_packages::oci::{self, PackageError, Store};
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
        Self::start_with(dir, "").await
    }

    /// A registry that lets in only `user` with `password` (HTTP basic authentication).
    async fn start_with_user(dir: &Path, user: &str, password: &str) -> Self {
        let hash = bcrypt::hash(password, 4).expect("bcrypt");
        let htpasswd = dir.join("htpasswd");
        std::fs::write(&htpasswd, format!("{user}:{hash}\n")).expect("htpasswd");
        Self::start_with(
            dir,
            &format!("auth:\n  htpasswd:\n    realm: sluice-tests\n    path: {}\n", htpasswd.display()),
        )
        .await
    }

    async fn start_with(dir: &Path, extra_config: &str) -> Self {
        // The registry takes a fixed address: ask the kernel for a free port, then hand it over.
        let port = std::net::TcpListener::bind("127.0.0.1:0").expect("free port").local_addr().expect("address").port();
        let config = dir.join("registry.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n{extra_config}",
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
    oci::pack(&sluice_tests::filter_runtime(), &repo_root().join("examples/hello-filter"), &options)
        .expect("pack hello-filter")
}

#[tokio::test]
async fn packages_round_trip_through_a_registry() {
    let dir = scratch("round-trip");
    let registry = Registry::start(&dir).await;
    let package = pack_hello();
    assert_eq!(package.info.name, "hello-filter");
    assert_eq!(package.info.world, "sluice:filter/plugin@0.1.3");
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

#[tokio::test]
async fn a_push_reports_each_chunk_and_skips_blobs_the_registry_has() {
    let dir = scratch("progress");
    let registry = Registry::start(&dir).await;
    let package = pack_hello();
    let reports = std::sync::Mutex::new(Vec::new());
    let record = |blob: &str, done: u64, total: u64| {
        if blob == "component" {
            reports.lock().unwrap().push((done, total));
        }
    };
    let chunk = 16 << 10;
    let size = package.component.len() as u64;
    let reference = oci::parse_reference(&format!("{}/filters/progress:0.1.0", registry.address)).expect("reference");
    assert_eq!(oci::push_in_chunks(&package, &reference, chunk, &record).await.expect("push"), package.digest());

    // A report as the component starts and one after every chunk, bytes rising to its size.
    let sent: Vec<u64> = std::mem::take(&mut *reports.lock().unwrap()).into_iter().map(|(done, _)| done).collect();
    assert!(size > 2 * chunk as u64, "the component spans several chunks ({size} bytes)");
    assert_eq!(sent.len() as u64, 1 + size.div_ceil(chunk as u64), "{sent:?}");
    assert_eq!((sent.first(), sent.last()), (Some(&0), Some(&size)));
    assert!(sent.windows(2).all(|pair| pair[0] < pair[1]), "{sent:?}");
    // The chunks went up as one blob: what comes back is what went up.
    let pulled = oci::pull(&reference).await.expect("pull");
    assert_eq!(pulled.component, package.component);

    // Under another tag the registry has the blobs already: nothing is sent again.
    let again = oci::parse_reference(&format!("{}/filters/progress:again", registry.address)).expect("reference");
    oci::push_in_chunks(&package, &again, chunk, &record).await.expect("second push");
    assert_eq!(*reports.lock().unwrap(), [(0, size), (size, size)]);
    assert_eq!(oci::pull(&again).await.expect("pull").digest(), package.digest());
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
    let error = Snapshot::from_toml(&sluice_tests::services(), &config(&origin, &store, &missing))
        .expect_err("nothing to load");
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
    let error = Snapshot::from_toml(&sluice_tests::services(), &config(&origin, &dir.join("store"), &source))
        .expect_err("refused");
    assert_eq!(error.key, "plugin.hello.source");
}

/// Runs the `sluice` binary (tests/run.sh builds it before the tests) with `env`, its package
/// store in `dir`.
fn sluice_cli(dir: &Path, args: &[&str], env: &[(&str, &Path)]) -> std::process::Output {
    std::process::Command::new(repo_root().join("target/debug/sluice"))
        .args(args)
        .env("SLUICE_PACKAGE_STORE", dir.join("store"))
        .env("SLUICE_PLUGIN_TARGET_DIR", repo_root().join("target/plugins"))
        .envs(env.iter().map(|(name, value)| (name, value.as_os_str())))
        .output()
        .expect("run sluice")
}

/// What a `sluice` run that must succeed printed on stdout.
fn succeeded(args: &[&str], output: std::process::Output) -> String {
    assert!(output.status.success(), "sluice {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).expect("text").trim().to_owned()
}

#[tokio::test]
async fn pushes_and_pulls_sign_in_with_the_environment_or_a_docker_config() {
    let dir = scratch("auth");
    let registry = Registry::start_with_user(&dir, "publisher", "s3cret").await;
    let layout = dir.join("package");
    let hello = repo_root().join("examples/hello-filter");
    let pack = ["plugin", "pack", hello.to_str().expect("path"), "-o", layout.to_str().expect("path")];
    let packed = succeeded(&pack, sluice_cli(&dir, &pack, &[]));
    let reference = format!("{}/filters/hello:0.1.0", registry.address);
    let push = ["plugin", "push", layout.to_str().expect("path"), &reference];
    let pull = ["plugin", "pull", &reference];

    // No credentials (and an empty Docker config): refused, and the error says so.
    let empty = dir.join("no-docker-config");
    std::fs::create_dir_all(&empty).expect("folder");
    let refused = sluice_cli(&dir, &push, &[("DOCKER_CONFIG", &empty)]);
    assert!(!refused.status.success());
    let message = String::from_utf8_lossy(&refused.stderr);
    assert!(message.contains("401") || message.to_lowercase().contains("unauthorized"), "{message}");

    // From the environment: the blobs go up chunk by chunk with the same credentials.
    let user = Path::new("publisher");
    let password = Path::new("s3cret");
    let signed_in = [
        ("DOCKER_CONFIG", empty.as_path()),
        ("SLUICE_REGISTRY_USERNAME", user),
        ("SLUICE_REGISTRY_PASSWORD", password),
    ];
    assert_eq!(succeeded(&push, sluice_cli(&dir, &push, &signed_in)), packed);

    // From a Docker config file, as `docker login` leaves it.
    let docker = dir.join("docker");
    std::fs::create_dir_all(&docker).expect("folder");
    use base64::Engine;
    let auth = base64::engine::general_purpose::STANDARD.encode("publisher:s3cret");
    let config = serde_json::json!({ "auths": { registry.address.as_str(): { "auth": auth } } });
    std::fs::write(docker.join("config.json"), config.to_string()).expect("docker config");
    assert_eq!(succeeded(&pull, sluice_cli(&dir, &pull, &[("DOCKER_CONFIG", &docker)])), packed);
    let tag = format!("{}/filters/hello:again", registry.address);
    let push_again = ["plugin", "push", layout.to_str().expect("path"), &tag];
    assert_eq!(succeeded(&push_again, sluice_cli(&dir, &push_again, &[("DOCKER_CONFIG", &docker)])), packed);
}

#[tokio::test]
async fn the_cli_packs_pushes_and_inspects() {
    let dir = scratch("cli");
    let registry = Registry::start(&dir).await;
    let sluice = |args: &[&str]| succeeded(args, sluice_cli(&dir, args, &[]));
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
    assert_eq!(inspected["world"], "sluice:filter/plugin@0.1.3");
    assert!(
        inspected["capabilities"].as_array().is_some_and(|list| list.iter().any(|cap| cap == "log")),
        "{inspected}"
    );
}
