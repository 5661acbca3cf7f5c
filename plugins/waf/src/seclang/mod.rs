//! A SecLang engine: rule sets written for ModSecurity (the OWASP Core Rule Set, and the
//! exclusions people write for it) loaded from files and run on each request.
//!
//! [`parse`] splits the text into directives, this module compiles them into a [`RuleSet`]
//! (once per filter instance configuration: patterns, phrase sets and data files are compiled
//! at load, never per request), and [`eval`] runs a rule set's phases on one request's
//! [`input`]. Directives the engine does not implement are refused at load, with file and line;
//! so are rules using variables, operators, transformations or actions it does not know.

pub mod eval;
pub mod input;
pub mod macros;
pub mod operators;
pub mod parse;
pub mod prefilter;
pub mod transforms;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use macros::Macro;
use operators::{Comparison, Network, Operator, Pattern};
use parse::{Directive, Selector, VariableSpec};
use transforms::Transform;

/// Why a rule set did not load: the file and line, and what is wrong there.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadError {
    pub file: String,
    pub line: usize,
    pub message: String,
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.file, self.line, self.message)
    }
}

/// The rule files a rule set may read, by path (`crs/REQUEST-942-APPLICATION-ATTACK-SQLI.conf`,
/// `crs/sql-errors.data`): what the host read from the folders and files the filter was given.
#[derive(Debug, Default, Clone)]
pub struct Files {
    files: BTreeMap<String, String>,
    /// Where each top-level name came from on disk, so that `Include /abs/path/*.conf` inside a
    /// rule file finds its files.
    roots: Vec<(String, String)>,
}

impl Files {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a file at `path` (slash-separated, first segment the name it was given under).
    pub fn add(&mut self, path: impl Into<String>, text: impl Into<String>) {
        self.files.insert(path.into(), text.into());
    }

    /// Says that `name` was read from `disk_path`.
    pub fn add_root(&mut self, name: impl Into<String>, disk_path: impl Into<String>) {
        self.roots.push((name.into(), disk_path.into()));
    }

    /// Reads a folder from disk under `name`, as the host does for a filter's `files` (for
    /// native tests and benchmarks; a filter instance has no file system).
    #[cfg(not(target_family = "wasm"))]
    pub fn read_folder(&mut self, name: &str, folder: &std::path::Path) -> std::io::Result<()> {
        fn walk(files: &mut Files, prefix: &str, folder: &std::path::Path) -> std::io::Result<()> {
            let mut entries: Vec<_> = std::fs::read_dir(folder)?.collect::<Result<Vec<_>, _>>()?;
            entries.sort_by_key(|entry| entry.file_name());
            for entry in entries {
                let file_name = entry.file_name().to_string_lossy().into_owned();
                let path = entry.path();
                if file_name.starts_with('.') {
                    continue;
                }
                if path.is_dir() {
                    walk(files, &format!("{prefix}/{file_name}"), &path)?;
                } else {
                    files.add(format!("{prefix}/{file_name}"), std::fs::read_to_string(&path)?);
                }
            }
            Ok(())
        }
        walk(self, name, folder)?;
        self.add_root(name, folder.to_string_lossy());
        Ok(())
    }

    pub fn get(&self, path: &str) -> Option<&str> {
        self.files.get(path).map(String::as_str)
    }

    /// The `.conf` files under `name` (the file itself, or a folder's, in path order).
    pub fn rule_files(&self, name: &str) -> Vec<String> {
        if self.files.contains_key(name) {
            return vec![name.to_owned()];
        }
        let prefix = format!("{name}/");
        self.files.keys().filter(|path| path.starts_with(&prefix) && path.ends_with(".conf")).cloned().collect()
    }

    /// Files matching an `Include` pattern (`*` within one segment), relative to `from`'s folder
    /// or, when absolute, to a root read from that place on disk.
    fn matching(&self, pattern: &str, from: &str) -> Vec<String> {
        let resolved = if pattern.starts_with('/') {
            let mapped = self.roots.iter().find_map(|(name, disk)| {
                let disk = disk.trim_end_matches('/');
                pattern
                    .strip_prefix(disk)
                    .filter(|rest| rest.is_empty() || rest.starts_with('/'))
                    .map(|rest| format!("{name}{rest}"))
            });
            match mapped {
                Some(path) => path,
                None => return Vec::new(),
            }
        } else {
            join(folder(from), pattern)
        };
        self.files.keys().filter(|path| glob_matches(&resolved, path)).cloned().collect()
    }
}

fn folder(path: &str) -> &str {
    path.rsplit_once('/').map_or("", |(folder, _)| folder)
}

fn join(folder: &str, relative: &str) -> String {
    let mut parts: Vec<&str> = folder.split('/').filter(|part| !part.is_empty()).collect();
    for part in relative.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            other => parts.push(other),
        }
    }
    parts.join("/")
}

fn glob_matches(pattern: &str, path: &str) -> bool {
    let (pattern_parts, path_parts): (Vec<&str>, Vec<&str>) = (pattern.split('/').collect(), path.split('/').collect());
    pattern_parts.len() == path_parts.len()
        && pattern_parts
            .iter()
            .zip(&path_parts)
            .all(|(pattern, part)| segment_matches(pattern.as_bytes(), part.as_bytes()))
}

fn segment_matches(pattern: &[u8], text: &[u8]) -> bool {
    match pattern.split_first() {
        None => text.is_empty(),
        Some((b'*', rest)) => (0..=text.len()).any(|skip| segment_matches(rest, &text[skip..])),
        Some((b'?', rest)) => !text.is_empty() && segment_matches(rest, &text[1..]),
        Some((c, rest)) => text.first() == Some(c) && segment_matches(rest, &text[1..]),
    }
}

