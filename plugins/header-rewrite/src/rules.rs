//! Header rules: configuration, validation and application.
//!
//! Rules run in the order given. A rule applies when every part of its `when` holds; conditions
//! and templates see the request as earlier rules left it.

use serde::Deserialize;

use crate::template::Template;

/// The filter's configuration.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Rules applied to the request on its way upstream.
    pub request: Vec<RuleConfig>,
    /// Rules applied to the response on its way to the client.
    pub response: Vec<RuleConfig>,
    /// Security headers added to responses: `true` for the preset, or a table overriding it.
    pub security_headers: Option<SecurityHeadersConfig>,
}

/// One rule as written in the config.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// What to do.
    pub op: Op,
    /// The header it acts on.
    pub name: String,
    /// The value (a template) for `add`, `set` and `append`.
    pub value: Option<String>,
    /// The new name for `rename`.
    pub to: Option<String>,
    /// When the rule applies; always when absent.
    #[serde(default)]
    pub when: Condition,
}

/// A header operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    /// Adds a value, keeping any the header had.
    Add,
    /// Replaces the header's values with this one.
    Set,
    /// Extends the header's value with `, value` (sets it when absent).
    Append,
    /// Removes the header.
    Remove,
    /// Moves the header's values to the name in `to`.
    Rename,
}

/// When a rule applies. Every given part must hold.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Condition {
    /// The path starts with this.
    pub path_prefix: Option<String>,
    /// The path is exactly this.
    pub path: Option<String>,
    /// The method is one of these.
    pub methods: Vec<String>,
    /// A request header is present (or has a value).
    pub header: Option<HeaderCondition>,
    /// A response header is present (or has a value); response rules only.
    pub response_header: Option<HeaderCondition>,
    /// The response status is one of these: codes (`404`) or classes (`"5xx"`); response rules
    /// only.
    pub status: Vec<StatusMatch>,
}

/// A condition on one header.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderCondition {
    /// The header.
    pub name: String,
    /// Its first value equals this (case-sensitive); without it, the header must be present.
    pub equals: Option<String>,
    /// `false` to require that the header is absent.
    #[serde(default = "yes")]
    pub present: bool,
}

fn yes() -> bool {
    true
}

/// A status code or class in a condition.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum StatusMatch {
    /// One code.
    Code(u16),
    /// A class such as `"4xx"`.
    Class(String),
}

/// `security_headers = true`, or a table of overrides.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum SecurityHeadersConfig {
    /// `true`: the preset; `false`: none.
    Preset(bool),
    /// The preset with these values changed (an empty string leaves a header out).
    Custom(SecurityHeaders),
}

/// The security headers and their preset values.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SecurityHeaders {
    /// Strict-Transport-Security.
    pub hsts: String,
    /// Content-Security-Policy.
    pub content_security_policy: String,
    /// X-Frame-Options.
    pub frame_options: String,
    /// X-Content-Type-Options.
    pub content_type_options: String,
    /// Referrer-Policy.
    pub referrer_policy: String,
    /// Replace values the upstream set; by default the upstream's own value wins.
    #[serde(rename = "override")]
    pub override_upstream: bool,
}

impl Default for SecurityHeaders {
    fn default() -> Self {
        Self {
            hsts: "max-age=31536000; includeSubDomains".into(),
            content_security_policy: "default-src 'self'; frame-ancestors 'none'; object-src 'none'".into(),
            frame_options: "DENY".into(),
            content_type_options: "nosniff".into(),
            referrer_policy: "strict-origin-when-cross-origin".into(),
            override_upstream: false,
        }
    }
}

/// What conditions and templates read about the request being served.
pub trait Subject {
    /// The method.
    fn method(&self) -> String;
    /// The path without query.
    fn path(&self) -> String;
    /// The Host the client asked for.
    fn host(&self) -> String;
    /// The client's IP.
    fn client_ip(&self) -> String;
    /// The request id.
    fn request_id(&self) -> String;
    /// The route's name.
    fn route(&self) -> String;
    /// A request header's first value.
    fn request_header(&self, name: &str) -> Option<String>;
    /// The response status, in response rules.
    fn status(&self) -> Option<u16>;
}

