//! The async I/O chain piece: the actor-side shell around [`AsyncQueue`]. It spawns
//! the requests (and their backoff timers) on the subtask's thread, collects what
//! they report, and wakes the subtask, whose `on_wake` hands the reports to the
//! queue and carries out its decisions. See the module above for the protocol.

use super::queue::{AsyncQueue, Decision, Emitted, Marker, Outcome};
use super::{AsyncFunction, AsyncMode, AsyncOptions, AsyncResult, ASYNC_IN_FLIGHT_STATE};
use crate::checkpoint::coordinator::{Barrier, CheckpointId};
use crate::error::StageError;
use crate::network::Network;
use crate::operator::EventTime;
use crate::stage::{
    caught, forward_processing_time, guarded, list_snapshot, ChainControl, InFlight, Input,
    PendingSnapshot, StageCore, Wake,
};
use rustc_hash::FxHashMap;
use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use weir_state::CheckpointStorage;

/// What a spawned task reports about entry `seq`.
enum Report<O> {
    /// Attempt `attempt` ended: outputs, or the error (or panic) it ended with.
    Attempt {
        seq: u64,
        attempt: u32,
        result: Result<Vec<O>, String>,
    },
    /// The backoff before attempt `attempt` is over.
    RetryDue { seq: u64, attempt: u32 },
    /// The deadline passed during attempt `attempt` (or its backoff).
    TimedOut { seq: u64, attempt: u32 },
}

/// Where the tasks leave their reports, and how they wake the subtask.
struct Reports<O> {
    reports: RefCell<Vec<Report<O>>>,
    wake: RefCell<Option<Wake>>,
}

impl<O> Reports<O> {
    fn add(&self, report: Report<O>) {
        self.reports.borrow_mut().push(report);
        if let Some(wake) = self.wake.borrow().as_ref() {
            wake.wake();
        }
    }
}

/// The task under way for one entry (an attempt or a backoff) and its deadline.
struct Task {
    deadline: Option<Instant>,
    handle: JoinHandle<()>,
}

pub(crate) struct AsyncStage<F: AsyncFunction> {
    func: F,
    core: StageCore<F::Out>,
    queue: AsyncQueue<F::In, F::Out>,
    timeout: Duration,
    /// Where the in-flight inputs go at checkpoints.
    storage: Arc<dyn CheckpointStorage>,
    /// This subtask's share of a restored checkpoint's in-flight inputs, issued
    /// again at `open`.
    restore: Vec<F::In>,
    reports: Rc<Reports<F::Out>>,
    tasks: FxHashMap<u64, Task>,
    emitted: Vec<Emitted<F::Out>>,
    /// Every input has ended: finish the chain after once the queue is empty.
    finishing: bool,
    finished: bool,
}

impl<F: AsyncFunction> AsyncStage<F> {
    pub fn new(
        func: F,
        core: StageCore<F::Out>,
        options: &AsyncOptions,
        storage: Arc<dyn CheckpointStorage>,
        restore: Vec<F::In>,
    ) -> Self {
        AsyncStage {
            func,
            core,
            queue: AsyncQueue::new(
                options.mode == AsyncMode::Ordered,
                options.capacity,
                options.retry,
            ),
            timeout: options.timeout,
            storage,
            restore,
            reports: Rc::new(Reports {
                reports: RefCell::new(Vec::new()),
                wake: RefCell::new(None),
            }),
            tasks: FxHashMap::default(),
            emitted: Vec::new(),
            finishing: false,
            finished: false,
        }
    }

    fn failure(&self, cause: String) -> StageError {
        StageError::of(&self.core.info, cause)
    }

    /// Issues the entries the capacity allows.
    fn issue(&mut self) -> Result<(), StageError> {
        while let Some(seq) = self.queue.next_issue() {
            let deadline = Instant::now().checked_add(self.timeout);
            self.start(seq, 1, deadline)?;
        }
        Ok(())
    }

