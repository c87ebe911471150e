//! The traits user code implements: sources, operators, keyed operators and sinks.
//!
//! Every method runs on the subtask's actor thread under `catch_unwind`: an `Err` or a
//! panic fails the subtask with the operator's name, the subtask index and the cause.
//! Records are handed over by value; outputs go through [`Context::emit`], which
//! appends to the batch being built for the next stage (no allocation per record).

use serde::de::DeserializeOwned;
use serde::Serialize;
use std::hash::Hash;
use std::sync::Arc;
use std::time::Duration;
use weir_state::value::StateKey;
pub use weir_state::TimeDomain;
use weir_state::{KeyedBackend, KeyedStateBackend};

pub use crate::checkpoint::coordinator::CheckpointId;
pub use crate::time::watermarks::{EventTime, MAX_WATERMARK, MIN_WATERMARK};

/// What can travel as a record: owned, cloneable (for fan-out), sendable across
/// threads and serializable (for keys, channel state and savepoints).
pub trait Data: Clone + Send + Serialize + DeserializeOwned + 'static {}
impl<T: Clone + Send + Serialize + DeserializeOwned + 'static> Data for T {}

/// A key: data that is also hashable, comparable and shareable (keyed state is
/// scoped to it, and snapshots read it from another thread).
pub trait Key: Data + Hash + Eq + Sync {}
impl<T: Data + Hash + Eq + Sync> Key for T {}

/// Extracts a record's key; shared by the partitioner and the keyed operator.
pub type KeyFn<T, K> = Arc<dyn Fn(&T) -> K + Send + Sync>;

/// Which parallel instance of which operator is running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubtaskInfo {
    /// The operator's name (unique in the job).
    pub operator: Arc<str>,
    /// This subtask's index in `0..parallelism`.
    pub index: u32,
    pub parallelism: u32,
    pub max_parallelism: u32,
    /// Starts at 0; grows with every restart of the job.
    pub attempt: u32,
}

impl std::fmt::Display for SubtaskInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({}/{})",
            self.operator,
            self.index + 1,
            self.parallelism
        )
    }
}

/// Handed to user code while it processes: emits records downstream and tells where
/// it runs. (Keyed state and timers join it with the state backend.)
pub struct Context<'a, Out> {
    out: &'a mut Vec<Out>,
    info: &'a SubtaskInfo,
    watermark: EventTime,
}

impl<'a, Out> Context<'a, Out> {
    pub fn new(out: &'a mut Vec<Out>, info: &'a SubtaskInfo) -> Self {
        Context {
            out,
            info,
            watermark: MIN_WATERMARK,
        }
    }

    /// A shorter-lived context writing to the same output.
    pub fn reborrow(&mut self) -> Context<'_, Out> {
        Context {
            out: self.out,
            info: self.info,
            watermark: self.watermark,
        }
    }

    pub fn with_watermark(mut self, watermark: EventTime) -> Self {
        self.watermark = watermark;
        self
    }

    /// The subtask's event-time watermark: no record at or before it is expected
    /// ([`MIN_WATERMARK`] before the first one).
    pub fn current_watermark(&self) -> EventTime {
        self.watermark
    }

    /// Send a record downstream.
    #[inline]
    pub fn emit(&mut self, record: Out) {
        self.out.push(record);
    }

    pub fn info(&self) -> &SubtaskInfo {
        self.info
    }

    /// How many records this context holds so far (what a call emitted, for a
    /// context that started empty).
    pub fn emitted(&self) -> usize {
        self.out.len()
    }
}

/// A one-input operator (map, filter, flat_map, process).
pub trait Operator: Send + 'static {
    type In: Data;
    type Out: Data;

    fn open(&mut self, _info: &SubtaskInfo) -> anyhow::Result<()> {
        Ok(())
    }

    fn process(&mut self, record: Self::In, ctx: &mut Context<'_, Self::Out>)
        -> anyhow::Result<()>;

    /// The event-time watermark advanced (to [`MAX_WATERMARK`] at the end of input).
    fn on_watermark(
        &mut self,
        _watermark: EventTime,
        _ctx: &mut Context<'_, Self::Out>,
    ) -> anyhow::Result<()> {
        Ok(())
    }

    /// Called once when every input has ended, before end-of-input travels downstream.
    fn finish(&mut self, _ctx: &mut Context<'_, Self::Out>) -> anyhow::Result<()> {
        Ok(())
    }
}

/// The time of a timer in the state crate's timer queues: event times are signed, the
/// queues order unsigned integers, so the sign bit is flipped (order-preserving).
pub(crate) fn timer_time(time: EventTime) -> u64 {
    (time as u64) ^ (1 << 63)
}

pub(crate) fn event_time_of_timer(time: u64) -> EventTime {
    (time ^ (1 << 63)) as EventTime
}

