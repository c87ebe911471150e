//! The subtask actor: one parallel instance of a chain of operators.
//!
//! It is a thin shell: it queues what arrives on its input channels, and in bounded
//! rounds (`PUMP_BATCHES` batches, then it yields to its mailbox so control messages
//! never wait long) feeds the chain, returns a credit per processed batch, and stops
//! processing while any output channel waits for credit. A partly filled output batch
//! leaves after `linger`. When every input has ended (or the source is exhausted) it
//! finishes the chain, drains its outputs, reports to the job master and stops.

use crate::checkpoint::barrier::{Action, BarrierHandler, CheckpointMode};
use crate::checkpoint::coordinator::CheckpointId;
use crate::config::JobConfig;
use crate::error::StageError;
use crate::flow::ChannelEvent;
use crate::gate::InputGate;
use crate::master::{
    CheckpointAcked, CheckpointDeclined, JobMaster, SourceExhausted, SubtaskFailed, SubtaskFinished,
};
use crate::network::{AnyBatch, Credit, Deliver, InputSource, Network, OutputTarget};
use crate::operator::{processing_time_now, EventTime, SourcePoll};
use crate::stage::{ChainControl, InputHead, PendingSnapshot, SourceHead};
use crate::time::watermarks::{WatermarkOutput, WatermarkTracker};
use actix::{Actor, ActorContext, Addr, AsyncContext, Context, Handler, Message};
use std::time::{Duration, Instant};

/// Batches processed (or polled) before the actor yields to its mailbox.
const PUMP_BATCHES: usize = 8;

pub(crate) enum Head {
    Source(Box<dyn SourceHead>),
    Input(Box<dyn InputHead>),
}

