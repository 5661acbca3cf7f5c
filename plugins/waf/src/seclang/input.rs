//! The request as SecLang variables see it: the head taken apart at phase 1 (query
//! arguments, cookies, headers), the body at phase 2 by the processor its content type picks
//! (URL-encoded form, multipart, JSON, XML), as ModSecurity's body processors do.

use super::transforms::url_decode;

/// Most arguments, cookies, parts or XML nodes taken from one request: past it the rest is
/// not split out (and `REQBODY_ERROR` is set for a body), so a hostile request cannot make
/// the filter allocate without bound.
pub const MOST_ELEMENTS: usize = 4096;

/// A named value: an argument, header, cookie, file or XML node.
pub type Element = (String, Vec<u8>);

/// Everything the SecLang variables read, for one request.
#[derive(Debug, Default)]
pub struct RequestInput {
    pub method: String,
    /// Path and query as sent.
    pub uri: String,
    pub protocol: String,
    pub headers: Vec<Element>,
    pub cookies: Vec<Element>,
    pub args_get: Vec<Element>,
    pub args_post: Vec<Element>,
    pub files: Vec<Element>,
    pub files_names: Vec<Element>,
    pub files_sizes: Vec<Element>,
    pub multipart_headers: Vec<Element>,
    pub xml_text: Vec<Element>,
    pub xml_attributes: Vec<Element>,
    pub body: Vec<u8>,
    pub body_processor: Option<BodyProcessor>,
    pub body_error: Option<String>,
    pub multipart_strict_error: bool,
    pub remote_addr: String,
    pub server_name: String,
    pub unique_id: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyProcessor {
    UrlEncoded,
    Multipart,
    Json,
    Xml,
}

impl BodyProcessor {
    pub fn name(self) -> &'static str {
        match self {
            Self::UrlEncoded => "URLENCODED",
            Self::Multipart => "MULTIPART",
            Self::Json => "JSON",
            Self::Xml => "XML",
        }
    }

    pub fn named(name: &str) -> Option<Self> {
        match name.to_ascii_uppercase().as_str() {
            "URLENCODED" => Some(Self::UrlEncoded),
            "MULTIPART" => Some(Self::Multipart),
            "JSON" => Some(Self::Json),
            "XML" => Some(Self::Xml),
            _ => None,
        }
    }

    /// The processor for a content type, as ModSecurity's recommended configuration picks it.
    pub fn for_content_type(content_type: &str) -> Option<Self> {
        let essence = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
        if essence == "application/x-www-form-urlencoded" {
            Some(Self::UrlEncoded)
        } else if essence == "multipart/form-data" {
            Some(Self::Multipart)
        } else if essence == "application/json" || essence.ends_with("+json") {
            Some(Self::Json)
        } else if essence.ends_with("/xml") || essence.ends_with("+xml") {
            Some(Self::Xml)
        } else {
            None
        }
    }
}

