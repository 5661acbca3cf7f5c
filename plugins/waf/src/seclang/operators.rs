//! The `@` operators: each compiled once when the rule set loads (patterns, phrase sets,
//! address lists), then run on a target's transformed value.

use std::borrow::Cow;
use std::net::IpAddr;

use aho_corasick::AhoCorasick;
use regex_automata::meta;
use regex_automata::util::syntax;

use super::macros::Macro;

/// Longest a backtracking match may search (steps of the backtracking engine) before it is
/// given up as a non-match; the sandbox's CPU limit per call bounds it in time as well.
const BACKTRACK_LIMIT: usize = 5_000_000;

/// Most memory each pattern's lazy DFA may keep: the CRS has some 400 patterns, and a filter
/// instance has tens of MiB (a pattern whose DFA would need more is run by the slower NFA
/// simulation instead of growing).
const HYBRID_CACHE_BYTES: usize = 96 << 10;

#[derive(Debug)]
pub enum Operator {
    Rx(Box<Pattern>),
    /// A pattern holding `%{...}` macros: expanded and compiled when run.
    RxMacro(Macro),
    Pm(AhoCorasick),
    DetectSqli,
    DetectXss,
    Contains(Macro),
    ContainsWord(Macro),
    BeginsWith(Macro),
    EndsWith(Macro),
    Streq(Macro),
    Within(Macro),
    Compare(Comparison, Macro),
    ValidateByteRange(Box<[bool; 256]>),
    ValidateUrlEncoding,
    ValidateUtf8Encoding,
    IpMatch(Vec<Network>),
    UnconditionalMatch,
    /// `@noMatch`, and lookups this engine has no data for (`@geoLookup` without a database,
    /// `@rbl` without DNS): they never match, as in ModSecurity when the data is missing.
    NoMatch,
}

/// What expands an operator argument's macros: the transaction it runs in.
pub trait Expand {
    /// The macro's text; a literal is borrowed, not copied.
    fn expand<'m>(&self, text: &'m Macro) -> Cow<'m, [u8]>;
}

#[derive(Debug, Clone, Copy)]
pub enum Comparison {
    Eq,
    Ge,
    Gt,
    Lt,
    Le,
}

/// A regular expression: the linear-time engine on bytes when the pattern allows it (no
/// lookaround, no back-references: nearly all of the CRS), the backtracking one otherwise.
#[derive(Debug)]
pub enum Pattern {
    /// Matched on bytes with ASCII-only classes and case folding: PCRE's semantics without
    /// UTF-8 mode, which is how ModSecurity runs it.
    Bytes(meta::Regex),
    /// Needs backtracking; matched on the input's bytes as Latin-1 text.
    Backtracking(fancy_regex::Regex),
    /// A pattern without any special character (the CRS's `!REQUEST_COOKIES:/__utm/` on most
    /// of its rules): found with a substring search, without a regex engine's set-up per call.
    Literal(Box<[u8]>),
}

impl Pattern {
    /// Compiles a PCRE pattern as ModSecurity does: `.` also matches newlines, `$` only at the
    /// end.
    pub fn compile(pattern: &str) -> Result<Self, String> {
        if !pattern.is_empty()
            && !pattern.contains(['\\', '^', '$', '.', '|', '?', '*', '+', '(', ')', '[', ']', '{', '}'])
        {
            return Ok(Self::Literal(pattern.as_bytes().into()));
        }
        let translated = translate_pcre(pattern);
        // No literal prefilter: extracting one from the CRS's large alternations costs most of
        // their compile time (4x), and the lazy DFA scans short inputs as fast without it. No
        // full DFA either: built ahead for every small pattern, it was a sixth of the CRS's
        // compile time (which an instance pays when it starts), and the lazy one matches as fast.
        let linear = meta::Builder::new()
            .configure(
                meta::Config::new()
                    .auto_prefilter(false)
                    .dfa(false)
                    .nfa_size_limit(Some(64 << 20))
                    .hybrid_cache_capacity(HYBRID_CACHE_BYTES),
            )
            .syntax(syntax_config())
            .build(&translated);
        if let Ok(regex) = linear {
            return Ok(Self::Bytes(regex));
        }
        let regex = fancy_regex::RegexBuilder::new(&format!("(?s){translated}"))
            .backtrack_limit(BACKTRACK_LIMIT)
            .delegate_size_limit(64 << 20)
            .delegate_dfa_size_limit(16 << 20)
            .build()
            .map_err(|err| format!("pattern does not compile: {err}"))?;
        Ok(Self::Backtracking(regex))
    }

