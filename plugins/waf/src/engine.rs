//! The engine: runs the rules over a request's targets and facts, adds up the anomaly score,
//! and applies exclusions.

use std::collections::HashMap;

use regex::bytes::{Regex, RegexSet};
use serde::Deserialize;

use crate::request::{Inspected, Place, Target};
use crate::rules::{self, Severity};

/// The filter's configuration.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// `block` (answer 403 at the threshold) or `detect` (log and count only).
    pub mode: Mode,
    /// 1 to 4: higher runs more rules, catching more and alarming more.
    pub paranoia_level: u8,
    /// The anomaly score at which a request is blocked.
    pub anomaly_threshold: u32,
    /// Inspect request bodies (forms and JSON as arguments, other text whole).
    pub inspect_body: bool,
    /// Methods allowed; others score as critical.
    pub allowed_methods: Vec<String>,
    /// Body content types allowed (prefixes before any `;`).
    pub allowed_content_types: Vec<String>,
    /// Most arguments a request may have.
    pub max_arguments: usize,
    /// Longest argument value, bytes.
    pub max_argument_length: usize,
    /// Rules turned off everywhere.
    pub disabled_rules: Vec<u32>,
    /// Rules turned off for some paths or targets.
    pub exclusions: Vec<Exclusion>,
    /// Rules of your own.
    pub rules: Vec<CustomRule>,
    /// Send the score upstream in this header (useful with `mode = "detect"`).
    pub score_header: Option<String>,
    /// Ban clients that keep attacking: after `after` blocked requests within `within`, the
    /// client is banned from the tenant's routes for `duration` (needs the tenant's
    /// `ban_max_duration` grant).
    pub ban: Option<sluice_sdk::client::BanPolicy>,
    /// Run the built-in rules (on by default; with a `rule_set` they run beside it).
    pub builtin_rules: bool,
    /// A SecLang rule set (the OWASP CRS, exclusions written for ModSecurity) from the filter
    /// entry's `files`.
    pub rule_set: Option<crate::rule_set::RuleSetConfig>,
    /// The filter entry's data files, added to the config by the host.
    pub files: std::collections::BTreeMap<String, crate::rule_set::DataFiles>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            mode: Mode::Block,
            paranoia_level: 1,
            anomaly_threshold: 5,
            inspect_body: true,
            allowed_methods: ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"].map(String::from).to_vec(),
            allowed_content_types: [
                "application/x-www-form-urlencoded",
                "multipart/form-data",
                "multipart/related",
                "text/xml",
                "application/xml",
                "application/soap+xml",
                "application/json",
                "application/cloudevents+json",
                "application/cloudevents-batch+json",
            ]
            .map(String::from)
            .to_vec(),
            max_arguments: 255,
            max_argument_length: 10_000,
            disabled_rules: Vec::new(),
            exclusions: Vec::new(),
            rules: Vec::new(),
            score_header: None,
            ban: None,
            builtin_rules: true,
            rule_set: None,
            files: Default::default(),
        }
    }
}

/// Block or only detect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Answer 403 when the score reaches the threshold.
    Block,
    /// Log and count; let the request through.
    Detect,
}

/// Rules switched off where they misfire.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Exclusion {
    /// Only for paths starting with this.
    pub path_prefix: Option<String>,
    /// Only these rules (empty: all).
    #[serde(default)]
    pub rules: Vec<u32>,
    /// Only these targets: `args`, `args:NAME`, `arg_names`, `cookies:NAME`, `headers:NAME`,
    /// `path`, `body` (empty: all).
    #[serde(default)]
    pub targets: Vec<String>,
}

/// A rule from config.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustomRule {
    /// Its id (outside the built-in ranges; 100000 and up is safe).
    pub id: u32,
    /// What it detects.
    pub message: String,
    /// A regular expression over normalised values (decoded, lower case, whitespace folded).
    pub pattern: String,
    /// Where it looks: as in exclusions (default: args, arg_names, cookies, body).
    #[serde(default)]
    pub targets: Vec<String>,
    /// `critical` (default), `error`, `warning` or `notice`.
    #[serde(default = "critical")]
    pub severity: Severity,
    /// The least paranoia level that runs it (default 1).
    #[serde(default = "one")]
    pub paranoia: u8,
}

fn critical() -> Severity {
    Severity::Critical
}
fn one() -> u8 {
    1
}

