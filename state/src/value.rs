//! Bounds for state types and the stored form of a value.
//!
//! Every stored value carries a timestamp (`Stamped`) used by TTL; it is 0 and costs
//! one byte when the state has no TTL. The postcard encoding of `Stamped<T>` is the
//! value format shared by the RocksDB column families, the key-group snapshot files
//! and savepoints, so entries move between backends byte for byte.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::hash::Hash;

/// What a state value must be: serializable, clonable (copy-on-write snapshots) and
/// shareable with the snapshot writer thread.
pub trait StateValue: Serialize + DeserializeOwned + Clone + Send + Sync + 'static {}
impl<T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static> StateValue for T {}

/// What a key, a namespace or a map key must be in addition: hashable and comparable.
pub trait StateKey: StateValue + Hash + Eq {}
impl<T: StateValue + Hash + Eq> StateKey for T {}

/// A value with the processing time (ms) it was last written (or read, per TTL config).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stamped<T> {
    pub ts: u64,
    pub value: T,
}

pub(crate) fn encode<T: Serialize + ?Sized>(value: &T) -> crate::Result<Vec<u8>> {
    Ok(postcard::to_stdvec(value)?)
}

pub(crate) fn encode_into<T: Serialize + ?Sized>(
    value: &T,
    buf: &mut Vec<u8>,
) -> crate::Result<()> {
    let taken = std::mem::take(buf);
    *buf = postcard::to_extend(value, taken)?;
    Ok(())
}

pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> crate::Result<T> {
    Ok(postcard::from_bytes(bytes)?)
}

/// Decodes a concatenation of postcard values (the list-state format, which lets
/// RocksDB append with a merge operator instead of read-modify-write).
pub(crate) fn decode_concatenated<T: DeserializeOwned>(mut bytes: &[u8]) -> crate::Result<Vec<T>> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let (item, rest) = postcard::take_from_bytes(bytes)?;
        out.push(item);
        bytes = rest;
    }
    Ok(out)
}
