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
    /// An error at `span` (byte offsets into `source`) under `key`.
    pub(crate) fn at(
        source: &str,
        span: Option<Range<usize>>,
        key: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            file: None,
            key: key.into(),
            position: span
                .filter(|span| span.end > 0)
                .map(|span| line_and_column(source, span.start)),
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
    fn display_names_file_line_key_and_message() {
        let error = ConfigError::at("a = 1\nb = 2\n", Some(10..11), "b", "must be a string")
            .in_file(Path::new("sluice.toml"));
        assert_eq!(error.to_string(), "sluice.toml:2:5: `b`: must be a string");
    }
}
