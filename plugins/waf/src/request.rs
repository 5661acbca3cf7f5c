//! A request taken apart into the places rules look at ("targets"), each value normalised.

use crate::normalize::{for_matching, url_decode};

/// Where a value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Place {
    /// The path.
    Path,
    /// A query or body argument's value.
    Arg,
    /// An argument's name.
    ArgName,
    /// A cookie's value.
    Cookie,
    /// A request header's value (cookies excluded).
    Header,
    /// A body that is neither a form nor JSON, as one value.
    Body,
}

impl Place {
    /// Its name in config and logs.
    pub fn name(self) -> &'static str {
        match self {
            Self::Path => "path",
            Self::Arg => "args",
            Self::ArgName => "arg_names",
            Self::Cookie => "cookies",
            Self::Header => "headers",
            Self::Body => "body",
        }
    }

    /// Parses a name from config.
    pub fn from_name(name: &str) -> Option<Self> {
        [Self::Path, Self::Arg, Self::ArgName, Self::Cookie, Self::Header, Self::Body]
            .into_iter()
            .find(|place| place.name() == name)
    }
}

/// One value to inspect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Where it came from.
    pub place: Place,
    /// The argument, cookie or header name (empty for path and body).
    pub name: String,
    /// The normalised value.
    pub value: String,
}

impl Target {
    /// `args:q`, `headers:user-agent`, `path`.
    pub fn label(&self) -> String {
        if self.name.is_empty() { self.place.name().to_owned() } else { format!("{}:{}", self.place.name(), self.name) }
    }
}

/// Facts about the request that protocol rules read, beside the targets.
#[derive(Debug, Default, Clone)]
pub struct Facts {
    /// The method.
    pub method: String,
    /// Whether the path or query had an invalid `%` escape.
    pub invalid_encoding: bool,
    /// Whether a decoded path or argument had a NUL or another control character.
    pub control_characters: bool,
    /// How many arguments.
    pub argument_count: usize,
    /// The longest argument value, in bytes.
    pub longest_argument: usize,
    /// Whether a User-Agent header was sent (and was not empty).
    pub has_user_agent: bool,
    /// Whether an Accept header was sent.
    pub has_accept: bool,
    /// The Host, when it is a bare IP address.
    pub host_is_ip: bool,
    /// The declared body length.
    pub content_length: Option<u64>,
    /// The body's content type, when it had one.
    pub content_type: Option<String>,
    /// The body could not be parsed as its content type says.
    pub malformed_body: Option<String>,
    /// A decoded argument carried CR or LF followed by something shaped like a header.
    pub header_injection: bool,
}

/// A request's targets and facts.
#[derive(Debug, Default)]
pub struct Inspected {
    /// The values.
    pub targets: Vec<Target>,
    /// The facts.
    pub facts: Facts,
}

/// Header values not inspected: they carry opaque tokens that would only cause false alarms,
/// or are checked elsewhere.
const SKIPPED_HEADERS: [&str; 4] = ["cookie", "authorization", "proxy-authorization", "content-length"];

/// CR or LF followed by `Name:`, as a response-splitting payload carries.
fn looks_like_header_injection(decoded: &str) -> bool {
    decoded.split(['\r', '\n']).skip(1).any(|line| {
        let line = line.trim_start();
        line.split_once(':').is_some_and(|(name, _)| {
            !name.is_empty() && name.len() < 40 && name.bytes().all(|byte| byte.is_ascii_alphanumeric() || byte == b'-')
        })
    })
}

fn has_control(value: &str) -> bool {
    value.chars().any(|ch| ch.is_control() && !matches!(ch, '\t' | '\n' | '\r'))
}