/// Built-in rules match ASCII classes (`\w`, `\s`, `\b` over ASCII): attack syntax is ASCII,
/// and Unicode classes make the combined automaton of all rules too large for the regex
/// engine's fast paths.
fn ascii_only(pattern: &str) -> String {
    format!("(?-u){pattern}")
}

/// A target selector: a place, maybe narrowed to one name.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Selector {
    place: Place,
    name: Option<String>,
}

impl Selector {
    fn parse(text: &str) -> Result<Self, String> {
        let (place, name) = match text.split_once(':') {
            Some((place, name)) => (place, Some(name.to_owned())),
            None => (text, None),
        };
        let place = Place::from_name(place).ok_or_else(|| {
            format!("target {text:?}: use args, arg_names, cookies, headers, path or body, optionally :NAME")
        })?;
        let name = name.map(|name| if place == Place::Header { name.to_ascii_lowercase() } else { name });
        Ok(Self { place, name })
    }

    fn selects(&self, target: &Target) -> bool {
        // `args:q` also covers the name of argument q.
        let place_fits = self.place == target.place || (self.place == Place::Arg && target.place == Place::ArgName);
        place_fits && self.name.as_ref().is_none_or(|name| *name == target.name)
    }
}

#[derive(Debug)]
struct Rule {
    id: u32,
    message: String,
    severity: Severity,
    places: Vec<Place>,
    headers: Vec<String>,
    only: Vec<Selector>,
    pattern: Regex,
}

impl Rule {
    fn applies_to(&self, target: &Target) -> bool {
        if !self.only.is_empty() {
            return self.only.iter().any(|selector| selector.selects(target));
        }
        self.places.contains(&target.place)
            && (target.place != Place::Header || self.headers.is_empty() || self.headers.contains(&target.name))
    }
}

#[derive(Debug)]
struct CompiledExclusion {
    path_prefix: Option<String>,
    rules: Vec<u32>,
    targets: Vec<Selector>,
}

/// A rule that matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hit {
    /// The rule.
    pub rule: u32,
    /// Its message.
    pub message: String,
    /// Where (`args:q`), or the protocol fact.
    pub target: String,
    /// Points added.
    pub score: u32,
}

/// What the engine concluded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Assessment {
    /// The total anomaly score.
    pub score: u32,
    /// The rules that matched, each once.
    pub hits: Vec<Hit>,
}

impl Assessment {
    fn add(&mut self, rule: u32, message: &str, target: String, severity: Severity) {
        if self.hits.iter().any(|hit| hit.rule == rule) {
            return;
        }
        self.score += severity.score();
        self.hits.push(Hit { rule, message: message.to_owned(), target, score: severity.score() });
    }

    /// Adds another assessment's hits (each rule still counted once).
    pub fn merge(&mut self, other: Assessment) {
        for hit in other.hits {
            if !self.hits.iter().any(|known| known.rule == hit.rule) {
                self.score += hit.score;
                self.hits.push(hit);
            }
        }
    }
}

/// The compiled rule set and settings.
#[derive(Debug)]
pub struct Engine {
    rules: Vec<Rule>,
    set: RegexSet,
    exclusions: Vec<CompiledExclusion>,
    /// The settings.
    pub config: Config,
}

/// Ids of the protocol checks, which read facts rather than patterns.
mod protocol {
    pub const METHOD_NOT_ALLOWED: u32 = 911100;
    pub const BODY_ON_GET: u32 = 920170;
    pub const INVALID_ENCODING: u32 = 920220;
    pub const CONTROL_CHARACTERS: u32 = 920270;
    pub const NO_ACCEPT: u32 = 920300;
    pub const NO_USER_AGENT: u32 = 920320;
    pub const HOST_IS_IP: u32 = 920350;
    pub const ARGUMENT_TOO_LONG: u32 = 920370;
    pub const TOO_MANY_ARGUMENTS: u32 = 920380;
    pub const CONTENT_TYPE_NOT_ALLOWED: u32 = 920420;
    pub const HEADER_INJECTION: u32 = 921130;
    pub const MALFORMED_BODY: u32 = 920600;
}

