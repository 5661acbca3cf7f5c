//! The `sluice` binary as users run it: `check` pointing at bad lines, and `run` draining an
//! in-flight request on SIGTERM.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Bytes;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc};

fn sluice() -> Command {
    Command::new(sluice_tests::sluice_binary())
}

/// A config file in a fresh temporary folder.
fn write_config(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sluice-cli-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("sluice.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn check_points_at_the_line_of_a_bad_value() {
    let path = write_config(
        "bad",
        "[[listener]]\nbind = \"127.0.0.1:0\"\n\n[upstream.app]\nservers = [{ addr = \"127.0.0.1:3000\" }]\n\n\
         [[route]]\nupstream = \"app\"\ntimeout = \"soon\"\n",
    );
    let output = sluice().args(["check", "--config"]).arg(&path).output().unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    let expected = format!("error: {}:9:11: `route[0].timeout`: invalid duration \"soon\"", path.display());
    assert!(stderr.starts_with(&expected), "{stderr}");
}

#[test]
fn check_names_a_dangling_reference() {
    let path = write_config(
        "dangling",
        "[[listener]]\nbind = \"127.0.0.1:0\"\n[[route]]\npath_prefix = \"/\"\nupstream = \"missing\"\n",
    );
    let output = sluice().args(["check", "--config"]).arg(&path).output().unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(":5:12: `route[0].upstream`: no upstream named \"missing\""), "{stderr}");
}

#[test]
fn check_accepts_the_quickstart() {
    let quickstart = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/quickstart/sluice.toml");
    let output = sluice().args(["check", "--config", quickstart]).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
}

#[test]
fn version_is_printed() {
    let output = sluice().arg("--version").output().unwrap();
    assert!(output.status.success());
    assert!(String::from_utf8_lossy(&output.stdout).starts_with("sluice "));
}

/// Reads the child's JSON log lines until one says `message`, returning that line.
fn wait_for_log(lines: &mut impl Iterator<Item = String>, message: &str) -> serde_json::Value {
    for line in lines {
        if let Ok(event) = serde_json::from_str::<serde_json::Value>(&line)
            && event["message"] == message
        {
            return event;
        }
    }
    panic!("sluice exited without logging {message:?}");
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_an_in_flight_request() {
    // An origin that holds each request until released.
    let origin = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin_addr = origin.local_addr().unwrap();
    let (arrived_tx, mut arrived) = mpsc::unbounded_channel();
    let release = Arc::new(Notify::new());
    let held = release.clone();
    tokio::spawn(async move {
        let (stream, _) = origin.accept().await.unwrap();
        let service = service_fn(move |_request| {
            let arrived = arrived_tx.clone();
            let release = held.clone();
            async move {
                let _ = arrived.send(());
                release.notified().await;
                Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(Bytes::from("finished"))))
            }
        });
        let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
    });

    let path = write_config(
        "sigterm",
        &format!(
            "[[listener]]\nbind = \"127.0.0.1:0\"\n[upstream.app]\nservers = [{{ addr = \"{origin_addr}\" }}]\n\
             [[route]]\nupstream = \"app\"\n"
        ),
    );
    let mut child = KillOnDrop(
        sluice().args(["run", "--log-format", "json", "--config"]).arg(&path).stderr(Stdio::piped()).spawn().unwrap(),
    );
    let stderr = child.0.stderr.take().unwrap();
    let (log_tx, mut log_rx) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if log_tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut lines = std::iter::from_fn(|| log_rx.blocking_recv());
    let listening = tokio::task::block_in_place(|| wait_for_log(&mut lines, "listening"));
    let proxy_addr = listening["address"].as_str().unwrap().to_owned();

    let client: Client<HttpConnector, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let request = hyper::Request::get(format!("http://{proxy_addr}/slow")).body(Empty::new()).unwrap();
    let in_flight = tokio::spawn(async move {
        let response = client.request(request).await.expect("response despite shutdown");
        let status = response.status();
        (status, response.into_body().collect().await.unwrap().to_bytes())
    });
    arrived.recv().await.expect("request reached the origin");

    let pid = child.0.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    tokio::task::block_in_place(|| wait_for_log(&mut lines, "shutting down: draining connections"));
    release.notify_one();

    let (status, body) = in_flight.await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(body, "finished");
    tokio::task::block_in_place(|| wait_for_log(&mut lines, "all connections drained"));
    let exit = tokio::task::block_in_place(|| child.0.wait()).unwrap();
    assert!(exit.success(), "{exit:?}");
}