/// A variable a rule reads, compiled.
#[derive(Debug)]
pub struct Target {
    pub variable: Variable,
    pub selector: Option<CompiledSelector>,
    pub count: bool,
}

#[derive(Debug)]
pub enum CompiledSelector {
    /// Lower case; compared without regard to case.
    Name(String),
    Pattern(Box<Pattern>),
}

impl CompiledSelector {
    pub fn selects(&self, key: &str) -> bool {
        match self {
            Self::Name(name) => key.eq_ignore_ascii_case(name),
            Self::Pattern(pattern) => pattern.matches(key.as_bytes(), None),
        }
    }
}

/// The variables the engine provides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variable {
    Args,
    ArgsNames,
    ArgsGet,
    ArgsGetNames,
    ArgsPost,
    ArgsPostNames,
    ArgsCombinedSize,
    RequestHeaders,
    RequestHeadersNames,
    RequestCookies,
    RequestCookiesNames,
    RequestUri,
    RequestUriRaw,
    RequestFilename,
    RequestBasename,
    RequestBody,
    RequestBodyLength,
    RequestLine,
    RequestMethod,
    RequestProtocol,
    QueryString,
    FullRequest,
    FullRequestLength,
    Files,
    FilesNames,
    FilesSizes,
    FilesCombinedSize,
    MultipartPartHeaders,
    MultipartStrictError,
    MultipartUnmatchedBoundary,
    ReqbodyError,
    ReqbodyErrorMsg,
    ReqbodyProcessor,
    Xml,
    Tx,
    Ip,
    Global,
    Session,
    User,
    Resource,
    Geo,
    Env,
    MatchedVar,
    MatchedVarName,
    MatchedVars,
    MatchedVarsNames,
    RemoteAddr,
    RemotePort,
    ServerName,
    ServerAddr,
    ServerPort,
    UniqueId,
    Duration,
    /// Response variables: empty while the request is inspected (response phases are not run).
    Response,
}

impl Variable {
    fn named(name: &str) -> Option<Self> {
        Some(match name {
            "ARGS" => Self::Args,
            "ARGS_NAMES" => Self::ArgsNames,
            "ARGS_GET" => Self::ArgsGet,
            "ARGS_GET_NAMES" => Self::ArgsGetNames,
            "ARGS_POST" => Self::ArgsPost,
            "ARGS_POST_NAMES" => Self::ArgsPostNames,
            "ARGS_COMBINED_SIZE" => Self::ArgsCombinedSize,
            "REQUEST_HEADERS" => Self::RequestHeaders,
            "REQUEST_HEADERS_NAMES" => Self::RequestHeadersNames,
            "REQUEST_COOKIES" => Self::RequestCookies,
            "REQUEST_COOKIES_NAMES" => Self::RequestCookiesNames,
            "REQUEST_URI" => Self::RequestUri,
            "REQUEST_URI_RAW" => Self::RequestUriRaw,
            "REQUEST_FILENAME" => Self::RequestFilename,
            "REQUEST_BASENAME" => Self::RequestBasename,
            "REQUEST_BODY" => Self::RequestBody,
            "REQUEST_BODY_LENGTH" => Self::RequestBodyLength,
            "REQUEST_LINE" => Self::RequestLine,
            "REQUEST_METHOD" => Self::RequestMethod,
            "REQUEST_PROTOCOL" => Self::RequestProtocol,
            "QUERY_STRING" => Self::QueryString,
            "FULL_REQUEST" => Self::FullRequest,
            "FULL_REQUEST_LENGTH" => Self::FullRequestLength,
            "FILES" => Self::Files,
            "FILES_NAMES" => Self::FilesNames,
            "FILES_SIZES" => Self::FilesSizes,
            "FILES_COMBINED_SIZE" => Self::FilesCombinedSize,
            "MULTIPART_PART_HEADERS" => Self::MultipartPartHeaders,
            "MULTIPART_STRICT_ERROR" => Self::MultipartStrictError,
            "MULTIPART_UNMATCHED_BOUNDARY" => Self::MultipartUnmatchedBoundary,
            "REQBODY_ERROR" | "REQBODY_PROCESSOR_ERROR" => Self::ReqbodyError,
            "REQBODY_ERROR_MSG" => Self::ReqbodyErrorMsg,
            "REQBODY_PROCESSOR" => Self::ReqbodyProcessor,
            "XML" => Self::Xml,
            "TX" => Self::Tx,
            "IP" => Self::Ip,
            "GLOBAL" => Self::Global,
            "SESSION" => Self::Session,
            "USER" => Self::User,
            "RESOURCE" => Self::Resource,
            "GEO" => Self::Geo,
            "ENV" => Self::Env,
            "MATCHED_VAR" => Self::MatchedVar,
            "MATCHED_VAR_NAME" => Self::MatchedVarName,
            "MATCHED_VARS" => Self::MatchedVars,
            "MATCHED_VARS_NAMES" => Self::MatchedVarsNames,
            "REMOTE_ADDR" => Self::RemoteAddr,
            "REMOTE_PORT" => Self::RemotePort,
            "SERVER_NAME" => Self::ServerName,
            "SERVER_ADDR" => Self::ServerAddr,
            "SERVER_PORT" => Self::ServerPort,
            "UNIQUE_ID" => Self::UniqueId,
            "DURATION" => Self::Duration,
            "RESPONSE_BODY"
            | "RESPONSE_HEADERS"
            | "RESPONSE_HEADERS_NAMES"
            | "RESPONSE_STATUS"
            | "RESPONSE_PROTOCOL"
            | "RESPONSE_CONTENT_TYPE"
            | "RESPONSE_CONTENT_LENGTH"
            | "STATUS_LINE" => Self::Response,
            _ => return None,
        })
    }

