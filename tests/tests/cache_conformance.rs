//! The HTTP Caching Tests suite (cache-tests.fyi; npm `http-cache-tests`, pinned in
//! `tests/cache-tests/package.json` and installed there by `tests/run.sh`) against a caching
//! route on loopback, with the suite's own origin server behind it. Every required test must pass,
//! except the few this version of the suite gets wrong against RFC 9111 and those whose setup
//! depends on a choice Sluice makes differently by design (each listed below with its reason);
//! at least 90% of the optional ("optimal") ones must pass.
//!
//! Behaviours the published suite does not cover yet (CDN-Cache-Control, interim responses) are
//! tested in `cache.rs` with this repository's own cases.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::Stdio;

use serde_json::Value;
use sluice_tests::{TestProxy, repo_root};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// Required tests of `http-cache-tests` 0.4.5 whose expectation RFC 9111 contradicts: they
/// expect an `Age` that is not a plain number, or a list, to make the response stale. RFC 9111
/// section 5.1 says a cache uses the first member of a list and ignores an invalid value, which
/// is what Sluice does (and what the suite's later versions expect).
const SUITE_CONTRADICTS_RFC: &[&str] = &[
    "age-parse-nonnumeric",
    "age-parse-negative",
    "age-parse-float",
    "age-parse-prefix-twoline",
    "age-parse-dup-0",
    "age-parse-dup-0-twoline",
    "age-parse-dup-old",
    "age-parse-parameter",
    "age-parse-numeric-parameter",
];

/// Required tests that cannot be reached with a route's default cache settings, and why.
const NOT_REACHED_BY_DESIGN: &[(&str, &str)] = &[
    // A shared cache that stores Set-Cookie hands one client's cookie to the next: Sluice stores
    // such responses only when the origin marks the cookie unshared (no-cache="set-cookie").
    ("headers-store-Set-Cookie", "Set-Cookie responses are not stored"),
    ("304-etag-update-response-Set-Cookie", "Set-Cookie responses are not stored"),
    // These check must-revalidate and friends when the origin has gone away, after the check
    // `stale-close` (is a stale response served when the origin closes the connection?), which
    // Sluice answers no unless the route or origin allows stale-if-error.
    ("stale-close-must-revalidate", "stale responses stand in only within stale-if-error"),
    ("stale-close-proxy-revalidate", "stale responses stand in only within stale-if-error"),
    ("stale-close-no-cache", "stale responses stand in only within stale-if-error"),
    ("stale-close-s-maxage=2", "stale responses stand in only within stale-if-error"),
];

/// Optional tests Sluice does not pass, and why: what they expect is unsafe for a shared cache
/// or contradicts the RFCs, or their own data is inconsistent.
const OPTIONAL_NOT_PASSED: &[(&str, &str)] = &[
    // "en, de" and "de, en" state different preferences; without knowing the variants an origin
    // has, treating them as one could serve a German page to someone who prefers English.
    ("vary-normalise-lang-order", "language order is a preference"),
    // Choosing a stored variant by its Content-Language assumes the origin has no better match
    // for the client's first choice.
    ("vary-normalise-lang-select", "the origin may have a better variant"),
    // The stored response's Date is after the If-Modified-Since date: RFC 9111 section 4.3.2
    // says to compare with Date when there is no Last-Modified, so it is modified since.
    ("conditional-lm-fresh-no-lm", "RFC 9111 4.3.2 compares with Date: modified since"),
    // These store a 206 whose Content-Range (`bytes 4-9/10`, six bytes) disagrees with its
    // five-byte body; Sluice does not store a part that is not what it claims to be.
    ("partial-store-partial-reuse-partial", "the part's body is not its Content-Range"),
    ("partial-store-partial-reuse-partial-byterange", "the part's body is not its Content-Range"),
    ("partial-store-partial-reuse-partial-absent", "the part's body is not its Content-Range"),
    ("partial-store-partial-reuse-partial-suffix", "the part's body is not its Content-Range"),
    // Joining a stored part to the origin's rest is safe only when both carry the same strong
    // validator (RFC 9111 section 3.4); this one has none. With one, Sluice does (cache.rs).
    ("partial-store-partial-complete", "no validator to join the parts by"),
    ("other-set-cookie", "Set-Cookie responses are not stored"),
];

/// How a test came out, by the suite's own rules (its `determineTestResult`).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Passed,
    Failed(String),
    /// Its setup, or a test it depends on, did not pass.
    NotReached(String),
    Untested,
}

struct SuiteTest {
    kind: String,
    depends_on: Vec<String>,
    result: Value,
}

fn outcome(tests: &HashMap<String, SuiteTest>, id: &str) -> Outcome {
    let test = &tests[id];
    if test.result.is_null() {
        return Outcome::Untested;
    }
    for dependency in &test.depends_on {
        if tests.contains_key(dependency) && outcome(tests, dependency) != Outcome::Passed {
            return Outcome::NotReached(format!("depends on {dependency}"));
        }
    }
    match &test.result {
        Value::Bool(true) => Outcome::Passed,
        Value::Array(result) if result.first().and_then(Value::as_str) == Some("Setup") => {
            Outcome::NotReached(format!("setup: {}", result.get(1).and_then(Value::as_str).unwrap_or_default()))
        }
        Value::Array(result) => Outcome::Failed(result.get(1).and_then(Value::as_str).unwrap_or_default().to_owned()),
        other => Outcome::Failed(other.to_string()),
    }
}

