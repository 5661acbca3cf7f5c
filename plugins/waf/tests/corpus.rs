//! Detection and false-positive rates of the default configuration (paranoia level 1,
//! threshold 5) on the corpora in tests/corpus: the figures plugins/waf/README.md quotes.
//!
//! Run with `-- --nocapture` to see the per-class rates and every miss and false alarm.

use std::collections::BTreeMap;

use serde::Deserialize;
use waf::engine::{Assessment, Config, Engine};
use waf::request::Inspected;

#[derive(Debug, Deserialize)]
struct Case {
    class: String,
    method: String,
    path: String,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    body: Option<String>,
    content_type: Option<String>,
}

fn load(name: &str) -> Vec<Case> {
    let path = format!("{}/tests/corpus/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path)
        .unwrap_or_else(|err| panic!("{path}: {err}"))
        .lines()
        .enumerate()
        .map(|(index, line)| serde_json::from_str(line).unwrap_or_else(|err| panic!("{name}:{}: {err}", index + 1)))
        .collect()
}

/// What a browser sends besides the case's own headers.
fn headers(case: &Case) -> Vec<(String, Vec<u8>)> {
    let mut headers: BTreeMap<String, String> = BTreeMap::from([
        ("user-agent".into(), "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0".into()),
        ("accept".into(), "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8".into()),
    ]);
    headers.extend(case.headers.clone());
    if let Some(body) = &case.body {
        headers.insert("content-length".into(), body.len().to_string());
        headers.insert("content-type".into(), case.content_type.clone().unwrap_or_default());
    }
    headers.into_iter().map(|(name, value)| (name, value.into_bytes())).collect()
}

fn assess(engine: &Engine, case: &Case) -> Assessment {
    let inspected = Inspected::from_head(&case.method, &case.path, "app.example.com", &headers(case));
    let mut assessment = engine.assess(&inspected, &case.path);
    if let Some(body) = &case.body {
        let mut body_inspected = Inspected::for_body(&inspected.facts);
        body_inspected.add_body(body.as_bytes());
        assessment.merge(engine.assess(&body_inspected, &case.path));
    }
    assessment
}

/// Blocked share per class, printing the cases on the wrong side.
fn rates(engine: &Engine, cases: &[Case], expect_blocked: bool) -> (usize, usize) {
    let mut per_class: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    let mut blocked_total = 0;
    for case in cases {
        let assessment = assess(engine, case);
        let blocked = engine.blocks(&assessment);
        let entry = per_class.entry(&case.class).or_default();
        entry.1 += 1;
        if blocked {
            entry.0 += 1;
            blocked_total += 1;
        }
        if blocked != expect_blocked {
            let rules: Vec<String> =
                assessment.hits.iter().map(|hit| format!("{} on {}", hit.rule, hit.target)).collect();
            println!("  {} {} {:?} score {} {rules:?}", case.method, case.path, case.body, assessment.score);
        }
    }
    for (class, (blocked, total)) in per_class {
        println!("  {class:<10} {blocked:>3} of {total:>3} blocked");
    }
    (blocked_total, cases.len())
}

#[test]
fn detection_and_false_positive_rates_at_paranoia_level_1() {
    let engine = Engine::new(Config::default()).unwrap();
    println!("attacks (missed ones listed):");
    let (caught, attacks) = rates(&engine, &load("attacks.jsonl"), true);
    println!("benign (false alarms listed):");
    let (false_alarms, benign) = rates(&engine, &load("benign.jsonl"), false);
    let detection = caught as f64 / attacks as f64;
    let false_positive = false_alarms as f64 / benign as f64;
    println!(
        "detection {caught}/{attacks} = {:.1}%, false positives {false_alarms}/{benign} = {:.1}%",
        detection * 100.0,
        false_positive * 100.0
    );
    assert!(detection >= 0.95, "detection rate {detection:.3} fell below 95%");
    assert!(false_positive <= 0.01, "false-positive rate {false_positive:.3} rose above 1%");
}

/// The OWASP CRS (Debian's package) on the same corpora, through the same inspection the filter
/// runs: alone at paranoia levels 1 and 2, and beside the built-in rules.
#[test]
fn crs_detection_and_false_positive_rates() {
    use std::sync::Arc;
    use waf::inspection::{Head, Inspection};
    use waf::rule_set::{DataFiles, RuleSetConfig};

    let folder = std::env::var("SLUICE_CRS_RULES").unwrap_or_else(|_| "/usr/share/modsecurity-crs/rules".into());
    let crs = DataFiles::read_folder(&folder).unwrap_or_else(|err| panic!("{folder}: {err} (install modsecurity-crs)"));
    let data = BTreeMap::from([("crs".to_owned(), crs)]);
    let attacks = load("attacks.jsonl");
    let benign = load("benign.jsonl");
    let mut rows = Vec::new();
    for (label, paranoia, builtin) in [("CRS PL1", 1, false), ("CRS PL2", 2, false), ("built-in + CRS PL1", 1, true)] {
        let config = RuleSetConfig {
            load: vec!["crs".into()],
            directives: Vec::new(),
            paranoia_level: Some(paranoia),
            anomaly_threshold: None,
            crs_setup: true,
        };
        let rule_set: Arc<_> = waf::rule_set::compile(&config, data.clone(), paranoia, 5).unwrap();
        let engine = Engine::new(Config { builtin_rules: builtin, ..Config::default() }).unwrap();
        let blocked = |case: &Case| {
            let head = Head {
                method: &case.method,
                path_with_query: &case.path,
                authority: "app.example.com",
                headers: headers(case),
                client_ip: "192.0.2.10".into(),
                request_id: "corpus".into(),
            };
            let mut inspection = Inspection::head(&engine, Some(&rule_set), head);
            if let Some(body) = &case.body
                && inspection.awaits_body
                && !inspection.blocks(&engine)
            {
                inspection.body(&engine, &case.path, body.as_bytes().to_vec());
            }
            inspection.blocks(&engine)
        };
        let caught = attacks.iter().filter(|case| blocked(case)).count();
        let false_alarms: Vec<&Case> = benign.iter().filter(|case| blocked(case)).collect();
        println!(
            "{label}: detection {caught}/{} = {:.1}%, false positives {}/{} = {:.1}%",
            attacks.len(),
            caught as f64 * 100.0 / attacks.len() as f64,
            false_alarms.len(),
            benign.len(),
            false_alarms.len() as f64 * 100.0 / benign.len() as f64
        );
        for case in attacks.iter().filter(|case| !blocked(case)) {
            println!("  missed {} {} {} {:?}", case.class, case.method, case.path, case.body);
        }
        for case in &false_alarms {
            println!("  false alarm {} {} {:?}", case.method, case.path, case.body);
        }
        rows.push((label, caught, false_alarms.len()));
    }
    // Floors a little under today's figures (PL1 89% / 5.6%, with the built-in rules 100%):
    // a change to the engine that loses detections or adds false alarms shows here.
    let (attacks, benign) = (attacks.len(), benign.len());
    assert!(rows[0].1 * 100 >= attacks * 85, "CRS PL1 detection fell: {rows:?}");
    assert!(rows[0].2 * 100 <= benign * 7, "CRS PL1 false positives rose: {rows:?}");
    assert!(rows[2].1 * 100 >= attacks * 98, "built-in + CRS detection fell: {rows:?}");
}
