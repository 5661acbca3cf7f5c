//! The OWASP Core Rule Set, as Debian's `modsecurity-crs` package installs it, run through the
//! SecLang engine natively: it loads without a refusal, each rule family catches attacks written
//! for these tests while their benign twins pass, exclusions written for ModSecurity work.
//!
//! The rule folder is `$SLUICE_CRS_RULES`, else `/usr/share/modsecurity-crs/rules` (the README's
//! test command installs the package).

use std::path::Path;

use waf::seclang::eval::Transaction;
use waf::seclang::input::RequestInput;
use waf::seclang::{Files, RuleSet};

fn crs_folder() -> String {
    std::env::var("SLUICE_CRS_RULES").unwrap_or_else(|_| "/usr/share/modsecurity-crs/rules".into())
}

fn read_into(files: &mut Files, name: &str, folder: &Path) {
    files
        .read_folder(name, folder)
        .unwrap_or_else(|err| panic!("{}: {err} (is Debian's modsecurity-crs installed?)", folder.display()));
}

fn setup(paranoia: u8) -> String {
    format!(
        "SecDefaultAction \"phase:1,log,auditlog,pass\"\nSecDefaultAction \"phase:2,log,auditlog,pass\"\n\
         SecAction \"id:900990,phase:1,nolog,pass,t:none,setvar:tx.crs_setup_version=334,setvar:tx.paranoia_level={paranoia}\"\n"
    )
}

#[test]
fn debian_crs_loads_without_a_refusal() {
    let mut files = Files::new();
    read_into(&mut files, "crs", Path::new(&crs_folder()));
    let started = std::time::Instant::now();
    let rules = RuleSet::load(&files, &[("setup".into(), Some(setup(1))), ("crs".into(), None)])
        .unwrap_or_else(|err| panic!("{err}"));
    eprintln!("{} request rules loaded in {:?}", rules.request_rules(), started.elapsed());
    assert!(rules.request_rules() > 300, "{}", rules.request_rules());
}

fn crs(paranoia: u8) -> std::sync::Arc<RuleSet> {
    let mut files = Files::new();
    read_into(&mut files, "crs", Path::new(&crs_folder()));
    std::sync::Arc::new(
        RuleSet::load(&files, &[("setup".into(), Some(setup(paranoia))), ("crs".into(), None)]).unwrap(),
    )
}

/// What a browser sends.
fn browser_headers() -> Vec<(String, Vec<u8>)> {
    [
        ("host", "app.example.com"),
        ("user-agent", "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0"),
        ("accept", "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"),
        ("accept-language", "en-GB,en;q=0.5"),
        ("accept-encoding", "gzip, deflate, br"),
    ]
    .iter()
    .map(|(name, value)| (name.to_string(), value.as_bytes().to_vec()))
    .collect()
}

/// Runs both request phases; the rule that blocked, if one did, and every rule that matched.
fn run(
    rules: &std::sync::Arc<RuleSet>,
    method: &str,
    uri: &str,
    extra: &[(&str, &str)],
    body: Option<(&str, &str)>,
) -> (Option<u32>, Vec<u32>) {
    let mut headers = browser_headers();
    for (name, value) in extra {
        headers.retain(|(known, _)| !known.eq_ignore_ascii_case(name));
        headers.push((name.to_string(), value.as_bytes().to_vec()));
    }
    if let Some((content_type, body)) = body {
        headers.push(("content-type".into(), content_type.as_bytes().to_vec()));
        headers.push(("content-length".into(), body.len().to_string().into_bytes()));
    }
    let mut input = RequestInput::from_head(method, uri, headers);
    input.remote_addr = "192.0.2.10".into();
    input.unique_id = "test".into();
    let mut transaction = Transaction::new(rules.clone(), input);
    transaction.run_phase(1);
    if let Some((_, body)) = body {
        transaction.add_body(body.as_bytes().to_vec());
    }
    transaction.run_phase(2);
    (transaction.interruption.as_ref().map(|i| i.rule), transaction.matches.iter().map(|m| m.id).collect())
}