    /// Whether it matches; with `captures`, the whole match and its groups (up to 9).
    pub fn matches(&self, input: &[u8], captures: Option<&mut Vec<Vec<u8>>>) -> bool {
        match self {
            Self::Literal(literal) => {
                let found =
                    input.len() >= literal.len() && input.windows(literal.len()).any(|window| window == &literal[..]);
                if let (true, Some(out)) = (found, captures) {
                    out.clear();
                    out.push(literal.to_vec());
                }
                found
            }
            Self::Bytes(regex) => match captures {
                None => regex.is_match(input),
                // Most values do not match: the quick test first, the groups only for a match.
                Some(_) if !regex.is_match(input) => false,
                Some(out) => {
                    let mut found = regex.create_captures();
                    regex.captures(input, &mut found);
                    if !found.is_match() {
                        return false;
                    }
                    out.clear();
                    for group in 0..found.group_len().min(10) {
                        out.push(found.get_group(group).map(|span| input[span.range()].to_vec()).unwrap_or_default());
                    }
                    true
                }
            },
            Self::Backtracking(regex) => {
                let text = as_text(input);
                match captures {
                    None => regex.is_match(&text).unwrap_or(false),
                    Some(out) => match regex.captures(&text) {
                        Ok(Some(found)) => {
                            out.clear();
                            for group in found.iter().take(10) {
                                out.push(group.map(|m| from_text(m.as_str())).unwrap_or_default());
                            }
                            true
                        }
                        _ => false,
                    },
                }
            }
        }
    }
}

/// How patterns are read: bytes, ASCII classes and case folding, `.` matching newlines.
pub fn syntax_config() -> syntax::Config {
    syntax::Config::new().unicode(false).utf8(false).dot_matches_new_line(true)
}

/// PCRE spellings the Rust engines read differently: inside a character class PCRE takes `[`
/// (unless it opens `[:alpha:]`), `&&`, `--` and `~~` literally, where the Rust engines nest
/// classes or combine them; `\Z` is end of text or before a final newline.
pub fn translate_pcre(pattern: &str) -> Cow<'_, str> {
    if !pattern.contains(['[', '{']) && !pattern.contains("\\Z") && pattern.is_ascii() {
        return Cow::Borrowed(pattern);
    }
    let chars: Vec<char> = pattern.chars().collect();
    let mut out = String::with_capacity(pattern.len() + 8);
    let mut at = 0;
    let mut in_class = false;
    // Index in `chars` where the current class's members start (after `[` and `^`).
    let mut class_start = 0;
    while at < chars.len() {
        let c = chars[at];
        if c == '\\' {
            let next = chars.get(at + 1).copied();
            if next == Some('Z') && !in_class {
                out.push_str("(?:\\n?\\z)");
            } else {
                out.push(c);
                if let Some(next) = next {
                    out.push(next);
                }
            }
            at += 2;
            continue;
        }
        if in_class {
            match c {
                ']' if at > class_start => {
                    in_class = false;
                    out.push(c);
                }
                '[' if chars.get(at + 1) == Some(&':') => {
                    // A POSIX class: copy through its closing `:]`.
                    let close =
                        (at + 2..chars.len().saturating_sub(1)).find(|i| chars[*i] == ':' && chars[i + 1] == ']');
                    match close {
                        Some(close) => {
                            out.extend(&chars[at..close + 2]);
                            at = close + 2;
                            continue;
                        }
                        None => out.push_str("\\["),
                    }
                }
                '[' => out.push_str("\\["),
                c if !c.is_ascii() => push_utf8_bytes(&mut out, c),
                '&' | '~' if chars.get(at + 1) == Some(&c) => out.push_str(&format!("\\{c}")),
                '-' if chars.get(at + 1) == Some(&'-') => out.push_str("\\-"),
                _ => out.push(c),
            }
        } else if !c.is_ascii() {
            push_utf8_bytes(&mut out, c);
        } else if c == '{' && !is_quantifier(&chars[at..]) {
            // PCRE takes a `{` that opens no `{n}`, `{n,}` or `{n,m}` as itself.
            out.push_str("\\{");
        } else {
            out.push(c);
            if c == '[' {
                in_class = true;
                class_start = at + 1;
                if chars.get(class_start) == Some(&'^') {
                    out.push('^');
                    class_start += 1;
                    at += 1;
                }
                // A `]` first in a class is a member.
                if chars.get(class_start) == Some(&']') {
                    out.push_str("\\]");
                    at += 1;
                    class_start += 1;
                }
            }
        }
        at += 1;
    }
    Cow::Owned(out)
}