/// The headers a rule edits.
pub trait HeaderEdits {
    /// Every value of a header.
    fn get_all(&self, name: &str) -> Vec<Vec<u8>>;
    /// Replaces a header's values.
    fn set(&mut self, name: &str, value: &[u8]);
    /// Adds a value.
    fn add(&mut self, name: &str, value: &[u8]);
    /// Removes a header.
    fn remove(&mut self, name: &str);
}

#[derive(Debug)]
enum Action {
    Add(Template),
    Set(Template),
    Append(Template),
    Remove,
    Rename(String),
    /// A security header: set unless the upstream set it (or always, with `override`).
    Default {
        value: String,
        override_upstream: bool,
    },
}

#[derive(Debug)]
struct Rule {
    name: String,
    action: Action,
    when: Condition,
}

/// Compiled rules.
#[derive(Debug)]
pub struct Rewriter {
    request: Vec<Rule>,
    response: Vec<Rule>,
}

impl Rewriter {
    /// Validates and compiles `config`; errors name the rule (`request[2]`) and the problem.
    pub fn new(config: Config) -> Result<Self, String> {
        let request = compile_rules(config.request, "request", false)?;
        let mut response = compile_rules(config.response, "response", true)?;
        let security = match config.security_headers {
            None | Some(SecurityHeadersConfig::Preset(false)) => None,
            Some(SecurityHeadersConfig::Preset(true)) => Some(SecurityHeaders::default()),
            Some(SecurityHeadersConfig::Custom(custom)) => Some(custom),
        };
        if let Some(security) = security {
            let headers = [
                ("strict-transport-security", security.hsts),
                ("content-security-policy", security.content_security_policy),
                ("x-frame-options", security.frame_options),
                ("x-content-type-options", security.content_type_options),
                ("referrer-policy", security.referrer_policy),
            ];
            for (name, value) in headers.into_iter().filter(|(_, value)| !value.is_empty()) {
                response.push(Rule {
                    name: name.into(),
                    action: Action::Default { value, override_upstream: security.override_upstream },
                    when: Condition::default(),
                });
            }
        }
        Ok(Self { request, response })
    }

    /// Whether any rule acts on requests.
    pub fn has_request_rules(&self) -> bool {
        !self.request.is_empty()
    }

    /// Whether any rule acts on responses.
    pub fn has_response_rules(&self) -> bool {
        !self.response.is_empty()
    }

    /// Applies the request rules.
    pub fn rewrite_request(&self, subject: &dyn Subject, headers: &mut dyn HeaderEdits) {
        apply(&self.request, subject, headers)
    }

    /// Applies the response rules.
    pub fn rewrite_response(&self, subject: &dyn Subject, headers: &mut dyn HeaderEdits) {
        apply(&self.response, subject, headers)
    }
}

fn compile_rules(rules: Vec<RuleConfig>, side: &str, is_response: bool) -> Result<Vec<Rule>, String> {
    rules
        .into_iter()
        .enumerate()
        .map(|(index, rule)| compile_rule(rule, is_response).map_err(|err| format!("{side}[{index}]: {err}")))
        .collect()
}

fn compile_rule(rule: RuleConfig, is_response: bool) -> Result<Rule, String> {
    let name = header_name(&rule.name)?;
    let template = |op: &str| -> Result<Template, String> {
        let source = rule.value.as_deref().ok_or_else(|| format!("`{op}` needs a `value`"))?;
        let template = Template::parse(source)?;
        if template.uses_status() && !is_response {
            return Err("{status} is only known in response rules".into());
        }
        Ok(template)
    };
    let action = match rule.op {
        Op::Add => Action::Add(template("add")?),
        Op::Set => Action::Set(template("set")?),
        Op::Append => Action::Append(template("append")?),
        Op::Remove => Action::Remove,
        Op::Rename => {
            let to = rule.to.as_deref().ok_or("`rename` needs `to`, the new name")?;
            Action::Rename(header_name(to)?)
        }
    };
    if rule.value.is_some() && matches!(rule.op, Op::Remove | Op::Rename) {
        return Err("`value` has no meaning for remove and rename".into());
    }
    if !is_response && (!rule.when.status.is_empty() || rule.when.response_header.is_some()) {
        return Err("`when.status` and `when.response_header` apply to response rules only".into());
    }
    for status in &rule.when.status {
        if let StatusMatch::Class(class) = status
            && !(class.len() == 3 && class.ends_with("xx") && matches!(class.as_bytes()[0], b'1'..=b'5'))
        {
            return Err(format!("status class {class:?} must look like \"4xx\""));
        }
    }
    for condition in rule.when.header.iter().chain(&rule.when.response_header) {
        header_name(&condition.name)?;
    }
    Ok(Rule { name, action, when: rule.when })
}

