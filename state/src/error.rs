//! The crate's error type. Every error about a file names the file.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("i/o error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("corrupt state file {path}: {reason}")]
    Corrupt { path: String, reason: String },
    #[error("state file {path} is missing")]
    Missing { path: String },
    #[error("cannot encode or decode state: {0}")]
    Codec(String),
    #[error("rocksdb: {0}")]
    RocksDb(String),
    #[error("state '{name}': {reason}")]
    Registration { name: String, reason: String },
    #[error("no current key is set: call set_current_key before accessing keyed state")]
    NoCurrentKey,
    #[error("key group {key_group} is outside this backend's range {start}..{end}")]
    KeyGroupOutOfRange {
        key_group: u16,
        start: u16,
        end: u16,
    },
    #[error("no valid checkpoint in {0}")]
    NoValidCheckpoint(String),
}

pub type Result<T> = std::result::Result<T, StateError>;

impl StateError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        StateError::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn corrupt(path: impl Into<String>, reason: impl Into<String>) -> Self {
        StateError::Corrupt {
            path: path.into(),
            reason: reason.into(),
        }
    }
}

impl From<postcard::Error> for StateError {
    fn from(e: postcard::Error) -> Self {
        StateError::Codec(e.to_string())
    }
}

impl From<rocksdb::Error> for StateError {
    fn from(e: rocksdb::Error) -> Self {
        StateError::RocksDb(e.into_string())
    }
}