#[test]
fn a_plain_browser_request_passes() {
    let rules = crs(1);
    let (blocked, matched) = run(&rules, "GET", "/products/42?sort=price&page=2", &[], None);
    assert_eq!(blocked, None, "{matched:?}");
    assert!(matched.is_empty(), "{matched:?}");
}

#[test]
fn sql_injection_is_blocked() {
    let rules = crs(1);
    let (blocked, matched) = run(&rules, "GET", "/products?id=1%27%20OR%20%271%27%3D%271", &[], None);
    assert_eq!(blocked, Some(949110), "{matched:?}");
    assert!(matched.contains(&942100), "{matched:?}");
}

/// One request of a family's test: method, URI, extra headers, body (content type, text).
struct Case {
    method: &'static str,
    uri: &'static str,
    headers: &'static [(&'static str, &'static str)],
    body: Option<(&'static str, &'static str)>,
}

const fn get(uri: &'static str) -> Case {
    Case { method: "GET", uri, headers: &[], body: None }
}

const fn post(uri: &'static str, content_type: &'static str, body: &'static str) -> Case {
    Case { method: "POST", uri, headers: &[], body: Some((content_type, body)) }
}

/// Per CRS family: an attack of its kind (written for these tests) that the family's rules
/// catch, and a benign twin close to it that must pass.
fn families() -> Vec<(&'static str, u32, Case, Case)> {
    let form = "application/x-www-form-urlencoded";
    vec![
        (
            "911 method enforcement",
            911100,
            Case { method: "TRACK", ..get("/") },
            Case { method: "OPTIONS", ..get("/") },
        ),
        (
            "913 scanner detection",
            913100,
            Case { headers: &[("user-agent", "Mozilla/5.00 (Nikto/2.1.6) (Evasions:None) (Test:000001)")], ..get("/") },
            Case {
                headers: &[("user-agent", "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) Safari/605.1.15")],
                ..get("/")
            },
        ),
        (
            "920 protocol enforcement",
            920170,
            Case { body: Some((form, "a=1")), ..get("/search") },
            post("/search", form, "a=1"),
        ),
        (
            "921 protocol attack",
            921130,
            get("/page?next=%0d%0aContent-Length:%200%0d%0a%0d%0aHTTP/1.1%20200%20OK"),
            get("/page?next=%2Fhome%2Fhttp-guide"),
        ),
        (
            "930 local file inclusion",
            930100,
            get("/download?file=..%2F..%2F..%2Fetc%2Fshadow"),
            get("/download?file=reports%2F2026%2Fq3.pdf"),
        ),
        (
            "931 remote file inclusion",
            931100,
            get("/include?template=http%3A%2F%2F203.0.113.9%2Fpayload.txt"),
            get("/include?template=invoice-compact"),
        ),
        (
            "932 remote command execution",
            932100,
            get("/ping?host=127.0.0.1%3B%20cat%20%2Fetc%2Fpasswd"),
            get("/ping?host=db-replica-2.internal"),
        ),
        (
            "933 PHP injection",
            933100,
            post("/comment", form, "text=%3C%3Fphp%20system(%24_GET%5Bc%5D)%3B%20%3F%3E"),
            post("/comment", form, "text=PHP%20is%20a%20language%3B%20I%20use%20it"),
        ),
        (
            "934 Node.js injection",
            934100,
            post("/eval", form, "profile=_%24%24ND_FUNC%24%24_function()%7Brequire('child_process').exec('id')%7D()"),
            post("/eval", form, "code=requirements%20and%20processes%20documented"),
        ),
        (
            "941 cross-site scripting",
            941100,
            get("/profile?name=%3Cimg%20src%3Dx%20onerror%3Dalert(document.domain)%3E"),
            get("/profile?name=Alice%20%3E%20Bob"),
        ),
        (
            "942 SQL injection",
            942100,
            get("/items?id=5%20UNION%20ALL%20SELECT%20username%2Cpassword%20FROM%20users--"),
            get("/items?id=5&union=eu&select=all"),
        ),
        (
            "943 session fixation",
            943100,
            get("/login?next=%3Cmeta%20http-equiv%3DSet-Cookie%20content%3D%22sid%3Dattacker%22%3E"),
            get("/login?redirect=%2Faccount%2Fsessions"),
        ),
        (
            "944 Java injection",
            944100,
            post("/api/import", form, "data=java.lang.Runtime.getRuntime().exec(%22id%22)"),
            post("/api/import", form, "data=Runtime%20of%20the%20java%20job%20was%203%20minutes"),
        ),
    ]
}