    /// The persistent-looking collections, kept for one request here.
    pub fn collection_name(self) -> Option<&'static str> {
        Some(match self {
            Self::Tx => "tx",
            Self::Ip => "ip",
            Self::Global => "global",
            Self::Session => "session",
            Self::User => "user",
            Self::Resource => "resource",
            Self::Geo => "geo",
            Self::Env => "env",
            _ => return None,
        })
    }
}

/// What a rule does when it (and its chain) matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disruptive {
    Pass,
    /// What the phase's `SecDefaultAction` says (`pass` in anomaly-scoring mode).
    Block,
    Deny,
    Drop,
    Redirect,
    /// Stop inspecting: the whole request, or only this phase.
    Allow {
        phase_only: bool,
    },
}

#[derive(Debug)]
pub enum SetVar {
    Assign { collection: String, name: Macro, value: Macro },
    Add { collection: String, name: Macro, value: Macro, subtract: bool },
    Delete { collection: String, name: Macro },
}

/// `ctl:` changes to the rest of one request's inspection.
#[derive(Debug, Clone)]
pub enum Ctl {
    RemoveById(Vec<(u32, u32)>),
    RemoveByTag(String),
    RemoveTargetById(Vec<(u32, u32)>, TargetExclusion),
    RemoveTargetByTag(String, TargetExclusion),
    Engine(EngineMode),
    BodyProcessor(input::BodyProcessor),
    BodyAccess(bool),
    /// Audit log settings and the like: accepted, nothing to do here.
    Ignored,
}

/// A target taken out of a rule: a variable, all of it or the elements a selector picks.
#[derive(Debug, Clone)]
pub struct TargetExclusion {
    pub variable: Variable,
    pub selector: Option<SelectorText>,
}

/// An exclusion's selector, compiled once (shared by the rules and `ctl:`s that use it).
#[derive(Debug, Clone)]
pub enum SelectorText {
    Name(String),
    Pattern(Arc<Pattern>),
}