/// A header name as the host wants it (lower case), or why it is not one.
fn header_name(name: &str) -> Result<String, String> {
    let valid =
        !name.is_empty() && name.bytes().all(|byte| byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte));
    if valid { Ok(name.to_ascii_lowercase()) } else { Err(format!("{name:?} is not a valid header name")) }
}

fn apply(rules: &[Rule], subject: &dyn Subject, headers: &mut dyn HeaderEdits) {
    for rule in rules {
        if !matches(&rule.when, subject, headers) {
            continue;
        }
        match &rule.action {
            Action::Add(template) => headers.add(&rule.name, template.expand(subject).as_bytes()),
            Action::Set(template) => headers.set(&rule.name, template.expand(subject).as_bytes()),
            Action::Append(template) => {
                let mut joined = headers.get_all(&rule.name).join(&b", "[..]);
                if !joined.is_empty() {
                    joined.extend_from_slice(b", ");
                }
                joined.extend_from_slice(template.expand(subject).as_bytes());
                headers.set(&rule.name, &joined);
            }
            Action::Remove => headers.remove(&rule.name),
            Action::Rename(to) => {
                let values = headers.get_all(&rule.name);
                if !values.is_empty() {
                    headers.remove(&rule.name);
                    for value in values {
                        headers.add(to, &value);
                    }
                }
            }
            Action::Default { value, override_upstream } => {
                if *override_upstream || headers.get_all(&rule.name).is_empty() {
                    headers.set(&rule.name, value.as_bytes());
                }
            }
        }
    }
}

fn matches(when: &Condition, subject: &dyn Subject, headers: &dyn HeaderEdits) -> bool {
    if when.path_prefix.is_some() || when.path.is_some() {
        let path = subject.path();
        if when.path_prefix.as_ref().is_some_and(|prefix| !path.starts_with(prefix.as_str()))
            || when.path.as_ref().is_some_and(|exact| &path != exact)
        {
            return false;
        }
    }
    if !when.methods.is_empty() {
        let method = subject.method();
        if !when.methods.iter().any(|allowed| allowed.eq_ignore_ascii_case(&method)) {
            return false;
        }
    }
    if let Some(condition) = &when.header
        && !header_holds(
            condition,
            subject.request_header(&condition.name.to_ascii_lowercase()).map(String::into_bytes),
        )
    {
        return false;
    }
    if let Some(condition) = &when.response_header
        && !header_holds(condition, headers.get_all(&condition.name.to_ascii_lowercase()).into_iter().next())
    {
        return false;
    }
    if !when.status.is_empty() {
        let Some(status) = subject.status() else { return false };
        let hit = when.status.iter().any(|wanted| match wanted {
            StatusMatch::Code(code) => *code == status,
            StatusMatch::Class(class) => u16::from(class.as_bytes()[0] - b'0') == status / 100,
        });
        if !hit {
            return false;
        }
    }
    true
}

