//! Checkpoint storage: where snapshot files live.
//!
//! Layout under the root `DIR`:
//! ```text
//! DIR/chk-<id>/_metadata        written last: tmp name, fsync, rename, fsync dir
//! DIR/chk-<id>/<files>          private to checkpoint <id>
//! DIR/shared/<files>            incremental files, reference-counted across checkpoints
//! ```
//! Every data file is described by a [`FileHandle`] carrying its size and crc32c;
//! reads verify them and name the file on mismatch. The trait keeps paths relative
//! and operations whole-file, so an S3-compatible object store can implement it.

use crate::error::{Result, StateError};
use crate::handle::FileHandle;
use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

pub const METADATA_FILE: &str = "_metadata";

pub fn checkpoint_dir(checkpoint_id: u64) -> String {
    format!("chk-{checkpoint_id}")
}

pub fn parse_checkpoint_dir(name: &str) -> Option<u64> {
    name.strip_prefix("chk-")?.parse().ok()
}

pub trait CheckpointStorage: Send + Sync + std::fmt::Debug {
    /// Writes a whole file durably and returns its handle.
    fn write_file(&self, path: &str, bytes: &[u8]) -> Result<FileHandle>;
    /// Copies a local file into storage durably (used for SST uploads).
    fn upload_file(&self, path: &str, local: &Path) -> Result<FileHandle>;
    /// Reads a whole file, verifying its size and checksum.
    fn read_file(&self, handle: &FileHandle) -> Result<Vec<u8>>;
    /// Reads part of a file; the caller verifies the part's own checksum.
    fn read_range(&self, handle: &FileHandle, offset: u64, len: u64) -> Result<Vec<u8>>;
    /// Copies a file to local disk, verifying size and checksum.
    fn download_file(&self, handle: &FileHandle, dest: &Path) -> Result<()> {
        let bytes = self.read_file(handle)?;
        fs::write(dest, bytes).map_err(|e| StateError::io(dest, e))
    }
    /// Reads a file without a handle (metadata), `Missing` if absent.
    fn read_raw(&self, path: &str) -> Result<Vec<u8>>;
    /// Atomically publishes a file: temporary name, fsync, rename, fsync directory.
    fn write_atomically(&self, path: &str, bytes: &[u8]) -> Result<()>;
    fn exists(&self, path: &str) -> Result<bool>;
    fn delete_file(&self, path: &str) -> Result<()>;
    fn delete_dir(&self, path: &str) -> Result<()>;
    /// Names of the entries of a directory (empty if it does not exist).
    fn list_dir(&self, path: &str) -> Result<Vec<String>>;
}

/// Checkpoint storage on a local (or mounted) file system.
#[derive(Debug, Clone)]
pub struct LocalCheckpointStorage {
    root: PathBuf,
}

impl LocalCheckpointStorage {
    pub fn new(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        fs::create_dir_all(root.join("shared")).map_err(|e| StateError::io(&root, e))?;
        Ok(LocalCheckpointStorage { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn local_path(&self, path: &str) -> PathBuf {
        self.root.join(path)
    }

    fn prepare_parent(&self, full: &Path) -> Result<()> {
        if let Some(parent) = full.parent() {
            fs::create_dir_all(parent).map_err(|e| StateError::io(parent, e))?;
        }
        Ok(())
    }
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StateError::io(dir, e))
}

fn verify(handle: &FileHandle, bytes: &[u8]) -> Result<()> {
    if bytes.len() as u64 != handle.size {
        return Err(StateError::corrupt(
            &handle.path,
            format!("size {} but the handle says {}", bytes.len(), handle.size),
        ));
    }
    let crc = crc32c::crc32c(bytes);
    if crc != handle.crc32c {
        return Err(StateError::corrupt(
            &handle.path,
            format!(
                "crc32c {crc:#010x} but the handle says {:#010x}",
                handle.crc32c
            ),
        ));
    }
    Ok(())
}

fn not_found_as_missing(path: &str, full: &Path, e: std::io::Error) -> StateError {
    if e.kind() == std::io::ErrorKind::NotFound {
        StateError::Missing {
            path: path.to_string(),
        }
    } else {
        StateError::io(full, e)
    }
}

impl CheckpointStorage for LocalCheckpointStorage {
    fn write_file(&self, path: &str, bytes: &[u8]) -> Result<FileHandle> {
        let full = self.local_path(path);
        self.prepare_parent(&full)?;
        let mut f = File::create(&full).map_err(|e| StateError::io(&full, e))?;
        f.write_all(bytes)
            .and_then(|_| f.sync_all())
            .map_err(|e| StateError::io(&full, e))?;
        // The directory entry must be durable too, before `_metadata` can point at it.
        sync_dir(full.parent().unwrap_or(&self.root))?;
        Ok(FileHandle {
            path: path.to_string(),
            size: bytes.len() as u64,
            crc32c: crc32c::crc32c(bytes),
        })
    }

    fn upload_file(&self, path: &str, local: &Path) -> Result<FileHandle> {
        let bytes = fs::read(local).map_err(|e| StateError::io(local, e))?;
        // Write under a temporary name so a crash never leaves a torn shared file
        // under a name that a later checkpoint would trust.
        let tmp = format!("{path}.inprogress");
        let handle = self.write_file(&tmp, &bytes)?;
        let (from, to) = (self.local_path(&tmp), self.local_path(path));
        fs::rename(&from, &to).map_err(|e| StateError::io(&to, e))?;
        sync_dir(to.parent().unwrap_or(&self.root))?;
        Ok(FileHandle {
            path: path.to_string(),
            ..handle
        })
    }

    fn read_file(&self, handle: &FileHandle) -> Result<Vec<u8>> {
        let full = self.local_path(&handle.path);
        let bytes = fs::read(&full).map_err(|e| not_found_as_missing(&handle.path, &full, e))?;
        verify(handle, &bytes)?;
        Ok(bytes)
    }

    fn read_range(&self, handle: &FileHandle, offset: u64, len: u64) -> Result<Vec<u8>> {
        let full = self.local_path(&handle.path);
        let mut f = File::open(&full).map_err(|e| not_found_as_missing(&handle.path, &full, e))?;
        let actual = f.metadata().map_err(|e| StateError::io(&full, e))?.len();
        if actual != handle.size || offset + len > actual {
            return Err(StateError::corrupt(
                &handle.path,
                format!("size {actual} but the handle says {}", handle.size),
            ));
        }
        let mut buf = vec![0; len as usize];
        f.seek(SeekFrom::Start(offset))
            .and_then(|_| f.read_exact(&mut buf))
            .map_err(|e| StateError::io(&full, e))?;
        Ok(buf)
    }

    fn read_raw(&self, path: &str) -> Result<Vec<u8>> {
        let full = self.local_path(path);
        fs::read(&full).map_err(|e| not_found_as_missing(path, &full, e))
    }

    fn write_atomically(&self, path: &str, bytes: &[u8]) -> Result<()> {
        let full = self.local_path(path);
        self.prepare_parent(&full)?;
        let tmp = full.with_extension("tmp");
        let mut f = File::create(&tmp).map_err(|e| StateError::io(&tmp, e))?;
        f.write_all(bytes)
            .and_then(|_| f.sync_all())
            .map_err(|e| StateError::io(&tmp, e))?;
        fs::rename(&tmp, &full).map_err(|e| StateError::io(&full, e))?;
        sync_dir(full.parent().unwrap_or(&self.root))
    }

    fn exists(&self, path: &str) -> Result<bool> {
        Ok(self.local_path(path).exists())
    }

    fn delete_file(&self, path: &str) -> Result<()> {
        let full = self.local_path(path);
        match fs::remove_file(&full) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(StateError::io(&full, e)),
            _ => Ok(()),
        }
    }

    fn delete_dir(&self, path: &str) -> Result<()> {
        let full = self.local_path(path);
        match fs::remove_dir_all(&full) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(StateError::io(&full, e)),
            _ => Ok(()),
        }
    }

