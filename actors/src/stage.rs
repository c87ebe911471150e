//! The typed pieces a subtask's chain is built from.
//!
//! A chain is a linked list of [`Input`] trait objects, each typed by the records it
//! takes: operator stages call user code per record and hand their outputs on per
//! batch; a network output at the end partitions into per-receiver batches. Records
//! are erased to `Box<dyn Any>` only where they cross between actors ([`InputHead`]).
//! User code runs under `catch_unwind` once per batch; a failure is attributed to the
//! operator and subtask it happened in. Watermarks and idleness pass down the chain
//! after the records that precede them.

use crate::checkpoint::coordinator::{Barrier, CheckpointId};
use crate::error::{panic_message, StageError};
use crate::flow::ChannelEvent;
use crate::metrics::OperatorCounters;
use crate::network::{AnyBatch, Network};
use crate::operator::{
    event_time_of_timer, timer_time, Context, Data, EventTime, FiredTimer, KeyFn, KeyedContext,
    KeyedOperator, Operator, PreCommit, Sink, Source, SourcePoll, SubtaskInfo, MAX_WATERMARK,
    MIN_WATERMARK, SOURCE_SPLITS_STATE,
};
use crate::partition::Partitioner;
use crate::time::generator::WatermarkGenerator;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};
use weir_state::handle::SubtaskSnapshot;
use weir_state::storage::checkpoint_dir;
use weir_state::{
    AsyncSnapshot, CheckpointStorage, KeyedBackend, KeyedStateBackend, OperatorStateStore,
    StateError, TimeDomain,
};

/// Wakes a subtask from outside its input: a piece with work under way (an async
/// request) calls it when that work needs the subtask, which then runs its chain's
/// [`ChainControl::on_wake`]. Cheap to call often (one wake-up message at a time).
#[derive(Clone)]
pub struct Wake(Rc<dyn Fn()>);

impl Wake {
    pub fn new(wake: impl Fn() + 'static) -> Self {
        Wake(Rc::new(wake))
    }

    /// For pieces opened outside a subtask.
    #[cfg(test)]
    pub fn none() -> Self {
        Wake::new(|| {})
    }

    pub fn wake(&self) {
        (self.0)()
    }
}

/// Work a chain has under way besides its input (async requests), ordered: a chain
/// reports the most of its pieces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub enum InFlight {
    #[default]
    Nothing,
    /// Requests are under way: the chain has not finished while they are.
    Some,
    /// At capacity: take no more input until a wake-up frees some.
    Full,
}

/// What every piece of a chain does besides taking records: its lifecycle and its
/// part in checkpoints.
pub trait ChainControl {
    /// `wake` is this subtask's: for pieces with work under way outside the input.
    fn open(&mut self, wake: &Wake) -> Result<(), StageError>;
    /// Send partly filled network batches.
    fn flush(&mut self, net: &mut Network);
    /// Every input has ended.
    fn finish(&mut self, net: &mut Network) -> Result<(), StageError>;
    /// Checkpoint `id`: take the synchronous part of this stage's snapshot (its
    /// asynchronous part goes to `snapshots`), then pass the barrier on; network
    /// outputs send it on every channel, behind the records before it.
    fn checkpoint(
        &mut self,
        barrier: Barrier,
        net: &mut Network,
        snapshots: &mut Vec<PendingSnapshot>,
    ) -> Result<(), StageError>;
    /// Checkpoint `id` completed (or was aborted). An `Err` (a sink that could not
    /// commit) fails the subtask; the restore commits what the checkpoint lists.
    fn notify_checkpoint(&mut self, id: CheckpointId, completed: bool) -> Result<(), StageError>;
    /// The earliest processing-time timer of this piece and the pieces after it: the
    /// subtask wakes up for it.
    fn next_processing_timer(&mut self) -> Option<EventTime> {
        None
    }
    /// The wall clock reached `now` (ms since the epoch): fire the processing-time
    /// timers due here and after.
    fn on_processing_time(
        &mut self,
        _now: EventTime,
        _net: &mut Network,
    ) -> Result<(), StageError> {
        Ok(())
    }
    /// What this piece and those after it have under way (see [`InFlight`]).
    fn in_flight(&self) -> InFlight {
        InFlight::Nothing
    }
    /// The subtask was woken (see [`Wake`]): carry on with the work under way here
    /// and after (emit results, issue requests).
    fn on_wake(&mut self, _net: &mut Network) -> Result<(), StageError> {
        Ok(())
    }
}

/// Something that takes batches of `T`.
pub trait Input<T>: ChainControl {
    /// Consume every record of `records` (the buffer stays for reuse).
    fn push(&mut self, records: &mut Vec<T>, net: &mut Network) -> Result<(), StageError>;
    /// The event-time watermark advanced.
    fn on_watermark(&mut self, watermark: EventTime, net: &mut Network) -> Result<(), StageError>;
    /// The input became idle (or active again).
    fn on_idle(&mut self, idle: bool, net: &mut Network);
}

pub type BoxedInput<T> = Box<dyn Input<T>>;

