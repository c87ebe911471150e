//! In-flight data of an unaligned checkpoint (Flink's channel state).
//!
//! When an unaligned barrier overtakes data, that data belongs to no operator's state
//! yet, so the checkpoint keeps it: on the input side, every batch queued or arriving
//! on a channel before that channel's barrier; on the output side, every batch the
//! barrier overtook in the output queues. A restored subtask first sends its output
//! batches again, then feeds its input batches through its chain, and only then takes
//! new input, so each channel sees exactly the sequence it would have seen.
//!
//! Batches are kept encoded (postcard of the batch's `Vec<T>`, by the edge's typed
//! port), since the subtask that records them only sees erased batches.

use crate::graph::Port;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use weir_state::CheckpointStorage;

/// What a subtask needs to keep and restore its in-flight records.
pub(crate) struct ChannelIo {
    /// Codecs of the records on its input and output channels.
    pub input: Option<Arc<dyn Port>>,
    pub output: Option<Arc<dyn Port>>,
    /// What the checkpoint it was restored from kept.
    pub restored: Option<ChannelState>,
    pub storage: Arc<dyn CheckpointStorage>,
    /// The chain's first operator, whose snapshot lists the channel state file.
    pub operator: String,
}

/// Encoded batches per channel, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelState {
    pub inputs: Vec<Vec<Vec<u8>>>,
    pub outputs: Vec<Vec<Vec<u8>>>,
}

impl ChannelState {
    pub fn bytes(&self) -> usize {
        self.inputs
            .iter()
            .chain(&self.outputs)
            .flatten()
            .map(Vec::len)
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.inputs.iter().chain(&self.outputs).all(Vec::is_empty)
    }

    pub fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).expect("channel state encodes")
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        postcard::from_bytes(bytes).map_err(|e| format!("damaged channel state: {e}"))
    }
}

/// Records the input side of one unaligned checkpoint: which channels still precede
/// their barrier, and what they carried.
#[derive(Debug)]
pub struct InputRecorder {
    recording: Vec<bool>,
    batches: Vec<Vec<Vec<u8>>>,
}

impl InputRecorder {
    pub fn new(channels: usize) -> Self {
        InputRecorder {
            recording: vec![false; channels],
            batches: vec![Vec::new(); channels],
        }
    }

    /// Batches that were already queued on `channel` when the snapshot was taken.
    pub fn add(&mut self, channel: usize, batch: Vec<u8>) {
        self.batches[channel].push(batch);
    }

    /// Until its barrier, what arrives on `channel` is recorded.
    pub fn start(&mut self, channel: usize) {
        self.recording[channel] = true;
    }

    pub fn stop(&mut self, channel: usize) {
        self.recording[channel] = false;
    }

    pub fn is_recording(&self, channel: usize) -> bool {
        self.recording[channel]
    }

    /// Every channel delivered its barrier (or ended): the input side is complete.
    pub fn finish(self) -> Vec<Vec<Vec<u8>>> {
        debug_assert!(self.recording.iter().all(|r| !r));
        self.batches
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_queued_batches_and_arrivals_until_each_barrier() {
        let mut recorder = InputRecorder::new(2);
        recorder.add(0, vec![1]);
        recorder.start(1);
        assert!(recorder.is_recording(1) && !recorder.is_recording(0));
        recorder.add(1, vec![2]);
        recorder.stop(1);
        assert_eq!(recorder.finish(), vec![vec![vec![1]], vec![vec![2]]]);
    }

    #[test]
    fn encodes_and_detects_damage() {
        let state = ChannelState {
            inputs: vec![vec![vec![1, 2, 3]], vec![]],
            outputs: vec![vec![vec![4]]],
        };
        assert_eq!(state.bytes(), 4);
        assert!(!state.is_empty());
        let bytes = state.encode();
        assert_eq!(ChannelState::decode(&bytes).unwrap(), state);
        assert!(ChannelState::decode(&bytes[..bytes.len() - 2]).is_err());
        assert!(ChannelState::default().is_empty());
    }
}
