//! Normalisation: what attackers use to hide a payload from patterns is undone before matching.
//!
//! Values are URL-decoded repeatedly (double and triple encoding), HTML entities are decoded,
//! `%uXXXX` is read, NUL bytes and SQL inline comments are removed, case is folded and runs of
//! whitespace become one space. Rules match the result.

use std::borrow::Cow;

/// How many rounds of URL decoding are applied; each round undoes one layer of encoding.
const DECODE_ROUNDS: usize = 3;

/// Percent-decoding, also of `%uXXXX` and `+` as space when `plus_is_space`. Invalid escapes stay
/// as they are. Returns the text and whether any escape was invalid.
pub fn url_decode(input: &str, plus_is_space: bool) -> (Cow<'_, str>, bool) {
    // Most values carry no escapes at all.
    if !(input.contains('%') || (plus_is_space && input.contains('+'))) {
        return (Cow::Borrowed(input), false);
    }
    let bytes = input.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut invalid = false;
    let mut index = 0;
    while index < bytes.len() {
        match bytes[index] {
            b'%' => {
                if let Some(code) =
                    bytes.get(index + 1..index + 6).filter(|rest| rest[0] | 0x20 == b'u').and_then(|rest| {
                        std::str::from_utf8(&rest[1..]).ok().and_then(|hex| u32::from_str_radix(hex, 16).ok())
                    })
                {
                    let ch = char::from_u32(code).unwrap_or('\u{fffd}');
                    let mut buffer = [0; 4];
                    out.extend_from_slice(ch.encode_utf8(&mut buffer).as_bytes());
                    index += 6;
                } else if let Some(byte) = bytes
                    .get(index + 1..index + 3)
                    .and_then(|hex| std::str::from_utf8(hex).ok())
                    .and_then(|hex| u8::from_str_radix(hex, 16).ok())
                {
                    out.push(byte);
                    index += 3;
                } else {
                    invalid = true;
                    out.push(b'%');
                    index += 1;
                }
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                index += 1;
            }
            byte => {
                out.push(byte);
                index += 1;
            }
        }
    }
    (Cow::Owned(String::from_utf8_lossy(&out).into_owned()), invalid)
}

/// Decodes HTML character references: numeric (`&#60;`, `&#x3c;`, with or without `;`) and the
/// named ones that matter for markup and scripts.
pub fn html_decode(input: &str) -> Cow<'_, str> {
    if !input.contains('&') {
        return Cow::Borrowed(input);
    }
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        let tail = &rest[amp + 1..];
        let (decoded, used) = decode_reference(tail);
        match decoded {
            Some(ch) => {
                out.push(ch);
                rest = &tail[used..];
            }
            None => {
                out.push('&');
                rest = tail;
            }
        }
    }
    out.push_str(rest);
    Cow::Owned(out)
}

fn decode_reference(tail: &str) -> (Option<char>, usize) {
    if let Some(number) = tail.strip_prefix('#') {
        let (digits, radix, skip) = match number.strip_prefix(['x', 'X']) {
            Some(hex) => (hex.chars().take_while(char::is_ascii_hexdigit).collect::<String>(), 16, 2),
            None => (number.chars().take_while(char::is_ascii_digit).collect::<String>(), 10, 1),
        };
        if digits.is_empty() || digits.len() > 8 {
            return (None, 0);
        }
        let mut used = skip + digits.len();
        if tail[used..].starts_with(';') {
            used += 1;
        }
        let ch = u32::from_str_radix(&digits, radix).ok().and_then(char::from_u32);
        return (ch, used);
    }
    const NAMED: [(&str, char); 12] = [
        ("lt;", '<'),
        ("gt;", '>'),
        ("amp;", '&'),
        ("quot;", '"'),
        ("apos;", '\''),
        ("sol;", '/'),
        ("bsol;", '\\'),
        ("colon;", ':'),
        ("lpar;", '('),
        ("rpar;", ')'),
        ("Tab;", '\t'),
        ("NewLine;", '\n'),
    ];
    for (name, ch) in NAMED {
        if tail.starts_with(name) {
            return (Some(ch), name.len());
        }
    }
    (None, 0)
}

/// The form rules match: decoded, entity-decoded, NULs and SQL comments removed, lower case,
/// whitespace compressed.
pub fn for_matching(raw: &str, plus_is_space: bool) -> String {
    let mut value = Cow::Borrowed(raw);
    for round in 0..DECODE_ROUNDS {
        let (decoded, _) = url_decode(&value, plus_is_space && round == 0);
        if let Cow::Borrowed(_) = decoded {
            break;
        }
        let decoded = decoded.into_owned();
        if decoded == value {
            break;
        }
        value = Cow::Owned(decoded);
    }
    let value = html_decode(&value);
    let mut out = String::with_capacity(value.len());
    let mut chars = value.chars().peekable();
    let mut last_space = false;
    while let Some(ch) = chars.next() {
        // `/**/` and `/*!...*/` split keywords in SQL: `UN/**/ION`. A comment becomes a space.
        if ch == '/' && chars.peek() == Some(&'*') {
            chars.next();
            let mut previous = '\0';
            for inner in chars.by_ref() {
                if previous == '*' && inner == '/' {
                    break;
                }
                previous = inner;
            }
            if !last_space {
                out.push(' ');
                last_space = true;
            }
            continue;
        }
        if ch == '\0' {
            continue;
        }
        if ch.is_whitespace() || ch == '\u{b}' || ch == '\u{c}' {
            if !last_space {
                out.push(' ');
                last_space = true;
            }
            continue;
        }
        last_space = false;
        if ch.is_ascii() {
            out.push(ch.to_ascii_lowercase());
        } else {
            out.extend(ch.to_lowercase());
        }
    }
    out.trim().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_of_encoding_are_undone() {
        assert_eq!(for_matching("%253Cscript%253E", false), "<script>");
        assert_eq!(for_matching("%u003cscript%u003e", false), "<script>");
        assert_eq!(for_matching("1+UNION+SELECT", true), "1 union select");
        assert_eq!(for_matching("&lt;img src=x onerror&#61;alert(1)&gt;", false), "<img src=x onerror=alert(1)>");
        assert_eq!(for_matching("&#x3C;svg&#62;", false), "<svg>");
    }

    #[test]
    fn comments_nuls_case_and_whitespace_are_folded() {
        assert_eq!(for_matching("UN/**/ION/*!50000*/SeLeCt", false), "un ion select");
        assert_eq!(for_matching("a\0b", false), "ab");
        assert_eq!(for_matching("  a \t\n b  ", false), "a b");
    }

    #[test]
    fn invalid_escapes_are_reported_and_kept() {
        assert_eq!(url_decode("100%zz", false), (Cow::Borrowed("100%zz"), true));
        assert_eq!(url_decode("%41%42", false), (Cow::Borrowed("AB"), false));
        assert_eq!(html_decode("fish & chips &amp; more"), "fish & chips & more");
    }
}