/// A non-ASCII character of a pattern as PCRE without UTF-8 mode reads it: its bytes, one by
/// one (in a class, each byte a member).
fn push_utf8_bytes(out: &mut String, c: char) {
    let mut buffer = [0; 4];
    for byte in c.encode_utf8(&mut buffer).bytes() {
        out.push_str(&format!("\\x{byte:02x}"));
    }
}

/// Whether `text` (starting at a `{`) is a counted repetition.
fn is_quantifier(text: &[char]) -> bool {
    let Some(close) = text.iter().position(|c| *c == '}') else { return false };
    let inner: String = text[1..close].iter().collect();
    let (low, high) = inner.split_once(',').unwrap_or((&inner, "0"));
    !low.is_empty() && low.chars().all(|c| c.is_ascii_digit()) && high.chars().all(|c| c.is_ascii_digit())
}

/// Input bytes as text for the regex engines: each byte one character (Latin-1), as PCRE sees
/// bytes when it is not in UTF-8 mode; ASCII input is used as is.
pub fn as_text(input: &[u8]) -> Cow<'_, str> {
    if input.is_ascii() {
        // ASCII is valid UTF-8.
        Cow::Borrowed(std::str::from_utf8(input).unwrap_or_default())
    } else {
        Cow::Owned(input.iter().map(|b| char::from(*b)).collect())
    }
}

fn from_text(text: &str) -> Vec<u8> {
    text.chars().map(|c| c as u32 as u8).collect()
}

/// An address block of `@ipMatch`.
#[derive(Debug, Clone, Copy)]
pub struct Network {
    address: IpAddr,
    prefix: u8,
}

impl Network {
    pub fn parse(text: &str) -> Result<Self, String> {
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text, None),
        };
        let address: IpAddr = address.trim().parse().map_err(|_| format!("{text:?} is not an address"))?;
        let most = if address.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(prefix) => {
                prefix.trim().parse().ok().filter(|p| *p <= most).ok_or(format!("bad prefix in {text:?}"))?
            }
            None => most,
        };
        Ok(Self { address, prefix })
    }

    fn contains(&self, candidate: IpAddr) -> bool {
        let prefix = u32::from(self.prefix);
        match (self.address, candidate) {
            (IpAddr::V4(network), IpAddr::V4(candidate)) => {
                let mask = if prefix == 0 { 0 } else { u32::MAX << (32 - prefix) };
                u32::from(network) & mask == u32::from(candidate) & mask
            }
            (IpAddr::V6(network), IpAddr::V6(candidate)) => {
                let mask = if prefix == 0 { 0 } else { u128::MAX << (128 - prefix) };
                u128::from(network) & mask == u128::from(candidate) & mask
            }
            _ => false,
        }
    }
}

/// Phrases for `@pm`: space-separated.
pub fn phrases(text: &str) -> Vec<String> {
    text.split_whitespace().map(str::to_owned).collect()
}

/// Phrases from `@pmFromFile` data files: one per line, `#` lines and blank lines skipped.
pub fn data_file_phrases(text: &str) -> Vec<String> {
    text.lines().map(str::trim).filter(|line| !line.is_empty() && !line.starts_with('#')).map(str::to_owned).collect()
}

pub fn phrase_matcher(phrases: &[String]) -> Result<AhoCorasick, String> {
    // The contiguous NFA: a tenth of the DFA's build time for the CRS's thousand-phrase lists,
    // and about as fast on request-sized inputs.
    AhoCorasick::builder()
        .ascii_case_insensitive(true)
        .kind(Some(aho_corasick::AhoCorasickKind::NoncontiguousNFA))
        .prefilter(false)
        .build(phrases)
        .map_err(|err| err.to_string())
}

pub fn byte_ranges(text: &str) -> Result<Box<[bool; 256]>, String> {
    let mut allowed = Box::new([false; 256]);
    for part in text.split(',').map(str::trim).filter(|part| !part.is_empty()) {
        let (low, high) = part.split_once('-').unwrap_or((part, part));
        let parse = |value: &str| value.trim().parse::<u8>().map_err(|_| format!("bad byte range {part:?}"));
        let (low, high) = (parse(low)?, parse(high)?);
        if low > high {
            return Err(format!("bad byte range {part:?}"));
        }
        for byte in low..=high {
            allowed[byte as usize] = true;
        }
    }
    Ok(allowed)
}

