//! What counts as sensitive: the detectors, their patterns and checks, and how a finding is
//! masked.
//!
//! Patterns run over bytes (bodies need not be UTF-8). Every built-in pattern is bounded in
//! length, which is what lets [`crate::stream`] find matches across chunk boundaries with a
//! bounded hold-back.

use regex::bytes::Regex;

/// A kind of sensitive data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// Payment card numbers (13 to 19 digits, spaces or dashes allowed, Luhn-checked).
    Card,
    /// US Social Security numbers (`123-45-6789`, with the invalid ranges excluded).
    Ssn,
    /// E-mail addresses.
    Email,
    /// Well-known API key and token formats (AWS, GitHub, Slack, Stripe, Google).
    ApiKey,
    /// A pattern from config.
    Custom,
}

impl Kind {
    /// Its name in logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Self::Card => "card",
            Self::Ssn => "ssn",
            Self::Email => "email",
            Self::ApiKey => "api-key",
            Self::Custom => "custom",
        }
    }
}

/// One detector: a kind, its pattern, and a check a candidate must pass.
#[derive(Debug)]
pub struct Detector {
    /// The kind.
    pub kind: Kind,
    /// The name (the kind's, or a custom pattern's).
    pub name: String,
    pattern: Regex,
}

/// A finding in a buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// Byte range.
    pub start: usize,
    /// End, exclusive.
    pub end: usize,
    /// What it is.
    pub kind: Kind,
}

/// The longest a built-in pattern can match, in bytes.
pub const LONGEST_BUILT_IN_MATCH: usize = 256;

fn built_in(kind: Kind) -> Regex {
    let pattern = match kind {
        // Digits with single spaces or dashes between them; validated by Luhn below.
        Kind::Card => r"\b\d(?:[ -]?\d){12,18}\b",
        Kind::Ssn => r"\b\d{3}-\d{2}-\d{4}\b",
        Kind::Email => r"\b[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63}){0,4}\.[A-Za-z]{2,24}\b",
        Kind::ApiKey => concat!(
            r"\b(?:",
            r"(?:AKIA|ASIA)[0-9A-Z]{16}",
            r"|gh[pousr]_[A-Za-z0-9]{36,200}",
            r"|github_pat_[A-Za-z0-9_]{22,200}",
            r"|xox[abprs]-[A-Za-z0-9-]{10,200}",
            r"|[sr]k_(?:live|test)_[A-Za-z0-9]{16,200}",
            r"|AIza[0-9A-Za-z_-]{35}",
            r")\b"
        ),
        Kind::Custom => unreachable!("custom patterns come from config"),
    };
    // ASCII classes and boundaries: the data looked for is ASCII, and Unicode `\b` and `\d`
    // keep the regex engine off its fast automata on bodies with non-ASCII text.
    Regex::new(&format!("(?-u){pattern}")).expect("built-in patterns compile")
}

impl Detector {
    /// A built-in detector.
    pub fn built_in(kind: Kind) -> Self {
        Self { kind, name: kind.name().to_owned(), pattern: built_in(kind) }
    }

    /// A detector for a custom pattern.
    pub fn custom(name: &str, pattern: &str) -> Result<Self, String> {
        let pattern = Regex::new(pattern).map_err(|err| format!("pattern {name:?}: {err}"))?;
        Ok(Self { kind: Kind::Custom, name: name.to_owned(), pattern })
    }

    /// Findings in `text`, after the kind's own check.
    pub fn find(&self, text: &[u8], out: &mut Vec<Finding>) {
        for found in self.pattern.find_iter(text) {
            let candidate = found.as_bytes();
            let valid = match self.kind {
                Kind::Card => luhn_valid(candidate),
                Kind::Ssn => ssn_valid(candidate),
                _ => true,
            };
            if valid {
                out.push(Finding { start: found.start(), end: found.end(), kind: self.kind });
            }
        }
    }
}

/// The Luhn checksum over the digits of `candidate`, which must number 13 to 19.
pub fn luhn_valid(candidate: &[u8]) -> bool {
    let digits: Vec<u32> =
        candidate.iter().filter(|byte| byte.is_ascii_digit()).map(|byte| u32::from(byte - b'0')).collect();
    if !(13..=19).contains(&digits.len()) {
        return false;
    }
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(
            |(index, &digit)| {
                if index % 2 == 1 { if digit * 2 > 9 { digit * 2 - 9 } else { digit * 2 } } else { digit }
            },
        )
        .sum();
    sum.is_multiple_of(10)
}

