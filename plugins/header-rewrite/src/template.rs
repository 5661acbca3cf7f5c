//! Header values with placeholders, parsed once at configure time.
//!
//! `{client_ip}`, `{request_id}`, `{method}`, `{path}`, `{host}`, `{route}`, `{status}` (response
//! rules only) and `{header.NAME}` (a request header; empty when absent). `{{` and `}}` are
//! literal braces.

use crate::rules::Subject;

/// A value to expand per request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    ClientIp,
    RequestId,
    Method,
    Path,
    Host,
    Route,
    Status,
    RequestHeader(String),
}

impl Template {
    /// Parses `source`, naming the first unknown or unclosed placeholder.
    pub fn parse(source: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut rest = source;
        while let Some(brace) = rest.find(['{', '}']) {
            literal.push_str(&rest[..brace]);
            let tail = &rest[brace..];
            if tail.starts_with("{{") || tail.starts_with("}}") {
                literal.push_str(&tail[..1]);
                rest = &tail[2..];
                continue;
            }
            if tail.starts_with('}') {
                return Err(format!("unmatched `}}` in {source:?} (write `}}}}` for a literal brace)"));
            }
            let close = tail.find('}').ok_or_else(|| format!("unclosed `{{` in {source:?}"))?;
            let name = &tail[1..close];
            let part = match name {
                "client_ip" => Part::ClientIp,
                "request_id" => Part::RequestId,
                "method" => Part::Method,
                "path" => Part::Path,
                "host" => Part::Host,
                "route" => Part::Route,
                "status" => Part::Status,
                _ => match name.strip_prefix("header.") {
                    Some(header) if !header.is_empty() => Part::RequestHeader(header.to_ascii_lowercase()),
                    _ => {
                        return Err(format!(
                            "unknown placeholder {{{name}}} in {source:?}; known: client_ip, request_id, method, \
                             path, host, route, status, header.NAME"
                        ));
                    }
                },
            };
            if !literal.is_empty() {
                parts.push(Part::Literal(std::mem::take(&mut literal)));
            }
            parts.push(part);
            rest = &tail[close + 1..];
        }
        literal.push_str(rest);
        if !literal.is_empty() {
            parts.push(Part::Literal(literal));
        }
        Ok(Self { parts })
    }

    /// Whether the template reads the response status (allowed in response rules only).
    pub fn uses_status(&self) -> bool {
        self.parts.contains(&Part::Status)
    }

    /// The value for this request.
    pub fn expand(&self, subject: &dyn Subject) -> String {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Literal(text) => out.push_str(text),
                Part::ClientIp => out.push_str(&subject.client_ip()),
                Part::RequestId => out.push_str(&subject.request_id()),
                Part::Method => out.push_str(&subject.method()),
                Part::Path => out.push_str(&subject.path()),
                Part::Host => out.push_str(&subject.host()),
                Part::Route => out.push_str(&subject.route()),
                Part::Status => {
                    if let Some(status) = subject.status() {
                        out.push_str(&status.to_string());
                    }
                }
                Part::RequestHeader(name) => out.push_str(&subject.request_header(name).unwrap_or_default()),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::tests::FakeRequest;

    #[test]
    fn placeholders_expand_and_braces_escape() {
        let template = Template::parse("ip={client_ip} id={request_id} ua={header.User-Agent} {{x}}").unwrap();
        let request = FakeRequest::get("/a").header("user-agent", "curl");
        assert_eq!(template.expand(&request), "ip=192.0.2.7 id=req-1 ua=curl {x}");
    }

    #[test]
    fn missing_headers_expand_to_nothing() {
        let template = Template::parse("[{header.x-missing}]").unwrap();
        assert_eq!(template.expand(&FakeRequest::get("/")), "[]");
    }

    #[test]
    fn errors_name_the_problem() {
        assert!(Template::parse("{nope}").unwrap_err().contains("unknown placeholder {nope}"));
        assert!(Template::parse("{client_ip").unwrap_err().contains("unclosed"));
        assert!(Template::parse("a}b").unwrap_err().contains("unmatched"));
        assert!(Template::parse("{header.}").is_err());
    }
}
