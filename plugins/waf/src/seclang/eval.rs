//! Running a rule set on one request: its transaction (the `TX` collection and the other
//! per-request collections, matched variables, captures, `ctl:` changes) and the phases.
//!
//! Phase 1 runs on the request head, phase 2 once the body (if any) is in. A rule's targets
//! are read, transformed and matched; when a rule and its whole chain match, its actions run
//! (`setvar`, `ctl`, `skipAfter`, the disruptive action). In anomaly-scoring mode (the CRS's
//! default) rules only add to `TX:anomaly_score`, and the blocking evaluation rule denies.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use super::input::{BodyProcessor, Element, RequestInput};
use super::macros::{Macro, Part};
use super::{Ctl, Disruptive, EngineMode, Entry, Rule, RuleSet, SetVar, Target, TargetExclusion, Variable, in_ranges};

/// A rule that matched and logs: what the log line and the metrics say.
#[derive(Debug, Clone, PartialEq)]
pub struct Match {
    pub id: u32,
    pub message: String,
    pub data: String,
    pub variable: String,
    pub severity: Option<u8>,
}

/// A request stopped by a rule.
#[derive(Debug, Clone, PartialEq)]
pub struct Interruption {
    pub rule: u32,
    pub status: u16,
    pub location: Option<String>,
}

/// One request's run through a rule set.
pub struct Transaction {
    rules: Arc<RuleSet>,
    pub input: RequestInput,
    collections: HashMap<&'static str, BTreeMap<String, Vec<u8>>>,
    /// The last rule link's matches: `MATCHED_VAR(S)` and their names.
    matched: Vec<(String, Vec<u8>)>,
    captures: Vec<Vec<u8>>,
    removed_ids: Vec<(u32, u32)>,
    removed_tags: Vec<String>,
    removed_targets: Vec<(Vec<(u32, u32)>, TargetExclusion)>,
    removed_targets_by_tag: Vec<(String, TargetExclusion)>,
    engine: EngineMode,
    body_processor: Option<BodyProcessor>,
    body_access: bool,
    allowed: bool,
    /// Transformed request values, by the value's place in the input and the transformation
    /// chain: the CRS runs the same few chains over the same values rule after rule.
    transformed: std::cell::RefCell<HashMap<(usize, usize, u32), Transformed, PlaceHasher>>,
    /// The prefilter's findings for each value (original or transformed) scanned so far.
    prefiltered: std::cell::RefCell<HashMap<(usize, usize), super::prefilter::Hits, PlaceHasher>>,
    pub matches: Vec<Match>,
    pub interruption: Option<Interruption>,
    /// An interruption the engine's `DetectionOnly` mode let through.
    pub detected: Option<Interruption>,
}

impl Transaction {
    pub fn new(rules: Arc<RuleSet>, input: RequestInput) -> Self {
        let (engine, body_access) = (rules.engine.unwrap_or(EngineMode::On), rules.body_access);
        Self {
            rules,
            input,
            collections: HashMap::new(),
            matched: Vec::new(),
            captures: Vec::new(),
            removed_ids: Vec::new(),
            removed_tags: Vec::new(),
            removed_targets: Vec::new(),
            removed_targets_by_tag: Vec::new(),
            engine,
            body_processor: None,
            body_access,
            allowed: false,
            // Sized for a typical request's values under the CRS's chains: growing costs more.
            transformed: std::cell::RefCell::new(HashMap::with_capacity_and_hasher(256, PlaceHasher)),
            prefiltered: std::cell::RefCell::new(HashMap::with_capacity_and_hasher(64, PlaceHasher)),
            matches: Vec::new(),
            interruption: None,
            detected: None,
        }
    }

    /// Whether the body should be read and handed to [`Self::add_body`].
    pub fn wants_body(&self) -> bool {
        self.body_access && self.engine != EngineMode::Off && self.interruption.is_none() && !self.allowed
    }

    pub fn add_body(&mut self, body: Vec<u8>) {
        // Cached values are keyed by where they sit in the input, which the body changes.
        self.transformed.get_mut().clear();
        self.prefiltered.get_mut().clear();
        self.input.add_body(body, self.body_processor);
    }

