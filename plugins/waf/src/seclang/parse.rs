//! SecLang text into directives: logical lines (a trailing `\` continues a line, `#` starts a
//! comment line), quoted and bare arguments, and the three small languages inside a rule:
//! its variable list (`ARGS|!ARGS:id|&TX:score`), its operator (`!@rx ...`) and its action
//! list (`id:1,phase:2,msg:'...'`).

use super::LoadError;

/// One directive as written: its name, its arguments, and where it starts.
#[derive(Debug, Clone)]
pub struct Directive {
    pub file: String,
    pub line: usize,
    pub name: String,
    pub args: Vec<String>,
}

impl Directive {
    pub fn error(&self, message: impl Into<String>) -> LoadError {
        LoadError { file: self.file.clone(), line: self.line, message: message.into() }
    }
}

/// Splits a rule file into directives.
pub fn directives(file: &str, text: &str) -> Result<Vec<Directive>, LoadError> {
    let mut out = Vec::new();
    let mut logical = String::new();
    let mut start = 0;
    for (index, raw) in text.lines().enumerate() {
        let line = raw.trim_end_matches('\r');
        if logical.is_empty() {
            start = index + 1;
            let trimmed = line.trim_start();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
        }
        match line.trim_end().strip_suffix('\\') {
            Some(continued) => {
                logical.push_str(continued);
            }
            None => {
                logical.push_str(line);
                out.push(directive(file, start, &logical)?);
                logical.clear();
            }
        }
    }
    if !logical.trim().is_empty() {
        out.push(directive(file, start, &logical)?);
    }
    Ok(out)
}

fn directive(file: &str, line: usize, text: &str) -> Result<Directive, LoadError> {
    let error = |message: &str| LoadError { file: file.to_owned(), line, message: message.to_owned() };
    let mut args = Vec::new();
    let mut chars = text.trim().chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
            continue;
        }
        let mut arg = String::new();
        if c == '"' {
            chars.next();
            let mut closed = false;
            while let Some(c) = chars.next() {
                match c {
                    '\\' if chars.peek() == Some(&'"') => {
                        arg.push('"');
                        chars.next();
                    }
                    '"' => {
                        closed = true;
                        break;
                    }
                    c => arg.push(c),
                }
            }
            if !closed {
                return Err(error("unterminated quoted argument"));
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                arg.push(c);
                chars.next();
            }
        }
        args.push(arg);
    }
    if args.is_empty() {
        return Err(error("empty directive"));
    }
    let name = args.remove(0);
    Ok(Directive { file: file.to_owned(), line, name, args })
}