impl TargetExclusion {
    fn excludes(&self, variable: Variable, key: &str) -> bool {
        self.variable == variable
            && match &self.selector {
                None => true,
                Some(SelectorText::Name(name)) => key.eq_ignore_ascii_case(name),
                Some(SelectorText::Pattern(pattern)) => pattern.matches(key.as_bytes(), None),
            }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineMode {
    On,
    DetectionOnly,
    Off,
}

/// One `SecRule` or `SecAction` (a chain's links hang off its first rule).
#[derive(Debug)]
pub struct Rule {
    pub id: u32,
    pub phase: u8,
    pub file: String,
    pub line: usize,
    pub targets: Vec<Target>,
    pub exclusions: Vec<TargetExclusion>,
    pub operator: Operator,
    pub negated: bool,
    pub transforms: Vec<Transform>,
    /// The same number for every rule with the same transformations: what a transaction's
    /// cache of transformed values is keyed by.
    pub transform_chain: u32,
    /// The operator's slot in the rule set's literal prefilter, when its pattern has one.
    pub prefilter: Option<u32>,
    pub multi_match: bool,
    pub capture: bool,
    pub disruptive: Option<Disruptive>,
    pub status: Option<u16>,
    pub redirect_to: Option<String>,
    pub setvars: Vec<SetVar>,
    pub ctls: Vec<Ctl>,
    pub skip_after: Option<String>,
    pub skip: usize,
    pub log: bool,
    pub msg: Option<Macro>,
    pub logdata: Option<Macro>,
    pub severity: Option<u8>,
    pub tags: Vec<String>,
    pub chained: Option<Box<Rule>>,
}

impl Rule {
    /// A rule read at `file:line` that matches nothing and does nothing yet: its directive's
    /// arguments fill it in.
    fn new(file: String, line: usize, phase: u8) -> Self {
        Self {
            id: 0,
            phase,
            file,
            line,
            targets: Vec::new(),
            exclusions: Vec::new(),
            operator: Operator::NoMatch,
            negated: false,
            transforms: Vec::new(),
            transform_chain: 0,
            prefilter: None,
            multi_match: false,
            capture: false,
            disruptive: None,
            status: None,
            redirect_to: None,
            setvars: Vec::new(),
            ctls: Vec::new(),
            skip_after: None,
            skip: 0,
            log: true,
            msg: None,
            logdata: None,
            severity: None,
            tags: Vec::new(),
            chained: None,
        }
    }
}

#[derive(Debug)]
pub enum Entry {
    Rule(Box<Rule>),
    Marker(String),
}

/// The defaults a `SecDefaultAction` sets for its phase.
#[derive(Debug, Clone, Default)]
struct Defaults {
    disruptive: Option<Disruptive>,
    transforms: Vec<Transform>,
    log: Option<bool>,
    status: Option<u16>,
}

/// A loaded rule set: its rules by phase, in file order.
#[derive(Debug, Default)]
pub struct RuleSet {
    /// Index 0 is phase 1; phases 3 to 5 (response and logging) are loaded and kept but not run
    /// by a request filter.
    pub phases: [Vec<Entry>; 5],
    pub engine: Option<EngineMode>,
    pub body_access: bool,
    defaults: [Defaults; 5],
    pub prefilter: prefilter::Prefilter,
}

/// Directives about ModSecurity's own logging and storage: nothing to do with what a request
/// is checked for, so accepted and left alone.
const HOST_DIRECTIVES: &[&str] = &[
    "SecComponentSignature",
    "SecCollectionTimeout",
    "SecAuditEngine",
    "SecAuditLog",
    "SecAuditLog2",
    "SecAuditLogParts",
    "SecAuditLogType",
    "SecAuditLogFormat",
    "SecAuditLogStorageDir",
    "SecAuditLogDirMode",
    "SecAuditLogFileMode",
    "SecAuditLogRelevantStatus",
    "SecDebugLog",
    "SecDebugLogLevel",
    "SecTmpDir",
    "SecDataDir",
    "SecUploadDir",
    "SecUploadKeepFiles",
    "SecUploadFileMode",
    "SecUploadFileLimit",
    "SecTmpSaveUploadedFiles",
    "SecStatusEngine",
    "SecPcreMatchLimit",
    "SecPcreMatchLimitRecursion",
    "SecRequestBodyLimit",
    "SecRequestBodyNoFilesLimit",
    "SecRequestBodyInMemoryLimit",
    "SecRequestBodyLimitAction",
    "SecRequestBodyJsonDepthLimit",
    "SecArgumentsLimit",
    "SecResponseBodyAccess",
    "SecResponseBodyMimeType",
    "SecResponseBodyLimit",
    "SecResponseBodyLimitAction",
    "SecUnicodeMapFile",
    "SecCookieFormat",
    "SecArgumentSeparator",
    "SecServerSignature",
    "SecGeoLookupDb",
];

impl RuleSet {
    /// Loads `sources` (names given to [`Files`], or generated text under a name of its own)
    /// in order into one rule set.
    pub fn load(files: &Files, sources: &[(String, Option<String>)]) -> Result<Self, LoadError> {
        let mut set = RuleSet { body_access: true, ..Self::default() };
        let mut loader = Loader { files, set: &mut set, pending_chain: None, depth: 0, prefilter: Default::default() };
        for (name, text) in sources {
            match text {
                Some(text) => loader.text(name, text)?,
                None => {
                    let paths = files.rule_files(name);
                    if paths.is_empty() {
                        return Err(LoadError {
                            file: name.clone(),
                            line: 0,
                            message: "no rule files (.conf) there".into(),
                        });
                    }
                    for path in paths {
                        loader.file(&path)?;
                    }
                }
            }
        }
        if let Some((rule, _)) = loader.pending_chain.take() {
            return Err(LoadError {
                file: rule.file.clone(),
                line: rule.line,
                message: "chain without a next rule".into(),
            });
        }
        let prefilter = std::mem::take(&mut loader.prefilter);
        set.prefilter = prefilter.build();
        set.number_transform_chains();
        Ok(set)
    }

    fn number_transform_chains(&mut self) {
        let mut chains: std::collections::HashMap<Vec<Transform>, u32> = std::collections::HashMap::new();
        for rule in self.rules_mut() {
            let mut link = Some(rule);
            while let Some(current) = link {
                let next = chains.len() as u32;
                current.transform_chain = *chains.entry(current.transforms.clone()).or_insert(next);
                link = current.chained.as_deref_mut();
            }
        }
    }

    /// How many rules (chains counted once) run in the request phases.
    pub fn request_rules(&self) -> usize {
        self.phases[..2].iter().flatten().filter(|entry| matches!(entry, Entry::Rule(_))).count()
    }

    fn rules_mut(&mut self) -> impl Iterator<Item = &mut Rule> {
        self.phases.iter_mut().flatten().filter_map(|entry| match entry {
            Entry::Rule(rule) => Some(&mut **rule),
            Entry::Marker(_) => None,
        })
    }
}

struct Loader<'a> {
    files: &'a Files,
    set: &'a mut RuleSet,
    /// A rule with `chain` whose links are still being read, and the last link's place.
    pending_chain: Option<(Rule, usize)>,
    depth: usize,
    prefilter: prefilter::PrefilterBuilder,
}

impl Loader<'_> {
    fn file(&mut self, path: &str) -> Result<(), LoadError> {
        let text = self.files.get(path).ok_or_else(|| LoadError {
            file: path.to_owned(),
            line: 0,
            message: "no such rule file".into(),
        })?;
        self.text(path, text)
    }

    fn text(&mut self, path: &str, text: &str) -> Result<(), LoadError> {
        for directive in parse::directives(path, text)? {
            self.directive(&directive)?;
        }
        Ok(())
    }