impl Inspected {
    /// Takes the head apart.
    pub fn from_head(method: &str, path_with_query: &str, host: &str, headers: &[(String, Vec<u8>)]) -> Self {
        let mut inspected = Self::default();
        let facts = &mut inspected.facts;
        facts.method = method.to_ascii_uppercase();
        let (path, query) = path_with_query.split_once('?').unwrap_or((path_with_query, ""));
        let (decoded_path, invalid) = url_decode(path, false);
        facts.invalid_encoding |= invalid;
        facts.control_characters |= has_control(&decoded_path);
        inspected.targets.push(Target { place: Place::Path, name: String::new(), value: for_matching(path, false) });
        if !query.is_empty() {
            let (_, invalid) = url_decode(query, true);
            inspected.facts.invalid_encoding |= invalid;
            inspected.add_form(query);
        }
        let host_name = host
            .rsplit_once(':')
            .map_or(host, |(name, port)| if port.bytes().all(|b| b.is_ascii_digit()) { name } else { host });
        inspected.facts.host_is_ip = host_name.trim_matches(['[', ']']).parse::<std::net::IpAddr>().is_ok();
        for (name, value) in headers {
            let text = String::from_utf8_lossy(value);
            match name.as_str() {
                "user-agent" => inspected.facts.has_user_agent |= !text.trim().is_empty(),
                "accept" => inspected.facts.has_accept = true,
                "content-length" => inspected.facts.content_length = text.trim().parse().ok(),
                "content-type" => inspected.facts.content_type = Some(text.to_ascii_lowercase()),
                "cookie" => {
                    for pair in text.split(';') {
                        let (cookie, value) = pair.split_once('=').unwrap_or((pair, ""));
                        inspected.targets.push(Target {
                            place: Place::Cookie,
                            name: cookie.trim().to_owned(),
                            value: for_matching(value.trim(), false),
                        });
                    }
                }
                _ => {}
            }
            if !SKIPPED_HEADERS.contains(&name.as_str()) {
                // Headers are not form-encoded: `+` stays a plus.
                inspected.targets.push(Target {
                    place: Place::Header,
                    name: name.clone(),
                    value: for_matching(&text, false),
                });
            }
        }
        inspected
    }

    /// Adds `name=value&...` pairs as arguments.
    fn add_form(&mut self, form: &str) {
        for pair in form.split('&').filter(|pair| !pair.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let decoded_name = url_decode(name, true).0.into_owned();
            self.add_argument(&decoded_name, for_matching(name, true), value, true);
        }
    }

    /// Adds one argument. `raw` is its value as sent (URL-encoded in forms).
    fn add_argument(&mut self, name: &str, normalised_name: String, raw: &str, plus_is_space: bool) {
        let decoded = url_decode(raw, plus_is_space).0;
        self.facts.argument_count += 1;
        self.facts.longest_argument = self.facts.longest_argument.max(raw.len());
        self.facts.control_characters |= has_control(&decoded);
        self.facts.header_injection |= looks_like_header_injection(&decoded);
        if !normalised_name.is_empty() {
            self.targets.push(Target { place: Place::ArgName, name: name.to_owned(), value: normalised_name });
        }
        self.targets.push(Target { place: Place::Arg, name: name.to_owned(), value: for_matching(raw, plus_is_space) });
    }

    /// A body's inspection, carrying over the head's content type.
    pub fn for_body(head: &Facts) -> Self {
        Self { targets: Vec::new(), facts: Facts { content_type: head.content_type.clone(), ..Facts::default() } }
    }

    /// Adds the body: form fields and JSON members as arguments, anything else as one value.
    pub fn add_body(&mut self, body: &[u8]) {
        if body.is_empty() {
            return;
        }
        let content_type = self.facts.content_type.clone().unwrap_or_default();
        let text = String::from_utf8_lossy(body);
        if content_type.starts_with("application/x-www-form-urlencoded") {
            self.add_form(&text);
        } else if content_type.starts_with("application/json") || content_type.contains("+json") {
            match serde_json::from_slice::<serde_json::Value>(body) {
                Ok(json) => self.add_json("json", &json, 0),
                Err(err) => self.facts.malformed_body = Some(format!("invalid JSON body: {err}")),
            }
        } else {
            self.targets.push(Target { place: Place::Body, name: String::new(), value: for_matching(&text, false) });
        }
    }