    /// Starts attempt `attempt` of `seq`.
    fn start(
        &mut self,
        seq: u64,
        attempt: u32,
        deadline: Option<Instant>,
    ) -> Result<(), StageError> {
        let input = self.queue.input(seq).expect("issued entries exist").clone();
        let func = &mut self.func;
        let future = guarded(&self.core.info, || Ok(func.invoke(input)))?;
        let reports = self.reports.clone();
        let handle = tokio::task::spawn_local(async move {
            let report = match within(deadline, Caught(future)).await {
                None => Report::TimedOut { seq, attempt },
                Some(result) => Report::Attempt {
                    seq,
                    attempt,
                    result: result.and_then(|r| r.map_err(|e| format!("{e:#}"))),
                },
            };
            reports.add(report);
        });
        self.tasks.insert(seq, Task { deadline, handle });
        Ok(())
    }

    /// Attempt `attempt` of `seq` starts after `delay` (unless the deadline comes first).
    fn backoff(&mut self, seq: u64, attempt: u32, delay: Duration) {
        let task = self
            .tasks
            .get_mut(&seq)
            .expect("issued entries have a task");
        let deadline = task.deadline;
        let reports = self.reports.clone();
        task.handle = tokio::task::spawn_local(async move {
            let report = match within(deadline, tokio::time::sleep(delay)).await {
                None => Report::TimedOut { seq, attempt },
                Some(()) => Report::RetryDue { seq, attempt },
            };
            reports.add(report);
        });
    }

    fn on_report(&mut self, report: Report<F::Out>) -> Result<(), StageError> {
        match report {
            Report::Attempt {
                seq,
                attempt,
                result,
            } => {
                if !self.queue.is_current(seq, attempt) {
                    return Ok(());
                }
                let outcome = match result {
                    Err(cause) => Outcome::Failed(cause),
                    Ok(outputs) => {
                        let func = &mut self.func;
                        if guarded(&self.core.info, || Ok(func.retry_result(&outputs)))? {
                            Outcome::Unsatisfying(outputs)
                        } else {
                            Outcome::Returned(outputs)
                        }
                    }
                };
                match self.queue.on_attempt(seq, attempt, outcome) {
                    Decision::Done => {
                        self.tasks.remove(&seq);
                    }
                    Decision::Stale => {}
                    Decision::Retry { attempt, delay } => self.backoff(seq, attempt, delay),
                    Decision::Fail { attempts: 1, cause } => {
                        return Err(self.failure(format!("an async request failed: {cause}")))
                    }
                    Decision::Fail { attempts, cause } => {
                        return Err(self.failure(format!(
                            "an async request failed {attempts} times (retries exhausted), last: {cause}"
                        )))
                    }
                }
            }
            Report::RetryDue { seq, attempt } => {
                if self.queue.retry_due(seq, attempt) {
                    let deadline = self.tasks.get(&seq).and_then(|t| t.deadline);
                    self.start(seq, attempt, deadline)?;
                }
            }
            Report::TimedOut { seq, attempt } => {
                if !self.queue.is_current(seq, attempt) {
                    return Ok(());
                }
                let (func, queue) = (&mut self.func, &self.queue);
                let input = queue.input(seq).expect("current entries exist");
                match guarded(&self.core.info, || func.timeout(input))? {
                    Some(outputs) => {
                        self.queue.complete(seq, outputs);
                        self.tasks.remove(&seq);
                    }
                    None => {
                        return Err(self.failure(format!(
                            "an async request timed out after {:?} (attempt {attempt}; the timeout covers retries)",
                            self.timeout
                        )))
                    }
                }
            }
        }
        Ok(())
    }

    /// Hands downstream what the queue lets go, issues what the capacity then
    /// allows, and finishes the chain after once it is all done.
    fn emit(&mut self, net: &mut Network) -> Result<(), StageError> {
        let mut emitted = std::mem::take(&mut self.emitted);
        self.queue.drain(&mut emitted);
        for e in emitted.drain(..) {
            match e {
                Emitted::Outputs(outputs) => self.core.out.extend(outputs),
                Emitted::Marker(marker) => {
                    self.core.pass_on(net)?;
                    self.forward(marker, net)?;
                }
            }
        }
        self.emitted = emitted;
        self.core.pass_on(net)?;
        self.issue()?;
        if self.finishing && !self.finished && self.queue.is_empty() {
            self.finished = true;
            self.core.next.finish(net)?;
        }
        Ok(())
    }

    fn forward(&mut self, marker: Marker, net: &mut Network) -> Result<(), StageError> {
        match marker {
            Marker::Watermark(watermark) => {
                self.core.watermark = watermark;
                self.core.next.on_watermark(watermark, net)
            }
            Marker::Idle(idle) => {
                self.core.next.on_idle(idle, net);
                Ok(())
            }
        }
    }
}