impl Engine {
    /// Compiles the built-in and custom rules.
    pub fn new(config: Config) -> Result<Self, String> {
        if !(1..=4).contains(&config.paranoia_level) {
            return Err("paranoia_level must be 1 to 4".into());
        }
        if config.anomaly_threshold == 0 {
            return Err("anomaly_threshold must be at least 1".into());
        }
        if let Some(ban) = &config.ban {
            ban.validate()?;
        }
        let mut rules = Vec::new();
        for built_in in rules::built_in() {
            if config.disabled_rules.contains(&built_in.id) || built_in.paranoia > config.paranoia_level {
                continue;
            }
            rules.push(Rule {
                id: built_in.id,
                message: built_in.message.to_owned(),
                severity: built_in.severity,
                places: built_in.places.to_vec(),
                headers: built_in.headers.iter().map(|header| (*header).to_owned()).collect(),
                only: Vec::new(),
                pattern: Regex::new(&ascii_only(built_in.pattern))
                    .map_err(|err| format!("built-in rule {}: {err}", built_in.id))?,
            });
        }
        let built_in_ids: Vec<u32> = rules::built_in().iter().map(|rule| rule.id).collect();
        for (index, custom) in config.rules.iter().enumerate() {
            let at = |err: String| format!("rules[{index}] (id {}): {err}", custom.id);
            if built_in_ids.contains(&custom.id) || config.rules[..index].iter().any(|other| other.id == custom.id) {
                return Err(at("the id is already used".into()));
            }
            if config.disabled_rules.contains(&custom.id) || custom.paranoia > config.paranoia_level {
                continue;
            }
            let only = if custom.targets.is_empty() {
                ["args", "arg_names", "cookies", "body"]
                    .iter()
                    .map(|text| Selector::parse(text))
                    .collect::<Result<_, _>>()
            } else {
                custom.targets.iter().map(|text| Selector::parse(text)).collect::<Result<_, _>>()
            }
            .map_err(at)?;
            rules.push(Rule {
                id: custom.id,
                message: custom.message.clone(),
                severity: custom.severity,
                places: Vec::new(),
                headers: Vec::new(),
                only,
                pattern: Regex::new(&custom.pattern).map_err(|err| at(err.to_string()))?,
            });
        }
        let set = RegexSet::new(rules.iter().map(|rule| rule.pattern.as_str())).map_err(|err| err.to_string())?;
        let exclusions = config
            .exclusions
            .iter()
            .enumerate()
            .map(|(index, exclusion)| {
                let targets = exclusion
                    .targets
                    .iter()
                    .map(|text| Selector::parse(text))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|err| format!("exclusions[{index}]: {err}"))?;
                Ok(CompiledExclusion {
                    path_prefix: exclusion.path_prefix.clone(),
                    rules: exclusion.rules.clone(),
                    targets,
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(Self { rules, set, exclusions, config })
    }

    fn excluded(&self, rule: u32, target: Option<&Target>, path: &str) -> bool {
        self.exclusions.iter().any(|exclusion| {
            exclusion.path_prefix.as_ref().is_none_or(|prefix| path.starts_with(prefix.as_str()))
                && (exclusion.rules.is_empty() || exclusion.rules.contains(&rule))
                && (exclusion.targets.is_empty()
                    || target.is_some_and(|target| exclusion.targets.iter().any(|selector| selector.selects(target))))
        })
    }

    fn protocol_check(
        &self,
        assessment: &mut Assessment,
        path: &str,
        rule: u32,
        message: &str,
        severity: Severity,
        paranoia: u8,
    ) {
        if paranoia <= self.config.paranoia_level
            && !self.config.disabled_rules.contains(&rule)
            && !self.excluded(rule, None, path)
        {
            assessment.add(rule, message, "request".into(), severity);
        }
    }

    /// Scores a request (its head, or its body's targets). `path` is the raw path, for exclusions.
    pub fn assess(&self, inspected: &Inspected, path: &str) -> Assessment {
        let mut assessment = Assessment::default();
        // JSON arrays repeat member names and values: match each distinct value once.
        let mut matched: HashMap<&str, regex::bytes::SetMatches> = HashMap::new();
        for target in &inspected.targets {
            if target.value.is_empty() {
                continue;
            }
            let matches =
                matched.entry(target.value.as_str()).or_insert_with(|| self.set.matches(target.value.as_bytes()));
            for index in matches.iter() {
                let rule = &self.rules[index];
                if rule.applies_to(target) && !self.excluded(rule.id, Some(target), path) {
                    assessment.add(rule.id, &rule.message, target.label(), rule.severity);
                }
            }
        }
        let facts = &inspected.facts;
        use Severity::{Critical, Notice, Warning};
        if !facts.method.is_empty()
            && !self.config.allowed_methods.iter().any(|allowed| allowed.eq_ignore_ascii_case(&facts.method))
        {
            self.protocol_check(&mut assessment, path, protocol::METHOD_NOT_ALLOWED, "method not allowed", Critical, 1);
        }
        if matches!(facts.method.as_str(), "GET" | "HEAD") && facts.content_length.is_some_and(|length| length > 0) {
            self.protocol_check(
                &mut assessment,
                path,
                protocol::BODY_ON_GET,
                "GET or HEAD request with a body",
                Critical,
                1,
            );
        }
        if facts.invalid_encoding {
            self.protocol_check(&mut assessment, path, protocol::INVALID_ENCODING, "invalid URL encoding", Warning, 1);
        }
        if facts.control_characters {
            self.protocol_check(
                &mut assessment,
                path,
                protocol::CONTROL_CHARACTERS,
                "NUL or control character in path or argument",
                Critical,
                1,
            );
        }
        if facts.header_injection {
            self.protocol_check(
                &mut assessment,
                path,
                protocol::HEADER_INJECTION,
                "header injection: CR/LF in an argument",
                Critical,
                1,
            );
        }
        if facts.host_is_ip {
            self.protocol_check(
                &mut assessment,
                path,
                protocol::HOST_IS_IP,
                "Host header is an IP address",
                Warning,
                1,
            );
        }
        if facts.argument_count > self.config.max_arguments {
            self.protocol_check(&mut assessment, path, protocol::TOO_MANY_ARGUMENTS, "too many arguments", Critical, 1);
        }
        if facts.longest_argument > self.config.max_argument_length {
            self.protocol_check(
                &mut assessment,
                path,
                protocol::ARGUMENT_TOO_LONG,
                "argument value too long",
                Critical,
                1,
            );
        }
        if let Some(content_type) = &facts.content_type
            && facts.content_length.is_some_and(|length| length > 0)
        {
            let essence = content_type.split(';').next().unwrap_or_default().trim();
            if !self.config.allowed_content_types.iter().any(|allowed| allowed.eq_ignore_ascii_case(essence)) {
                self.protocol_check(
                    &mut assessment,
                    path,
                    protocol::CONTENT_TYPE_NOT_ALLOWED,
                    "request content type not allowed",
                    Critical,
                    1,
                );
            }
        }
        if let Some(reason) = &facts.malformed_body {
            let message = format!("request body does not parse as its content type: {reason}");
            self.protocol_check(&mut assessment, path, protocol::MALFORMED_BODY, &message, Critical, 1);
        }
        if !facts.method.is_empty() && !facts.has_user_agent {
            self.protocol_check(&mut assessment, path, protocol::NO_USER_AGENT, "missing User-Agent", Notice, 2);
        }
        if !facts.method.is_empty() && !facts.has_accept && facts.method != "OPTIONS" {
            self.protocol_check(&mut assessment, path, protocol::NO_ACCEPT, "missing Accept", Notice, 2);
        }
        assessment
    }

    /// Whether a score blocks.
    pub fn blocks(&self, assessment: &Assessment) -> bool {
        self.config.mode == Mode::Block && assessment.score >= self.config.anomaly_threshold
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compile(json: &str) -> Engine {
        Engine::new(serde_json::from_str(json).unwrap()).unwrap()
    }

    fn get(engine: &Engine, path: &str) -> Assessment {
        let headers = vec![("user-agent".to_owned(), b"test".to_vec()), ("accept".to_owned(), b"*/*".to_vec())];
        engine.assess(&Inspected::from_head("GET", path, "app.test", &headers), path)
    }

    #[test]
    fn each_rule_counts_once_and_scores_add_up() {
        let engine = compile("{}");
        let assessment = get(&engine, "/?a=%27%20or%201%3D1--&b=%27%20or%201%3D1--");
        let ids: Vec<u32> = assessment.hits.iter().map(|hit| hit.rule).collect();
        assert_eq!(ids, [942100, 942110], "two rules, each once, though two arguments match");
        assert_eq!(assessment.score, 5 * ids.len() as u32);
        assert!(engine.blocks(&assessment));
        assert_eq!(get(&engine, "/?q=plain+words").score, 0);
    }

    #[test]
    fn exclusions_silence_a_rule_for_a_path_and_target() {
        let engine = compile(
            r#"{"exclusions": [{"path_prefix": "/search", "rules": [942100, 942110], "targets": ["args:q"]}]}"#,
        );
        assert_eq!(get(&engine, "/search?q=%27%20or%201%3D1--").score, 0);
        assert!(get(&engine, "/search?other=%27%20or%201%3D1--").score >= 5, "another argument");
        assert!(get(&engine, "/find?q=%27%20or%201%3D1--").score >= 5, "another path");
        let disabled = compile(r#"{"disabled_rules": [941110]}"#);
        assert!(!get(&disabled, "/?x=%3Cscript%3E").hits.iter().any(|hit| hit.rule == 941110));
    }

    #[test]
    fn paranoia_levels_add_rules_and_detect_mode_never_blocks() {
        let level1 = compile("{}");
        let level2 = compile(r#"{"paranoia_level": 2}"#);
        let path = "/?q=select%20name%20from%20list";
        assert_eq!(get(&level1, path).score, 0);
        assert_eq!(get(&level2, path).hits[0].rule, 942200);
        let no_agent = level2.assess(&Inspected::from_head("GET", "/", "app.test", &[]), "/");
        assert!(no_agent.hits.iter().any(|hit| hit.rule == 920320));
        let detect = compile(r#"{"mode": "detect"}"#);
        let assessment = get(&detect, "/?x=%3Cscript%3Ealert(1)%3C/script%3E");
        assert!(assessment.score >= 5 && !detect.blocks(&assessment));
    }

    #[test]
    fn custom_rules_run_on_their_targets() {
        let engine = compile(
            r#"{"rules": [{"id": 100001, "message": "internal hostname", "pattern": "\\.corp\\.internal\\b", "targets": ["args", "headers:x-forwarded-host"], "severity": "warning"}]}"#,
        );
        let hit = &get(&engine, "/?next=db1.corp.internal").hits[0];
        assert_eq!((hit.rule, hit.score, hit.target.as_str()), (100001, 3, "args:next"));
        assert_eq!(get(&engine, "/db1.corp.internal").score, 0, "not the path");
    }

    #[test]
    fn protocol_checks() {
        let engine = compile("{}");
        let headers = |extra: &[(&str, &str)]| -> Vec<(String, Vec<u8>)> {
            let mut all = vec![("user-agent".to_owned(), b"t".to_vec()), ("accept".to_owned(), b"*/*".to_vec())];
            all.extend(extra.iter().map(|(n, v)| ((*n).to_owned(), v.as_bytes().to_vec())));
            all
        };
        let rules = |method: &str, path: &str, extra: &[(&str, &str)]| -> Vec<u32> {
            engine
                .assess(&Inspected::from_head(method, path, "app.test", &headers(extra)), path)
                .hits
                .iter()
                .map(|hit| hit.rule)
                .collect()
        };
        assert_eq!(rules("TRACE", "/", &[]), [911100]);
        assert_eq!(rules("GET", "/", &[("content-length", "5")]), [920170]);
        assert_eq!(rules("GET", "/?a=%zz", &[]), [920220]);
        assert_eq!(rules("GET", "/a%00b", &[]), [920270]);
        assert_eq!(rules("GET", "/?r=x%0d%0aSet-Cookie:%20a=b", &[]), [921130]);
        assert_eq!(rules("POST", "/", &[("content-length", "5"), ("content-type", "application/x-evil")]), [920420]);
        let many: String = (0..300).map(|i| format!("a{i}=1&")).collect();
        assert_eq!(rules("GET", &format!("/?{many}"), &[]), [920380]);
        let engine_host = Engine::new(Config::default()).unwrap();
        let inspected = Inspected::from_head("GET", "/", "10.1.2.3:80", &headers(&[]));
        assert_eq!(engine_host.assess(&inspected, "/").hits[0].rule, 920350);
    }

    #[test]
    fn bad_configs_are_refused() {
        let refused = |json: &str| Engine::new(serde_json::from_str(json).unwrap()).unwrap_err();
        assert!(refused(r#"{"paranoia_level": 5}"#).contains("1 to 4"));
        assert!(refused(r#"{"rules": [{"id": 942100, "message": "m", "pattern": "x"}]}"#).contains("already used"));
        assert!(refused(r#"{"rules": [{"id": 100001, "message": "m", "pattern": "("}]}"#).contains("rules[0]"));
        assert!(refused(r#"{"exclusions": [{"targets": ["argz"]}]}"#).contains("exclusions[0]"));
    }
}