/// ModSecurity's number reading: leading digits (and sign), anything else is 0.
pub fn as_number(text: &[u8]) -> i64 {
    // As a parse of the text's leading sign and digits; not UTF-8 at all, or too large, is 0.
    if !text.is_ascii() && std::str::from_utf8(text).is_err() {
        return 0;
    }
    let text = text.trim_ascii();
    let (negative, digits) = match text.first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    let mut value: i64 = 0;
    let mut any = false;
    for byte in digits.iter().take_while(|byte| byte.is_ascii_digit()) {
        any = true;
        let digit = i64::from(byte - b'0');
        // Built negative, so that i64::MIN parses too.
        match value.checked_mul(10).and_then(|value| value.checked_sub(digit)) {
            Some(next) => value = next,
            None => return 0,
        }
    }
    match (any, negative) {
        (false, _) => 0,
        (true, true) => value,
        (true, false) => value.checked_neg().unwrap_or(0),
    }
}

impl Operator {
    /// Runs the operator on `input`, with macros in its argument expanded by `expand`; a
    /// match's captures (the matched text first) go to `captures` when asked for.
    pub fn matches(&self, input: &[u8], expand: &dyn Expand, captures: Option<&mut Vec<Vec<u8>>>) -> bool {
        let mut captures = captures;
        let mut captured = |value: &[u8]| {
            if let Some(out) = captures.as_deref_mut() {
                out.clear();
                out.push(value.to_vec());
            }
        };
        match self {
            Self::Rx(pattern) => pattern.matches(input, captures.as_deref_mut()),
            Self::RxMacro(pattern) => {
                let expanded = expand.expand(pattern);
                match Pattern::compile(&String::from_utf8_lossy(&expanded)) {
                    Ok(pattern) => pattern.matches(input, captures),
                    Err(_) => false,
                }
            }
            Self::Pm(matcher) => match matcher.find(input) {
                Some(found) => {
                    captured(&input[found.start()..found.end()]);
                    true
                }
                None => false,
            },
            Self::DetectSqli => {
                // The fingerprint only for a detection: taking it costs a second pass.
                let mut state = libinjectionrs::SqliState::new(input, libinjectionrs::SqliFlags::FLAG_NONE);
                if state.detect() {
                    captured(state.get_fingerprint().as_str().as_bytes());
                    true
                } else {
                    false
                }
            }
            Self::DetectXss => {
                let found = libinjectionrs::detect_xss(input).is_injection();
                if found {
                    captured(input);
                }
                found
            }
            Self::Contains(needle) => {
                let needle = expand.expand(needle);
                let found = needle.is_empty() || input.windows(needle.len()).any(|w| w == needle.as_ref());
                if found {
                    captured(&needle);
                }
                found
            }
            Self::ContainsWord(word) => {
                let word = expand.expand(word);
                if word.is_empty() {
                    return true;
                }
                let is_word = |byte: Option<&u8>| byte.is_some_and(|b| b.is_ascii_alphanumeric() || *b == b'_');
                let found = input.windows(word.len()).enumerate().any(|(at, window)| {
                    window == word.as_ref()
                        && !is_word(at.checked_sub(1).and_then(|before| input.get(before)))
                        && !is_word(input.get(at + word.len()))
                });
                if found {
                    captured(&word);
                }
                found
            }
            Self::BeginsWith(prefix) => {
                let prefix = expand.expand(prefix);
                input.starts_with(&prefix)
            }
            Self::EndsWith(suffix) => {
                let suffix = expand.expand(suffix);
                input.ends_with(&suffix)
            }
            Self::Streq(text) => expand.expand(text).as_ref() == input,
            Self::Within(list) => {
                let list = expand.expand(list);
                input.is_empty() || list.windows(input.len()).any(|w| w == input)
            }
            Self::Compare(comparison, value) => {
                let (left, right) = (as_number(input), as_number(&expand.expand(value)));
                match comparison {
                    Comparison::Eq => left == right,
                    Comparison::Ge => left >= right,
                    Comparison::Gt => left > right,
                    Comparison::Lt => left < right,
                    Comparison::Le => left <= right,
                }
            }
            Self::ValidateByteRange(allowed) => match input.iter().find(|b| !allowed[**b as usize]) {
                Some(byte) => {
                    captured(&[*byte]);
                    true
                }
                None => false,
            },
            Self::ValidateUrlEncoding => {
                let mut at = 0;
                while at < input.len() {
                    if input[at] == b'%' {
                        let valid =
                            input.get(at + 1..at + 3).is_some_and(|pair| pair.iter().all(u8::is_ascii_hexdigit));
                        if !valid {
                            captured(&input[at..input.len().min(at + 3)]);
                            return true;
                        }
                        at += 3;
                    } else {
                        at += 1;
                    }
                }
                false
            }
            Self::ValidateUtf8Encoding => std::str::from_utf8(input).is_err(),
            Self::IpMatch(networks) => {
                let Ok(address) = String::from_utf8_lossy(input).trim().parse::<IpAddr>() else { return false };
                networks.iter().any(|network| network.contains(address))
            }
            Self::UnconditionalMatch => true,
            Self::NoMatch => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_read_as_their_leading_sign_and_digits() {
        assert_eq!(as_number(b"42"), 42);
        assert_eq!(as_number(b" -7 "), -7);
        assert_eq!(as_number(b"+3abc"), 3);
        assert_eq!(as_number(b"12.5"), 12);
        assert_eq!(as_number(b"-9223372036854775808"), i64::MIN);
        assert_eq!(as_number(b"9223372036854775808"), 0);
        for zero in [&b""[..], b"-", b"abc", b"\xff1"] {
            assert_eq!(as_number(zero), 0, "{zero:?}");
        }
    }

    struct NoMacros;

    impl Expand for NoMacros {
        fn expand<'m>(&self, _: &'m Macro) -> Cow<'m, [u8]> {
            Cow::Borrowed(b"")
        }
    }