impl RequestInput {
    /// The head: method, URI, headers, and what they hold (query arguments, cookies).
    pub fn from_head(method: &str, uri: &str, headers: Vec<Element>) -> Self {
        let mut input =
            Self { method: method.to_owned(), uri: uri.to_owned(), protocol: "HTTP/1.1".to_owned(), ..Self::default() };
        if let Some((_, query)) = uri.split_once('?') {
            input.args_get = form_arguments(query.as_bytes());
        }
        for (name, value) in &headers {
            if name.eq_ignore_ascii_case("cookie") {
                input.cookies.extend(cookies(value));
            }
        }
        input.cookies.truncate(MOST_ELEMENTS);
        input.headers = headers;
        input
    }

    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers.iter().find(|(key, _)| key.eq_ignore_ascii_case(name)).map(|(_, value)| value.as_slice())
    }

    /// The path without the query.
    pub fn filename(&self) -> &str {
        self.uri.split('?').next().unwrap_or("")
    }

    pub fn query(&self) -> &str {
        self.uri.split_once('?').map_or("", |(_, query)| query)
    }

    /// The body, taken apart by `processor` (the content type's when `None`).
    pub fn add_body(&mut self, body: Vec<u8>, processor: Option<BodyProcessor>) {
        let content_type = self.header("content-type").map(|v| String::from_utf8_lossy(v).into_owned());
        let processor = processor.or_else(|| content_type.as_deref().and_then(BodyProcessor::for_content_type));
        self.body_processor = processor;
        match processor {
            Some(BodyProcessor::UrlEncoded) => self.args_post = form_arguments(&body),
            Some(BodyProcessor::Json) => match serde_json::from_slice::<serde_json::Value>(&body) {
                Ok(value) => flatten_json("json", &value, &mut self.args_post),
                Err(err) => self.body_error = Some(format!("JSON parsing error: {err}")),
            },
            Some(BodyProcessor::Xml) => {
                if let Err(err) = xml_nodes(&body, &mut self.xml_text, &mut self.xml_attributes) {
                    self.body_error = Some(format!("XML parsing error: {err}"));
                }
            }
            Some(BodyProcessor::Multipart) => {
                let boundary = content_type.as_deref().and_then(boundary);
                match boundary {
                    Some(boundary) => self.multipart(&body, &boundary),
                    None => {
                        self.body_error = Some("multipart: no boundary".into());
                        self.multipart_strict_error = true;
                    }
                }
            }
            None => {}
        }
        if self.args_post.len() >= MOST_ELEMENTS && self.body_error.is_none() {
            self.body_error = Some(format!("more than {MOST_ELEMENTS} arguments"));
        }
        self.body = body;
    }

    fn multipart(&mut self, body: &[u8], boundary: &str) {
        let delimiter = format!("--{boundary}");
        let mut sections = split_bytes(body, delimiter.as_bytes());
        // What comes before the first delimiter is the preamble.
        sections.next();
        let mut closed = false;
        for section in sections {
            if section.starts_with(b"--") {
                closed = true;
                break;
            }
            if self.args_post.len() + self.files.len() >= MOST_ELEMENTS {
                self.multipart_strict_error = true;
                break;
            }
            let section = section.strip_prefix(b"\r\n").or_else(|| section.strip_prefix(b"\n")).unwrap_or(section);
            let Some(split) =
                find(section, b"\r\n\r\n").map(|at| (at, 4)).or_else(|| find(section, b"\n\n").map(|at| (at, 2)))
            else {
                self.multipart_strict_error = true;
                continue;
            };
            let (head, content) = (&section[..split.0], &section[split.0 + split.1..]);
            let content = content.strip_suffix(b"\r\n").or_else(|| content.strip_suffix(b"\n")).unwrap_or(content);
            let (mut name, mut filename) = (None, None);
            for line in String::from_utf8_lossy(head).lines() {
                self.multipart_headers.push(("MULTIPART_PART_HEADERS".into(), line.as_bytes().to_vec()));
                let Some((header, value)) = line.split_once(':') else {
                    self.multipart_strict_error = true;
                    continue;
                };
                if header.trim().eq_ignore_ascii_case("content-disposition") {
                    name = disposition_parameter(value, "name");
                    filename = disposition_parameter(value, "filename");
                }
            }
            let name = name.unwrap_or_default();
            match filename {
                Some(filename) => {
                    self.files.push((name.clone(), filename.into_bytes()));
                    self.files_sizes.push((name.clone(), content.len().to_string().into_bytes()));
                    self.files_names.push((name.clone(), name.into_bytes()));
                }
                None => self.args_post.push((name, content.to_vec())),
            }
        }
        if !closed {
            self.multipart_strict_error = true;
            self.body_error.get_or_insert_with(|| "multipart: no final boundary".into());
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|window| window == needle)
}

fn split_bytes<'a>(body: &'a [u8], delimiter: &'a [u8]) -> impl Iterator<Item = &'a [u8]> + 'a {
    let mut rest = Some(body);
    std::iter::from_fn(move || {
        let current = rest?;
        match find(current, delimiter) {
            Some(at) => {
                rest = Some(&current[at + delimiter.len()..]);
                Some(&current[..at])
            }
            None => {
                rest = None;
                Some(current)
            }
        }
    })
}

fn boundary(content_type: &str) -> Option<String> {
    content_type.split(';').skip(1).find_map(|parameter| {
        let (name, value) = parameter.split_once('=')?;
        name.trim().eq_ignore_ascii_case("boundary").then(|| value.trim().trim_matches('"').to_owned())
    })
}

fn disposition_parameter(value: &str, wanted: &str) -> Option<String> {
    value.split(';').skip(1).find_map(|parameter| {
        let (name, value) = parameter.split_once('=')?;
        name.trim().eq_ignore_ascii_case(wanted).then(|| value.trim().trim_matches('"').to_owned())
    })
}

