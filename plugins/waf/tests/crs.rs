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

/// Reads a folder as the host does for a filter's `files`: every file under it, by path.
fn read_into(files: &mut Files, name: &str, folder: &Path) {
    let mut entries: Vec<_> = std::fs::read_dir(folder)
        .unwrap_or_else(|err| panic!("{}: {err} (is Debian's modsecurity-crs installed?)", folder.display()))
        .map(|entry| entry.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        let file_name = path.file_name().unwrap().to_string_lossy().into_owned();
        if path.is_dir() {
            read_into(files, &format!("{name}/{file_name}"), &path);
        } else {
            files.add(format!("{name}/{file_name}"), std::fs::read_to_string(&path).unwrap());
        }
    }
    files.add_root(name, folder.to_string_lossy());
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