/// Processing time: milliseconds since the Unix epoch, on the same scale as event time.
pub fn processing_time_now() -> EventTime {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as EventTime)
}

/// A timer that fired, handed to [`KeyedOperator::on_timer`] with its key current.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FiredTimer {
    /// When it was due: an event time, or a processing time (ms since the epoch).
    pub time: EventTime,
    pub domain: TimeDomain,
    /// The namespace it was registered in, as its postcard bytes (see [`FiredTimer::namespace`]).
    pub namespace: Vec<u8>,
}

impl FiredTimer {
    /// The namespace the timer was registered with (`()` for the plain `register_*`).
    pub fn namespace<N: DeserializeOwned>(&self) -> anyhow::Result<N> {
        Ok(postcard::from_bytes(&self.namespace)?)
    }
}

/// What a keyed operator works with: the output, the current key, the keyed state of
/// this subtask's key groups (memory or RocksDB, as the job configures) and timers.
pub struct KeyedContext<'a, K: Key, Out> {
    ctx: Context<'a, Out>,
    state: &'a mut KeyedBackend<K>,
    has_key: bool,
}

impl<'a, K: Key, Out> KeyedContext<'a, K, Out> {
    /// `has_key`: a key is current (while a record is processed or a timer fires).
    pub fn new(ctx: Context<'a, Out>, state: &'a mut KeyedBackend<K>, has_key: bool) -> Self {
        KeyedContext {
            ctx,
            state,
            has_key,
        }
    }

    #[inline]
    pub fn emit(&mut self, record: Out) {
        self.ctx.emit(record);
    }

    pub fn info(&self) -> &SubtaskInfo {
        self.ctx.info()
    }

    pub fn current_watermark(&self) -> EventTime {
        self.ctx.current_watermark()
    }

    /// Milliseconds since the Unix epoch: the clock of processing-time timers.
    pub fn current_processing_time(&self) -> EventTime {
        processing_time_now()
    }

    /// The key of the record being processed, or of the timer firing.
    ///
    /// # Panics
    /// In `on_watermark` or `finish`: no key is current there.
    pub fn key(&self) -> &K {
        assert!(
            self.has_key,
            "there is a current key only while a record is processed or a timer fires"
        );
        self.state
            .current_key()
            .expect("the runtime sets the key before process and on_timer")
    }

    /// Keyed state, scoped to the current key: pass it to the handles registered in
    /// `open` (`ValueState::value(ctx.state())`, …).
    pub fn state(&mut self) -> &mut KeyedBackend<K> {
        self.state
    }

    fn timer<N: StateKey>(
        &mut self,
        domain: TimeDomain,
        namespace: &N,
        time: EventTime,
        register: bool,
    ) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.has_key,
            "timers belong to a key: register them in process or on_timer"
        );
        if register {
            self.state
                .register_timer(domain, namespace, timer_time(time))?;
        } else {
            self.state
                .delete_timer(domain, namespace, timer_time(time))?;
        }
        Ok(())
    }

    /// Calls `on_timer` for the current key once the watermark reaches `time`.
    /// Registering the same (key, namespace, time) twice fires it once.
    pub fn register_event_time_timer(&mut self, time: EventTime) -> anyhow::Result<()> {
        self.timer(TimeDomain::EventTime, &(), time, true)
    }

    /// An event-time timer in a namespace (e.g. a window), handed back in [`FiredTimer`].
    pub fn register_event_time_timer_in<N: StateKey>(
        &mut self,
        namespace: &N,
        time: EventTime,
    ) -> anyhow::Result<()> {
        self.timer(TimeDomain::EventTime, namespace, time, true)
    }

    pub fn delete_event_time_timer(&mut self, time: EventTime) -> anyhow::Result<()> {
        self.timer(TimeDomain::EventTime, &(), time, false)
    }

    pub fn delete_event_time_timer_in<N: StateKey>(
        &mut self,
        namespace: &N,
        time: EventTime,
    ) -> anyhow::Result<()> {
        self.timer(TimeDomain::EventTime, namespace, time, false)
    }

    /// Calls `on_timer` for the current key once the wall clock reaches `time`
    /// (ms since the Unix epoch, see [`KeyedContext::current_processing_time`]).
    pub fn register_processing_time_timer(&mut self, time: EventTime) -> anyhow::Result<()> {
        self.timer(TimeDomain::ProcessingTime, &(), time, true)
    }

    pub fn register_processing_time_timer_in<N: StateKey>(
        &mut self,
        namespace: &N,
        time: EventTime,
    ) -> anyhow::Result<()> {
        self.timer(TimeDomain::ProcessingTime, namespace, time, true)
    }

    pub fn delete_processing_time_timer(&mut self, time: EventTime) -> anyhow::Result<()> {
        self.timer(TimeDomain::ProcessingTime, &(), time, false)
    }

    pub fn delete_processing_time_timer_in<N: StateKey>(
        &mut self,
        namespace: &N,
        time: EventTime,
    ) -> anyhow::Result<()> {
        self.timer(TimeDomain::ProcessingTime, namespace, time, false)
    }
}