    fn directive(&mut self, directive: &Directive) -> Result<(), LoadError> {
        let name = directive.name.as_str();
        if self.pending_chain.is_some() && name != "SecRule" && name != "SecAction" {
            return Err(directive.error(format!("{name} inside a chain (a chained rule must come next)")));
        }
        let arg = |index: usize| {
            directive
                .args
                .get(index)
                .map(String::as_str)
                .ok_or_else(|| directive.error(format!("{name}: missing argument")))
        };
        match name {
            "SecRule" => {
                let rule =
                    self.rule(directive, arg(0)?, arg(1)?, directive.args.get(2).map(String::as_str).unwrap_or(""))?;
                self.add_rule(directive, rule)
            }
            "SecAction" => {
                let rule = self.rule(directive, "REQUEST_LINE", "@unconditionalMatch", arg(0)?)?;
                self.add_rule(directive, rule)
            }
            "SecMarker" => {
                let marker = arg(0)?.to_owned();
                for phase in &mut self.set.phases {
                    phase.push(Entry::Marker(marker.clone()));
                }
                Ok(())
            }
            "SecDefaultAction" => {
                let actions = parse::actions(arg(0)?).map_err(|message| directive.error(message))?;
                let phase = actions
                    .iter()
                    .find(|(name, _)| name == "phase")
                    .map(|(_, value)| phase_number(value))
                    .transpose()
                    .map_err(|message| directive.error(message))?
                    .unwrap_or(2);
                let mut defaults = Defaults::default();
                for (action, value) in &actions {
                    match action.as_str() {
                        "t" if value.eq_ignore_ascii_case("none") => defaults.transforms.clear(),
                        "t" => defaults.transforms.push(
                            Transform::named(value)
                                .ok_or_else(|| directive.error(format!("unknown transformation t:{value}")))?,
                        ),
                        "log" => defaults.log = Some(true),
                        "nolog" => defaults.log = Some(false),
                        "status" => defaults.status = value.parse().ok(),
                        other => {
                            if let Some(disruptive) = disruptive(other, value) {
                                defaults.disruptive = Some(disruptive);
                            }
                        }
                    }
                }
                self.set.defaults[usize::from(phase - 1)] = defaults;
                Ok(())
            }
            "SecRuleEngine" => {
                self.set.engine =
                    Some(engine_mode(arg(0)?).ok_or_else(|| directive.error("expected On, Off or DetectionOnly"))?);
                Ok(())
            }
            "SecRequestBodyAccess" => {
                self.set.body_access = arg(0)?.eq_ignore_ascii_case("on");
                Ok(())
            }
            "SecRuleRemoveById" => {
                let ranges = directive
                    .args
                    .iter()
                    .flat_map(|arg| arg.split([' ', ',']))
                    .filter(|part| !part.is_empty())
                    .map(id_range)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|message| directive.error(message))?;
                self.remove_rules(|rule| in_ranges(&ranges, rule.id));
                Ok(())
            }
            "SecRuleRemoveByTag" => {
                let pattern = Pattern::compile(arg(0)?).map_err(|message| directive.error(message))?;
                self.remove_rules(|rule| rule.tags.iter().any(|tag| pattern.matches(tag.as_bytes(), None)));
                Ok(())
            }
            "SecRuleRemoveByMsg" => {
                let pattern = Pattern::compile(arg(0)?).map_err(|message| directive.error(message))?;
                self.remove_rules(|rule| {
                    rule.msg.as_ref().and_then(Macro::literal).is_some_and(|msg| pattern.matches(msg.as_bytes(), None))
                });
                Ok(())
            }
            "SecRuleUpdateTargetById" | "SecRuleUpdateTargetByTag" | "SecRuleUpdateTargetByMsg" => {
                let selector = arg(0)?;
                let specs = parse::variables(arg(1)?).map_err(|message| directive.error(message))?;
                let by_id = name == "SecRuleUpdateTargetById";
                let ranges = if by_id {
                    selector.split([' ', ',']).filter(|p| !p.is_empty()).map(id_range).collect::<Result<Vec<_>, _>>()
                } else {
                    Ok(Vec::new())
                }
                .map_err(|message| directive.error(message))?;
                let pattern = if by_id {
                    None
                } else {
                    Some(Pattern::compile(selector).map_err(|message| directive.error(message))?)
                };
                let mut updates = Vec::new();
                for spec in &specs {
                    updates.push(self.target_or_exclusion(directive, spec)?);
                }
                let mut touched = 0;
                for rule in self.set.rules_mut() {
                    let chosen = match &pattern {
                        None => in_ranges(&ranges, rule.id),
                        Some(pattern) if name == "SecRuleUpdateTargetByTag" => {
                            rule.tags.iter().any(|tag| pattern.matches(tag.as_bytes(), None))
                        }
                        Some(pattern) => rule
                            .msg
                            .as_ref()
                            .and_then(Macro::literal)
                            .is_some_and(|msg| pattern.matches(msg.as_bytes(), None)),
                    };
                    if !chosen {
                        continue;
                    }
                    touched += 1;
                    for update in &updates {
                        match update {
                            TargetOrExclusion::Exclusion(exclusion) => rule.exclusions.push(exclusion.clone()),
                            TargetOrExclusion::Target(spec) => rule.targets.push(compile_target(directive, spec)?),
                        }
                    }
                }
                let _ = touched;
                Ok(())
            }
            "SecRuleUpdateActionById" => {
                let id = arg(0)?
                    .split(':')
                    .next()
                    .unwrap_or("")
                    .parse::<u32>()
                    .map_err(|_| directive.error("expected a rule id"))?;
                let actions = parse::actions(arg(1)?).map_err(|message| directive.error(message))?;
                for rule in self.set.rules_mut().filter(|rule| rule.id == id) {
                    for (action, value) in &actions {
                        if let Some(disruptive) = disruptive(action, value) {
                            rule.disruptive = Some(disruptive);
                        } else {
                            apply_action(directive, rule, action, value)?;
                        }
                    }
                }
                Ok(())
            }
            "Include" | "IncludeOptional" => {
                if self.depth > 8 {
                    return Err(directive.error("includes nested more than 8 deep"));
                }
                let pattern = arg(0)?;
                let paths = self.files.matching(pattern, &directive.file);
                if paths.is_empty() && name == "Include" {
                    return Err(directive.error(format!("Include {pattern}: no such file among the rule set's files")));
                }
                self.depth += 1;
                for path in paths {
                    self.file(&path)?;
                }
                self.depth -= 1;
                Ok(())
            }
            other if HOST_DIRECTIVES.iter().any(|known| known.eq_ignore_ascii_case(other)) => Ok(()),
            other => Err(directive.error(format!("unsupported directive {other}"))),
        }
    }

    fn remove_rules(&mut self, remove: impl Fn(&Rule) -> bool) {
        for phase in &mut self.set.phases {
            phase.retain(|entry| !matches!(entry, Entry::Rule(rule) if remove(rule)));
        }
    }

    fn add_rule(&mut self, directive: &Directive, rule: Rule) -> Result<(), LoadError> {
        let chains = rule.chained.is_some();
        // `chained` is used while reading as the flag "this rule has `chain`"; the link itself is
        // attached below.
        let mut rule = rule;
        rule.chained = None;
        match self.pending_chain.take() {
            Some((mut head, depth)) => {
                if rule.id != 0 && rule.id != head.id {
                    return Err(directive.error("a chained rule may not have its own id"));
                }
                let mut link = &mut head;
                for _ in 0..depth {
                    link = link.chained.as_mut().expect("links counted");
                }
                link.chained = Some(Box::new(rule));
                if chains {
                    self.pending_chain = Some((head, depth + 1));
                } else {
                    self.finish(head);
                }
            }
            None => {
                if rule.id == 0 {
                    return Err(directive.error("a rule needs an id"));
                }
                if self.set.rules_mut().any(|known| known.id == rule.id) {
                    return Err(directive.error(format!("rule id {} is already used", rule.id)));
                }
                if chains {
                    self.pending_chain = Some((rule, 0));
                } else {
                    self.finish(rule);
                }
            }
        }
        Ok(())
    }

    fn finish(&mut self, rule: Rule) {
        let phase = usize::from(rule.phase.clamp(1, 5) - 1);
        self.set.phases[phase].push(Entry::Rule(Box::new(rule)));
    }

    fn target_or_exclusion(&self, directive: &Directive, spec: &VariableSpec) -> Result<TargetOrExclusion, LoadError> {
        if spec.exclude {
            Ok(TargetOrExclusion::Exclusion(exclusion(spec).map_err(|message| directive.error(message))?))
        } else {
            Ok(TargetOrExclusion::Target(spec.clone()))
        }
    }

    fn rule(
        &mut self,
        directive: &Directive,
        variables: &str,
        operator: &str,
        actions: &str,
    ) -> Result<Rule, LoadError> {
        let in_chain = self.pending_chain.is_some();
        let specs = parse::variables(variables).map_err(|message| directive.error(message))?;
        let (negated, operator_name, argument) = parse::operator(operator);
        let actions = parse::actions(actions).map_err(|message| directive.error(message))?;
        let phase = self.pending_chain.as_ref().map_or(2, |(head, _)| head.phase);
        let mut rule = Rule::new(directive.file.clone(), directive.line, phase);
        rule.negated = negated;
        // The phase first: the phase's default transformations come before the rule's own.
        for (action, value) in &actions {
            if action == "phase" {
                rule.phase = phase_number(value).map_err(|message| directive.error(message))?;
            }
        }
        if !in_chain {
            let defaults = &self.set.defaults[usize::from(rule.phase - 1)];
            rule.transforms = defaults.transforms.clone();
            if let Some(log) = defaults.log {
                rule.log = log;
            }
        }
        for (action, value) in &actions {
            if let Some(disruptive) = disruptive(action, value) {
                if in_chain {
                    return Err(directive.error(format!("a chained rule may not have the disruptive action {action}")));
                }
                rule.disruptive = Some(disruptive);
                continue;
            }
            apply_action(directive, &mut rule, action, value)?;
        }
        for spec in &specs {
            if spec.exclude {
                rule.exclusions.push(exclusion(spec).map_err(|message| directive.error(message))?);
            } else {
                rule.targets.push(compile_target(directive, spec)?);
            }
        }
        rule.operator = self.operator(directive, &operator_name, &argument)?;
        if let Operator::Rx(pattern) = &rule.operator
            && matches!(**pattern, Pattern::Bytes(_))
        {
            rule.prefilter = self.prefilter.add(&operators::translate_pcre(&argument), &operators::syntax_config());
        }
        Ok(rule)
    }

    fn operator(&self, directive: &Directive, name: &str, argument: &str) -> Result<Operator, LoadError> {
        let fail = |message: String| directive.error(message);
        let argument_macro = Macro::parse(argument);
        Ok(match name.to_ascii_lowercase().as_str() {
            "rx" => {
                if argument_macro.literal().is_some() {
                    Operator::Rx(Box::new(Pattern::compile(argument).map_err(fail)?))
                } else {
                    Operator::RxMacro(argument_macro)
                }
            }
            "pm" => Operator::Pm(operators::phrase_matcher(&operators::phrases(argument)).map_err(fail)?),
            "pmfromfile" | "pmf" => {
                let mut phrases = Vec::new();
                for name in argument.split_whitespace() {
                    let path = join(folder(&directive.file), name);
                    let text = self
                        .files
                        .get(&path)
                        .ok_or_else(|| fail(format!("@pmFromFile: no data file {name} beside the rule file")))?;
                    phrases.extend(operators::data_file_phrases(text));
                }
                Operator::Pm(operators::phrase_matcher(&phrases).map_err(fail)?)
            }
            "detectsqli" => Operator::DetectSqli,
            "detectxss" => Operator::DetectXss,
            "contains" | "strmatch" => Operator::Contains(argument_macro),
            "containsword" => Operator::ContainsWord(argument_macro),
            "beginswith" => Operator::BeginsWith(argument_macro),
            "endswith" => Operator::EndsWith(argument_macro),
            "streq" => Operator::Streq(argument_macro),
            "within" => Operator::Within(argument_macro),
            "eq" => Operator::Compare(Comparison::Eq, argument_macro),
            "ge" => Operator::Compare(Comparison::Ge, argument_macro),
            "gt" => Operator::Compare(Comparison::Gt, argument_macro),
            "lt" => Operator::Compare(Comparison::Lt, argument_macro),
            "le" => Operator::Compare(Comparison::Le, argument_macro),
            "validatebyterange" => Operator::ValidateByteRange(operators::byte_ranges(argument).map_err(fail)?),
            "validateurlencoding" => Operator::ValidateUrlEncoding,
            "validateutf8encoding" => Operator::ValidateUtf8Encoding,
            "ipmatch" | "ipmatchf" | "ipmatchfromfile" => {
                let list: Vec<String> = if name.eq_ignore_ascii_case("ipmatch") {
                    argument.split([',', ' ']).filter(|p| !p.is_empty()).map(str::to_owned).collect()
                } else {
                    let path = join(folder(&directive.file), argument.trim());
                    let text = self
                        .files
                        .get(&path)
                        .ok_or_else(|| fail(format!("@{name}: no data file {argument} beside the rule file")))?;
                    operators::data_file_phrases(text)
                };
                Operator::IpMatch(
                    list.iter().map(|item| Network::parse(item)).collect::<Result<Vec<_>, _>>().map_err(fail)?,
                )
            }
            "unconditionalmatch" => Operator::UnconditionalMatch,
            "nomatch" | "geolookup" | "rbl" => Operator::NoMatch,
            other => return Err(fail(format!("unsupported operator @{other}"))),
        })
    }
}

