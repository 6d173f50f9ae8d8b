//! Strict TOML loading with errors that name the file, line and key.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

/// A problem in a configuration file, located as `file:line:column`.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    pub file: PathBuf,
    /// 1-based; absent when the position is unknown (e.g. an unreadable file).
    pub line: Option<usize>,
    pub column: Option<usize>,
    /// Dotted key path, when known.
    pub key: Option<String>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(col) = self.column {
                write!(f, ":{col}")?;
            }
        }
        write!(f, ": ")?;
        if let Some(key) = &self.key {
            write!(f, "`{key}`: ")?;
        }
        write!(f, "{}", self.message)
    }
}

/// A parsed file plus its text, kept so later checks can point at spans.
pub struct Source {
    pub path: PathBuf,
    pub text: String,
}

impl Source {
    pub fn read(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_path_buf(),
            line: None,
            column: None,
            key: None,
            message: format!("cannot read: {e}"),
        })?;
        Ok(Self {
            path: path.to_path_buf(),
            text,
        })
    }

    /// Deserializes the whole file; unknown keys are errors where `T` denies them.
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, ConfigError> {
        let de = toml::Deserializer::parse(&self.text).map_err(|e| self.toml_error(None, e))?;
        serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let key = (path != "." && !path.is_empty()).then_some(path);
            self.toml_error(key, e.into_inner())
        })
    }

    fn toml_error(&self, key: Option<String>, e: toml::de::Error) -> ConfigError {
        let (line, column) = match e.span() {
            Some(span) => {
                let (l, c) = self.line_col(span.start);
                (Some(l), Some(c))
            }
            None => (None, None),
        };
        ConfigError {
            file: self.path.clone(),
            line,
            column,
            key,
            message: e.message().trim().to_string(),
        }
    }

    /// An error about a value whose span is known (from `toml::Spanned`).
    pub fn error_at(
        &self,
        span: Range<usize>,
        key: impl Into<String>,
        message: impl Into<String>,
    ) -> ConfigError {
        let (line, column) = self.line_col(span.start);
        ConfigError {
            file: self.path.clone(),
            line: Some(line),
            column: Some(column),
            key: Some(key.into()),
            message: message.into(),
        }
    }

    /// An error about a key whose position we can only find by its header.
    pub fn error_for_key(&self, key: impl Into<String>, message: impl Into<String>) -> ConfigError {
        let key = key.into();
        let line = self.find_table_header(&key);
        ConfigError {
            file: self.path.clone(),
            line,
            column: line.map(|_| 1),
            key: Some(key),
            message: message.into(),
        }
    }

    fn line_col(&self, offset: usize) -> (usize, usize) {
        let before = &self.text[..offset.min(self.text.len())];
        let line = before.matches('\n').count() + 1;
        let column = before.rfind('\n').map_or(offset, |nl| offset - nl - 1) + 1;
        (line, column)
    }

    /// Best-effort line of a dotted key `a.b.c`: the `c = ` line inside the
    /// `[a.b]` table, else the table header itself.
    fn find_table_header(&self, key: &str) -> Option<usize> {
        let parts: Vec<&str> = key.split('.').collect();
        let (table, field) = match parts.as_slice() {
            [a, b] => ((*a, *b), None),
            [a, b, c, ..] => ((*a, *b), Some(*c)),
            _ => return None,
        };
        let lines: Vec<&str> = self.text.lines().collect();
        let is_header = |l: &str| {
            let l = l.trim();
            let name = l
                .trim_start_matches('[')
                .trim_end_matches(']')
                .replace('"', "");
            l.starts_with('[') && name.trim() == format!("{}.{}", table.0, table.1)
        };
        let header = lines.iter().position(|l| is_header(l))?;
        if let Some(field) = field {
            for (i, l) in lines.iter().enumerate().skip(header + 1) {
                let l = l.trim();
                if l.starts_with('[') {
                    break;
                }
                if l.split('=').next().is_some_and(|k| k.trim() == field) {
                    return Some(i + 1);
                }
            }
        }
        Some(header + 1)
    }
}