/// An operator on a keyed stream: each record arrives with the key it was
/// partitioned by set as current, and only keys of this subtask's key groups arrive.
pub trait KeyedOperator: Send + 'static {
    type Key: Key;
    type In: Data;
    type Out: Data;

    /// Register keyed state here (`ValueStateDescriptor::new("sum").register(state)?`).
    fn open(
        &mut self,
        _info: &SubtaskInfo,
        _state: &mut KeyedBackend<Self::Key>,
    ) -> anyhow::Result<()> {
        Ok(())
    }

    fn process(
        &mut self,
        record: Self::In,
        ctx: &mut KeyedContext<'_, Self::Key, Self::Out>,
    ) -> anyhow::Result<()>;

    /// A timer registered through the context is due, with its key current. Event-time
    /// timers fire in time order when the watermark reaches them, before the
    /// watermark reaches `on_watermark` and travels on; processing-time timers when
    /// the wall clock does. A timer fires once, also across a restore from a checkpoint.
    fn on_timer(
        &mut self,
        _timer: &FiredTimer,
        _ctx: &mut KeyedContext<'_, Self::Key, Self::Out>,
    ) -> anyhow::Result<()> {
        Ok(())
    }

    /// The event-time watermark advanced (to [`MAX_WATERMARK`] at the end of input).
    fn on_watermark(
        &mut self,
        _watermark: EventTime,
        _ctx: &mut KeyedContext<'_, Self::Key, Self::Out>,
    ) -> anyhow::Result<()> {
        Ok(())
    }

    fn finish(&mut self, _ctx: &mut KeyedContext<'_, Self::Key, Self::Out>) -> anyhow::Result<()> {
        Ok(())
    }
}

/// What a source reports after a poll.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourcePoll {
    /// More records may be available at once: poll again.
    Ready,
    /// Nothing available now (rate limit, waiting on input): poll again after this
    /// at the latest (a poll may come sooner, e.g. when output credit returns, so a
    /// rate limit must look at the clock rather than count polls).
    Pending(Duration),
    /// The input is exhausted; the source is not polled again.
    Finished,
}

/// The operator-state list (split redistribution) in which a source subtask's
/// splits are kept in a checkpoint: one element per split, the bytes
/// [`Source::snapshot_splits`] returned.
pub const SOURCE_SPLITS_STATE: &str = "source-splits";

/// A parallel source. Subtask `i` of `p` reads its share of the input (e.g. its
/// splits of a generator's sequence or of a file). Never block in `poll`: return
/// [`SourcePoll::Pending`] instead, so control messages keep flowing.
///
/// **Checkpoints and rescaling** (Flink's FLIP-27 idea). A resumable source divides
/// its input into *splits* (a range of a file, a residue class of a sequence), each
/// with its own position, and reports them with [`Source::snapshot_splits`]. A
/// restored job concatenates the splits of every old subtask (in subtask order),
/// cuts the list into contiguous near-equal parts, one per new subtask, and hands
/// each its part through [`Source::restore_splits`]: any parallelism then reads
/// exactly the input the checkpoint had not covered. A source whose input is not
/// divided can implement only [`Source::snapshot_position`] and
/// [`Source::restore_position`] (one split per subtask): it resumes, but only at the
/// parallelism it was checkpointed at.
pub trait Source: Send + 'static {
    type Out: Data;

    fn open(&mut self, _info: &SubtaskInfo) -> anyhow::Result<()> {
        Ok(())
    }

    /// Emit at most `max` records.
    fn poll(&mut self, ctx: &mut Context<'_, Self::Out>, max: usize) -> anyhow::Result<SourcePoll>;

    /// This subtask's splits, each with its position, taken at a checkpoint (finished
    /// splits may be kept, so they stay finished). `None`: the source cannot be
    /// resumed. The default reports [`Source::snapshot_position`] as a single split.
    fn snapshot_splits(&mut self) -> anyhow::Result<Option<Vec<Vec<u8>>>> {
        Ok(self.snapshot_position()?.map(|position| vec![position]))
    }

    /// Replaces this subtask's share of the input with `splits` (from
    /// [`Source::snapshot_splits`] of any subtask of the checkpointed job; possibly
    /// none). Called after `open`. The default hands a single split to
    /// [`Source::restore_position`].
    fn restore_splits(&mut self, splits: Vec<Vec<u8>>) -> anyhow::Result<()> {
        match <[Vec<u8>; 1]>::try_from(splits) {
            Ok([position]) => self.restore_position(&position),
            Err(splits) => anyhow::bail!(
                "this source keeps one position per subtask, so it resumes only at the parallelism it was checkpointed at ({} positions arrived for this subtask); implement Source::snapshot_splits and restore_splits to rescale it",
                splits.len()
            ),
        }
    }

    /// Where this subtask is in its input, for a source without splits: taken at a
    /// checkpoint so a restarted job continues exactly after the records the
    /// checkpoint covers. `None`: the source cannot be resumed.
    fn snapshot_position(&mut self) -> anyhow::Result<Option<Vec<u8>>> {
        Ok(None)
    }

    /// Continues from a position [`Source::snapshot_position`] returned (after `open`).
    fn restore_position(&mut self, _position: &[u8]) -> anyhow::Result<()> {
        anyhow::bail!("this source reports no position, so it cannot resume from a checkpoint")
    }
}