    /// JSON members become arguments named by their path (`json.user.name`), so rules and
    /// exclusions treat them like form fields.
    fn add_json(&mut self, path: &str, value: &serde_json::Value, depth: usize) {
        if depth > 32 {
            self.facts.malformed_body = Some("JSON body nested deeper than 32 levels".into());
            return;
        }
        match value {
            serde_json::Value::Object(members) => {
                for (key, member) in members {
                    let name = format!("{path}.{key}");
                    if !member.is_object() && !member.is_array() {
                        let text = match member {
                            serde_json::Value::String(text) => text.clone(),
                            other => other.to_string(),
                        };
                        self.add_argument(&name, for_matching(key, false), &text, false);
                    } else {
                        self.targets.push(Target {
                            place: Place::ArgName,
                            name: name.clone(),
                            value: for_matching(key, false),
                        });
                        self.add_json(&name, member, depth + 1);
                    }
                }
            }
            serde_json::Value::Array(items) => {
                for (index, item) in items.iter().enumerate() {
                    self.add_json(&format!("{path}[{index}]"), item, depth + 1);
                }
            }
            serde_json::Value::String(text) => self.add_argument(path, String::new(), text, false),
            other => self.add_argument(path, String::new(), &other.to_string(), false),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(inspected: &Inspected, place: Place) -> Vec<(String, String)> {
        inspected.targets.iter().filter(|t| t.place == place).map(|t| (t.name.clone(), t.value.clone())).collect()
    }

    #[test]
    fn heads_yield_path_args_cookies_and_headers() {
        let headers = vec![
            ("user-agent".to_owned(), b"Mozilla/5.0".to_vec()),
            ("cookie".to_owned(), b"session=abc; theme=dark".to_vec()),
            ("authorization".to_owned(), b"Bearer x".to_vec()),
        ];
        let inspected = Inspected::from_head("get", "/a%2Fb?q=Hello+World&x=%27", "10.0.0.1:8080", &headers);
        assert_eq!(values(&inspected, Place::Path), [("".into(), "/a/b".into())]);
        assert_eq!(values(&inspected, Place::Arg), [("q".into(), "hello world".into()), ("x".into(), "'".into())]);
        assert_eq!(values(&inspected, Place::Cookie).len(), 2);
        assert!(values(&inspected, Place::Header).iter().all(|(name, _)| name != "cookie" && name != "authorization"));
        assert!(inspected.facts.has_user_agent && !inspected.facts.has_accept && inspected.facts.host_is_ip);
        assert_eq!(inspected.facts.method, "GET");
        assert_eq!(inspected.facts.argument_count, 2);
    }

    #[test]
    fn json_bodies_become_named_arguments() {
        let mut inspected = Inspected::from_head(
            "POST",
            "/api",
            "app.test",
            &[("content-type".to_owned(), b"application/json".to_vec())],
        );
        inspected.add_body(br#"{"user": {"name": "O'Brien", "tags": ["a", 1]}, "n": 2}"#);
        let args = values(&inspected, Place::Arg);
        assert!(args.contains(&("json.user.name".into(), "o'brien".into())), "{args:?}");
        assert!(args.contains(&("json.user.tags[1]".into(), "1".into())));
        assert!(args.contains(&("json.n".into(), "2".into())));
        inspected.add_body(b"{not json");
        assert!(inspected.facts.malformed_body.is_some());
    }

    #[test]
    fn invalid_escapes_and_control_characters_are_noted() {
        let inspected = Inspected::from_head("GET", "/a?x=100%zz", "h", &[]);
        assert!(inspected.facts.invalid_encoding);
        let inspected = Inspected::from_head("GET", "/file%00.php", "h", &[]);
        assert!(inspected.facts.control_characters);
    }
}