    const NO_MACROS: &NoMacros = &NoMacros;

    #[test]
    fn a_pattern_without_special_characters_is_a_substring_search() {
        let pattern = Pattern::compile("__utm").unwrap();
        assert!(matches!(pattern, Pattern::Literal(_)));
        let mut captures = Vec::new();
        assert!(pattern.matches(b"x__utma", Some(&mut captures)));
        assert_eq!(captures, vec![b"__utm".to_vec()]);
        assert!(!pattern.matches(b"__UTM", None) && !pattern.matches(b"__ut", None));
        // Anything special goes to a regex engine.
        assert!(!matches!(Pattern::compile("__utm$").unwrap(), Pattern::Literal(_)));
        assert!(!matches!(Pattern::compile("a.b").unwrap(), Pattern::Literal(_)));
    }

    #[test]
    fn patterns_match_bytes_as_pcre_does() {
        let pattern = Pattern::compile(r"(?i)union\s+select").unwrap();
        assert!(pattern.matches(b"1 UNION\nSELECT 2", None));
        let lookahead = Pattern::compile(r"a(?=b)").unwrap();
        assert!(lookahead.matches(b"xab", None));
        assert!(!lookahead.matches(b"xac", None));
        let high = Pattern::compile(r"\xc0\xae").unwrap();
        assert!(high.matches(b"..\xc0\xae/", None));
        let mut captures = Vec::new();
        assert!(Pattern::compile(r"id=(\d+)").unwrap().matches(b"x id=42", Some(&mut captures)));
        assert_eq!(captures, vec![b"id=42".to_vec(), b"42".to_vec()]);
    }

    #[test]
    fn addresses_match_their_blocks() {
        let networks = vec![Network::parse("10.0.0.0/8").unwrap(), Network::parse("::1").unwrap()];
        let op = Operator::IpMatch(networks);
        assert!(op.matches(b"10.2.3.4", NO_MACROS, None));
        assert!(op.matches(b"::1", NO_MACROS, None));
        assert!(!op.matches(b"11.0.0.1", NO_MACROS, None));
        assert!(!op.matches(b"::2", NO_MACROS, None));
    }

    #[test]
    fn validators_and_numbers() {
        let op = Operator::ValidateByteRange(byte_ranges("32-126, 9").unwrap());
        assert!(!op.matches(b"plain\ttext", NO_MACROS, None));
        assert!(op.matches(b"nul\x00", NO_MACROS, None));
        assert!(Operator::ValidateUrlEncoding.matches(b"a%2", NO_MACROS, None));
        assert!(!Operator::ValidateUrlEncoding.matches(b"a%20b", NO_MACROS, None));
        assert_eq!(as_number(b"12abc"), 12);
        assert_eq!(as_number(b"abc"), 0);
        assert_eq!(as_number(b"-3"), -3);
    }

    #[test]
    fn libinjection_finds_sql_and_script() {
        assert!(Operator::DetectSqli.matches(b"1' OR '1'='1", NO_MACROS, None));
        assert!(!Operator::DetectSqli.matches(b"hello world", NO_MACROS, None));
        assert!(Operator::DetectXss.matches(b"<script>alert(1)</script>", NO_MACROS, None));
        assert!(!Operator::DetectXss.matches(b"a < b and c > d", NO_MACROS, None));
    }
}