enum TargetOrExclusion {
    Target(VariableSpec),
    Exclusion(TargetExclusion),
}

fn exclusion(spec: &VariableSpec) -> Result<TargetExclusion, String> {
    let variable = Variable::named(&spec.name).ok_or_else(|| format!("unknown variable {}", spec.name))?;
    let selector = match &spec.selector {
        None => None,
        Some(Selector::Name(name)) => Some(SelectorText::Name(name.clone())),
        Some(Selector::Pattern(pattern)) => Some(SelectorText::Pattern(Arc::new(Pattern::compile(pattern)?))),
    };
    Ok(TargetExclusion { variable, selector })
}

fn compile_target(directive: &Directive, spec: &VariableSpec) -> Result<Target, LoadError> {
    let variable =
        Variable::named(&spec.name).ok_or_else(|| directive.error(format!("unknown variable {}", spec.name)))?;
    if variable == Variable::Xml
        && let Some(Selector::Name(path)) = &spec.selector
        && !matches!(path.as_str(), "/*" | "//*" | "//@*" | "/@*")
    {
        return Err(directive.error(format!("XML:{path}: only XML:/* (text) and XML://@* (attributes) are supported")));
    }
    let selector = match &spec.selector {
        None => None,
        Some(Selector::Name(name)) => Some(CompiledSelector::Name(name.to_ascii_lowercase())),
        Some(Selector::Pattern(pattern)) => Some(CompiledSelector::Pattern(Box::new(
            Pattern::compile(pattern).map_err(|message| directive.error(message))?,
        ))),
    };
    Ok(Target { variable, selector, count: spec.count })
}