fn header_holds(condition: &HeaderCondition, value: Option<Vec<u8>>) -> bool {
    match (&value, &condition.equals) {
        (None, _) => !condition.present,
        (Some(_), _) if !condition.present => false,
        (Some(value), Some(wanted)) => value == wanted.as_bytes(),
        (Some(_), None) => true,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A request (and maybe response) held in memory.
    #[derive(Debug, Clone)]
    pub(crate) struct FakeRequest {
        method: String,
        path: String,
        pub(crate) headers: Vec<(String, Vec<u8>)>,
        status: Option<u16>,
    }

    impl FakeRequest {
        pub(crate) fn get(path: &str) -> Self {
            Self { method: "GET".into(), path: path.into(), headers: Vec::new(), status: None }
        }
        pub(crate) fn header(mut self, name: &str, value: &str) -> Self {
            self.headers.push((name.into(), value.as_bytes().to_vec()));
            self
        }
        fn status(mut self, status: u16) -> Self {
            self.status = Some(status);
            self
        }
        fn values(&self, name: &str) -> Vec<String> {
            self.get_all(name).into_iter().map(|value| String::from_utf8(value).unwrap()).collect()
        }
    }

    impl Subject for FakeRequest {
        fn method(&self) -> String {
            self.method.clone()
        }
        fn path(&self) -> String {
            self.path.clone()
        }
        fn host(&self) -> String {
            "example.test".into()
        }
        fn client_ip(&self) -> String {
            "192.0.2.7".into()
        }
        fn request_id(&self) -> String {
            "req-1".into()
        }
        fn route(&self) -> String {
            "main".into()
        }
        fn request_header(&self, name: &str) -> Option<String> {
            self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| String::from_utf8_lossy(v).into_owned())
        }
        fn status(&self) -> Option<u16> {
            self.status
        }
    }

    impl HeaderEdits for FakeRequest {
        fn get_all(&self, name: &str) -> Vec<Vec<u8>> {
            self.headers.iter().filter(|(n, _)| n == name).map(|(_, v)| v.clone()).collect()
        }
        fn set(&mut self, name: &str, value: &[u8]) {
            self.remove(name);
            self.add(name, value);
        }
        fn add(&mut self, name: &str, value: &[u8]) {
            self.headers.push((name.into(), value.to_vec()));
        }
        fn remove(&mut self, name: &str) {
            self.headers.retain(|(n, _)| n != name);
        }
    }

    fn rewriter(json: &str) -> Rewriter {
        Rewriter::new(serde_json::from_str(json).expect("valid json")).expect("valid config")
    }

    fn error(json: &str) -> String {
        match serde_json::from_str::<Config>(json) {
            Ok(config) => Rewriter::new(config).expect_err("config should be refused"),
            Err(err) => err.to_string(),
        }
    }

    fn run_request(rewriter: &Rewriter, request: FakeRequest) -> FakeRequest {
        let mut edited = request.clone();
        rewriter.rewrite_request(&request, &mut edited);
        edited
    }

    #[test]
    fn each_operation_does_what_it_says() {
        let rules = rewriter(
            r#"{"request": [
                {"op": "add", "name": "x-add", "value": "two"},
                {"op": "set", "name": "x-set", "value": "new"},
                {"op": "append", "name": "x-forwarded-proto", "value": "https"},
                {"op": "append", "name": "x-fresh", "value": "first"},
                {"op": "remove", "name": "x-secret"},
                {"op": "rename", "name": "x-old", "to": "X-New"}
            ]}"#,
        );
        let request = FakeRequest::get("/")
            .header("x-add", "one")
            .header("x-set", "a")
            .header("x-set", "b")
            .header("x-forwarded-proto", "http")
            .header("x-secret", "s")
            .header("x-old", "v1")
            .header("x-old", "v2");
        let out = run_request(&rules, request);
        assert_eq!(out.values("x-add"), ["one", "two"]);
        assert_eq!(out.values("x-set"), ["new"]);
        assert_eq!(out.values("x-forwarded-proto"), ["http, https"]);
        assert_eq!(out.values("x-fresh"), ["first"]);
        assert!(out.values("x-secret").is_empty());
        assert!(out.values("x-old").is_empty());
        assert_eq!(out.values("x-new"), ["v1", "v2"]);
    }

    #[test]
    fn conditions_select_rules() {
        let rules = rewriter(
            r#"{"request": [
                {"op": "set", "name": "x-api", "value": "1", "when": {"path_prefix": "/api", "methods": ["post"]}},
                {"op": "set", "name": "x-debug", "value": "on", "when": {"header": {"name": "X-Debug", "equals": "yes"}}},
                {"op": "set", "name": "x-anon", "value": "1", "when": {"header": {"name": "authorization", "present": false}}}
            ]}"#,
        );
        let mut post = FakeRequest::get("/api/users");
        post.method = "POST".into();
        let out = run_request(&rules, post);
        assert_eq!(out.values("x-api"), ["1"]);
        assert_eq!(out.values("x-anon"), ["1"]);
        let out =
            run_request(&rules, FakeRequest::get("/api/users").header("x-debug", "yes").header("authorization", "t"));
        assert!(out.values("x-api").is_empty(), "GET does not match methods = [post]");
        assert_eq!(out.values("x-debug"), ["on"]);
        assert!(out.values("x-anon").is_empty());
        let out = run_request(&rules, FakeRequest::get("/").header("x-debug", "no"));
        assert_eq!(out.values("x-debug"), ["no"], "the rule left it alone");
    }

    #[test]
    fn response_rules_see_status_and_response_headers() {
        let rules = rewriter(
            r#"{"response": [
                {"op": "set", "name": "cache-control", "value": "no-store", "when": {"status": ["5xx", 404]}},
                {"op": "set", "name": "x-status", "value": "was {status} for {request_id}"},
                {"op": "remove", "name": "server", "when": {"response_header": {"name": "x-internal"}}}
            ]}"#,
        );
        for (status, cached) in [(503, true), (404, true), (200, false)] {
            let request = FakeRequest::get("/").status(status);
            let mut response = FakeRequest::get("/").header("server", "origin/1.0").header("x-internal", "1");
            rules.rewrite_response(&request, &mut response);
            assert_eq!(response.values("cache-control").is_empty(), !cached, "status {status}");
            assert_eq!(response.values("x-status"), [format!("was {status} for req-1")]);
            assert!(response.values("server").is_empty());
        }
    }

    #[test]
    fn security_preset_fills_only_what_the_upstream_left_out() {
        let rules = rewriter(r#"{"security_headers": true}"#);
        let request = FakeRequest::get("/").status(200);
        let mut response = FakeRequest::get("/").header("x-frame-options", "SAMEORIGIN");
        rules.rewrite_response(&request, &mut response);
        assert_eq!(response.values("x-frame-options"), ["SAMEORIGIN"]);
        assert_eq!(response.values("strict-transport-security"), ["max-age=31536000; includeSubDomains"]);
        assert_eq!(response.values("x-content-type-options"), ["nosniff"]);
        assert_eq!(response.values("referrer-policy"), ["strict-origin-when-cross-origin"]);
        assert!(response.values("content-security-policy")[0].contains("default-src 'self'"));

        let rules = rewriter(r#"{"security_headers": {"hsts": "", "frame_options": "SAMEORIGIN", "override": true}}"#);
        let mut response = FakeRequest::get("/").header("x-frame-options", "ALLOW");
        rules.rewrite_response(&request, &mut response);
        assert!(response.values("strict-transport-security").is_empty());
        assert_eq!(response.values("x-frame-options"), ["SAMEORIGIN"]);
        assert!(!rules.has_request_rules());
    }

    #[test]
    fn bad_rules_are_refused_with_their_position() {
        assert!(error(r#"{"request": [{"op": "set", "name": "x"}]}"#).contains("request[0]: `set` needs a `value`"));
        assert!(error(r#"{"request": [{"op": "rename", "name": "x"}]}"#).contains("needs `to`"));
        assert!(error(r#"{"response": [{"op": "add", "name": "bad name", "value": "v"}]}"#).contains("response[0]"));
        assert!(error(r#"{"request": [{"op": "set", "name": "x", "value": "{status}"}]}"#).contains("response rules"));
        assert!(
            error(r#"{"request": [{"op": "set", "name": "x", "value": "v", "when": {"status": [500]}}]}"#)
                .contains("response rules only")
        );
        assert!(
            error(r#"{"response": [{"op": "set", "name": "x", "value": "v", "when": {"status": ["9xx"]}}]}"#)
                .contains("4xx")
        );
        assert!(error(r#"{"request": [{"op": "shout", "name": "x"}]}"#).contains("unknown variant"));
        assert!(error(r#"{"requests": []}"#).contains("unknown field"));
    }
}