/// One element of a rule's variable list.
#[derive(Debug, Clone, PartialEq)]
pub struct VariableSpec {
    /// `!VAR:sel`: take these out of the rule's targets.
    pub exclude: bool,
    /// `&VAR`: the number of elements, not their values.
    pub count: bool,
    /// The variable's name, upper case.
    pub name: String,
    pub selector: Option<Selector>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Selector {
    /// A name, compared without regard to case.
    Name(String),
    /// `/regex/`, matched against element names.
    Pattern(String),
}

/// Parses `ARGS|!ARGS:foo|REQUEST_HEADERS:/^x-/|&TX:score|XML:/*`.
pub fn variables(text: &str) -> Result<Vec<VariableSpec>, String> {
    let chars: Vec<char> = text.chars().collect();
    let mut at = 0;
    let mut out = Vec::new();
    while at < chars.len() {
        let mut spec = VariableSpec { exclude: false, count: false, name: String::new(), selector: None };
        loop {
            match chars.get(at) {
                Some('!') => spec.exclude = true,
                Some('&') => spec.count = true,
                _ => break,
            }
            at += 1;
        }
        while let Some(&c) = chars.get(at) {
            if c.is_ascii_alphanumeric() || c == '_' {
                spec.name.push(c.to_ascii_uppercase());
                at += 1;
            } else {
                break;
            }
        }
        if spec.name.is_empty() {
            return Err(format!("no variable name at {:?}", chars[at.min(chars.len())..].iter().collect::<String>()));
        }
        if chars.get(at) == Some(&':') || chars.get(at) == Some(&'.') {
            at += 1;
            spec.selector = Some(match chars.get(at) {
                Some('/') if spec.name != "XML" => {
                    at += 1;
                    let mut pattern = String::new();
                    let mut closed = false;
                    while let Some(&c) = chars.get(at) {
                        at += 1;
                        match c {
                            '\\' if chars.get(at) == Some(&'/') => {
                                pattern.push('/');
                                at += 1;
                            }
                            '/' => {
                                closed = true;
                                break;
                            }
                            c => pattern.push(c),
                        }
                    }
                    if !closed {
                        return Err(format!("unterminated /regex/ selector of {}", spec.name));
                    }
                    Selector::Pattern(pattern)
                }
                Some('\'') => {
                    at += 1;
                    let mut name = String::new();
                    while let Some(&c) = chars.get(at) {
                        at += 1;
                        if c == '\'' {
                            break;
                        }
                        name.push(c);
                    }
                    Selector::Name(name)
                }
                _ => {
                    let mut name = String::new();
                    while let Some(&c) = chars.get(at) {
                        if c == '|' {
                            break;
                        }
                        name.push(c);
                        at += 1;
                    }
                    Selector::Name(name)
                }
            });
        }
        match chars.get(at) {
            None => {}
            Some('|') => at += 1,
            Some(c) => return Err(format!("unexpected {c:?} after variable {}", spec.name)),
        }
        out.push(spec);
    }
    if out.is_empty() {
        return Err("no variables".into());
    }
    Ok(out)
}

/// A rule's operator: `!@name argument`, or a bare regular expression (`@rx` is the default).
pub fn operator(text: &str) -> (bool, String, String) {
    let trimmed = text.trim_start();
    let (negated, rest) = match trimmed.strip_prefix('!') {
        Some(rest) => (true, rest.trim_start()),
        None => (false, trimmed),
    };
    match rest.strip_prefix('@') {
        Some(named) => {
            let end = named.find(char::is_whitespace).unwrap_or(named.len());
            let argument = named[end..].strip_prefix(|c: char| c.is_whitespace()).unwrap_or("");
            (negated, named[..end].to_owned(), argument.to_owned())
        }
        None => (negated, "rx".to_owned(), rest.to_owned()),
    }
}

/// Splits an action list at the commas outside single quotes; each action is its name and
/// its value with the quotes taken off (`msg:'a, b'` is `("msg", "a, b")`).
pub fn actions(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace() || *c == ',') {
            chars.next();
        }
        if chars.peek().is_none() {
            break;
        }
        let mut name = String::new();
        while let Some(&c) = chars.peek() {
            if c == ':' || c == ',' {
                break;
            }
            name.push(c);
            chars.next();
        }
        let mut value = String::new();
        if chars.peek() == Some(&':') {
            chars.next();
            while chars.peek().is_some_and(|c| *c == ' ') {
                chars.next();
            }
            if chars.peek() == Some(&'\'') {
                chars.next();
                let mut closed = false;
                while let Some(c) = chars.next() {
                    match c {
                        '\\' if chars.peek() == Some(&'\'') => {
                            value.push('\'');
                            chars.next();
                        }
                        '\'' => {
                            closed = true;
                            break;
                        }
                        c => value.push(c),
                    }
                }
                if !closed {
                    return Err(format!("unterminated quote in action {}", name.trim()));
                }
            } else {
                while let Some(&c) = chars.peek() {
                    if c == ',' {
                        break;
                    }
                    value.push(c);
                    chars.next();
                }
            }
        }
        out.push((name.trim().to_owned(), value.trim_end().to_owned()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continued_lines_and_quotes_make_one_directive() {
        let text = "# comment\nSecRule ARGS \"@rx a\\\"b\" \\\n    \"id:1,\\\n    phase:2\"\n\nSecMarker END\n";
        let parsed = directives("x.conf", text).unwrap();
        assert_eq!(parsed.len(), 2);
        assert_eq!(parsed[0].line, 2);
        assert_eq!(parsed[0].args, vec!["ARGS", "@rx a\"b", "id:1,    phase:2"]);
        assert_eq!(parsed[1].name, "SecMarker");
        assert_eq!(parsed[1].line, 6);
    }

    #[test]
    fn variable_lists_keep_regex_selectors_whole() {
        let parsed = variables("REQUEST_COOKIES|!REQUEST_COOKIES:/__utm|x/|&TX:Score|XML:/*").unwrap();
        assert_eq!(parsed.len(), 4);
        assert_eq!(parsed[1].selector, Some(Selector::Pattern("__utm|x".into())));
        assert!(parsed[1].exclude);
        assert!(parsed[2].count);
        assert_eq!(parsed[2].selector, Some(Selector::Name("Score".into())));
        assert_eq!(parsed[3].selector, Some(Selector::Name("/*".into())));
    }

    #[test]
    fn actions_split_outside_quotes() {
        let parsed = actions("id:1, msg:'a, b', t:none,setvar:'tx.x=+%{tx.y}',chain").unwrap();
        assert_eq!(parsed[1], ("msg".into(), "a, b".into()));
        assert_eq!(parsed[3], ("setvar".into(), "tx.x=+%{tx.y}".into()));
        assert_eq!(parsed[4], ("chain".into(), String::new()));
    }

    #[test]
    fn operators_default_to_rx() {
        assert_eq!(operator("!@within GET POST"), (true, "within".into(), "GET POST".into()));
        assert_eq!(operator("^abc$"), (false, "rx".into(), "^abc$".into()));
        assert_eq!(operator("@detectSQLi"), (false, "detectSQLi".into(), String::new()));
    }
}