    /// Runs phase 1 or 2; stops at an interruption or an `allow`.
    pub fn run_phase(&mut self, phase: u8) {
        if self.engine == EngineMode::Off || self.interruption.is_some() || self.allowed {
            return;
        }
        let rules = self.rules.clone();
        let entries = &rules.phases[usize::from(phase - 1)];
        let mut skip_to: Option<&str> = None;
        let mut skip_count = 0usize;
        for entry in entries {
            let rule = match entry {
                Entry::Marker(name) => {
                    if skip_to == Some(name.as_str()) {
                        skip_to = None;
                    }
                    continue;
                }
                Entry::Rule(rule) => rule,
            };
            if skip_to.is_some() {
                continue;
            }
            if skip_count > 0 {
                skip_count -= 1;
                continue;
            }
            if self.is_removed(rule) {
                continue;
            }
            if !self.chain_matches(rule) {
                continue;
            }
            let outcome = self.act(rule);
            if let Some(marker) = &rule.skip_after {
                skip_to = Some(marker);
            }
            skip_count = rule.skip;
            match outcome {
                Flow::Continue => {}
                Flow::StopPhase => return,
                Flow::StopAll => {
                    self.allowed = true;
                    return;
                }
                Flow::Interrupt(interruption) => {
                    if self.engine == EngineMode::DetectionOnly {
                        self.detected.get_or_insert(interruption);
                    } else {
                        self.interruption = Some(interruption);
                        return;
                    }
                }
            }
        }
    }

    fn is_removed(&self, rule: &Rule) -> bool {
        in_ranges(&self.removed_ids, rule.id)
            || self.removed_tags.iter().any(|tag| rule.tags.iter().any(|own| own.eq_ignore_ascii_case(tag)))
    }

    /// Whether the rule matches, and each of its chained links after it.
    fn chain_matches(&mut self, rule: &Rule) -> bool {
        self.matched.clear();
        let mut link = Some(rule);
        while let Some(current) = link {
            if !self.rule_matches(rule.id, &rule.tags, current) {
                return false;
            }
            link = current.chained.as_deref();
        }
        true
    }

    /// Reads one link's targets, transforms them, runs its operator; records what matched.
    fn rule_matches(&mut self, id: u32, tags: &[String], rule: &Rule) -> bool {
        let mut matched: Vec<(String, Vec<u8>)> = Vec::new();
        let mut captures = Vec::new();
        {
            let unexcluded =
                rule.exclusions.is_empty() && self.removed_targets.is_empty() && self.removed_targets_by_tag.is_empty();
            let excluded = |variable: Variable, key: &str| {
                !unexcluded
                    && (rule.exclusions.iter().any(|exclusion| exclusion.excludes(variable, key))
                        || self
                            .removed_targets
                            .iter()
                            .any(|(ids, exclusion)| in_ranges(ids, id) && exclusion.excludes(variable, key))
                        || self.removed_targets_by_tag.iter().any(|(tag, exclusion)| {
                            tags.iter().any(|own| own.eq_ignore_ascii_case(tag)) && exclusion.excludes(variable, key)
                        }))
            };
            let this = &*self;
            let mut evaluate = |name: ValueName<'_>, value: Cow<'_, [u8]>| {
                this.evaluate(rule, name, value, &mut matched, &mut captures);
            };
            for target in &rule.targets {
                if target.count {
                    let mut count = 0usize;
                    this.collect(target, &excluded, &mut |_, _| count += 1);
                    let name = ValueName::plain(variable_name(target.variable));
                    evaluate(name, Cow::Owned(count.to_string().into_bytes()));
                } else {
                    this.collect(target, &excluded, &mut evaluate);
                }
            }
        }
        if matched.is_empty() {
            return false;
        }
        if rule.capture && !captures.is_empty() {
            self.captures = captures;
        }
        self.matched = matched;
        true
    }

