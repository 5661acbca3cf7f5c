//! The SecLang rule set a WAF config names: which of the filter's data files to load, in what
//! order, and the settings the OWASP CRS reads from its setup file (paranoia level, anomaly
//! threshold), written here as the directives a `crs-setup.conf` would hold.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Deserialize;

use crate::seclang::{Files, RuleSet};

/// `rule_set = { load = ["crs-setup", "crs", "exclusions"], paranoia_level = 2 }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSetConfig {
    /// Names of the filter entry's `files`, loaded in this order: a folder's `.conf` files in
    /// path order, a file as it is.
    pub load: Vec<String>,
    /// SecLang directives loaded after the files: rules and exclusions of your own.
    #[serde(default)]
    pub directives: Vec<String>,
    /// The CRS's `tx.paranoia_level` (default: the filter's `paranoia_level`).
    pub paranoia_level: Option<u8>,
    /// The CRS's inbound anomaly score threshold (default: the filter's `anomaly_threshold`).
    pub anomaly_threshold: Option<u32>,
    /// Write the CRS setup (default actions, setup version, the two settings above) before
    /// the files, so the CRS runs without a `crs-setup.conf`. Turn it off when you load your
    /// own setup file.
    #[serde(default = "yes")]
    pub crs_setup: bool,
}

fn yes() -> bool {
    true
}

/// One `files` entry as the host hands it over: where it was read and its files by path.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataFiles {
    pub root: String,
    pub files: BTreeMap<String, String>,
}

impl DataFiles {
    /// Reads a folder's files (not its subfolders) as the host hands them over, for native
    /// tests and benchmarks.
    #[cfg(not(target_family = "wasm"))]
    pub fn read_folder(folder: &str) -> std::io::Result<Self> {
        let mut files = BTreeMap::new();
        for entry in std::fs::read_dir(folder)? {
            let path = entry?.path();
            if path.is_file() {
                files.insert(
                    path.file_name().unwrap_or_default().to_string_lossy().into_owned(),
                    std::fs::read_to_string(&path)?,
                );
            }
        }
        Ok(Self { root: folder.to_owned(), files })
    }
}

/// Loads the rule set: every error names the rule file and line (or the config key). The
/// files' texts move into the rule set's file table (a whole CRS is a megabyte; an instance
/// starting should not copy it).
pub fn compile(
    config: &RuleSetConfig,
    data: BTreeMap<String, DataFiles>,
    paranoia_level: u8,
    anomaly_threshold: u32,
) -> Result<Arc<RuleSet>, String> {
    let names: Vec<String> = data.keys().cloned().collect();
    let mut files = Files::new();
    for (name, entry) in data {
        for (path, text) in entry.files {
            files.add(format!("{name}/{path}"), text);
        }
        files.add_root(name, entry.root);
    }
    let mut sources = Vec::new();
    if config.crs_setup {
        let paranoia = config.paranoia_level.unwrap_or(paranoia_level);
        if !(1..=4).contains(&paranoia) {
            return Err("rule_set.paranoia_level: must be 1 to 4".into());
        }
        let threshold = config.anomaly_threshold.unwrap_or(anomaly_threshold);
        sources.push(("(rule_set setup)".to_owned(), Some(crs_setup(paranoia, threshold))));
    }
    for (index, name) in config.load.iter().enumerate() {
        if !names.contains(name) {
            let known: Vec<&str> = names.iter().map(String::as_str).collect();
            return Err(format!(
                "rule_set.load[{index}]: no files named {name:?} on this filter entry (its files: {})",
                if known.is_empty() { "none".to_owned() } else { known.join(", ") }
            ));
        }
        sources.push((name.clone(), None));
    }
    if !config.directives.is_empty() {
        sources.push(("rule_set.directives".to_owned(), Some(config.directives.join("\n"))));
    }
    RuleSet::load(&files, &sources).map(Arc::new).map_err(|err| format!("rule_set: {err}"))
}

/// What a minimal `crs-setup.conf` says: anomaly scoring (rules pass, the blocking evaluation
/// denies), the setup version the CRS checks for, and the two settings. Ids outside the CRS's
/// ranges, so a setup file of your own can still be loaded after it.
fn crs_setup(paranoia: u8, threshold: u32) -> String {
    format!(
        "SecDefaultAction \"phase:1,log,auditlog,pass\"\n\
         SecDefaultAction \"phase:2,log,auditlog,pass\"\n\
         SecAction \"id:8900990,phase:1,pass,nolog,t:none,setvar:tx.crs_setup_version=334\"\n\
         SecAction \"id:8900000,phase:1,pass,nolog,t:none,setvar:tx.paranoia_level={paranoia}\"\n\
         SecAction \"id:8900110,phase:1,pass,nolog,t:none,setvar:tx.inbound_anomaly_score_threshold={threshold}\"\n"
    )
}