fn suite_folder() -> PathBuf {
    let folder = repo_root().join("tests/cache-tests");
    assert!(
        folder.join("node_modules/http-cache-tests/package.json").exists(),
        "the suite is not installed in {}: tests/run.sh runs `npm ci` there",
        folder.display()
    );
    folder
}

/// The suite's origin server, on a port it picks; stopped on drop.
async fn suite_origin(folder: &std::path::Path) -> (Child, u16) {
    // The server insists on writing its pid somewhere.
    let pidfile = std::env::temp_dir().join(format!("sluice-cache-tests-{}.pid", std::process::id()));
    let mut server = Command::new("node")
        .arg("node_modules/http-cache-tests/server/server.mjs")
        .current_dir(folder)
        .env("npm_config_protocol", "http")
        .env("npm_config_port", "0")
        .env("npm_config_pidfile", &pidfile)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("node starts the suite's server");
    let mut lines = BufReader::new(server.stdout.take().expect("piped")).lines();
    let line = lines.next_line().await.expect("the server's output").expect("the server says where it listens");
    let port = line
        .trim_end_matches('/')
        .rsplit(':')
        .next()
        .and_then(|port| port.parse().ok())
        .unwrap_or_else(|| panic!("no port in {line:?}"));
    (server, port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_caching_tests_suite_passes_but_for_the_listed_exceptions() {
    let folder = suite_folder();
    let (_origin, port) = suite_origin(&folder).await;
    let proxy = TestProxy::start(&format!(
        "[[listener]]\nbind = \"127.0.0.1:0\"\n\
         [upstream.suite]\nservers = [{{ addr = \"127.0.0.1:{port}\" }}]\n\
         [[route]]\nname = \"cached\"\nupstream = \"suite\"\ncache = {{}}\n"
    ))
    .await;
    let base = proxy.url("");
    let output = Command::new("node")
        .arg("run-suite.mjs")
        .arg(base.trim_end_matches('/'))
        .current_dir(&folder)
        .stderr(Stdio::inherit())
        .output()
        .await
        .expect("node runs the suite");
    assert!(output.status.success(), "the suite's runner failed: {}", output.status);

    let mut order = Vec::new();
    let mut tests = HashMap::new();
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let row: Value = serde_json::from_str(line).unwrap_or_else(|err| panic!("{err}: {line}"));
        let id = row["id"].as_str().expect("an id").to_owned();
        let depends_on =
            row["depends_on"].as_array().into_iter().flatten().filter_map(Value::as_str).map(str::to_owned).collect();
        let test = SuiteTest {
            kind: row["kind"].as_str().unwrap_or("required").to_owned(),
            depends_on,
            result: row["result"].clone(),
        };
        order.push(id.clone());
        tests.insert(id, test);
    }
    assert!(tests.len() > 300, "the suite ran {} tests", tests.len());

    let mut tally: BTreeMap<(String, &str), usize> = BTreeMap::new();
    let mut unexpected = Vec::new();
    for id in &order {
        let kind = tests[id].kind.clone();
        let outcome = outcome(&tests, id);
        let label = match &outcome {
            Outcome::Passed => "passed",
            Outcome::Failed(_) => "failed",
            Outcome::NotReached(_) => "not reached",
            Outcome::Untested => "untested",
        };
        *tally.entry((kind.clone(), label)).or_default() += 1;
        if kind != "required" {
            continue;
        }
        let allowed = match &outcome {
            Outcome::Passed => true,
            Outcome::Failed(_) => SUITE_CONTRADICTS_RFC.contains(&id.as_str()),
            Outcome::NotReached(_) => NOT_REACHED_BY_DESIGN.iter().any(|(allowed, _)| allowed == id),
            Outcome::Untested => false,
        };
        if !allowed {
            unexpected.push(format!("{id}: {outcome:?}"));
        }
    }
    println!("http-cache-tests outcomes against Sluice (kind, outcome: count):");
    for ((kind, label), count) in &tally {
        println!("  {kind:<9} {label:<12} {count}");
    }
    assert!(unexpected.is_empty(), "required tests that did not pass:\n  {}", unexpected.join("\n  "));

    let optimal_total: usize = tally.iter().filter(|((kind, _), _)| kind == "optimal").map(|(_, count)| count).sum();
    let not_passed: Vec<(String, Outcome)> = order
        .iter()
        .filter(|id| tests[*id].kind == "optimal")
        .map(|id| (id.clone(), outcome(&tests, id)))
        .filter(|(_, outcome)| *outcome != Outcome::Passed)
        .collect();
    println!(
        "optimal: {} of {optimal_total} passed ({:.1}%)",
        optimal_total - not_passed.len(),
        100.0 * (optimal_total - not_passed.len()) as f64 / optimal_total as f64
    );
    let regressed: Vec<String> = not_passed
        .iter()
        .filter(|(id, _)| !OPTIONAL_NOT_PASSED.iter().any(|(allowed, _)| allowed == id))
        .map(|(id, outcome)| format!("{id}: {outcome:?}"))
        .collect();
    assert!(regressed.is_empty(), "optional tests that did not pass:\n  {}", regressed.join("\n  "));
}