    /// Transforms one value and runs the link's operator on it; a match is added to `matched`.
    fn evaluate(
        &self,
        rule: &Rule,
        name: ValueName<'_>,
        value: Cow<'_, [u8]>,
        matched: &mut Vec<(String, Vec<u8>)>,
        captures: &mut Vec<Vec<u8>>,
    ) {
        let wanted_captures = rule.capture && !rule.negated;
        if rule.multi_match {
            // The value before each transformation and after the last, until one matches.
            let mut current = value;
            for stage in 0..=rule.transforms.len() {
                let wanted = if wanted_captures { Some(&mut *captures) } else { None };
                if rule.operator.matches(&current, self, wanted) != rule.negated {
                    matched.push((name.full(), current.into_owned()));
                    return;
                }
                match rule.transforms.get(stage) {
                    Some(transform) => current = transform.apply(current),
                    None => return,
                }
            }
        } else if name.from_input && matches!(value, Cow::Borrowed(_)) {
            let cached;
            let current: &[u8] = if rule.transforms.is_empty() {
                &value
            } else {
                let key = (value.as_ptr() as usize, value.len(), rule.transform_chain);
                let found = self.transformed.borrow().get(&key).cloned();
                cached = found.unwrap_or_else(|| {
                    let mut current = Cow::Borrowed(value.as_ref());
                    for transform in &rule.transforms {
                        current = transform.apply(current);
                    }
                    let entry = match current {
                        Cow::Borrowed(_) => Transformed::Unchanged,
                        Cow::Owned(changed) => Transformed::Changed(std::rc::Rc::from(changed)),
                    };
                    self.transformed.borrow_mut().insert(key, entry.clone());
                    entry
                });
                match &cached {
                    Transformed::Unchanged => &value,
                    Transformed::Changed(changed) => changed,
                }
            };
            if let Some(slot) = rule.prefilter
                && !self.prefilter_hits(current, slot)
            {
                // None of the pattern's literals is in the value: the regex cannot match.
                if rule.negated {
                    matched.push((name.full(), current.to_vec()));
                }
                return;
            }
            let wanted = if wanted_captures { Some(&mut *captures) } else { None };
            if rule.operator.matches(current, self, wanted) != rule.negated {
                matched.push((name.full(), current.to_vec()));
            }
        } else {
            let mut current = value;
            for transform in &rule.transforms {
                current = transform.apply(current);
            }
            let wanted = if wanted_captures { Some(&mut *captures) } else { None };
            if rule.operator.matches(&current, self, wanted) != rule.negated {
                matched.push((name.full(), current.into_owned()));
            }
        }
    }

    /// Whether the value holds one of the literals of the pattern in `slot`. The value lives
    /// in the input or the transformation cache for the whole phase, so its place names it.
    fn prefilter_hits(&self, value: &[u8], slot: u32) -> bool {
        let key = (value.as_ptr() as usize, value.len());
        if let Some(hits) = self.prefiltered.borrow().get(&key) {
            return hits.contains(slot);
        }
        let hits = self.rules.prefilter.scan(value);
        let found = hits.contains(slot);
        self.prefiltered.borrow_mut().insert(key, hits);
        found
    }