/// A name made safe for file names: letters, digits and `-`; the rest become `_`.
pub fn file_safe(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The asynchronous part of one operator's snapshot in a subtask.
pub struct PendingSnapshot {
    pub operator: String,
    pub snapshot: AsyncSnapshot<SubtaskSnapshot>,
}

/// `checkpoint` and `notify_checkpoint` of a stage without state of its own.
macro_rules! forward_checkpoints {
    ($($next:tt)+) => {
        fn checkpoint(
            &mut self,
            barrier: Barrier,
            net: &mut Network,
            snapshots: &mut Vec<PendingSnapshot>,
        ) -> Result<(), StageError> {
            self.$($next)+.checkpoint(barrier, net, snapshots)
        }

        fn notify_checkpoint(&mut self, id: CheckpointId, completed: bool) -> Result<(), StageError> {
            self.$($next)+.notify_checkpoint(id, completed)
        }
    };
}

/// Processing-time timers of a stage without timers of its own: those after it.
macro_rules! forward_processing_time {
    ($($next:tt)+) => {
        fn next_processing_timer(&mut self) -> Option<EventTime> {
            self.$($next)+.next_processing_timer()
        }

        fn on_processing_time(&mut self, now: EventTime, net: &mut Network) -> Result<(), StageError> {
            self.$($next)+.on_processing_time(now, net)
        }
    };
}
pub(crate) use forward_processing_time;

/// Async work of a piece that has none of its own: that of the pieces after it.
macro_rules! forward_async {
    ($($next:tt)+) => {
        fn in_flight(&self) -> InFlight {
            self.$($next)+.in_flight()
        }

        fn on_wake(&mut self, net: &mut Network) -> Result<(), StageError> {
            self.$($next)+.on_wake(net)
        }
    };
}

/// Runs user code, turning an `Err` or a panic into a failure of this subtask.
pub(crate) fn guarded<R>(
    info: &SubtaskInfo,
    f: impl FnOnce() -> anyhow::Result<R>,
) -> Result<R, StageError> {
    let cause = match caught(f) {
        Ok(Ok(r)) => return Ok(r),
        Ok(Err(e)) => format!("{e:#}"),
        Err(cause) => cause,
    };
    Err(StageError::of(info, cause))
}

/// Runs user code, turning a panic into its message (with its location).
pub(crate) fn caught<R>(f: impl FnOnce() -> R) -> Result<R, String> {
    panic_hook::catch(f).map_err(|(payload, location)| match location {
        Some(location) => format!("{} (at {location})", panic_message(payload.as_ref())),
        None => panic_message(payload.as_ref()),
    })
}

/// Panics in user code are failures with a message, not stderr noise: while guarded
/// code runs, the process-wide hook records the panic's location for the error and
/// prints nothing; every other panic goes to the hook that was installed before.
mod panic_hook {
    use std::any::Any;
    use std::cell::{Cell, RefCell};
    use std::panic::{catch_unwind, AssertUnwindSafe};
    use std::sync::Once;

    thread_local! {
        static GUARDED: Cell<bool> = const { Cell::new(false) };
        static LOCATION: RefCell<Option<String>> = const { RefCell::new(None) };
    }

    fn install() {
        static INSTALL: Once = Once::new();
        INSTALL.call_once(|| {
            let previous = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                if GUARDED.with(Cell::get) {
                    let location = info
                        .location()
                        .map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column()));
                    LOCATION.with(|slot| *slot.borrow_mut() = location);
                } else {
                    previous(info);
                }
            }));
        });
    }

    pub type Caught = (Box<dyn Any + Send>, Option<String>);

    pub fn catch<R>(f: impl FnOnce() -> R) -> Result<R, Caught> {
        install();
        let outer = GUARDED.with(|g| g.replace(true));
        let result = catch_unwind(AssertUnwindSafe(f));
        GUARDED.with(|g| g.set(outer));
        result.map_err(|payload| (payload, LOCATION.with(|slot| slot.borrow_mut().take())))
    }
}

/// The parts every operator-like stage has.
pub struct StageCore<Out> {
    pub info: SubtaskInfo,
    pub counters: Arc<OperatorCounters>,
    pub out: Vec<Out>,
    pub next: BoxedInput<Out>,
    pub watermark: EventTime,
}

impl<Out> StageCore<Out> {
    pub fn new(info: SubtaskInfo, counters: Arc<OperatorCounters>, next: BoxedInput<Out>) -> Self {
        StageCore {
            info,
            counters,
            out: Vec::new(),
            next,
            watermark: MIN_WATERMARK,
        }
    }