fn run_case(rules: &std::sync::Arc<RuleSet>, case: &Case) -> (Option<u32>, Vec<u32>) {
    run(rules, case.method, case.uri, case.headers, case.body)
}

#[test]
fn each_family_catches_its_attacks_and_passes_their_benign_twins() {
    let rules = crs(1);
    let mut failures = Vec::new();
    for (family, rule, attack, benign) in families() {
        let (blocked, matched) = run_case(&rules, &attack);
        if blocked.is_none() || !matched.iter().any(|id| id / 1000 == rule / 1000) {
            failures.push(format!(
                "{family}: attack {} {} not caught by a {}xxx rule: {blocked:?} {matched:?}",
                attack.method,
                attack.uri,
                rule / 1000
            ));
        }
        let (blocked, matched) = run_case(&rules, &benign);
        if blocked.is_some() {
            failures.push(format!("{family}: benign {} {} blocked: {matched:?}", benign.method, benign.uri));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Every string in the corpora (paths, decoded paths, bodies, header values), in the cases
/// they are written in and folded both ways.
fn corpus_values() -> Vec<Vec<u8>> {
    let mut values = Vec::new();
    for name in ["attacks.jsonl", "benign.jsonl"] {
        let path = format!("{}/tests/corpus/{name}", env!("CARGO_MANIFEST_DIR"));
        for line in std::fs::read_to_string(&path).unwrap().lines() {
            let case: serde_json::Value = serde_json::from_str(line).unwrap();
            let mut texts: Vec<String> = Vec::new();
            for key in ["path", "body"] {
                if let Some(text) = case[key].as_str() {
                    texts.push(text.to_owned());
                    texts.push(form_urlencoded::parse(text.as_bytes()).map(|(k, v)| format!("{k}={v}")).collect());
                    let query = text.split_once('?').map_or(text, |(_, query)| query);
                    texts.extend(form_urlencoded::parse(query.as_bytes()).map(|(_, value)| value.into_owned()));
                }
            }
            if let Some(headers) = case["headers"].as_object() {
                texts.extend(headers.values().filter_map(|value| value.as_str().map(str::to_owned)));
            }
            for text in texts {
                values.push(text.to_ascii_lowercase().into_bytes());
                values.push(text.to_ascii_uppercase().into_bytes());
                values.push(text.into_bytes());
            }
        }
    }
    values
}

#[test]
fn the_literal_prefilter_never_rules_out_a_value_its_pattern_matches() {
    use waf::seclang::Entry;
    use waf::seclang::operators::Operator;
    let rules = crs(4);
    let values = corpus_values();
    let scans: Vec<_> = values.iter().map(|value| rules.prefilter.scan(value)).collect();
    let (mut patterns, mut matches) = (0, 0);
    for entry in rules.phases.iter().flatten() {
        let Entry::Rule(rule) = entry else { continue };
        let mut link = Some(&**rule);
        while let Some(current) = link {
            if let (Some(slot), Operator::Rx(pattern)) = (current.prefilter, &current.operator) {
                patterns += 1;
                for (value, hits) in values.iter().zip(&scans) {
                    if pattern.matches(value, None) {
                        matches += 1;
                        assert!(
                            hits.contains(slot),
                            "rule {} matches {:?} but its literals were not found",
                            rule.id,
                            String::from_utf8_lossy(value)
                        );
                    }
                }
            }
            link = current.chained.as_deref();
        }
    }
    eprintln!("{patterns} prefiltered patterns, {matches} matches checked");
    assert!(patterns > 150 && matches > 300, "{patterns} patterns, {matches} matches");
}