/// Whether `123-45-6789` could be an issued SSN: no area 000, 666 or 900-999, no group 00, no
/// serial 0000.
pub fn ssn_valid(candidate: &[u8]) -> bool {
    let text = std::str::from_utf8(candidate).unwrap_or_default();
    let mut parts = text.split('-');
    let (Some(area), Some(group), Some(serial)) = (parts.next(), parts.next(), parts.next()) else { return false };
    area != "000" && area != "666" && !area.starts_with('9') && group != "00" && serial != "0000"
}

/// Masks a finding in place with `mask`, keeping its length (so Content-Length and offsets stay
/// right) and what identifies it without disclosing it: a card's last `card_keep_last` digits,
/// an e-mail's domain, an API key's first four characters.
pub fn mask(bytes: &mut [u8], kind: Kind, mask: u8, card_keep_last: usize) {
    match kind {
        Kind::Card => {
            let digits = bytes.iter().filter(|byte| byte.is_ascii_digit()).count();
            let mut seen = 0;
            for byte in bytes.iter_mut().filter(|byte| byte.is_ascii_digit()) {
                seen += 1;
                if seen + card_keep_last <= digits {
                    *byte = mask;
                }
            }
        }
        Kind::Ssn => bytes.iter_mut().filter(|byte| byte.is_ascii_digit()).for_each(|byte| *byte = mask),
        Kind::Email => {
            let at = bytes.iter().position(|&byte| byte == b'@').unwrap_or(bytes.len());
            bytes[..at].iter_mut().for_each(|byte| *byte = mask);
        }
        Kind::ApiKey => bytes.iter_mut().skip(4).for_each(|byte| *byte = mask),
        Kind::Custom => bytes.iter_mut().for_each(|byte| *byte = mask),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(kind: Kind, text: &str) -> Vec<String> {
        let mut out = Vec::new();
        Detector::built_in(kind).find(text.as_bytes(), &mut out);
        out.iter().map(|finding| text[finding.start..finding.end].to_owned()).collect()
    }

    #[test]
    fn cards_need_a_valid_checksum() {
        assert_eq!(found(Kind::Card, "pay with 4111 1111 1111 1111 now"), ["4111 1111 1111 1111"]);
        assert_eq!(found(Kind::Card, "amex 3782-822463-10005."), ["3782-822463-10005"]);
        assert_eq!(found(Kind::Card, "id 4111111111111112"), Vec::<String>::new(), "bad checksum");
        assert_eq!(found(Kind::Card, "order 123456789012"), Vec::<String>::new(), "too short");
        assert_eq!(found(Kind::Card, "ts 16990000000000001234567"), Vec::<String>::new(), "a longer number");
    }

    #[test]
    fn ssns_skip_numbers_never_issued() {
        assert_eq!(found(Kind::Ssn, "ssn 123-45-6789"), ["123-45-6789"]);
        assert!(found(Kind::Ssn, "000-12-3456 666-12-3456 912-34-5678 123-00-4567 123-45-0000").is_empty());
        assert!(found(Kind::Ssn, "call 555-123-4567").is_empty());
    }

    #[test]
    fn emails_and_api_keys() {
        assert_eq!(found(Kind::Email, "mail jane.doe+x@mail.example.co.uk."), ["jane.doe+x@mail.example.co.uk"]);
        let keys =
            "aws AKIAABCDEFGHIJKLMNOP gh ghp_abcdefghijklmnopqrstuvwxyz0123456789 stripe sk_live_abcdefghijklmnop1234";
        assert_eq!(found(Kind::ApiKey, keys).len(), 3);
        assert!(found(Kind::ApiKey, "AKIA short").is_empty());
    }

    #[test]
    fn masks_keep_length_and_a_hint() {
        let mut card = b"4111-1111-1111-1111".to_vec();
        mask(&mut card, Kind::Card, b'*', 4);
        assert_eq!(card, b"****-****-****-1111");
        let mut email = b"jane@example.com".to_vec();
        mask(&mut email, Kind::Email, b'#', 4);
        assert_eq!(email, b"####@example.com");
        let mut ssn = b"123-45-6789".to_vec();
        mask(&mut ssn, Kind::Ssn, b'X', 4);
        assert_eq!(ssn, b"XXX-XX-XXXX");
        let mut key = b"AKIAABCDEFGHIJKLMNOP".to_vec();
        mask(&mut key, Kind::ApiKey, b'*', 4);
        assert_eq!(key, b"AKIA****************");
    }
}