    /// Runs user code with a context, then hands what it emitted downstream.
    fn run(
        &mut self,
        net: &mut Network,
        f: impl FnOnce(&mut Context<'_, Out>) -> anyhow::Result<()>,
    ) -> Result<(), StageError> {
        let (out, info, watermark) = (&mut self.out, &self.info, self.watermark);
        guarded(info, || {
            f(&mut Context::new(out, info).with_watermark(watermark))
        })?;
        self.pass_on(net)
    }

    /// Hands what was emitted downstream.
    pub fn pass_on(&mut self, net: &mut Network) -> Result<(), StageError> {
        if self.out.is_empty() {
            return Ok(());
        }
        self.counters.add_out(self.out.len());
        self.next.push(&mut self.out, net)
    }

    /// The watermark reaches user code (`f`), then the rest of the chain.
    fn advance(
        &mut self,
        watermark: EventTime,
        net: &mut Network,
        f: impl FnOnce(&mut Context<'_, Out>) -> anyhow::Result<()>,
    ) -> Result<(), StageError> {
        self.watermark = watermark;
        self.run(net, f)?;
        self.next.on_watermark(watermark, net)
    }

    fn end(
        &mut self,
        net: &mut Network,
        f: impl FnOnce(&mut Context<'_, Out>) -> anyhow::Result<()>,
    ) -> Result<(), StageError> {
        self.run(net, f)?;
        self.next.finish(net)
    }
}

pub struct OperatorStage<O: Operator> {
    pub op: O,
    pub core: StageCore<O::Out>,
}

impl<O: Operator> Input<O::In> for OperatorStage<O> {
    fn push(&mut self, records: &mut Vec<O::In>, net: &mut Network) -> Result<(), StageError> {
        self.core.counters.add_in(records.len());
        let op = &mut self.op;
        self.core.run(net, |ctx| {
            records
                .drain(..)
                .try_for_each(|record| op.process(record, ctx))
        })
    }

    fn on_watermark(&mut self, watermark: EventTime, net: &mut Network) -> Result<(), StageError> {
        let op = &mut self.op;
        self.core
            .advance(watermark, net, |ctx| op.on_watermark(watermark, ctx))
    }

    fn on_idle(&mut self, idle: bool, net: &mut Network) {
        self.core.next.on_idle(idle, net)
    }
}

impl<O: Operator> ChainControl for OperatorStage<O> {
    fn open(&mut self, wake: &Wake) -> Result<(), StageError> {
        let (op, info) = (&mut self.op, &self.core.info);
        guarded(info, || op.open(info))?;
        self.core.next.open(wake)
    }

    fn finish(&mut self, net: &mut Network) -> Result<(), StageError> {
        let op = &mut self.op;
        self.core.end(net, |ctx| op.finish(ctx))
    }

    fn flush(&mut self, net: &mut Network) {
        self.core.next.flush(net)
    }

    forward_checkpoints!(core.next);
    forward_processing_time!(core.next);
    forward_async!(core.next);
}

pub struct KeyedStage<O: KeyedOperator> {
    pub op: O,
    pub key_of: KeyFn<O::In, O::Key>,
    pub backend: KeyedBackend<O::Key>,
    /// Where snapshots of the backend go.
    pub storage: Arc<dyn CheckpointStorage>,
    pub core: StageCore<O::Out>,
}

impl<O: KeyedOperator> Input<O::In> for KeyedStage<O> {
    fn push(&mut self, records: &mut Vec<O::In>, net: &mut Network) -> Result<(), StageError> {
        self.core.counters.add_in(records.len());
        let (op, key_of, backend) = (&mut self.op, &self.key_of, &mut self.backend);
        self.core.run(net, |ctx| {
            records.drain(..).try_for_each(|record| {
                backend.set_current_key(key_of(&record))?;
                op.process(
                    record,
                    &mut KeyedContext::new(ctx.reborrow(), backend, true),
                )
            })
        })
    }

    /// Flink's order: the event-time timers due fire first (seeing the new
    /// watermark), then `on_watermark`, then the watermark travels on behind their
    /// output.
    fn on_watermark(&mut self, watermark: EventTime, net: &mut Network) -> Result<(), StageError> {
        self.core.watermark = watermark;
        self.fire_due(TimeDomain::EventTime, watermark, net)?;
        let (op, backend) = (&mut self.op, &mut self.backend);
        self.core.advance(watermark, net, |ctx| {
            op.on_watermark(
                watermark,
                &mut KeyedContext::new(ctx.reborrow(), backend, false),
            )
        })
    }

    fn on_idle(&mut self, idle: bool, net: &mut Network) {
        self.core.next.on_idle(idle, net)
    }
}

/// Timers fired before their output moves on down the chain: a watermark that
/// makes many windows due does not collect all their results first.
const TIMERS_PER_ROUND: usize = 1024;

impl<O: KeyedOperator> KeyedStage<O> {
    /// Fires the timers of `domain` due at `up_to`, handing their output on after
    /// every `TIMERS_PER_ROUND`.
    fn fire_due(
        &mut self,
        domain: TimeDomain,
        up_to: EventTime,
        net: &mut Network,
    ) -> Result<(), StageError> {
        loop {
            let (op, backend) = (&mut self.op, &mut self.backend);
            let mut more = false;
            self.core.run(net, |ctx| {
                more = fire_timers(op, backend, domain, up_to, TIMERS_PER_ROUND, ctx)?;
                Ok(())
            })?;
            if !more {
                return Ok(());
            }
        }
    }
}

impl<O: KeyedOperator> ChainControl for KeyedStage<O> {
    fn open(&mut self, wake: &Wake) -> Result<(), StageError> {
        let (op, info, backend) = (&mut self.op, &self.core.info, &mut self.backend);
        guarded(info, || op.open(info, backend))?;
        self.core.next.open(wake)
    }

    fn finish(&mut self, net: &mut Network) -> Result<(), StageError> {
        let (op, backend) = (&mut self.op, &mut self.backend);
        self.core.end(net, |ctx| {
            op.finish(&mut KeyedContext::new(ctx.reborrow(), backend, false))
        })
    }

    fn checkpoint(
        &mut self,
        barrier: Barrier,
        net: &mut Network,
        snapshots: &mut Vec<PendingSnapshot>,
    ) -> Result<(), StageError> {
        let id = barrier.id;
        let keyed = self
            .backend
            .snapshot(id, barrier.kind, self.storage.clone())
            .map_err(|e| {
                StageError::of(
                    &self.core.info,
                    format!("snapshot of checkpoint {id} failed: {e}"),
                )
            })?;
        snapshots.push(PendingSnapshot {
            operator: self.core.info.operator.to_string(),
            snapshot: AsyncSnapshot::new(move || {
                Ok(SubtaskSnapshot {
                    keyed: Some(keyed.run()?),
                    operator: None,
                    extra: Vec::new(),
                })
            }),
        });
        self.core.next.checkpoint(barrier, net, snapshots)
    }

    fn notify_checkpoint(&mut self, id: CheckpointId, completed: bool) -> Result<(), StageError> {
        if completed {
            self.backend.notify_checkpoint_complete(id);
        } else {
            self.backend.notify_checkpoint_aborted(id);
        }
        self.core.next.notify_checkpoint(id, completed)
    }

    fn next_processing_timer(&mut self) -> Option<EventTime> {
        let own = self
            .backend
            .next_timer(TimeDomain::ProcessingTime)
            .map(event_time_of_timer);
        match (own, self.core.next.next_processing_timer()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn on_processing_time(&mut self, now: EventTime, net: &mut Network) -> Result<(), StageError> {
        self.fire_due(TimeDomain::ProcessingTime, now, net)?;
        self.core.next.on_processing_time(now, net)
    }

    fn flush(&mut self, net: &mut Network) {
        self.core.next.flush(net)
    }

    forward_async!(core.next);
}

/// Fires at most `limit` timers of `domain` due at `up_to`, one at a time, in time
/// order, each with its key current; timers registered meanwhile that are due fire
/// too. True if it stopped at the limit.
fn fire_timers<O: KeyedOperator>(
    op: &mut O,
    backend: &mut KeyedBackend<O::Key>,
    domain: TimeDomain,
    up_to: EventTime,
    limit: usize,
    ctx: &mut Context<'_, O::Out>,
) -> anyhow::Result<bool> {
    let up_to = timer_time(up_to);
    for _ in 0..limit {
        let Some(raw) = backend.timer_service().pop_next_due(domain, up_to) else {
            return Ok(false);
        };
        let key: O::Key = postcard::from_bytes(&raw.key)?;
        backend.set_current_key_in_group(key, raw.key_group)?;
        let timer = FiredTimer {
            time: event_time_of_timer(raw.time),
            domain,
            namespace: raw.namespace,
        };
        op.on_timer(
            &timer,
            &mut KeyedContext::new(ctx.reborrow(), backend, true),
        )?;
    }
    Ok(backend.next_timer(domain).is_some_and(|t| t <= up_to))
}

/// The end of a chain: calls the sink per record and drives its two-phase commit
/// (see [`Sink`]): `restore` after `open`, `flush` and `pre_commit` at every
/// checkpoint pass (its sync work, then its state as the subtask snapshot's
/// [`SINK_STATE`] file, run off-thread), `commit` on notify-complete.
pub struct SinkStage<S: Sink> {
    pub sink: S,
    pub info: SubtaskInfo,
    pub counters: Arc<OperatorCounters>,
    /// Where the sink's pre-commit states go at checkpoints.
    pub storage: Arc<dyn CheckpointStorage>,
    /// The states this subtask takes over from the restored checkpoint; handed to
    /// `Sink::restore` once, after `open`.
    pub restore: Option<Vec<Vec<u8>>>,
    /// Whether the job checkpoints. If not, the end of input commits at once.
    pub checkpointing: bool,
}

/// The name under which a sink's pre-commit state is kept in its subtask snapshot.
pub const SINK_STATE: &str = "sink-state";

/// The checkpoint id a sink's `pre_commit` and `commit` get at the end of input of a
/// job without checkpoints (real checkpoint ids start at 1).
pub const END_OF_INPUT_COMMIT: CheckpointId = 0;

impl<S: Sink> Input<S::In> for SinkStage<S> {
    fn push(&mut self, records: &mut Vec<S::In>, _net: &mut Network) -> Result<(), StageError> {
        self.counters.add_in(records.len());
        let sink = &mut self.sink;
        guarded(&self.info, || {
            records.drain(..).try_for_each(|r| sink.write(r))
        })
    }

    fn on_watermark(
        &mut self,
        _watermark: EventTime,
        _net: &mut Network,
    ) -> Result<(), StageError> {
        Ok(())
    }

    fn on_idle(&mut self, _idle: bool, _net: &mut Network) {}
}

impl<S: Sink> ChainControl for SinkStage<S> {
    fn open(&mut self, _wake: &Wake) -> Result<(), StageError> {
        let (sink, info) = (&mut self.sink, &self.info);
        let states = self.restore.take().unwrap_or_default();
        guarded(info, || {
            sink.open(info)?;
            sink.restore(states)
        })
    }

    fn flush(&mut self, _net: &mut Network) {}

    fn finish(&mut self, _net: &mut Network) -> Result<(), StageError> {
        let sink = &mut self.sink;
        let checkpointing = self.checkpointing;
        guarded(&self.info, || {
            sink.finish()?;
            if !checkpointing {
                // No checkpoint will ever cover this output: commit it now.
                let pre_committed = sink.pre_commit(END_OF_INPUT_COMMIT)?;
                if let Some(sync) = pre_committed.and_then(|p| p.sync) {
                    sync()?;
                }
                sink.commit(END_OF_INPUT_COMMIT)?;
            }
            Ok(())
        })
    }

    fn checkpoint(
        &mut self,
        barrier: Barrier,
        _: &mut Network,
        snapshots: &mut Vec<PendingSnapshot>,
    ) -> Result<(), StageError> {
        let (sink, info, id) = (&mut self.sink, &self.info, barrier.id);
        let pre_committed = guarded(info, || {
            sink.flush()?;
            sink.pre_commit(id)
        })?;
        let Some(PreCommit { state, sync }) = pre_committed else {
            return Ok(());
        };
        let storage = self.storage.clone();
        let path = format!(
            "{}/{}-{}.sink",
            checkpoint_dir(id),
            file_safe(&info.operator),
            info.index
        );
        snapshots.push(PendingSnapshot {
            operator: info.operator.to_string(),
            snapshot: AsyncSnapshot::new(move || {
                if let Some(sync) = sync {
                    sync().map_err(|e| StateError::Io {
                        path: path.clone().into(),
                        source: std::io::Error::other(format!("{e:#}")),
                    })?;
                }
                let file = storage.write_file(&path, &state)?;
                Ok(SubtaskSnapshot {
                    keyed: None,
                    operator: None,
                    extra: vec![(SINK_STATE.to_string(), file)],
                })
            }),
        });
        Ok(())
    }

    fn notify_checkpoint(&mut self, id: CheckpointId, completed: bool) -> Result<(), StageError> {
        // An aborted checkpoint commits nothing: what it pre-committed stays pending
        // until a later checkpoint, which lists it again, completes.
        if !completed {
            return Ok(());
        }
        let sink = &mut self.sink;
        guarded(&self.info, || sink.commit(id))
    }
}

/// Partitions records into per-receiver batches on one network edge.
pub struct NetworkOutput<T> {
    pub partitioner: Partitioner<T>,
    /// Index of this edge's first channel among the subtask's output channels.
    pub first_channel: usize,
    pub batch_size: usize,
    pub buffers: Vec<Vec<T>>,
}

impl<T: Data> NetworkOutput<T> {
    pub fn new(partitioner: Partitioner<T>, first_channel: usize, batch_size: usize) -> Self {
        let buffers = (0..partitioner.receivers())
            .map(|_| Vec::with_capacity(batch_size))
            .collect();
        NetworkOutput {
            partitioner,
            first_channel,
            batch_size,
            buffers,
        }
    }

    fn send_buffer(&mut self, receiver: usize, net: &mut Network) {
        let full = std::mem::replace(
            &mut self.buffers[receiver],
            Vec::with_capacity(self.batch_size),
        );
        net.send(
            self.first_channel + receiver,
            ChannelEvent::Batch(Box::new(full)),
        );
    }

    #[inline]
    fn append(&mut self, receiver: usize, record: T, net: &mut Network) {
        self.buffers[receiver].push(record);
        if self.buffers[receiver].len() >= self.batch_size {
            self.send_buffer(receiver, net);
        }
    }

    /// An event on every channel, behind the records buffered before it.
    fn send_to_all(&mut self, net: &mut Network, event: impl Fn() -> ChannelEvent<AnyBatch>) {
        self.flush(net);
        for receiver in 0..self.buffers.len() {
            net.send(self.first_channel + receiver, event());
        }
    }
}

impl<T: Data> Input<T> for NetworkOutput<T> {
    fn push(&mut self, records: &mut Vec<T>, net: &mut Network) -> Result<(), StageError> {
        for record in records.drain(..) {
            match self.partitioner.select(&record) {
                Some(receiver) => self.append(receiver, record, net),
                None => {
                    let last = self.buffers.len() - 1;
                    for receiver in 0..last {
                        self.append(receiver, record.clone(), net);
                    }
                    self.append(last, record, net);
                }
            }
        }
        if self.buffers.iter().any(|b| !b.is_empty()) {
            net.has_partial = true;
        }
        Ok(())
    }

    fn on_watermark(&mut self, watermark: EventTime, net: &mut Network) -> Result<(), StageError> {
        self.send_to_all(net, || ChannelEvent::Watermark(watermark));
        Ok(())
    }

    fn on_idle(&mut self, idle: bool, net: &mut Network) {
        self.send_to_all(net, || ChannelEvent::Idle(idle));
    }
}

impl<T: Data> ChainControl for NetworkOutput<T> {
    fn open(&mut self, _wake: &Wake) -> Result<(), StageError> {
        Ok(())
    }

    fn flush(&mut self, net: &mut Network) {
        for receiver in 0..self.buffers.len() {
            if !self.buffers[receiver].is_empty() {
                self.send_buffer(receiver, net);
            }
        }
    }

    fn finish(&mut self, net: &mut Network) -> Result<(), StageError> {
        self.send_to_all(net, || ChannelEvent::EndOfInput);
        Ok(())
    }

    fn checkpoint(
        &mut self,
        barrier: Barrier,
        net: &mut Network,
        _: &mut Vec<PendingSnapshot>,
    ) -> Result<(), StageError> {
        if barrier.unaligned {
            // Ahead of the queued output, which the subtask then keeps as channel state.
            self.flush(net);
            for receiver in 0..self.buffers.len() {
                net.send_first(
                    self.first_channel + receiver,
                    ChannelEvent::Barrier(barrier),
                );
            }
        } else {
            self.send_to_all(net, || ChannelEvent::Barrier(barrier));
        }
        Ok(())
    }

    fn notify_checkpoint(&mut self, _: CheckpointId, _: bool) -> Result<(), StageError> {
        Ok(())
    }
}

/// Hands every batch to several consumers (fan-out).
pub struct Tee<T> {
    pub outputs: Vec<BoxedInput<T>>,
    scratch: Vec<T>,
}

impl<T> Tee<T> {
    pub fn new(outputs: Vec<BoxedInput<T>>) -> Self {
        Tee {
            outputs,
            scratch: Vec::new(),
        }
    }
}

impl<T: Data> Input<T> for Tee<T> {
    fn push(&mut self, records: &mut Vec<T>, net: &mut Network) -> Result<(), StageError> {
        let (last, others) = self.outputs.split_last_mut().expect("a tee has outputs");
        for output in others {
            self.scratch.extend(records.iter().cloned());
            output.push(&mut self.scratch, net)?;
        }
        last.push(records, net)
    }

    fn on_watermark(&mut self, watermark: EventTime, net: &mut Network) -> Result<(), StageError> {
        self.outputs
            .iter_mut()
            .try_for_each(|o| o.on_watermark(watermark, net))
    }

    fn on_idle(&mut self, idle: bool, net: &mut Network) {
        self.outputs.iter_mut().for_each(|o| o.on_idle(idle, net));
    }
}

impl<T: Data> ChainControl for Tee<T> {
    fn open(&mut self, wake: &Wake) -> Result<(), StageError> {
        self.outputs.iter_mut().try_for_each(|o| o.open(wake))
    }

    fn flush(&mut self, net: &mut Network) {
        self.outputs.iter_mut().for_each(|o| o.flush(net));
    }

    fn finish(&mut self, net: &mut Network) -> Result<(), StageError> {
        self.outputs.iter_mut().try_for_each(|o| o.finish(net))
    }

    fn checkpoint(
        &mut self,
        barrier: Barrier,
        net: &mut Network,
        snapshots: &mut Vec<PendingSnapshot>,
    ) -> Result<(), StageError> {
        self.outputs
            .iter_mut()
            .try_for_each(|o| o.checkpoint(barrier, net, snapshots))
    }

    fn notify_checkpoint(&mut self, id: CheckpointId, completed: bool) -> Result<(), StageError> {
        // Every branch hears of it, even after one failed.
        let results: Vec<_> = self
            .outputs
            .iter_mut()
            .map(|o| o.notify_checkpoint(id, completed))
            .collect();
        results.into_iter().collect()
    }

    fn next_processing_timer(&mut self) -> Option<EventTime> {
        self.outputs
            .iter_mut()
            .filter_map(|o| o.next_processing_timer())
            .min()
    }

    fn on_processing_time(&mut self, now: EventTime, net: &mut Network) -> Result<(), StageError> {
        self.outputs
            .iter_mut()
            .try_for_each(|o| o.on_processing_time(now, net))
    }

    fn in_flight(&self) -> InFlight {
        self.outputs
            .iter()
            .map(|o| o.in_flight())
            .max()
            .unwrap_or_default()
    }

    fn on_wake(&mut self, net: &mut Network) -> Result<(), StageError> {
        self.outputs.iter_mut().try_for_each(|o| o.on_wake(net))
    }
}

/// The head of a chain fed from the network.
pub trait InputHead: ChainControl {
    fn push_batch(&mut self, batch: AnyBatch, net: &mut Network) -> Result<(), StageError>;
    /// Like `push_batch`, but a batch of slow records stops once `deadline` has
    /// passed and gives back the records it did not take (a slice at a time, so a
    /// barrier in the mailbox waits for a slice rather than a whole batch).
    fn push_batch_until(
        &mut self,
        batch: AnyBatch,
        net: &mut Network,
        deadline: Instant,
    ) -> Result<Option<AnyBatch>, StageError>;
    fn on_watermark(&mut self, watermark: EventTime, net: &mut Network) -> Result<(), StageError>;
    fn on_idle(&mut self, idle: bool, net: &mut Network);
}

pub struct TypedHead<T> {
    input: BoxedInput<T>,
    /// What a record took in the last push: whether a whole batch fits in the time
    /// left, or must go in slices.
    per_record: Duration,
}

impl<T> TypedHead<T> {
    pub fn new(input: BoxedInput<T>) -> Self {
        TypedHead {
            input,
            per_record: Duration::ZERO,
        }
    }
}

/// Records pushed between two looks at the clock in `push_batch_until`, when a
/// whole batch would not fit in the time left.
const SLICE: usize = 16;

impl<T: Data> InputHead for TypedHead<T> {
    fn push_batch(&mut self, batch: AnyBatch, net: &mut Network) -> Result<(), StageError> {
        let mut records = batch
            .downcast::<Vec<T>>()
            .expect("edge types are checked when the graph is planned");
        self.input.push(&mut records, net)
    }

    fn push_batch_until(
        &mut self,
        batch: AnyBatch,
        net: &mut Network,
        deadline: Instant,
    ) -> Result<Option<AnyBatch>, StageError> {
        let mut records = *batch
            .downcast::<Vec<T>>()
            .expect("edge types are checked when the graph is planned");
        loop {
            let started = Instant::now();
            let fits = self
                .per_record
                .checked_mul(records.len() as u32)
                .is_some_and(|all| started + all <= deadline);
            // Fast records go in one push (no split, no copy); slow ones a slice at
            // a time.
            let mut rest = records.split_off(if fits {
                records.len()
            } else {
                SLICE.min(records.len())
            });
            let pushed = records.len() as u32;
            self.input.push(&mut records, net)?;
            self.per_record = started.elapsed() / pushed.max(1);
            if rest.is_empty() {
                return Ok(None);
            }
            if Instant::now() >= deadline || net.is_blocked() {
                return Ok(Some(Box::new(rest)));
            }
            std::mem::swap(&mut records, &mut rest);
        }
    }

    fn on_watermark(&mut self, watermark: EventTime, net: &mut Network) -> Result<(), StageError> {
        self.input.on_watermark(watermark, net)
    }

    fn on_idle(&mut self, idle: bool, net: &mut Network) {
        self.input.on_idle(idle, net)
    }
}

impl<T: Data> ChainControl for TypedHead<T> {
    fn open(&mut self, wake: &Wake) -> Result<(), StageError> {
        self.input.open(wake)
    }

    fn finish(&mut self, net: &mut Network) -> Result<(), StageError> {
        self.input.finish(net)
    }

    fn flush(&mut self, net: &mut Network) {
        self.input.flush(net)
    }

    forward_checkpoints!(input);
    forward_processing_time!(input);
    forward_async!(input);
}

/// The head of a chain that starts with a source.
pub trait SourceHead: ChainControl {
    fn poll(&mut self, max: usize, net: &mut Network) -> Result<SourcePoll, StageError>;
    /// The input is exhausted: event time ends here (every timer downstream may
    /// fire), even while the end of input itself is held back.
    fn end_event_time(&mut self, net: &mut Network) -> Result<(), StageError>;
}

pub struct SourceStage<S: Source> {
    pub source: S,
    pub core: StageCore<S::Out>,
    /// Where the source's splits go at checkpoints.
    pub storage: Arc<dyn CheckpointStorage>,
    /// This subtask's share of a restored checkpoint's splits.
    pub restore: Option<RestoredSplits>,
    /// Assigns watermarks (and idleness) from the records' event times.
    pub watermarks: Option<WatermarkGenerator<S::Out>>,
    /// `MAX_WATERMARK` has been sent.
    pub event_time_ended: bool,
}

/// A subtask's operator state that is one split-redistributed list `name` of
/// `elements` (postcard bytes each), as the snapshot of checkpoint `barrier`.
pub(crate) fn list_snapshot(
    info: &SubtaskInfo,
    barrier: Barrier,
    name: &str,
    elements: &[Vec<u8>],
    storage: &Arc<dyn CheckpointStorage>,
) -> Result<PendingSnapshot, StageError> {
    let store = guarded(info, || {
        let mut store = OperatorStateStore::new();
        store
            .list_state::<Vec<u8>>(name)?
            .update(&mut store, elements)?;
        Ok(store)
    })?;
    let prefix = format!("{}-{}", file_safe(&info.operator), info.index);
    let state = store.snapshot(barrier.id, &prefix, storage.clone());
    Ok(PendingSnapshot {
        operator: info.operator.to_string(),
        snapshot: AsyncSnapshot::new(move || {
            Ok(SubtaskSnapshot {
                keyed: None,
                operator: Some(state.run()?),
                extra: Vec::new(),
            })
        }),
    })
}

/// The splits a restored source subtask continues from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoredSplits {
    pub splits: Vec<Vec<u8>>,
    /// How many subtasks the source had when the checkpoint was taken (for errors).
    pub checkpoint_parallelism: usize,
}

impl<S: Source> SourceHead for SourceStage<S> {
    fn poll(&mut self, max: usize, net: &mut Network) -> Result<SourcePoll, StageError> {
        let core = &mut self.core;
        let source = &mut self.source;
        let status = guarded(&core.info, || {
            source.poll(&mut Context::new(&mut core.out, &core.info), max)
        })?;
        let Some(generator) = self.watermarks.as_mut() else {
            core.pass_on(net)?;
            return Ok(status);
        };
        let now = Instant::now();
        let update = guarded(&core.info, || generator.observe(&core.out, now))?;
        if update.active_again {
            core.next.on_idle(false, net);
        }
        core.pass_on(net)?;
        if let Some(watermark) = update.watermark {
            core.next.on_watermark(watermark, net)?;
        }
        if update.idle {
            core.next.on_idle(true, net);
        }
        Ok(status)
    }

    fn end_event_time(&mut self, net: &mut Network) -> Result<(), StageError> {
        if !self.event_time_ended {
            self.event_time_ended = true;
            self.core.next.on_watermark(MAX_WATERMARK, net)?;
        }
        Ok(())
    }
}

impl<S: Source> ChainControl for SourceStage<S> {
    fn open(&mut self, wake: &Wake) -> Result<(), StageError> {
        let (source, info, restore) = (&mut self.source, &self.core.info, self.restore.take());
        guarded(info, || {
            source.open(info)?;
            match restore {
                Some(restored) => source.restore_splits(restored.splits).map_err(|e| {
                    e.context(format!(
                        "cannot resume from the checkpoint (taken at parallelism {}, now {})",
                        restored.checkpoint_parallelism, info.parallelism
                    ))
                }),
                None => Ok(()),
            }
        })?;
        self.core.next.open(wake)
    }

    fn checkpoint(
        &mut self,
        barrier: Barrier,
        net: &mut Network,
        snapshots: &mut Vec<PendingSnapshot>,
    ) -> Result<(), StageError> {
        let (source, info) = (&mut self.source, &self.core.info);
        if let Some(splits) = guarded(info, || source.snapshot_splits())? {
            // The splits are a split-redistributed operator-state list, so a restore
            // at another parallelism deals them out like any such list.
            snapshots.push(list_snapshot(
                info,
                barrier,
                SOURCE_SPLITS_STATE,
                &splits,
                &self.storage,
            )?);
        }
        self.core.next.checkpoint(barrier, net, snapshots)
    }

    fn notify_checkpoint(&mut self, id: CheckpointId, completed: bool) -> Result<(), StageError> {
        self.core.next.notify_checkpoint(id, completed)
    }

    fn finish(&mut self, net: &mut Network) -> Result<(), StageError> {
        // The end of the input is the end of event time: every timer downstream fires.
        self.end_event_time(net)?;
        self.core.next.finish(net)
    }

    fn flush(&mut self, net: &mut Network) {
        self.core.next.flush(net)
    }

    forward_processing_time!(core.next);
    forward_async!(core.next);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use weir_state::storage::LocalCheckpointStorage;

    /// A sink that records the hooks it gets, returns `state` from `pre_commit`, and
    /// fails its first `commit` when `fail_commit` is set.
    struct Recording {
        calls: Arc<Mutex<Vec<String>>>,
        state: Option<Vec<u8>>,
        fail_commit: bool,
    }

    impl Sink for Recording {
        type In = u32;
        fn open(&mut self, _: &SubtaskInfo) -> anyhow::Result<()> {
            self.calls.lock().unwrap().push("open".into());
            Ok(())
        }
        fn restore(&mut self, states: Vec<Vec<u8>>) -> anyhow::Result<()> {
            self.calls
                .lock()
                .unwrap()
                .push(format!("restore {states:?}"));
            Ok(())
        }
        fn write(&mut self, record: u32) -> anyhow::Result<()> {
            self.calls.lock().unwrap().push(format!("write {record}"));
            Ok(())
        }
        fn flush(&mut self) -> anyhow::Result<()> {
            self.calls.lock().unwrap().push("flush".into());
            Ok(())
        }
        fn finish(&mut self) -> anyhow::Result<()> {
            self.calls.lock().unwrap().push("finish".into());
            Ok(())
        }
        fn pre_commit(&mut self, id: CheckpointId) -> anyhow::Result<Option<PreCommit>> {
            self.calls.lock().unwrap().push(format!("pre_commit {id}"));
            let calls = self.calls.clone();
            Ok(self.state.clone().map(|state| {
                PreCommit::state(state).with_sync(move || {
                    calls.lock().unwrap().push(format!("sync {id}"));
                    Ok(())
                })
            }))
        }
        fn commit(&mut self, id: CheckpointId) -> anyhow::Result<()> {
            if std::mem::take(&mut self.fail_commit) {
                panic!("commit {id} failed");
            }
            self.calls.lock().unwrap().push(format!("commit {id}"));
            Ok(())
        }
    }

    struct Fixture {
        stage: SinkStage<Recording>,
        calls: Arc<Mutex<Vec<String>>>,
        storage: Arc<LocalCheckpointStorage>,
        _dir: tempfile::TempDir,
    }

    fn fixture(state: Option<&[u8]>, checkpointing: bool, restore: Vec<Vec<u8>>) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let storage = Arc::new(LocalCheckpointStorage::new(dir.path()).unwrap());
        let calls = Arc::new(Mutex::new(Vec::new()));
        let stage = SinkStage {
            sink: Recording {
                calls: calls.clone(),
                state: state.map(<[u8]>::to_vec),
                fail_commit: false,
            },
            info: SubtaskInfo {
                operator: Arc::from("out sink"),
                index: 1,
                parallelism: 2,
                max_parallelism: 128,
                attempt: 0,
            },
            counters: Arc::default(),
            storage: storage.clone(),
            restore: Some(restore),
            checkpointing,
        };
        Fixture {
            stage,
            calls,
            storage,
            _dir: dir,
        }
    }

    fn taken(calls: &Mutex<Vec<String>>) -> Vec<String> {
        std::mem::take(&mut *calls.lock().unwrap())
    }

    #[test]
    fn restore_follows_open_and_pre_commit_state_lands_in_the_checkpoint() {
        let mut f = fixture(Some(b"pending parts"), true, vec![b"old".to_vec()]);
        let mut net = Network::new(Vec::new(), 1);
        f.stage.open(&Wake::none()).unwrap();
        f.stage.push(&mut vec![7], &mut net).unwrap();
        let mut pending = Vec::new();
        f.stage
            .checkpoint(Barrier::checkpoint(5), &mut net, &mut pending)
            .unwrap();
        assert_eq!(
            taken(&f.calls),
            [
                "open",
                "restore [[111, 108, 100]]",
                "write 7",
                "flush",
                "pre_commit 5"
            ]
        );
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[0].operator, "out sink");
        let snapshot = pending.pop().unwrap().snapshot.run().unwrap();
        assert_eq!(taken(&f.calls), ["sync 5"], "on the snapshot thread");
        let (name, file) = &snapshot.extra[0];
        assert_eq!(name, SINK_STATE);
        assert_eq!(file.path, "chk-5/out_sink-1.sink");
        assert_eq!(f.storage.read_file(file).unwrap(), b"pending parts");
    }

    #[test]
    fn a_sink_without_state_adds_nothing_to_the_checkpoint() {
        let mut f = fixture(None, true, Vec::new());
        let mut net = Network::new(Vec::new(), 1);
        f.stage.open(&Wake::none()).unwrap();
        let mut pending = Vec::new();
        f.stage
            .checkpoint(Barrier::checkpoint(1), &mut net, &mut pending)
            .unwrap();
        assert!(pending.is_empty());
        assert_eq!(
            taken(&f.calls),
            ["open", "restore []", "flush", "pre_commit 1"]
        );
    }

    #[test]
    fn only_completed_checkpoints_commit() {
        let mut f = fixture(Some(b"s"), true, Vec::new());
        f.stage.open(&Wake::none()).unwrap();
        taken(&f.calls);
        f.stage.notify_checkpoint(3, false).unwrap();
        f.stage.notify_checkpoint(4, true).unwrap();
        assert_eq!(taken(&f.calls), ["commit 4"]);
    }

    #[test]
    fn the_end_of_input_commits_at_once_only_without_checkpoints() {
        let mut net = Network::new(Vec::new(), 1);
        let mut checkpointed = fixture(Some(b"s"), true, Vec::new());
        checkpointed.stage.open(&Wake::none()).unwrap();
        taken(&checkpointed.calls);
        checkpointed.stage.finish(&mut net).unwrap();
        assert_eq!(taken(&checkpointed.calls), ["finish"]);

        let mut plain = fixture(Some(b"s"), false, Vec::new());
        plain.stage.open(&Wake::none()).unwrap();
        taken(&plain.calls);
        plain.stage.finish(&mut net).unwrap();
        assert_eq!(
            taken(&plain.calls),
            [
                "finish",
                &format!("pre_commit {END_OF_INPUT_COMMIT}"),
                &format!("sync {END_OF_INPUT_COMMIT}"),
                &format!("commit {END_OF_INPUT_COMMIT}")
            ]
        );
    }

    #[test]
    fn a_panicking_commit_fails_the_subtask_with_its_cause() {
        let mut f = fixture(Some(b"s"), true, Vec::new());
        f.stage.sink.fail_commit = true;
        f.stage.open(&Wake::none()).unwrap();
        let error = f.stage.notify_checkpoint(2, true).unwrap_err();
        assert_eq!((error.operator.as_str(), error.subtask), ("out sink", 1));
        assert!(error.cause.contains("commit 2 failed"), "{}", error.cause);
    }

    /// A sink whose sync work fails: the snapshot (and so the checkpoint) fails.
    struct FailingSync;

    impl Sink for FailingSync {
        type In = u32;
        fn write(&mut self, _: u32) -> anyhow::Result<()> {
            Ok(())
        }
        fn pre_commit(&mut self, _: CheckpointId) -> anyhow::Result<Option<PreCommit>> {
            Ok(Some(
                PreCommit::state(b"s".to_vec()).with_sync(|| anyhow::bail!("disk on fire")),
            ))
        }
    }

    #[test]
    fn failed_sync_work_fails_the_snapshot_before_the_state_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let mut stage = SinkStage {
            sink: FailingSync,
            info: fixture(None, true, Vec::new()).stage.info,
            counters: Arc::default(),
            storage: Arc::new(LocalCheckpointStorage::new(dir.path()).unwrap()),
            restore: None,
            checkpointing: true,
        };
        let mut pending = Vec::new();
        let mut net = Network::new(Vec::new(), 1);
        stage
            .checkpoint(Barrier::checkpoint(3), &mut net, &mut pending)
            .unwrap();
        let error = pending.pop().unwrap().snapshot.run().unwrap_err();
        assert!(error.to_string().contains("disk on fire"), "{error}");
        assert!(!dir.path().join("chk-3/out_sink-1.sink").exists());
    }
}
