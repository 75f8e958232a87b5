//! An error in a text file the binaries read (knockd's config, the client's profiles), printed
//! as `file:line: message`, and the line of a TOML parser's error.

use std::{
    fmt,
    path::{Path, PathBuf},
    string::String,
};

/// What is wrong with a file, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileError {
    pub path: PathBuf,
    /// 1-based; `None` for errors about the whole file.
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for FileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{}: {}", self.path.display(), line, self.message),
            None => write!(f, "{}: {}", self.path.display(), self.message),
        }
    }
}

impl core::error::Error for FileError {}

impl FileError {
    /// `message` about the whole of `path` (it cannot be read, say).
    #[must_use]
    pub fn whole(path: &Path, message: String) -> Self {
        Self { path: path.to_path_buf(), line: None, message }
    }

    /// `message` about `line` (1-based) of `path`.
    #[must_use]
    pub fn on_line(path: &Path, line: usize, message: String) -> Self {
        Self { path: path.to_path_buf(), line: Some(line), message }
    }

    /// `message` about the byte at `offset` of `text`, the text of `path`.
    #[must_use]
    pub fn at(path: &Path, text: &str, offset: usize, message: String) -> Self {
        Self::on_line(path, line_of(text, offset), message)
    }

    /// The TOML parser's error about `text`, the text of `path`, its message passed through
    /// `words` (to say it in the file's own terms).
    #[must_use]
    pub fn from_toml(path: &Path, text: &str, e: &toml::de::Error, words: impl FnOnce(&str) -> String) -> Self {
        Self {
            path: path.to_path_buf(),
            line: e.span().map(|s| line_of(text, s.start)),
            message: words(e.message().trim_end()),
        }
    }
}

/// 1-based line of a byte offset.
#[must_use]
pub fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset).map_or(1, |t| t.matches('\n').count() + 1)
}