    /// The values a target names (after exclusions), each with its full name (`ARGS:id`).
    fn collect<'s>(
        &'s self,
        target: &Target,
        excluded: &dyn Fn(Variable, &str) -> bool,
        out: &mut dyn FnMut(ValueName<'s>, Cow<'s, [u8]>),
    ) {
        let input = &self.input;
        let prefix = variable_name(target.variable);
        let from_list = |list: &'s [Element], names: bool, out: &mut dyn FnMut(ValueName<'s>, Cow<'s, [u8]>)| {
            for (key, value) in list {
                let selected = target.selector.as_ref().is_none_or(|selector| selector.selects(key));
                if selected && !excluded(target.variable, key) {
                    let value = if names { Cow::Borrowed(key.as_bytes()) } else { Cow::Borrowed(value.as_slice()) };
                    out(ValueName::input(prefix, key), value);
                }
            }
        };
        let scalar = |value: Cow<'s, [u8]>, out: &mut dyn FnMut(ValueName<'s>, Cow<'s, [u8]>)| {
            if !excluded(target.variable, "") {
                out(ValueName::plain(prefix), value);
            }
        };
        match target.variable {
            Variable::Args => {
                from_list(&input.args_get, false, out);
                from_list(&input.args_post, false, out);
            }
            Variable::ArgsNames => {
                from_list(&input.args_get, true, out);
                from_list(&input.args_post, true, out);
            }
            Variable::ArgsGet => from_list(&input.args_get, false, out),
            Variable::ArgsGetNames => from_list(&input.args_get, true, out),
            Variable::ArgsPost => from_list(&input.args_post, false, out),
            Variable::ArgsPostNames => from_list(&input.args_post, true, out),
            Variable::ArgsCombinedSize => {
                let size: usize =
                    input.args_get.iter().chain(&input.args_post).map(|(name, value)| name.len() + value.len()).sum();
                scalar(Cow::Owned(size.to_string().into_bytes()), out)
            }
            Variable::RequestHeaders => from_list(&input.headers, false, out),
            Variable::RequestHeadersNames => from_list(&input.headers, true, out),
            Variable::RequestCookies => from_list(&input.cookies, false, out),
            Variable::RequestCookiesNames => from_list(&input.cookies, true, out),
            Variable::RequestUri | Variable::RequestUriRaw => scalar(Cow::Borrowed(input.uri.as_bytes()), out),
            Variable::RequestFilename => scalar(Cow::Borrowed(input.filename().as_bytes()), out),
            Variable::RequestBasename => {
                let filename = input.filename();
                let base = filename.rsplit('/').next().unwrap_or(filename);
                scalar(Cow::Borrowed(base.as_bytes()), out)
            }
            Variable::RequestBody => {
                if input.body_processor != Some(BodyProcessor::Multipart) {
                    scalar(Cow::Borrowed(input.body.as_slice()), out)
                }
            }
            Variable::RequestBodyLength => scalar(Cow::Owned(input.body.len().to_string().into_bytes()), out),
            Variable::RequestLine => {
                scalar(Cow::Owned(format!("{} {} {}", input.method, input.uri, input.protocol).into_bytes()), out)
            }
            Variable::RequestMethod => scalar(Cow::Borrowed(input.method.as_bytes()), out),
            Variable::RequestProtocol => scalar(Cow::Borrowed(input.protocol.as_bytes()), out),
            Variable::QueryString => scalar(Cow::Borrowed(input.query().as_bytes()), out),
            Variable::FullRequest => {
                let mut full = format!("{} {} {}\n", input.method, input.uri, input.protocol).into_bytes();
                for (name, value) in &input.headers {
                    full.extend_from_slice(name.as_bytes());
                    full.extend_from_slice(b": ");
                    full.extend_from_slice(value);
                    full.push(b'\n');
                }
                full.push(b'\n');
                full.extend_from_slice(&input.body);
                scalar(Cow::Owned(full), out)
            }
            Variable::FullRequestLength => {
                let length = input.uri.len()
                    + input.headers.iter().map(|(name, value)| name.len() + value.len() + 4).sum::<usize>()
                    + input.body.len();
                scalar(Cow::Owned(length.to_string().into_bytes()), out)
            }
            Variable::Files => from_list(&input.files, false, out),
            Variable::FilesNames => from_list(&input.files_names, false, out),
            Variable::FilesSizes => from_list(&input.files_sizes, false, out),
            Variable::FilesCombinedSize => {
                let size: i64 = input.files_sizes.iter().map(|(_, size)| super::operators::as_number(size)).sum();
                scalar(Cow::Owned(size.to_string().into_bytes()), out)
            }
            Variable::MultipartPartHeaders => from_list(&input.multipart_headers, false, out),
            Variable::MultipartStrictError => {
                scalar(Cow::Borrowed(if input.multipart_strict_error { b"1" } else { b"0" }), out)
            }
            Variable::MultipartUnmatchedBoundary => scalar(Cow::Borrowed(b"0"), out),
            Variable::ReqbodyError => scalar(Cow::Borrowed(if input.body_error.is_some() { b"1" } else { b"0" }), out),
            Variable::ReqbodyErrorMsg => {
                scalar(Cow::Borrowed(input.body_error.as_deref().unwrap_or("").as_bytes()), out)
            }
            Variable::ReqbodyProcessor => {
                if let Some(processor) = input.body_processor.or(self.body_processor) {
                    scalar(Cow::Borrowed(processor.name().as_bytes()), out)
                }
            }
            Variable::Xml => {
                let attributes =
                    matches!(&target.selector, Some(super::CompiledSelector::Name(path)) if path.contains('@'));
                let list = if attributes { &input.xml_attributes } else { &input.xml_text };
                if !excluded(Variable::Xml, "") {
                    for (_, value) in list {
                        out(ValueName::plain("XML"), Cow::Borrowed(value.as_slice()));
                    }
                }
            }
            Variable::Tx
            | Variable::Ip
            | Variable::Global
            | Variable::Session
            | Variable::User
            | Variable::Resource
            | Variable::Geo
            | Variable::Env => {
                let name = target.variable.collection_name().expect("a collection");
                if let Some(collection) = self.collections.get(name) {
                    match &target.selector {
                        // Keys are kept in lower case: a name is one lookup.
                        Some(super::CompiledSelector::Name(key)) => {
                            if let Some((key, value)) = collection.get_key_value(key.as_str())
                                && !excluded(target.variable, key)
                            {
                                out(ValueName::keyed(prefix, key), Cow::Borrowed(value.as_slice()));
                            }
                        }
                        selector => {
                            for (key, value) in collection {
                                let selected = selector.as_ref().is_none_or(|selector| selector.selects(key));
                                if selected && !excluded(target.variable, key) {
                                    out(ValueName::keyed(prefix, key), Cow::Borrowed(value.as_slice()));
                                }
                            }
                        }
                    }
                }
                if target.variable == Variable::Tx
                    && let Some(super::CompiledSelector::Name(name)) = &target.selector
                {
                    // TX:0 to TX:9 are the captures.
                    if let Ok(index) = name.parse::<usize>()
                        && let Some(capture) = self.captures.get(index)
                    {
                        out(ValueName::owned("TX", index.to_string()), Cow::Borrowed(capture.as_slice()));
                    }
                }
            }
            Variable::MatchedVar => {
                if let Some((_, value)) = self.matched.last() {
                    scalar(Cow::Borrowed(value.as_slice()), out)
                }
            }
            Variable::MatchedVarName => {
                if let Some((name, _)) = self.matched.last() {
                    scalar(Cow::Borrowed(name.as_bytes()), out)
                }
            }
            Variable::MatchedVars => {
                for (name, value) in &self.matched {
                    if !excluded(Variable::MatchedVars, name) {
                        out(ValueName::keyed("MATCHED_VARS", name), Cow::Borrowed(value.as_slice()));
                    }
                }
            }
            Variable::MatchedVarsNames => {
                for (name, _) in &self.matched {
                    out(ValueName::keyed("MATCHED_VARS_NAMES", name), Cow::Borrowed(name.as_bytes()));
                }
            }
            Variable::RemoteAddr => scalar(Cow::Borrowed(input.remote_addr.as_bytes()), out),
            Variable::ServerName => scalar(Cow::Borrowed(input.server_name.as_bytes()), out),
            Variable::UniqueId => scalar(Cow::Borrowed(input.unique_id.as_bytes()), out),
            Variable::RemotePort | Variable::ServerAddr | Variable::ServerPort | Variable::Duration => {
                scalar(Cow::Borrowed(b"0"), out)
            }
            Variable::Response => {}
        }
    }

    /// A macro's text for this request.
    pub fn expand<'m>(&self, text: &'m Macro) -> Cow<'m, [u8]> {
        if let Some(literal) = text.literal() {
            return Cow::Borrowed(literal.as_bytes());
        }
        let mut out = Vec::new();
        for part in text.parts() {
            match part {
                Part::Text(text) => out.extend_from_slice(text.as_bytes()),
                Part::Reference { variable, key } => out.extend_from_slice(&self.reference(variable, key.as_deref())),
            }
        }
        Cow::Owned(out)
    }

    fn reference(&self, variable: &str, key: Option<&str>) -> Vec<u8> {
        match (variable, key) {
            ("TX", Some(key)) if key.len() == 1 && key.as_bytes()[0].is_ascii_digit() => {
                self.captures.get(usize::from(key.as_bytes()[0] - b'0')).cloned().unwrap_or_default()
            }
            ("MATCHED_VAR", None) => self.matched.last().map(|(_, value)| value.clone()).unwrap_or_default(),
            ("MATCHED_VAR_NAME", None) => {
                self.matched.last().map(|(name, _)| name.clone().into_bytes()).unwrap_or_default()
            }
            ("REQUEST_HEADERS", Some(key)) => self.input.header(key).map(<[u8]>::to_vec).unwrap_or_default(),
            ("REMOTE_ADDR", None) => self.input.remote_addr.clone().into_bytes(),
            ("UNIQUE_ID", None) => self.input.unique_id.clone().into_bytes(),
            ("REQUEST_LINE", None) => {
                format!("{} {} {}", self.input.method, self.input.uri, self.input.protocol).into_bytes()
            }
            ("REQUEST_METHOD", None) => self.input.method.clone().into_bytes(),
            ("REQUEST_URI", None) => self.input.uri.clone().into_bytes(),
            ("REQUEST_FILENAME", None) => self.input.filename().as_bytes().to_vec(),
            ("REQBODY_ERROR_MSG", None) => self.input.body_error.clone().unwrap_or_default().into_bytes(),
            (collection, Some(key)) => {
                let collection = collection.to_ascii_lowercase();
                self.collections
                    .get(collection.as_str())
                    .and_then(|values| values.get(key))
                    .cloned()
                    .unwrap_or_default()
            }
            _ => Vec::new(),
        }
    }

    /// A TX (or other collection) value, as a number.
    pub fn number(&self, collection: &str, key: &str) -> i64 {
        self.collections
            .get(collection)
            .and_then(|values| values.get(key))
            .map(|value| super::operators::as_number(value))
            .unwrap_or(0)
    }

    pub fn value(&self, collection: &str, key: &str) -> Option<&[u8]> {
        self.collections.get(collection).and_then(|values| values.get(key)).map(Vec::as_slice)
    }

    /// Runs a matched rule's actions (each link's, in order) and says what comes next.
    fn act(&mut self, rule: &Rule) -> Flow {
        let mut link = Some(rule);
        while let Some(current) = link {
            for setvar in &current.setvars {
                self.setvar(setvar);
            }
            for ctl in &current.ctls {
                self.ctl(ctl);
            }
            link = current.chained.as_deref();
        }
        if rule.log
            && let Some(msg) = &rule.msg
        {
            let (variable, _) = self.matched.last().cloned().unwrap_or_default();
            self.matches.push(Match {
                id: rule.id,
                message: String::from_utf8_lossy(&self.expand(msg)).into_owned(),
                data: rule
                    .logdata
                    .as_ref()
                    .map(|data| {
                        let mut text = String::from_utf8_lossy(&self.expand(data)).into_owned();
                        text.truncate(text.floor_char_boundary(200));
                        text
                    })
                    .unwrap_or_default(),
                variable,
                severity: rule.severity,
            });
        }
        let defaults = &self.rules.defaults[usize::from(rule.phase.clamp(1, 5) - 1)];
        let disruptive = match rule.disruptive {
            Some(Disruptive::Block) => {
                defaults.disruptive.filter(|d| *d != Disruptive::Block).unwrap_or(Disruptive::Pass)
            }
            Some(other) => other,
            None => Disruptive::Pass,
        };
        let status = rule.status.or(defaults.status);
        match disruptive {
            Disruptive::Pass => Flow::Continue,
            Disruptive::Allow { phase_only: true } => Flow::StopPhase,
            Disruptive::Allow { phase_only: false } => Flow::StopAll,
            Disruptive::Deny | Disruptive::Drop | Disruptive::Block => {
                Flow::Interrupt(Interruption { rule: rule.id, status: status.unwrap_or(403), location: None })
            }
            Disruptive::Redirect => Flow::Interrupt(Interruption {
                rule: rule.id,
                status: status.filter(|s| (300..400).contains(s)).unwrap_or(302),
                location: rule.redirect_to.clone(),
            }),
        }
    }

    fn collection(&mut self, name: &str) -> &mut BTreeMap<String, Vec<u8>> {
        let key: &'static str = match name {
            "tx" => "tx",
            "ip" => "ip",
            "global" => "global",
            "session" => "session",
            "user" => "user",
            _ => "resource",
        };
        self.collections.entry(key).or_default()
    }

    fn setvar(&mut self, setvar: &SetVar) {
        match setvar {
            SetVar::Assign { collection, name, value } => {
                let value = self.expand(value).into_owned();
                let name = self.expand_name(name);
                let values = self.collection(collection);
                match values.get_mut(name.as_ref()) {
                    Some(current) => *current = value,
                    None => {
                        values.insert(name.into_owned(), value);
                    }
                }
            }
            SetVar::Add { collection, name, value, subtract } => {
                let delta = super::operators::as_number(&self.expand(value));
                let name = self.expand_name(name);
                let values = self.collection(collection);
                let add = |current: i64| {
                    if *subtract { current.saturating_sub(delta) } else { current.saturating_add(delta) }
                };
                // The CRS adds to its scores rule after rule: the key is there, only its number changes.
                match values.get_mut(name.as_ref()) {
                    Some(current) => *current = add(super::operators::as_number(current)).to_string().into_bytes(),
                    None => {
                        values.insert(name.into_owned(), add(0).to_string().into_bytes());
                    }
                }
            }
            SetVar::Delete { collection, name } => {
                let name = self.expand_name(name);
                self.collection(collection).remove(name.as_ref());
            }
        }
    }

    /// A collection key: lower case (keys are looked up without regard to case); a literal
    /// name already in lower case is borrowed.
    fn expand_name<'m>(&self, name: &'m Macro) -> Cow<'m, str> {
        if let Some(literal) = name.literal()
            && !literal.bytes().any(|byte| byte.is_ascii_uppercase())
        {
            return Cow::Borrowed(literal);
        }
        Cow::Owned(String::from_utf8_lossy(&self.expand(name)).to_ascii_lowercase())
    }

    fn ctl(&mut self, ctl: &Ctl) {
        match ctl {
            Ctl::RemoveById(ranges) => self.removed_ids.extend_from_slice(ranges),
            Ctl::RemoveByTag(tag) => self.removed_tags.push(tag.clone()),
            Ctl::RemoveTargetById(ranges, target) => self.removed_targets.push((ranges.clone(), target.clone())),
            Ctl::RemoveTargetByTag(tag, target) => self.removed_targets_by_tag.push((tag.clone(), target.clone())),
            Ctl::Engine(mode) => self.engine = *mode,
            Ctl::BodyProcessor(processor) => self.body_processor = Some(*processor),
            Ctl::BodyAccess(on) => self.body_access = *on,
            Ctl::Ignored => {}
        }
    }
}