/// `a=1&b=2`: names and values URL-decoded (`+` is a space).
pub fn form_arguments(text: &[u8]) -> Vec<Element> {
    text.split(|b| *b == b'&')
        .filter(|pair| !pair.is_empty())
        .take(MOST_ELEMENTS)
        .map(|pair| {
            let (name, value) = match pair.iter().position(|b| *b == b'=') {
                Some(at) => (&pair[..at], &pair[at + 1..]),
                None => (pair, &b""[..]),
            };
            (String::from_utf8_lossy(&url_decode(name, false)).into_owned(), url_decode(value, false))
        })
        .collect()
}

fn cookies(header: &[u8]) -> Vec<Element> {
    header
        .split(|b| *b == b';')
        .map(|pair| pair.trim_ascii())
        .filter(|pair| !pair.is_empty())
        .map(|pair| match pair.iter().position(|b| *b == b'=') {
            Some(at) => (String::from_utf8_lossy(&pair[..at]).into_owned(), pair[at + 1..].to_vec()),
            None => (String::from_utf8_lossy(pair).into_owned(), Vec::new()),
        })
        .collect()
}

/// Every scalar of a JSON document as an argument named by its path (`json.user.name`,
/// `json.items.0`).
fn flatten_json(path: &str, value: &serde_json::Value, out: &mut Vec<Element>) {
    if out.len() >= MOST_ELEMENTS {
        return;
    }
    match value {
        serde_json::Value::Object(members) => {
            for (key, member) in members {
                flatten_json(&format!("{path}.{key}"), member, out);
            }
        }
        serde_json::Value::Array(items) => {
            for (index, item) in items.iter().enumerate() {
                flatten_json(&format!("{path}.{index}"), item, out);
            }
        }
        serde_json::Value::String(text) => out.push((path.to_owned(), text.as_bytes().to_vec())),
        serde_json::Value::Null => out.push((path.to_owned(), Vec::new())),
        other => out.push((path.to_owned(), other.to_string().into_bytes())),
    }
}

/// The text nodes (`XML:/*`) and attribute values (`XML://@*`) of an XML document; a document
/// whose tags do not nest is an error, as for ModSecurity's XML processor.
fn xml_nodes(body: &[u8], text: &mut Vec<Element>, attributes: &mut Vec<Element>) -> Result<(), String> {
    let document = String::from_utf8_lossy(body);
    let mut open: Vec<String> = Vec::new();
    let mut rest: &str = &document;
    let mut seen_root = false;
    while !rest.is_empty() {
        if text.len() + attributes.len() >= MOST_ELEMENTS {
            return Err(format!("more than {MOST_ELEMENTS} nodes"));
        }
        let Some(start) = rest.find('<') else {
            if !rest.trim().is_empty() {
                text.push(("XML".into(), decode_xml(rest.trim()).into_bytes()));
            }
            break;
        };
        let before = rest[..start].trim();
        if !before.is_empty() {
            if open.is_empty() {
                return Err("text outside the root element".into());
            }
            text.push(("XML".into(), decode_xml(before).into_bytes()));
        }
        rest = &rest[start..];
        if let Some(after) = rest.strip_prefix("<!--") {
            let end = after.find("-->").ok_or("unterminated comment")?;
            rest = &after[end + 3..];
        } else if let Some(after) = rest.strip_prefix("<![CDATA[") {
            let end = after.find("]]>").ok_or("unterminated CDATA section")?;
            text.push(("XML".into(), after.as_bytes()[..end].to_vec()));
            rest = &after[end + 3..];
        } else if rest.starts_with("<?") {
            let end = rest.find("?>").ok_or("unterminated processing instruction")?;
            rest = &rest[end + 2..];
        } else if rest.starts_with("<!") {
            // A DOCTYPE, with an internal subset perhaps: its entities are not expanded.
            let mut depth = 0usize;
            let mut end = None;
            for (index, c) in rest.char_indices() {
                match c {
                    '[' => depth += 1,
                    ']' => depth = depth.saturating_sub(1),
                    '>' if depth == 0 => {
                        end = Some(index);
                        break;
                    }
                    _ => {}
                }
            }
            let end = end.ok_or("unterminated declaration")?;
            text.push(("XML".into(), rest.as_bytes()[..=end].to_vec()));
            rest = &rest[end + 1..];
        } else {
            let end = rest.find('>').ok_or("unterminated tag")?;
            let tag = &rest[1..end];
            rest = &rest[end + 1..];
            if let Some(name) = tag.strip_prefix('/') {
                let name = name.trim();
                match open.pop() {
                    Some(opened) if opened == name => {}
                    _ => return Err(format!("mismatched closing tag </{name}>")),
                }
                continue;
            }
            let self_closing = tag.ends_with('/');
            let tag = tag.trim_end_matches('/');
            let name_end = tag.find(char::is_whitespace).unwrap_or(tag.len());
            let name = &tag[..name_end];
            if name.is_empty() {
                return Err("empty tag name".into());
            }
            if open.is_empty() && seen_root {
                return Err("more than one root element".into());
            }
            seen_root = true;
            let mut attribute_text = &tag[name_end..];
            while let Some(eq) = attribute_text.find('=') {
                let after = attribute_text[eq + 1..].trim_start();
                let Some(quote) = after.chars().next().filter(|c| *c == '"' || *c == '\'') else { break };
                let Some(close) = after[1..].find(quote) else { return Err("unterminated attribute".into()) };
                attributes.push(("XML".into(), decode_xml(&after[1..1 + close]).into_bytes()));
                attribute_text = &after[1 + close + 1..];
            }
            if !self_closing {
                open.push(name.to_owned());
            }
        }
    }
    if !open.is_empty() {
        return Err(format!("unclosed element <{}>", open.last().map(String::as_str).unwrap_or("")));
    }
    if !seen_root {
        return Err("no root element".into());
    }
    Ok(())
}