#[test]
fn plugin_new_scaffolds_a_filter_that_builds() {
    let parent = std::env::temp_dir().join(format!("sluice-cli-{}-scaffold", std::process::id()));
    let _ = std::fs::remove_dir_all(&parent);
    std::fs::create_dir_all(&parent).unwrap();
    let created = sluice().args(["plugin", "new", "edge-guard", "--dir"]).arg(&parent).output().unwrap();
    assert!(created.status.success(), "{}", String::from_utf8_lossy(&created.stderr));
    assert!(parent.join("edge-guard/src/lib.rs").exists());

    // Share the repository's plugin build folder so the Wasm standard library is built once.
    let target = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/plugins");
    let built =
        sluice().args(["plugin", "build", "--target-dir", target]).arg(parent.join("edge-guard")).output().unwrap();
    assert!(built.status.success(), "{}", String::from_utf8_lossy(&built.stderr));
    let component = PathBuf::from(String::from_utf8_lossy(&built.stdout).trim());
    assert!(component.ends_with("sluice/edge-guard.wasm"), "{component:?}");

    // The scaffold's default config is valid: `check` configures an instance with it.
    let path = write_config(
        "scaffold",
        &format!(
            "[[listener]]\nbind = \"127.0.0.1:0\"\n[upstream.app]\nservers = [{{ addr = \"127.0.0.1:3000\" }}]\n\
             [plugin.guard]\nsource = \"{}\"\n[[route]]\nupstream = \"app\"\nfilters = [{{ plugin = \"guard\" }}]\n",
            component.display()
        ),
    );
    let output = sluice().args(["check", "--config"]).arg(&path).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));

    // Scaffolding over an existing folder is refused.
    let again = sluice().args(["plugin", "new", "edge-guard", "--dir"]).arg(&parent).output().unwrap();
    assert_eq!(again.status.code(), Some(1));
    let _ = std::fs::remove_dir_all(&parent);
}

#[test]
fn check_reports_a_filter_config_the_plugin_refuses() {
    let probe = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/plugins/probe");
    let target = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/plugins");
    let built = sluice().args(["plugin", "build", "--target-dir", target, probe]).output().unwrap();
    assert!(built.status.success(), "{}", String::from_utf8_lossy(&built.stderr));
    let component = String::from_utf8_lossy(&built.stdout).trim().to_owned();
    let path = write_config(
        "refused",
        &format!(
            "[[listener]]\nbind = \"127.0.0.1:0\"\n[upstream.app]\nservers = [{{ addr = \"127.0.0.1:3000\" }}]\n\
             [plugin.probe]\nsource = \"{component}\"\n[[route]]\nupstream = \"app\"\n\
             filters = [{{ plugin = \"probe\", config = {{ refuse = true }} }}]\n"
        ),
    );
    let output = sluice().args(["check", "--config"]).arg(&path).output().unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(":9:12: `route[0].filters[0]`: filter probe: config refused: refused on purpose"),
        "{stderr}"
    );
}

#[test]
fn logs_carry_no_colour_codes_when_not_on_a_terminal() {
    // An address this machine does not have: the start fails and says so in the log.
    let path = write_config("colour", "[[listener]]\nbind = \"192.0.2.1:9\"\n");
    let output = sluice().args(["run", "--config"]).arg(&path).output().unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("cannot start"), "{stderr}");
    assert!(!stderr.contains('\u{1b}'), "colour codes in a log that is not a terminal: {stderr:?}");
}

#[test]
fn plugin_new_help_names_every_language() {
    let output = sluice().args(["plugin", "new", "--help"]).output().unwrap();
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    for language in ["rust", "js", "go"] {
        assert!(help.contains(language), "`plugin new --help` does not name {language}: {help}");
    }
    assert!(help.contains("Rust, JavaScript or Go"), "{help}");
}

#[test]
fn a_registry_error_keeps_its_cause() {
    // Nothing listens on a port that was just free.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let output = sluice().args(["plugin", "pull", &format!("127.0.0.1:{port}/filters/waf:1.0.0")]).output().unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr).to_lowercase();
    assert!(stderr.contains("connection refused"), "the cause is dropped: {stderr}");
}

#[test]
fn plugin_inspect_on_a_filters_folder_builds_it_and_fetches_nothing() {
    let probe = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/plugins/probe");
    let target = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/plugins");
    let output = sluice().args(["plugin", "inspect", probe, "--target-dir", target]).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).expect("a JSON report");
    assert!(report["digest"].as_str().is_some_and(|digest| digest.starts_with("sha256:")), "{report}");
    assert!(report["world"].as_str().is_some_and(|world| world.starts_with("sluice:filter")), "{report}");
    assert_eq!(report["name"], "probe");
    assert!(report["capabilities"].as_array().is_some_and(|capabilities| !capabilities.is_empty()), "{report}");
}

#[test]
fn check_names_the_rule_file_and_line_of_a_bad_waf_rule() {
    let component = sluice_tests::plugin("plugins/waf");
    let rules_dir = std::env::temp_dir().join(format!("sluice-cli-{}-waf-rules", std::process::id()));
    std::fs::create_dir_all(&rules_dir).unwrap();
    std::fs::write(
        rules_dir.join("local.conf"),
        "# local rules\nSecRule ARGS \"@rx evil\" \"id:100001,phase:2,deny\"\n\nSecRule ARGS \"@rx x\" \\\n    \"id:100002,phase:2,explode\"\n",
    )
    .unwrap();
    let path = write_config(
        "waf-rules",
        &format!(
            "[[listener]]\nbind = \"127.0.0.1:0\"\n[upstream.app]\nservers = [{{ addr = \"127.0.0.1:3000\" }}]\n\
             [plugin.waf]\nsource = \"{}\"\n[[route]]\nupstream = \"app\"\n\
             filters = [{{ plugin = \"waf\", files = {{ local = \"{}\" }}, config = {{ rule_set = {{ load = [\"local\"] }} }} }}]\n",
            component.display(),
            rules_dir.display()
        ),
    );
    let output = sluice().args(["check", "--config"]).arg(&path).output().unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("rule_set: local/local.conf:4: unsupported action explode"), "{stderr}");
}