/// The transformation cache's hasher: its keys are addresses and small numbers, made by this
/// filter, not an attacker, so a multiply-and-fold spreads them well enough without SipHash.
#[derive(Default, Clone, Copy)]
struct PlaceHasher;

impl std::hash::BuildHasher for PlaceHasher {
    type Hasher = PlaceHash;

    fn build_hasher(&self) -> PlaceHash {
        PlaceHash(0)
    }
}

struct PlaceHash(u64);

impl std::hash::Hasher for PlaceHash {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.write_u64(u64::from(*byte));
        }
    }

    fn write_u64(&mut self, value: u64) {
        self.0 = (self.0.rotate_left(5) ^ value).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }

    fn write_usize(&mut self, value: usize) {
        self.write_u64(value as u64);
    }

    fn write_u32(&mut self, value: u32) {
        self.write_u64(u64::from(value));
    }
}

/// A cached transformation's outcome.
#[derive(Clone)]
enum Transformed {
    Unchanged,
    Changed(std::rc::Rc<[u8]>),
}

/// A value's name (`ARGS:id`), put together only for the values a rule matches; and whether
/// the value lies in the request input (so its place identifies it for the cache).
struct ValueName<'s> {
    variable: &'static str,
    key: Option<Cow<'s, str>>,
    from_input: bool,
}

