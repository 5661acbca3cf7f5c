//! Configuration errors that say where in the file the problem is.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// A configuration that cannot be served, with the place in the file that caused it.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    /// The file, when the configuration came from one.
    pub file: Option<PathBuf>,
    /// The TOML key path, such as `route[2].upstream`.
    pub key: String,
    /// 1-based line and column of the offending value, where known.
    pub position: Option<(usize, usize)>,
    /// What is wrong, in one sentence.
    pub message: String,
}

impl ConfigError {
    /// An error at `span` (byte offsets into `source`) under `key`. Without a span, the key path
    /// is looked up in the source (or its nearest written parent), so that every error has a
    /// position wherever the file can give one.
    pub(crate) fn at(
        source: &str,
        span: Option<Range<usize>>,
        key: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        let key = key.into();
        let span = span.filter(|span| span.end > 0).or_else(|| locate(source, &key));
        Self {
            file: None,
            position: span.map(|span| line_and_column(source, span.start)),
            key,
            message: message.into(),
        }
    }

    /// The same error, naming the file it came from.
    pub fn in_file(mut self, file: &Path) -> Self {
        self.file = Some(file.to_owned());
        self
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.file {
            Some(file) => write!(f, "{}", file.display())?,
            None => f.write_str("<config>")?,
        }
        if let Some((line, column)) = self.position {
            write!(f, ":{line}:{column}")?;
        }
        if !self.key.is_empty() {
            write!(f, ": `{}`", self.key)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// The span of the value at `key` (`route[2].headers[0].name`), or of its nearest written parent.
fn locate(source: &str, key: &str) -> Option<Range<usize>> {
    let document = toml::de::DeTable::parse(source).ok()?;
    let mut steps = Vec::new();
    for part in key.split('.').filter(|part| !part.is_empty()) {
        let (name, indices) = part.split_once('[').map_or((part, ""), |(name, rest)| (name, rest));
        steps.push(Step::Key(name));
        for index in indices.split('[') {
            if let Ok(index) = index.trim_end_matches(']').parse::<usize>() {
                steps.push(Step::Index(index));
            }
        }
    }
    let mut found = None;
    let mut current: &toml::de::DeValue<'_> = &toml::de::DeValue::Table(document.get_ref().clone());
    for step in steps {
        let next = match (step, current) {
            (Step::Key(name), toml::de::DeValue::Table(table)) => {
                table.iter().find(|(written, _)| written.get_ref() == name).map(|(_, value)| value)
            }
            (Step::Index(index), toml::de::DeValue::Array(array)) => array.get(index),
            _ => None,
        };
        let Some(next) = next else { break };
        found = Some(next.span());
        current = next.get_ref();
    }
    found
}

enum Step<'a> {
    Key(&'a str),
    Index(usize),
}

/// 1-based line and column (in characters) of byte offset `offset` in `source`.
fn line_and_column(source: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(source.len());
    let before = &source[..source.floor_char_boundary(offset)];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |at| at + 1);
    (line, before[line_start..].chars().count() + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_one_based() {
        let source = "a = 1\nbb = \"x\"\n";
        assert_eq!(line_and_column(source, 0), (1, 1));
        assert_eq!(line_and_column(source, 11), (2, 6));
    }

    #[test]
    fn keys_are_located_in_the_source() {
        let source = "[server]\nmax_connections = 0\n\n[[route]]\nname = \"a\"\n[[route]]\nheaders = [{ name = \"x\" }, { name = \"y\" }]\n";
        let at = |key: &str| ConfigError::at(source, None, key, "").position;
        assert_eq!(at("server.max_connections"), Some((2, 19)));
        assert_eq!(at("route[1].headers[1].name"), Some((7, 37)));
        // A key that is not written falls back to its nearest written parent.
        assert_eq!(at("route[0].timeout").map(|(line, _)| line), Some(4));
        assert_eq!(at("listener"), None);
    }

    #[test]
    fn display_names_file_line_key_and_message() {
        let error =
            ConfigError::at("a = 1\nb = 2\n", Some(10..11), "b", "must be a string").in_file(Path::new("sluice.toml"));
        assert_eq!(error.to_string(), "sluice.toml:2:5: `b`: must be a string");
    }
}