fn decode_xml(text: &str) -> String {
    text.replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", "\"").replace("&apos;", "'").replace("&amp;", "&")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(content_type: &str) -> RequestInput {
        RequestInput::from_head(
            "POST",
            "/a/b.php?x=1&y=%27or+1",
            vec![("content-type".into(), content_type.into()), ("cookie".into(), b"s=abc; t=d=e".to_vec())],
        )
    }

    #[test]
    fn query_and_cookies_are_taken_apart() {
        let input = head("text/plain");
        assert_eq!(input.args_get, vec![("x".into(), b"1".to_vec()), ("y".into(), b"'or 1".to_vec())]);
        assert_eq!(input.cookies, vec![("s".into(), b"abc".to_vec()), ("t".into(), b"d=e".to_vec())]);
        assert_eq!(input.filename(), "/a/b.php");
    }

    #[test]
    fn bodies_are_parsed_by_their_content_type() {
        let mut json = head("application/json");
        json.add_body(br#"{"user":{"name":"x' or 1=1"},"tags":["a",2]}"#.to_vec(), None);
        assert!(json.args_post.contains(&("json.user.name".into(), b"x' or 1=1".to_vec())));
        assert!(json.args_post.contains(&("json.tags.1".into(), b"2".to_vec())));

        let mut broken = head("application/json");
        broken.add_body(b"{not json".to_vec(), None);
        assert!(broken.body_error.is_some());

        let mut xml = head("application/xml");
        xml.add_body(b"<?xml version=\"1.0\"?><a x=\"1\"><b>hello &amp; bye</b><c/></a>".to_vec(), None);
        assert_eq!(xml.xml_text, vec![("XML".into(), b"hello & bye".to_vec())]);
        assert_eq!(xml.xml_attributes, vec![("XML".into(), b"1".to_vec())]);
        assert!(xml.body_error.is_none());

        let mut multipart = head("multipart/form-data; boundary=XyZ");
        multipart.add_body(
            b"--XyZ\r\nContent-Disposition: form-data; name=\"title\"\r\n\r\nhello\r\n--XyZ\r\nContent-Disposition: form-data; name=\"upload\"; filename=\"shell.php\"\r\nContent-Type: text/plain\r\n\r\n<?php ?>\r\n--XyZ--\r\n".to_vec(),
            None,
        );
        assert_eq!(multipart.args_post, vec![("title".into(), b"hello".to_vec())]);
        assert_eq!(multipart.files, vec![("upload".into(), b"shell.php".to_vec())]);
        assert!(!multipart.multipart_strict_error);
    }
}