impl<'s> ValueName<'s> {
    fn plain(variable: &'static str) -> Self {
        Self { variable, key: None, from_input: false }
    }

    fn keyed(variable: &'static str, key: &'s str) -> Self {
        Self { variable, key: Some(Cow::Borrowed(key)), from_input: false }
    }

    fn owned(variable: &'static str, key: String) -> Self {
        Self { variable, key: Some(Cow::Owned(key)), from_input: false }
    }

    fn input(variable: &'static str, key: &'s str) -> Self {
        Self { variable, key: Some(Cow::Borrowed(key)), from_input: true }
    }

    fn full(&self) -> String {
        match &self.key {
            Some(key) => {
                let mut full = String::with_capacity(self.variable.len() + 1 + key.len());
                full.push_str(self.variable);
                full.push(':');
                full.push_str(key);
                full
            }
            None => self.variable.to_owned(),
        }
    }
}

impl super::operators::Expand for Transaction {
    fn expand<'m>(&self, text: &'m Macro) -> Cow<'m, [u8]> {
        Transaction::expand(self, text)
    }
}

enum Flow {
    Continue,
    StopPhase,
    StopAll,
    Interrupt(Interruption),
}

fn variable_name(variable: Variable) -> &'static str {
    match variable {
        Variable::Args => "ARGS",
        Variable::ArgsNames => "ARGS_NAMES",
        Variable::ArgsGet => "ARGS_GET",
        Variable::ArgsGetNames => "ARGS_GET_NAMES",
        Variable::ArgsPost => "ARGS_POST",
        Variable::ArgsPostNames => "ARGS_POST_NAMES",
        Variable::ArgsCombinedSize => "ARGS_COMBINED_SIZE",
        Variable::RequestHeaders => "REQUEST_HEADERS",
        Variable::RequestHeadersNames => "REQUEST_HEADERS_NAMES",
        Variable::RequestCookies => "REQUEST_COOKIES",
        Variable::RequestCookiesNames => "REQUEST_COOKIES_NAMES",
        Variable::RequestUri => "REQUEST_URI",
        Variable::RequestUriRaw => "REQUEST_URI_RAW",
        Variable::RequestFilename => "REQUEST_FILENAME",
        Variable::RequestBasename => "REQUEST_BASENAME",
        Variable::RequestBody => "REQUEST_BODY",
        Variable::RequestBodyLength => "REQUEST_BODY_LENGTH",
        Variable::RequestLine => "REQUEST_LINE",
        Variable::RequestMethod => "REQUEST_METHOD",
        Variable::RequestProtocol => "REQUEST_PROTOCOL",
        Variable::QueryString => "QUERY_STRING",
        Variable::FullRequest => "FULL_REQUEST",
        Variable::FullRequestLength => "FULL_REQUEST_LENGTH",
        Variable::Files => "FILES",
        Variable::FilesNames => "FILES_NAMES",
        Variable::FilesSizes => "FILES_SIZES",
        Variable::FilesCombinedSize => "FILES_COMBINED_SIZE",
        Variable::MultipartPartHeaders => "MULTIPART_PART_HEADERS",
        Variable::MultipartStrictError => "MULTIPART_STRICT_ERROR",
        Variable::MultipartUnmatchedBoundary => "MULTIPART_UNMATCHED_BOUNDARY",
        Variable::ReqbodyError => "REQBODY_ERROR",
        Variable::ReqbodyErrorMsg => "REQBODY_ERROR_MSG",
        Variable::ReqbodyProcessor => "REQBODY_PROCESSOR",
        Variable::Xml => "XML",
        Variable::Tx => "TX",
        Variable::Ip => "IP",
        Variable::Global => "GLOBAL",
        Variable::Session => "SESSION",
        Variable::User => "USER",
        Variable::Resource => "RESOURCE",
        Variable::Geo => "GEO",
        Variable::Env => "ENV",
        Variable::MatchedVar => "MATCHED_VAR",
        Variable::MatchedVarName => "MATCHED_VAR_NAME",
        Variable::MatchedVars => "MATCHED_VARS",
        Variable::MatchedVarsNames => "MATCHED_VARS_NAMES",
        Variable::RemoteAddr => "REMOTE_ADDR",
        Variable::RemotePort => "REMOTE_PORT",
        Variable::ServerName => "SERVER_NAME",
        Variable::ServerAddr => "SERVER_ADDR",
        Variable::ServerPort => "SERVER_PORT",
        Variable::UniqueId => "UNIQUE_ID",
        Variable::Duration => "DURATION",
        Variable::Response => "RESPONSE",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seclang::Files;

    fn run(rules: &str, uri: &str) -> Transaction {
        let set = RuleSet::load(&Files::new(), &[("test.conf".into(), Some(rules.into()))]).unwrap();
        let mut transaction = Transaction::new(Arc::new(set), RequestInput::from_head("GET", uri, Vec::new()));
        transaction.run_phase(1);
        transaction.run_phase(2);
        transaction
    }

    fn matched(transaction: &Transaction) -> Vec<u32> {
        transaction.matches.iter().map(|m| m.id).collect()
    }

    #[test]
    fn each_transformation_chain_sees_its_own_value() {
        let rules = r#"
SecRule ARGS "@streq ABC" "id:1,phase:1,pass,t:none,t:uppercase,msg:'upper'"
SecRule ARGS "@streq abc" "id:2,phase:1,pass,t:none,t:lowercase,msg:'lower'"
SecRule ARGS "@streq aBc" "id:3,phase:1,pass,t:none,msg:'as sent'"
SecRule ARGS "@streq abc" "id:4,phase:2,pass,t:lowercase,msg:'lower again'"
"#;
        assert_eq!(matched(&run(rules, "/?x=aBc")), vec![1, 2, 3, 4]);
    }

    #[test]
    fn chains_skips_and_scores_follow_modsecurity() {
        let rules = r#"
SecRule ARGS:id "@rx ^\d+$" "id:10,phase:1,pass,nolog,chain"
    SecRule ARGS:id "@gt 100" "setvar:'tx.score=+5'"
SecRule ARGS:skip "@streq yes" "id:11,phase:1,pass,nolog,skipAfter:END"
SecRule ARGS "@rx ." "id:12,phase:1,pass,msg:'skipped',setvar:'tx.score=+100'"
SecMarker END
SecRule TX:score "@ge 5" "id:13,phase:2,deny,status:406,msg:'score %{tx.score}'"
"#;
        let blocked = run(rules, "/?id=500&skip=yes");
        assert_eq!(blocked.interruption.as_ref().map(|i| (i.rule, i.status)), Some((13, 406)));
        assert_eq!(blocked.matches.last().map(|m| m.message.as_str()), Some("score 5"));
        let small = run(rules, "/?id=50&skip=yes");
        assert!(small.interruption.is_none(), "the chain's second link did not match");
        let not_skipped = run(rules, "/?id=50&skip=no");
        assert_eq!(not_skipped.number("tx", "score"), 100);
    }

    #[test]
    fn ctl_takes_a_target_out_of_a_rule_for_the_rest_of_the_request() {
        let rules = r#"
SecRule REQUEST_FILENAME "@beginsWith /search" "id:20,phase:1,pass,nolog,ctl:ruleRemoveTargetById=21;ARGS:q"
SecRule ARGS "@contains select" "id:21,phase:2,deny,msg:'sql word'"
"#;
        assert!(run(rules, "/search?q=select").interruption.is_none());
        assert!(run(rules, "/search?other=select").interruption.is_some());
        assert!(run(rules, "/list?q=select").interruption.is_some());
    }
}