fn phase_number(value: &str) -> Result<u8, String> {
    match value.to_ascii_lowercase().as_str() {
        "1" => Ok(1),
        "2" | "request" => Ok(2),
        "3" => Ok(3),
        "4" | "response" => Ok(4),
        "5" | "logging" => Ok(5),
        other => Err(format!("phase:{other} is not a phase")),
    }
}

fn engine_mode(value: &str) -> Option<EngineMode> {
    match value.to_ascii_lowercase().as_str() {
        "on" => Some(EngineMode::On),
        "off" => Some(EngineMode::Off),
        "detectiononly" => Some(EngineMode::DetectionOnly),
        _ => None,
    }
}

fn disruptive(action: &str, value: &str) -> Option<Disruptive> {
    Some(match action {
        "pass" => Disruptive::Pass,
        "block" => Disruptive::Block,
        "deny" => Disruptive::Deny,
        "drop" => Disruptive::Drop,
        "redirect" => Disruptive::Redirect,
        "allow" => Disruptive::Allow { phase_only: value.eq_ignore_ascii_case("phase") },
        _ => return None,
    })
}

fn id_range(text: &str) -> Result<(u32, u32), String> {
    let parse = |value: &str| value.trim().parse::<u32>().map_err(|_| format!("{text:?} is not a rule id or range"));
    match text.split_once('-') {
        Some((low, high)) => Ok((parse(low)?, parse(high)?)),
        None => {
            let id = parse(text)?;
            Ok((id, id))
        }
    }
}

pub fn in_ranges(ranges: &[(u32, u32)], id: u32) -> bool {
    ranges.iter().any(|(low, high)| (*low..=*high).contains(&id))
}