    fn list_dir(&self, path: &str) -> Result<Vec<String>> {
        let full = self.local_path(path);
        let entries = match fs::read_dir(&full) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(StateError::io(&full, e)),
        };
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| StateError::io(&full, e))?;
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
        names.sort();
        Ok(names)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_detects_flipped_byte_and_truncation_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let s = LocalCheckpointStorage::new(dir.path()).unwrap();
        let h = s.write_file("chk-1/a", b"hello world").unwrap();
        assert_eq!(s.read_file(&h).unwrap(), b"hello world");
        let full = s.local_path("chk-1/a");
        fs::write(&full, b"hello World").unwrap();
        let err = s.read_file(&h).unwrap_err().to_string();
        assert!(err.contains("chk-1/a") && err.contains("crc32c"), "{err}");
        fs::write(&full, b"hello").unwrap();
        let err = s.read_file(&h).unwrap_err().to_string();
        assert!(err.contains("chk-1/a") && err.contains("size"), "{err}");
        fs::remove_file(&full).unwrap();
        assert!(matches!(s.read_file(&h), Err(StateError::Missing { .. })));
    }

    #[test]
    fn atomic_write_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let s = LocalCheckpointStorage::new(dir.path()).unwrap();
        s.write_atomically("chk-2/_metadata", b"m").unwrap();
        assert_eq!(s.list_dir("chk-2").unwrap(), vec!["_metadata".to_string()]);
    }
}

/// Storage for a backend that is never snapshotted to anything (fresh starts).
#[derive(Debug)]
pub(crate) struct NoStorage;

impl CheckpointStorage for NoStorage {
    fn write_file(&self, path: &str, _: &[u8]) -> Result<FileHandle> {
        Err(StateError::Missing { path: path.into() })
    }
    fn upload_file(&self, path: &str, _: &Path) -> Result<FileHandle> {
        Err(StateError::Missing { path: path.into() })
    }
    fn read_file(&self, h: &FileHandle) -> Result<Vec<u8>> {
        Err(StateError::Missing {
            path: h.path.clone(),
        })
    }
    fn read_range(&self, h: &FileHandle, _: u64, _: u64) -> Result<Vec<u8>> {
        Err(StateError::Missing {
            path: h.path.clone(),
        })
    }
    fn read_raw(&self, path: &str) -> Result<Vec<u8>> {
        Err(StateError::Missing { path: path.into() })
    }
    fn write_atomically(&self, path: &str, _: &[u8]) -> Result<()> {
        Err(StateError::Missing { path: path.into() })
    }
    fn exists(&self, _: &str) -> Result<bool> {
        Ok(false)
    }
    fn delete_file(&self, _: &str) -> Result<()> {
        Ok(())
    }
    fn delete_dir(&self, _: &str) -> Result<()> {
        Ok(())
    }
    fn list_dir(&self, _: &str) -> Result<Vec<String>> {
        Ok(Vec::new())
    }
}
