//! weir-state: key groups, keyed and operator state, backends, snapshots, checkpoint
//! storage and state handles. Stands alone: no actors, no runtime.

pub mod key_group;