/// What a sink's [`Sink::pre_commit`] hands to the checkpoint.
pub struct PreCommit {
    /// Stored in the checkpoint; [`Sink::restore`] gets it back.
    pub state: Vec<u8>,
    /// Work that must be done before the checkpoint may complete (e.g. fsyncs of the
    /// files closed at the barrier). It runs on the snapshot thread, so the subtask
    /// goes on processing meanwhile; an `Err` declines the checkpoint.
    pub sync: Option<Box<dyn FnOnce() -> anyhow::Result<()> + Send>>,
}

impl PreCommit {
    pub fn state(state: Vec<u8>) -> Self {
        PreCommit { state, sync: None }
    }

    /// Also run `sync` off the subtask's thread before the checkpoint completes.
    pub fn with_sync(mut self, sync: impl FnOnce() -> anyhow::Result<()> + Send + 'static) -> Self {
        self.sync = Some(Box::new(sync));
        self
    }
}

/// A sink subtask: the end of a stream.
///
/// A sink that only implements `write` and `flush` (and maybe `finish`) is
/// at-least-once: after a failure the records since the last checkpoint are written
/// again. A sink can be exactly-once with the two-phase commit hooks, which default
/// to nothing:
///
/// 1. `open`, then `restore` once, before the first record, with the states that
///    the subtasks of the restored checkpoint returned from `pre_commit` and that
///    this subtask takes over (none on a fresh start). Make the output agree with
///    them: commit what they list as pre-committed (idempotently: it may be
///    committed already), discard whatever they do not cover.
/// 2. `write` per record; output stays invisible to readers.
/// 3. `pre_commit(n)` at checkpoint (or savepoint) `n`'s barrier, after every
///    record before it and after `flush`: make that output durable (or return the
///    work that does it as [`PreCommit::sync`], run off-thread before the
///    checkpoint completes) but still invisible, and return the state that
///    `restore` needs to finish the job, stored in checkpoint `n`.
/// 4. `commit(n)` once checkpoint `n` is complete (durable): make visible
///    everything pre-committed at checkpoints `<= n`. An `Err` fails the subtask;
///    the restart's `restore` commits it from the checkpoint.
///
/// `finish` (end of input) only flushes. A job that checkpoints ends with a final
/// checkpoint, whose `pre_commit` and `commit` cover the rest; a job without
/// checkpoints calls `pre_commit` and `commit` once right after `finish`.
pub trait Sink: Send + 'static {
    type In: Data;

    fn open(&mut self, _info: &SubtaskInfo) -> anyhow::Result<()> {
        Ok(())
    }

    /// After `open`, before the first record: the states of the restored checkpoint
    /// this subtask takes over (empty on a fresh start; several after a rescale).
    fn restore(&mut self, _states: Vec<Vec<u8>>) -> anyhow::Result<()> {
        Ok(())
    }

    fn write(&mut self, record: Self::In) -> anyhow::Result<()>;

    /// A checkpoint barrier reached the sink: make everything written so far durable
    /// before the checkpoint can complete. Without it, records buffered before a
    /// completed checkpoint would be lost by a crash: they are never replayed.
    fn flush(&mut self) -> anyhow::Result<()> {
        Ok(())
    }

    /// Called once when every input has ended: flush everything.
    fn finish(&mut self) -> anyhow::Result<()> {
        Ok(())
    }

    /// Checkpoint `checkpoint`'s barrier: make the output so far durable (not yet
    /// visible); the returned state goes into the checkpoint (`None`: nothing to keep).
    fn pre_commit(&mut self, _checkpoint: CheckpointId) -> anyhow::Result<Option<PreCommit>> {
        Ok(None)
    }

    /// Checkpoint `checkpoint` is complete: make visible what `pre_commit` prepared
    /// for it and for every older checkpoint.
    fn commit(&mut self, _checkpoint: CheckpointId) -> anyhow::Result<()> {
        Ok(())
    }
}