/// `future`, or `None` once `deadline` passed.
async fn within<T>(deadline: Option<Instant>, future: impl Future<Output = T>) -> Option<T> {
    match deadline {
        Some(deadline) => tokio::time::timeout_at(deadline, future).await.ok(),
        None => Some(future.await),
    }
}

/// A request's future with its panics caught (as their message), so a panicking
/// request fails the operator instead of never completing.
struct Caught<O>(AsyncResult<O>);

impl<O> Future for Caught<O> {
    type Output = Result<anyhow::Result<Vec<O>>, String>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let future = self.0.as_mut();
        match caught(|| future.poll(cx)) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(result)) => Poll::Ready(Ok(result)),
            Err(cause) => Poll::Ready(Err(cause)),
        }
    }
}

impl<F: AsyncFunction> Input<F::In> for AsyncStage<F> {
    fn push(&mut self, records: &mut Vec<F::In>, _net: &mut Network) -> Result<(), StageError> {
        self.core.counters.add_in(records.len());
        for record in records.drain(..) {
            self.queue.push(record);
        }
        self.issue()
    }

    /// Watermarks and idleness changes go on at once if nothing is queued (nothing
    /// else is due downstream then: every emit drains what it can), else behind
    /// the records queued.
    fn on_watermark(&mut self, watermark: EventTime, net: &mut Network) -> Result<(), StageError> {
        if self.queue.is_empty() {
            self.forward(Marker::Watermark(watermark), net)
        } else {
            self.queue.push_marker(Marker::Watermark(watermark));
            Ok(())
        }
    }

    fn on_idle(&mut self, idle: bool, net: &mut Network) {
        if self.queue.is_empty() {
            self.core.next.on_idle(idle, net)
        } else {
            self.queue.push_marker(Marker::Idle(idle))
        }
    }
}

impl<F: AsyncFunction> ChainControl for AsyncStage<F> {
    fn open(&mut self, wake: &Wake) -> Result<(), StageError> {
        let (func, info) = (&mut self.func, &self.core.info);
        guarded(info, || func.open(info))?;
        *self.reports.wake.borrow_mut() = Some(wake.clone());
        for input in std::mem::take(&mut self.restore) {
            self.queue.push(input);
        }
        self.issue()?;
        self.core.next.open(wake)
    }

    fn flush(&mut self, net: &mut Network) {
        self.core.next.flush(net)
    }

    fn finish(&mut self, net: &mut Network) -> Result<(), StageError> {
        self.finishing = true;
        self.emit(net)
    }

    fn checkpoint(
        &mut self,
        barrier: Barrier,
        net: &mut Network,
        snapshots: &mut Vec<PendingSnapshot>,
    ) -> Result<(), StageError> {
        let in_flight = self
            .queue
            .in_flight()
            .map(postcard::to_allocvec)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.failure(format!("cannot encode an in-flight record: {e}")))?;
        snapshots.push(list_snapshot(
            &self.core.info,
            barrier,
            ASYNC_IN_FLIGHT_STATE,
            &in_flight,
            &self.storage,
        )?);
        self.core.next.checkpoint(barrier, net, snapshots)
    }

    fn notify_checkpoint(&mut self, id: CheckpointId, completed: bool) -> Result<(), StageError> {
        self.core.next.notify_checkpoint(id, completed)
    }

    forward_processing_time!(core.next);

    fn in_flight(&self) -> InFlight {
        let own = if !self.queue.accepts_input() {
            InFlight::Full
        } else if !self.queue.is_empty() {
            InFlight::Some
        } else {
            InFlight::Nothing
        };
        own.max(self.core.next.in_flight())
    }

    fn on_wake(&mut self, net: &mut Network) -> Result<(), StageError> {
        let reports = std::mem::take(&mut *self.reports.reports.borrow_mut());
        for report in reports {
            self.on_report(report)?;
        }
        self.emit(net)?;
        self.core.next.on_wake(net)
    }
}

impl<F: AsyncFunction> Drop for AsyncStage<F> {
    /// A cancelled or failed subtask leaves no request running.
    fn drop(&mut self) {
        for task in self.tasks.values() {
            task.handle.abort();
        }
    }
}