/// Non-disruptive actions and metadata.
fn apply_action(directive: &Directive, rule: &mut Rule, action: &str, value: &str) -> Result<(), LoadError> {
    let fail = |message: String| directive.error(message);
    match action {
        "id" => rule.id = value.parse().map_err(|_| fail(format!("id:{value} is not a number")))?,
        "phase" => rule.phase = phase_number(value).map_err(fail)?,
        "t" => {
            if value.eq_ignore_ascii_case("none") {
                rule.transforms.clear();
            } else {
                rule.transforms
                    .push(Transform::named(value).ok_or_else(|| fail(format!("unknown transformation t:{value}")))?);
            }
        }
        "msg" => rule.msg = Some(Macro::parse(value)),
        "logdata" => rule.logdata = Some(Macro::parse(value)),
        "tag" => rule.tags.push(value.to_owned()),
        "severity" => {
            rule.severity = Some(match value.to_ascii_uppercase().as_str() {
                "EMERGENCY" | "0" => 0,
                "ALERT" | "1" => 1,
                "CRITICAL" | "2" => 2,
                "ERROR" | "3" => 3,
                "WARNING" | "4" => 4,
                "NOTICE" | "5" => 5,
                "INFO" | "6" => 6,
                "DEBUG" | "7" => 7,
                other => return Err(fail(format!("severity:{other} is not a severity"))),
            })
        }
        "log" | "auditlog" => rule.log = true,
        "nolog" => rule.log = false,
        "noauditlog"
        | "ver"
        | "rev"
        | "maturity"
        | "accuracy"
        | "sanitiseArg"
        | "sanitiseMatched"
        | "sanitiseMatchedBytes"
        | "sanitiseRequestHeader"
        | "sanitiseResponseHeader"
        | "expirevar"
        | "initcol"
        | "setuid"
        | "setsid"
        | "setenv"
        | "deprecatevar"
        | "xmlns" => {}
        "capture" => rule.capture = true,
        "multiMatch" => rule.multi_match = true,
        "chain" => rule.chained = Some(Box::new(Rule::new(String::new(), 0, 0))),
        "status" => rule.status = Some(value.parse().map_err(|_| fail(format!("status:{value} is not a status")))?),
        "skipAfter" => rule.skip_after = Some(value.to_owned()),
        "skip" => rule.skip = value.parse().map_err(|_| fail(format!("skip:{value} is not a number")))?,
        "setvar" => rule.setvars.push(setvar(value).map_err(fail)?),
        "ctl" => rule.ctls.push(ctl(value).map_err(fail)?),
        "exec" | "proxy" | "append" | "prepend" | "pause" => {
            return Err(fail(format!("action {action} is not supported (it would act outside the filter)")));
        }
        other => return Err(fail(format!("unsupported action {other}"))),
    }
    Ok(())
}

fn setvar(text: &str) -> Result<SetVar, String> {
    let (delete, text) = match text.strip_prefix('!') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (target, value) = match text.split_once('=') {
        Some((target, value)) => (target, Some(value)),
        None => (text, None),
    };
    let (collection, name) =
        target.split_once('.').ok_or_else(|| format!("setvar:{text}: expected collection.name"))?;
    let collection = collection.trim().to_ascii_lowercase();
    if !matches!(collection.as_str(), "tx" | "ip" | "global" | "session" | "user" | "resource") {
        return Err(format!("setvar:{text}: unknown collection {collection}"));
    }
    let name = Macro::parse(&name.trim().to_ascii_lowercase());
    if delete {
        return Ok(SetVar::Delete { collection, name });
    }
    Ok(match value {
        None => SetVar::Assign { collection, name, value: Macro::parse("1") },
        Some(value) => match value.strip_prefix('+') {
            Some(delta) => SetVar::Add { collection, name, value: Macro::parse(delta), subtract: false },
            None => match value.strip_prefix('-') {
                Some(delta) => SetVar::Add { collection, name, value: Macro::parse(delta), subtract: true },
                None => SetVar::Assign { collection, name, value: Macro::parse(value) },
            },
        },
    })
}

fn ctl(text: &str) -> Result<Ctl, String> {
    let (name, value) = text.split_once('=').ok_or_else(|| format!("ctl:{text}: expected name=value"))?;
    let target = |value: &str| -> Result<TargetExclusion, String> {
        let specs = parse::variables(value)?;
        let spec = specs.first().ok_or("no target")?;
        exclusion(spec)
    };
    let ids = |value: &str| -> Result<Vec<(u32, u32)>, String> {
        value.split([' ', ',']).filter(|p| !p.is_empty()).map(id_range).collect()
    };
    Ok(match name {
        "ruleRemoveById" => Ctl::RemoveById(ids(value)?),
        "ruleRemoveByTag" => Ctl::RemoveByTag(value.to_owned()),
        "ruleRemoveTargetById" => {
            let (id, variable) = value.split_once(';').ok_or_else(|| format!("ctl:{text}: expected id;TARGET"))?;
            Ctl::RemoveTargetById(ids(id)?, target(variable)?)
        }
        "ruleRemoveTargetByTag" => {
            let (tag, variable) = value.split_once(';').ok_or_else(|| format!("ctl:{text}: expected tag;TARGET"))?;
            Ctl::RemoveTargetByTag(tag.to_owned(), target(variable)?)
        }
        "ruleEngine" => {
            Ctl::Engine(engine_mode(value).ok_or_else(|| format!("ctl:{text}: expected On, Off or DetectionOnly"))?)
        }
        "requestBodyProcessor" => Ctl::BodyProcessor(
            input::BodyProcessor::named(value).ok_or_else(|| format!("ctl:{text}: unknown body processor"))?,
        ),
        "requestBodyAccess" => Ctl::BodyAccess(value.eq_ignore_ascii_case("on")),
        "auditEngine"
        | "auditLogParts"
        | "forceRequestBodyVariable"
        | "requestBodyLimit"
        | "debugLogLevel"
        | "responseBodyAccess"
        | "responseBodyLimit"
        | "hashEngine"
        | "hashEnforcement" => Ctl::Ignored,
        other => return Err(format!("unsupported ctl:{other}")),
    })
}