impl Head {
    /// The chain's lifecycle and checkpoint side, whatever its head.
    fn control(&mut self) -> &mut dyn ChainControl {
        match self {
            Head::Source(source) => source.as_mut(),
            Head::Input(input) => input.as_mut(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Created,
    Running,
    /// The chain has finished; waiting for the outputs to drain.
    Draining,
    /// Reported to the master (finished, failed or cancelled).
    Over,
}

pub(crate) struct SubtaskActor {
    /// Where checkpoints are acknowledged (with this subtask's number in the job).
    ack_to: AckTo,
    barriers: BarrierHandler,
    mode: CheckpointMode,
    started: Instant,
    head: Result<Head, StageError>,
    net: Network,
    inputs: Vec<InputSource>,
    gate: InputGate<ChannelEvent<AnyBatch>>,
    watermarks: WatermarkTracker,
    ended_inputs: usize,
    master: Addr<JobMaster>,
    phase: Phase,
    pump_scheduled: bool,
    linger_armed: bool,
    /// The processing time a wake-up is scheduled for (keyed operators' timers).
    processing_timer_at: Option<EventTime>,
    batch_size: usize,
    channel_capacity: usize,
    linger: Duration,
}

impl SubtaskActor {
    pub fn new(
        name: String,
        index: u32,
        number: usize,
        head: Result<Head, StageError>,
        config: &JobConfig,
        master: Addr<JobMaster>,
    ) -> Self {
        let mode = config
            .checkpoint
            .as_ref()
            .map_or(CheckpointMode::Aligned, |c| c.mode);
        let ack_to = AckTo {
            master: master.clone(),
            subtask: number,
            index,
            name,
        };
        SubtaskActor {
            ack_to,
            barriers: BarrierHandler::new(mode, 0),
            mode,
            started: Instant::now(),
            head,
            net: Network::new(Vec::new(), 1),
            inputs: Vec::new(),
            gate: InputGate::new(0),
            watermarks: WatermarkTracker::new(0),
            ended_inputs: 0,
            master,
            phase: Phase::Created,
            pump_scheduled: false,
            linger_armed: false,
            processing_timer_at: None,
            batch_size: config.batch_size,
            channel_capacity: config.channel_capacity,
            linger: config.linger,
        }
    }

    fn schedule_pump(&mut self, ctx: &mut Context<Self>) {
        if !self.pump_scheduled {
            self.pump_scheduled = true;
            ctx.notify(Pump);
        }
    }

    /// Process input while the outputs accept it, for at most `PUMP_BATCHES` rounds.
    fn pump(&mut self, ctx: &mut Context<Self>) {
        let mut rounds = 0;
        while self.phase == Phase::Running && !self.net.is_blocked() {
            if rounds == PUMP_BATCHES {
                self.schedule_pump(ctx);
                break;
            }
            rounds += 1;
            let progressed = match self.step(ctx) {
                Ok(progressed) => progressed,
                Err(error) => {
                    self.fail(error, ctx);
                    return;
                }
            };
            if !progressed {
                break;
            }
        }
        self.arm_linger(ctx);
        self.arm_processing_timer(ctx);
    }

    /// Schedules a wake-up for the chain's earliest processing-time timer, unless an
    /// earlier one is scheduled already.
    fn arm_processing_timer(&mut self, ctx: &mut Context<Self>) {
        let Ok(head) = self.head.as_mut() else { return };
        let Some(due) = head.control().next_processing_timer() else {
            return;
        };
        if self.phase != Phase::Running || self.processing_timer_at.is_some_and(|at| at <= due) {
            return;
        }
        self.processing_timer_at = Some(due);
        let delay = Duration::from_millis(due.saturating_sub(processing_time_now()).max(0) as u64);
        ctx.run_later(delay, move |actor, ctx| {
            if actor.processing_timer_at != Some(due) {
                return; // superseded by an earlier wake-up, which re-arms
            }
            actor.processing_timer_at = None;
            if actor.phase != Phase::Running {
                return;
            }
            let head = actor.head.as_mut().expect("running subtasks have a chain");
            match head
                .control()
                .on_processing_time(processing_time_now(), &mut actor.net)
            {
                Ok(()) => actor.pump(ctx),
                Err(error) => actor.fail(error, ctx),
            }
        });
    }

    /// One unit of work; false when there is nothing to do now.
    fn step(&mut self, ctx: &mut Context<Self>) -> Result<bool, StageError> {
        let batch_size = self.batch_size;
        let (head, net) = (
            self.head.as_mut().expect("running subtasks have a chain"),
            &mut self.net,
        );
        match head {
            Head::Source(source) => match source.poll(batch_size, net)? {
                SourcePoll::Ready => Ok(true),
                SourcePoll::Pending(delay) => {
                    ctx.run_later(delay, |actor, ctx| actor.pump(ctx));
                    Ok(false)
                }
                SourcePoll::Finished => {
                    self.finish_chain(ctx)?;
                    Ok(false)
                }
            },
            Head::Input(input) => match self.gate.pop() {
                None => Ok(false),
                Some((channel, ChannelEvent::Batch(batch))) => {
                    input.push_batch(batch, net)?;
                    let source = &self.inputs[channel];
                    source.sender.do_send(Credit {
                        channel: source.output_channel,
                        batches: 1,
                    });
                    Ok(true)
                }
                Some((channel, ChannelEvent::Watermark(watermark))) => {
                    forward_watermarks(
                        input,
                        self.watermarks.on_watermark(channel, watermark),
                        net,
                    )?;
                    Ok(true)
                }
                Some((channel, ChannelEvent::Idle(idle))) => {
                    forward_watermarks(input, self.watermarks.on_idle(channel, idle), net)?;
                    Ok(true)
                }
                Some((channel, ChannelEvent::Barrier(id))) => {
                    let now_ms = self.started.elapsed().as_millis() as u64;
                    let actions = self.barriers.on_barrier(channel, id, now_ms);
                    apply_barrier_actions(
                        actions,
                        &mut self.gate,
                        net,
                        &self.ack_to,
                        |id, net, pending| input.checkpoint(id, net, pending),
                    )?;
                    Ok(true)
                }
                Some((channel, ChannelEvent::EndOfInput)) => {
                    forward_watermarks(input, self.watermarks.on_end_of_input(channel), net)?;
                    let actions = self.barriers.on_end_of_input(channel);
                    apply_barrier_actions(
                        actions,
                        &mut self.gate,
                        net,
                        &self.ack_to,
                        |id, net, pending| input.checkpoint(id, net, pending),
                    )?;
                    self.ended_inputs += 1;
                    if self.ended_inputs == self.inputs.len() {
                        self.finish_chain(ctx)?;
                    }
                    Ok(true)
                }
            },
        }
    }

    fn finish_chain(&mut self, ctx: &mut Context<Self>) -> Result<(), StageError> {
        let head = self.head.as_mut().expect("running subtasks have a chain");
        if matches!(head, Head::Source(_)) {
            self.master.do_send(SourceExhausted);
        }
        head.control().finish(&mut self.net)?;
        self.phase = Phase::Draining;
        self.finish_if_drained(ctx);
        Ok(())
    }

    fn finish_if_drained(&mut self, ctx: &mut Context<Self>) {
        if self.phase == Phase::Draining && !self.net.is_blocked() {
            self.phase = Phase::Over;
            tracing::debug!(subtask = %self.ack_to.name, index = self.ack_to.index, "finished");
            self.master.do_send(SubtaskFinished);
            ctx.stop();
        }
    }

    fn fail(&mut self, error: StageError, ctx: &mut Context<Self>) {
        if self.phase == Phase::Over {
            return;
        }
        self.phase = Phase::Over;
        self.master.do_send(SubtaskFailed(error));
        ctx.stop();
    }

    fn arm_linger(&mut self, ctx: &mut Context<Self>) {
        if self.net.has_partial && !self.linger_armed && self.phase == Phase::Running {
            self.linger_armed = true;
            ctx.run_later(self.linger, |actor, _| {
                actor.linger_armed = false;
                actor.net.has_partial = false;
                if actor.phase == Phase::Running {
                    let head = actor.head.as_mut().expect("running subtasks have a chain");
                    head.control().flush(&mut actor.net);
                }
            });
        }
    }
}

fn forward_watermarks(
    input: &mut Box<dyn InputHead>,
    outputs: Vec<WatermarkOutput>,
    net: &mut Network,
) -> Result<(), StageError> {
    for output in outputs {
        match output {
            WatermarkOutput::Advance(watermark) => input.on_watermark(watermark, net)?,
            WatermarkOutput::Idle(idle) => input.on_idle(idle, net),
        }
    }
    Ok(())
}

/// Where a subtask acknowledges checkpoints.
#[derive(Clone)]
struct AckTo {
    master: Addr<JobMaster>,
    subtask: usize,
    index: u32,
    name: String,
}

impl AckTo {
    fn decline(&self, id: CheckpointId, why: &str) {
        let reason = format!("{} ({}) {why}", self.name, self.index);
        self.master.do_send(CheckpointDeclined {
            id,
            subtask: self.subtask,
            reason,
            finished: false,
        });
    }

    fn decline_finished(&self, id: CheckpointId) {
        let reason = format!("{} ({}) has finished", self.name, self.index);
        self.master.do_send(CheckpointDeclined {
            id,
            subtask: self.subtask,
            reason,
            finished: true,
        });
    }

    /// Runs the asynchronous parts of the snapshot off the actor's thread, then
    /// acknowledges (or declines) the checkpoint.
    fn acknowledge(&self, id: CheckpointId, pending: Vec<PendingSnapshot>) {
        let to = self.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("weir-snapshot-{id}"))
            .spawn(move || {
                let written: Result<Vec<_>, String> = pending
                    .into_iter()
                    .map(|p| {
                        p.snapshot
                            .run()
                            .map(|s| (p.operator, to.index, s))
                            .map_err(|e| e.to_string())
                    })
                    .collect();
                match written {
                    Ok(snapshots) => to.master.do_send(CheckpointAcked {
                        id,
                        subtask: to.subtask,
                        snapshots,
                    }),
                    Err(reason) => {
                        to.decline(id, &format!("could not write its snapshot: {reason}"))
                    }
                }
            });
        if let Err(e) = spawned {
            self.decline(id, &format!("could not start a snapshot thread: {e}"));
        }
    }
}

/// Carries out what the barrier handler decided; `checkpoint` runs the chain's
/// snapshot and forwards the barrier.
fn apply_barrier_actions(
    actions: Vec<Action>,
    gate: &mut InputGate<ChannelEvent<AnyBatch>>,
    net: &mut Network,
    ack: &AckTo,
    mut checkpoint: impl FnMut(
        CheckpointId,
        &mut Network,
        &mut Vec<PendingSnapshot>,
    ) -> Result<(), StageError>,
) -> Result<(), StageError> {
    for action in actions {
        match action {
            Action::Block(channel) => gate.block(channel),
            Action::UnblockAll => gate.unblock_all(),
            Action::Snapshot { id, .. } => {
                let mut pending = Vec::new();
                checkpoint(id, net, &mut pending)?;
                ack.acknowledge(id, pending);
            }
            // A newer barrier subsumes the older checkpoint: the coordinator aborts it
            // quietly when the newer one completes (a decline would count as a failure).
            Action::Abort { .. } => {}
            Action::Record(_) | Action::StopRecording(_) | Action::ChannelStateComplete { .. } => {
                unreachable!("unaligned checkpoints are rejected when the job is planned")
            }
        }
    }
    Ok(())
}

impl Actor for SubtaskActor {
    type Context = Context<Self>;
}

impl Drop for SubtaskActor {
    fn drop(&mut self) {
        // An actor that vanishes without a report (its thread died) fails the job
        // instead of hanging it.
        if self.phase != Phase::Over {
            self.master.do_send(SubtaskFailed(StageError {
                operator: self.ack_to.name.clone(),
                subtask: self.ack_to.index,
                cause: "the subtask was lost (its worker thread stopped)".into(),
            }));
        }
    }
}

/// Connects a subtask to its peers; sent before [`Start`].
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Wire {
    pub outputs: Vec<OutputTarget>,
    pub inputs: Vec<InputSource>,
}

#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Start;

/// Stop at once, without reporting (the job master decided the job is over).
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Cancel;

#[derive(Message)]
#[rtype(result = "()")]
struct Pump;

impl Handler<Wire> for SubtaskActor {
    type Result = ();
    fn handle(&mut self, wire: Wire, _ctx: &mut Context<Self>) {
        self.net = Network::new(wire.outputs, self.channel_capacity);
        self.gate = InputGate::new(wire.inputs.len());
        self.barriers = BarrierHandler::new(self.mode, wire.inputs.len());
        self.watermarks = WatermarkTracker::new(wire.inputs.len());
        self.inputs = wire.inputs;
    }
}

impl Handler<Start> for SubtaskActor {
    type Result = ();
    fn handle(&mut self, _: Start, ctx: &mut Context<Self>) {
        let opened = match &mut self.head {
            Err(error) => Err(error.clone()),
            Ok(head) => head.control().open(),
        };
        if let Err(error) = opened {
            self.fail(error, ctx);
            return;
        }
        self.phase = Phase::Running;
        // Upstream subtasks may have started first: input can already be queued.
        self.schedule_pump(ctx);
    }
}

impl Handler<Pump> for SubtaskActor {
    type Result = ();
    fn handle(&mut self, _: Pump, ctx: &mut Context<Self>) {
        self.pump_scheduled = false;
        self.pump(ctx);
    }
}

impl Handler<Deliver> for SubtaskActor {
    type Result = ();
    fn handle(&mut self, deliver: Deliver, ctx: &mut Context<Self>) {
        self.gate.push(deliver.channel, deliver.event);
        if !self.pump_scheduled {
            self.pump(ctx);
        }
    }
}

impl Handler<Credit> for SubtaskActor {
    type Result = ();
    fn handle(&mut self, credit: Credit, ctx: &mut Context<Self>) {
        self.net.grant(credit.channel, credit.batches);
        match self.phase {
            Phase::Draining => self.finish_if_drained(ctx),
            Phase::Running if !self.pump_scheduled => self.pump(ctx),
            _ => {}
        }
    }
}

/// Sources: inject barrier `id` (after snapshotting the chain).
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct TriggerCheckpoint {
    pub id: CheckpointId,
}

/// Checkpoint `id` completed or was aborted.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct NotifyCheckpoint {
    pub id: CheckpointId,
    pub completed: bool,
}

impl Handler<TriggerCheckpoint> for SubtaskActor {
    type Result = ();
    fn handle(&mut self, trigger: TriggerCheckpoint, ctx: &mut Context<Self>) {
        let id = trigger.id;
        if self.phase != Phase::Running {
            self.ack_to.decline_finished(id);
            return;
        }
        let mut pending = Vec::new();
        let taken = match self.head.as_mut().expect("running subtasks have a chain") {
            Head::Source(source) => source.checkpoint(id, &mut self.net, &mut pending),
            Head::Input(_) => unreachable!("only sources are triggered"),
        };
        match taken {
            Ok(()) => self.ack_to.acknowledge(id, pending),
            Err(error) => self.fail(error, ctx),
        }
    }
}

impl Handler<NotifyCheckpoint> for SubtaskActor {
    type Result = ();
    fn handle(&mut self, notify: NotifyCheckpoint, ctx: &mut Context<Self>) {
        let Ok(head) = self.head.as_mut() else { return };
        if let Err(error) = head
            .control()
            .notify_checkpoint(notify.id, notify.completed)
        {
            self.fail(error, ctx);
            return;
        }
        if !notify.completed {
            // An aborted alignment releases its channels.
            let actions = self.barriers.on_abort(notify.id);
            for action in actions {
                if action == Action::UnblockAll {
                    self.gate.unblock_all();
                }
            }
            if self.phase == Phase::Running && !self.pump_scheduled {
                self.pump(ctx);
            }
        }
    }
}

impl Handler<Cancel> for SubtaskActor {
    type Result = ();
    fn handle(&mut self, _: Cancel, ctx: &mut Context<Self>) {
        self.phase = Phase::Over;
        ctx.stop();
    }
}
