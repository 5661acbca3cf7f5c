//! `%{collection.key}` macros in operator arguments, `msg`, `logdata` and `setvar`: parsed
//! once at load, expanded per request against the transaction.

/// Text with `%{...}` references in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Macro {
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    Text(String),
    /// `%{TX.score}`: a collection (upper case) and, for collections, a key (lower case).
    Reference {
        variable: String,
        key: Option<String>,
    },
}

impl Macro {
    pub fn parse(text: &str) -> Self {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(start) = rest.find("%{") {
            let Some(length) = rest[start + 2..].find('}') else { break };
            if start > 0 {
                parts.push(Part::Text(rest[..start].to_owned()));
            }
            let inner = &rest[start + 2..start + 2 + length];
            let (variable, key) = match inner.split_once(['.', ':']) {
                Some((variable, key)) => (variable, Some(key.to_ascii_lowercase())),
                None => (inner, None),
            };
            parts.push(Part::Reference { variable: variable.to_ascii_uppercase(), key });
            rest = &rest[start + 2 + length + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_owned()));
        }
        Self { parts }
    }

    /// The text, when it holds no references.
    pub fn literal(&self) -> Option<&str> {
        match self.parts.as_slice() {
            [] => Some(""),
            [Part::Text(text)] => Some(text),
            _ => None,
        }
    }

    pub fn parts(&self) -> &[Part] {
        &self.parts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_and_text_alternate() {
        let parsed = Macro::parse("score %{TX.anomaly_score} from %{MATCHED_VAR_NAME}!");
        assert_eq!(parsed.parts().len(), 5);
        assert_eq!(parsed.parts()[1], Part::Reference { variable: "TX".into(), key: Some("anomaly_score".into()) });
        assert_eq!(parsed.parts()[3], Part::Reference { variable: "MATCHED_VAR_NAME".into(), key: None });
        assert_eq!(Macro::parse("plain").literal(), Some("plain"));
    }
}
