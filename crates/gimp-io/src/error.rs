//! One error type for every reader and writer.
//!
//! Every error names the file it came from and, where there is one, the line, row or field, so a
//! user with a cohort of thousands of files knows exactly which one to fix. `kind` lets callers
//! and tests match on what went wrong without parsing the message.

use std::fmt;
use std::path::{Path, PathBuf};

/// What went wrong, independent of the file format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The operating system refused (missing file, permission, disk full).
    Io,
    /// The bytes are not the format they claim to be (truncated, wrong magic, bad syntax).
    Malformed,
    /// A required dataset, column, tensor or key is absent.
    Missing,
    /// A shape or width is wrong (ragged rows, 1-D features, wrong feature width).
    Shape,
    /// A value is NaN or infinite where a number was expected.
    NonFinite,
    /// A bag, table or list that must not be empty is.
    Empty,
    /// An identifier appears twice where it must be unique.
    Duplicate,
    /// An identifier is not known (label outside the map, split naming an unknown patient).
    Unknown,
    /// The file is valid but uses something this build does not support (dtype, version).
    Unsupported,
    /// Two inputs disagree (feature width between slides, label between slides of one case).
    Mismatch,
    /// A value is out of its allowed range or cannot be parsed as the expected type.
    Value,
    /// The data would need more memory than the configured limit.
    TooLarge,
}

/// An error reading or writing one file.
#[derive(Debug)]
pub struct DataError {
    pub kind: ErrorKind,
    pub path: PathBuf,
    /// Line, row, column or field, as a user would find it ("line 12", "dataset 'features'").
    pub location: Option<String>,
    pub message: String,
}

impl DataError {
    pub fn new(kind: ErrorKind, path: impl AsRef<Path>, message: impl Into<String>) -> Self {
        Self {
            kind,
            path: path.as_ref().to_path_buf(),
            location: None,
            message: message.into(),
        }
    }

    pub fn at(mut self, location: impl Into<String>) -> Self {
        self.location = Some(location.into());
        self
    }

    pub fn io(path: impl AsRef<Path>, err: std::io::Error) -> Self {
        Self::new(ErrorKind::Io, path, err.to_string())
    }

    pub fn malformed(path: impl AsRef<Path>, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Malformed, path, message)
    }
}

impl fmt::Display for DataError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.path.display())?;
        if let Some(loc) = &self.location {
            write!(f, ": {loc}")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for DataError {}

pub type Result<T, E = DataError> = std::result::Result<T, E>;

/// Line numbers in messages are 1-based and count the header, as an editor shows them.
pub(crate) fn csv_line(record: &csv::StringRecord) -> String {
    match record.position() {
        Some(p) => format!("line {}", p.line()),
        None => "line ?".to_string(),
    }
}

pub(crate) fn csv_error(path: &Path, err: csv::Error) -> DataError {
    let location = err.position().map(|p| format!("line {}", p.line()));
    let kind = match err.kind() {
        csv::ErrorKind::Io(_) => ErrorKind::Io,
        csv::ErrorKind::UnequalLengths { .. } => ErrorKind::Shape,
        _ => ErrorKind::Malformed,
    };
    let message = match err.kind() {
        csv::ErrorKind::UnequalLengths {
            expected_len, len, ..
        } => format!("row has {len} fields, expected {expected_len} like the header"),
        csv::ErrorKind::Utf8 { .. } => "text is not valid UTF-8".to_string(),
        _ => err.to_string(),
    };
    let mut e = DataError::new(kind, path, message);
    e.location = location;
    e
}
