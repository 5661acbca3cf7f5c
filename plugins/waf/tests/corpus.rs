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
