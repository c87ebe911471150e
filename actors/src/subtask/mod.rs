//! The subtask actor: one parallel instance of a chain of operators.
//!
//! It is a thin shell: it queues what arrives on its input channels, and in bounded
//! rounds (`PUMP_BATCHES` batches, then it yields to its mailbox so control messages
//! never wait long) feeds the chain, returns a credit per processed batch, and stops
//! processing while any output channel waits for credit. A partly filled output batch
//! leaves after `linger`. A chain piece with work under way outside the input (an
//! async request) wakes the subtask with a message when that work completes; the
//! subtask then runs the chain's `on_wake` (while its outputs have credit), and takes
//! no input while the chain says it is full. When every input has ended (or the
//! source is exhausted) it finishes the chain, waits until nothing is under way and
//! its outputs drained, reports to the job master and stops.

mod checkpointing;

use crate::channel_state::ChannelIo;
use crate::checkpoint::barrier::{Action, BarrierHandler, CheckpointMode};
use crate::checkpoint::coordinator::{Barrier, CheckpointId};
use crate::config::JobConfig;
use crate::error::StageError;
use crate::flow::ChannelEvent;
use crate::gate::InputGate;
use crate::master::{
    JobMaster, SourceExhausted, SubtaskDone, SubtaskFailed, SubtaskFinished, SubtaskGone,
    SubtaskOpened,
};
use crate::network::{AnyBatch, Credit, Deliver, InputSource, Network, OutputTarget};
use crate::operator::{processing_time_now, EventTime, SourcePoll};
use crate::stage::{ChainControl, InFlight, InputHead, SourceHead, Wake};
use crate::time::watermarks::{WatermarkOutput, WatermarkTracker};
use actix::{Actor, ActorContext, ActorFutureExt, Addr, AsyncContext, Context, Handler, Message};
use checkpointing::{AckTo, Checkpointing};
use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// Batches processed (or polled) before the actor yields to its mailbox and to the
/// other actors of its worker thread...
const PUMP_BATCHES: usize = 8;
/// ...or sooner, once a round has taken this long (slow user code must not keep a
/// co-located source from injecting its barrier, or a barrier waiting in the mailbox).
const PUMP_TIME: Duration = Duration::from_millis(2);

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
    /// Finished and drained in a checkpointed job: waiting for the final checkpoint
    /// and its completion before stopping.
    Finished,
    /// Reported to the master (done, failed or cancelled).
    Over,
}

pub(crate) struct SubtaskActor {
    /// Barriers, acknowledgements and in-flight records kept for checkpoints.
    ckpt: Checkpointing,
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
    /// When the alignment timeout is armed for (ms since `started`).
    alignment_timer_at: Option<u64>,
    /// When a barrier waiting for credit is armed to overtake its output queue.
    send_timer_at: Option<Instant>,
    /// The chain asked for a wake-up (see [`Wake`]) and its `on_wake` has not run
    /// since; while set, no further wake-up message is sent.
    woken: Rc<Cell<bool>>,
    batch_size: usize,
    channel_capacity: usize,
    linger: Duration,
    /// A checkpointed job: stay for the final checkpoint after finishing.
    checkpointing: bool,
    /// Unaligned barriers that arrived before `Start`, handled right after it.
    early_barriers: Vec<(usize, Barrier)>,
    /// A source that took a stop-savepoint: it polls no more.
    suspended: bool,
    /// A source whose input is exhausted, in a checkpointed job: it polls no more
    /// and ends its input when the master says every source is exhausted.
    exhausted: bool,
    /// Declared last, so it drops last: the master learns the subtask is gone only
    /// after its chain (and the state it holds) has been dropped.
    _gone: GoneGuard,
}

/// Tells the master when the subtask actor is dropped.
struct GoneGuard(Addr<JobMaster>);

impl Drop for GoneGuard {
    fn drop(&mut self) {
        self.0.do_send(SubtaskGone);
    }
}

impl SubtaskActor {
    pub fn new(
        name: String,
        index: u32,
        number: usize,
        attempt: u32,
        built: Result<(Head, ChannelIo), StageError>,
        config: &JobConfig,
        master: Addr<JobMaster>,
    ) -> Self {
        let (head, channels) = match built {
            Ok((head, channels)) => (Ok(head), Some(channels)),
            Err(error) => (Err(error), None),
        };
        let mode = config
            .checkpoint
            .as_ref()
            .map_or(CheckpointMode::Aligned, |c| c.mode);
        let ack_to = AckTo {
            master: master.clone(),
            subtask: number,
            index,
            attempt,
            name,
        };
        SubtaskActor {
            ckpt: Checkpointing::new(ack_to, BarrierHandler::new(mode, 0), channels),
            mode,
            started: Instant::now(),
            head,
            net: Network::new(Vec::new(), 1),
            inputs: Vec::new(),
            gate: InputGate::new(0),
            watermarks: WatermarkTracker::new(0),
            ended_inputs: 0,
            master: master.clone(),
            phase: Phase::Created,
            pump_scheduled: false,
            linger_armed: false,
            processing_timer_at: None,
            alignment_timer_at: None,
            send_timer_at: None,
            woken: Rc::new(Cell::new(false)),
            batch_size: config.batch_size,
            channel_capacity: config.channel_capacity,
            linger: config.linger,
            checkpointing: config.checkpoint.is_some(),
            early_barriers: Vec::new(),
            suspended: false,
            exhausted: false,
            _gone: GoneGuard(master.clone()),
        }
    }

    /// Pumps again after yielding: the mailbox is read first (an unaligned barrier
    /// there waits for at most one round), and the worker thread runs its other
    /// actors' ready work.
    fn schedule_pump(&mut self, ctx: &mut Context<Self>) {
        if !self.pump_scheduled {
            self.pump_scheduled = true;
            ctx.spawn(
                actix::fut::wrap_future::<_, Self>(tokio::task::yield_now()).map(
                    |(), actor, ctx| {
                        actor.pump_scheduled = false;
                        actor.pump(ctx);
                    },
                ),
            );
        }
    }

    /// Process input while the outputs accept it, for at most `PUMP_BATCHES` rounds.
    fn pump(&mut self, ctx: &mut Context<Self>) {
        let mut rounds = 0;
        let started = Instant::now();
        while self.phase == Phase::Running && !self.net.is_blocked() {
            if rounds == PUMP_BATCHES || (rounds > 0 && started.elapsed() >= PUMP_TIME) {
                self.schedule_pump(ctx);
                break;
            }
            rounds += 1;
            let progressed = match self.step(ctx, started + PUMP_TIME) {
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
        self.arm_alignment_timeout(ctx);
        self.arm_barrier_send_timeout(ctx);
    }

    /// Schedules the overtaking of a barrier that waits for credit behind queued
    /// output (aligned with timeout), unless an earlier one is scheduled.
    fn arm_barrier_send_timeout(&mut self, ctx: &mut Context<Self>) {
        let Some(deadline) = self.ckpt.send_deadline() else {
            return;
        };
        if self.phase == Phase::Over || self.send_timer_at.is_some_and(|at| at <= deadline) {
            return;
        }
        self.send_timer_at = Some(deadline);
        ctx.run_later(
            deadline.saturating_duration_since(Instant::now()),
            move |actor, ctx| {
                if actor.send_timer_at != Some(deadline) || actor.phase == Phase::Over {
                    return;
                }
                actor.send_timer_at = None;
                match actor.ckpt.overtake_due(&mut actor.net, Instant::now()) {
                    Ok(()) => actor.arm_barrier_send_timeout(ctx),
                    Err(error) => actor.fail(error, ctx),
                }
            },
        );
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Schedules the switch to unaligned of an alignment that can time out.
    fn arm_alignment_timeout(&mut self, ctx: &mut Context<Self>) {
        let Some(deadline) = self.ckpt.barriers.alignment_deadline() else {
            return;
        };
        if self.alignment_timer_at == Some(deadline) || self.phase != Phase::Running {
            return;
        }
        self.alignment_timer_at = Some(deadline);
        let delay = Duration::from_millis(deadline.saturating_sub(self.now_ms()));
        ctx.run_later(delay, move |actor, ctx| {
            if actor.alignment_timer_at != Some(deadline) {
                return;
            }
            actor.alignment_timer_at = None;
            if actor.phase != Phase::Running {
                return;
            }
            let actions = actor.ckpt.barriers.on_tick(actor.now_ms());
            if !actions.is_empty() {
                tracing::debug!(subtask = %actor.ckpt.ack_to.name, index = actor.ckpt.ack_to.index, checkpoint = actor.ckpt.latest.id, "alignment timed out: the checkpoint continues unaligned");
            }
            match actor.apply_barrier_actions(actions) {
                Ok(()) => actor.pump(ctx),
                Err(error) => actor.fail(error, ctx),
            }
        });
    }

    /// Carries out what the barrier handler decided (input subtasks only).
    fn apply_barrier_actions(&mut self, actions: Vec<Action>) -> Result<(), StageError> {
        let Ok(Head::Input(input)) = self.head.as_mut() else {
            return Ok(());
        };
        self.ckpt.apply(
            actions,
            &mut self.gate,
            &mut self.net,
            |barrier, net, pending| input.checkpoint(barrier, net, pending),
        )
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
        // A timer for `t` fires once the clock has passed `t`: a record arriving at
        // clock `t` still lands in windows that end after `t`, never in one whose
        // timer already fired (which would then fire twice).
        let delay =
            Duration::from_millis((due + 1).saturating_sub(processing_time_now()).max(0) as u64);
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
                .on_processing_time(processing_time_now() - 1, &mut actor.net)
            {
                Ok(()) => actor.pump(ctx),
                Err(error) => actor.fail(error, ctx),
            }
        });
    }

    /// One unit of work, cut short at `deadline` (slow records); false when there is
    /// nothing to do now.
    fn step(&mut self, ctx: &mut Context<Self>, deadline: Instant) -> Result<bool, StageError> {
        let batch_size = self.batch_size;
        let (head, net) = (
            self.head.as_mut().expect("running subtasks have a chain"),
            &mut self.net,
        );
        if head.control().in_flight() == InFlight::Full {
            // A wake-up pumps again once the chain has room.
            return Ok(false);
        }
        match head {
            Head::Source(_) if self.suspended || self.exhausted => Ok(false),
            Head::Source(source) => match source.poll(batch_size, net)? {
                SourcePoll::Ready => Ok(true),
                SourcePoll::Pending(delay) => {
                    ctx.run_later(delay, |actor, ctx| actor.pump(ctx));
                    Ok(false)
                }
                SourcePoll::Finished if self.checkpointing => {
                    // Hold the end of input back until every source is exhausted, so
                    // that the job can still checkpoint (barriers need every source).
                    source.end_event_time(net)?;
                    self.exhausted = true;
                    self.master.do_send(SourceExhausted {
                        attempt: self.ckpt.ack_to.attempt,
                    });
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
                    match input.push_batch_until(batch, net, deadline)? {
                        // Its credit goes back once the rest has been processed too.
                        Some(rest) => self.gate.push_front(channel, ChannelEvent::Batch(rest)),
                        None => {
                            let source = &self.inputs[channel];
                            source.sender.do_send(Credit {
                                channel: source.output_channel,
                                batches: 1,
                            });
                        }
                    }
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
                Some((channel, ChannelEvent::Barrier(barrier))) => {
                    let now_ms = self.started.elapsed().as_millis() as u64;
                    self.ckpt.saw(barrier);
                    let actions = self.ckpt.barriers.on_barrier(channel, &barrier, now_ms);
                    self.ckpt
                        .apply(actions, &mut self.gate, net, |barrier, net, pending| {
                            input.checkpoint(barrier, net, pending)
                        })?;
                    Ok(true)
                }
                Some((channel, ChannelEvent::EndOfInput)) => {
                    forward_watermarks(input, self.watermarks.on_end_of_input(channel), net)?;
                    let actions = self.ckpt.barriers.on_end_of_input(channel);
                    self.ckpt
                        .apply(actions, &mut self.gate, net, |barrier, net, pending| {
                            input.checkpoint(barrier, net, pending)
                        })?;
                    self.ended_inputs += 1;
                    if self.ended_inputs == self.inputs.len() {
                        self.finish_chain(ctx)?;
                    }
                    Ok(true)
                }
            },
        }
    }

    /// An unaligned barrier arrived on `channel` (the subtask runs).
    fn on_unaligned_barrier(&mut self, channel: usize, barrier: Barrier) -> Result<(), StageError> {
        self.ckpt.saw(barrier);
        let actions = self
            .ckpt
            .barriers
            .on_barrier(channel, &barrier, self.now_ms());
        tracing::trace!(subtask = %self.ckpt.ack_to.name, channel, id = barrier.id, ?actions, "unaligned barrier");
        self.apply_barrier_actions(actions)
    }

    /// An aligned barrier arrived on `channel`, behind the data queued there (aligned
    /// with timeout: its alignment timeout starts now).
    fn on_announced_barrier(&mut self, channel: usize, barrier: Barrier) -> Result<(), StageError> {
        let actions = self
            .ckpt
            .barriers
            .on_announced(channel, &barrier, self.now_ms());
        // A newer checkpoint announced during another's alignment starts only when its
        // barrier is processed: until then the snapshot is of the one in progress.
        if self.ckpt.barriers.in_progress() == Some(barrier.id) {
            self.ckpt.saw(barrier);
        }
        self.apply_barrier_actions(actions)
    }

    /// Barriers that were queued before the subtask started are announced now.
    fn announce_queued_barriers(&mut self) -> Result<(), StageError> {
        if !self.ckpt.barriers.wants_announcements() {
            return Ok(());
        }
        let queued: Vec<(usize, Barrier)> = (0..self.gate.channels())
            .flat_map(|channel| {
                self.gate
                    .queued(channel)
                    .filter_map(move |event| match event {
                        ChannelEvent::Barrier(barrier) => Some((channel, *barrier)),
                        _ => None,
                    })
            })
            .collect();
        for (channel, barrier) in queued {
            self.on_announced_barrier(channel, barrier)?;
        }
        Ok(())
    }

    /// A subtask restored from an unaligned checkpoint first sends the output its
    /// barrier had overtaken, then processes the input that preceded its barriers.
    fn replay_in_flight(&mut self) -> Result<(), StageError> {
        let Some(channels) = self.ckpt.channels.as_mut() else {
            return Ok(());
        };
        let Some(state) = channels.restored.take() else {
            return Ok(());
        };
        let failure = |cause: String| StageError {
            operator: self.ckpt.ack_to.name.clone(),
            subtask: self.ckpt.ack_to.index,
            cause,
        };
        let output_ok = state.outputs.is_empty() || state.outputs.len() == self.net.channels();
        let input_ok = state.inputs.is_empty() || state.inputs.len() == self.gate.channels();
        if !output_ok || !input_ok {
            return Err(failure(
                "the checkpoint's in-flight records were taken with other channels (another parallelism upstream or downstream): restore it at the parallelism it was taken with".into(),
            ));
        }
        tracing::debug!(subtask = %self.ckpt.ack_to.name, index = self.ckpt.ack_to.index, bytes = state.bytes(), "replaying in-flight records");
        for (channel, batches) in state.outputs.into_iter().enumerate() {
            let codec = channels
                .output
                .as_ref()
                .expect("output channels have a codec");
            for bytes in batches {
                let batch = codec.decode(&bytes).map_err(failure)?;
                self.net.send(channel, ChannelEvent::Batch(batch));
            }
        }
        let head = self.head.as_mut().expect("running subtasks have a chain");
        for batches in state.inputs {
            let (Head::Input(input), Some(codec)) = (&mut *head, channels.input.as_ref()) else {
                break;
            };
            for bytes in batches {
                let batch = codec.decode(&bytes).map_err(failure)?;
                input.push_batch(batch, &mut self.net)?;
            }
        }
        Ok(())
    }

    fn finish_chain(&mut self, ctx: &mut Context<Self>) -> Result<(), StageError> {
        let head = self.head.as_mut().expect("running subtasks have a chain");
        head.control().finish(&mut self.net)?;
        self.phase = Phase::Draining;
        self.finish_if_drained(ctx);
        Ok(())
    }

    /// The chain's wake-up: carries on with its work under way, once the outputs
    /// have credit (a `Credit` calls again), then goes on with the input (or the end).
    fn on_woken(&mut self, ctx: &mut Context<Self>) {
        if !self.woken.get()
            || self.net.is_blocked()
            || !matches!(self.phase, Phase::Running | Phase::Draining)
        {
            return;
        }
        self.woken.set(false);
        let head = self.head.as_mut().expect("running subtasks have a chain");
        if let Err(error) = head.control().on_wake(&mut self.net) {
            self.fail(error, ctx);
            return;
        }
        match self.phase {
            Phase::Draining => {
                self.arm_linger(ctx);
                self.finish_if_drained(ctx);
            }
            _ if !self.pump_scheduled => self.pump(ctx),
            _ => self.arm_linger(ctx),
        }
    }

    fn finish_if_drained(&mut self, ctx: &mut Context<Self>) {
        let under_way = self
            .head
            .as_mut()
            .is_ok_and(|head| head.control().in_flight() != InFlight::Nothing);
        if self.phase == Phase::Draining && !self.net.is_blocked() && !under_way {
            tracing::debug!(subtask = %self.ckpt.ack_to.name, index = self.ckpt.ack_to.index, "finished");
            self.master.do_send(SubtaskFinished {
                attempt: self.ckpt.ack_to.attempt,
            });
            if self.checkpointing {
                self.phase = Phase::Finished;
            } else {
                self.phase = Phase::Over;
                ctx.stop();
            }
        }
    }

    fn fail(&mut self, error: StageError, ctx: &mut Context<Self>) {
        if self.phase == Phase::Over {
            return;
        }
        self.phase = Phase::Over;
        self.master.do_send(SubtaskFailed {
            attempt: self.ckpt.ack_to.attempt,
            error,
        });
        ctx.stop();
    }

    fn arm_linger(&mut self, ctx: &mut Context<Self>) {
        let live = matches!(self.phase, Phase::Running | Phase::Draining);
        if self.net.has_partial && !self.linger_armed && live {
            self.linger_armed = true;
            ctx.run_later(self.linger, |actor, _| {
                actor.linger_armed = false;
                actor.net.has_partial = false;
                if matches!(actor.phase, Phase::Running | Phase::Draining) {
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

impl Actor for SubtaskActor {
    type Context = Context<Self>;
}

impl Drop for SubtaskActor {
    fn drop(&mut self) {
        // An actor that vanishes without a report (its thread died) fails the job
        // instead of hanging it.
        if self.phase != Phase::Over {
            self.master.do_send(SubtaskFailed {
                attempt: self.ckpt.ack_to.attempt,
                error: StageError {
                    operator: self.ckpt.ack_to.name.clone(),
                    subtask: self.ckpt.ack_to.index,
                    cause: "the subtask was lost (its worker thread stopped)".into(),
                },
            });
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

impl Handler<Wire> for SubtaskActor {
    type Result = ();
    fn handle(&mut self, wire: Wire, _ctx: &mut Context<Self>) {
        self.net = Network::new(wire.outputs, self.channel_capacity);
        self.gate = InputGate::new(wire.inputs.len());
        self.ckpt.barriers = BarrierHandler::new(self.mode, wire.inputs.len());
        self.watermarks = WatermarkTracker::new(wire.inputs.len());
        self.inputs = wire.inputs;
    }
}

impl Handler<Start> for SubtaskActor {
    type Result = ();
    fn handle(&mut self, _: Start, ctx: &mut Context<Self>) {
        let (woken, subtask) = (self.woken.clone(), ctx.address());
        let wake = Wake::new(move || {
            if !woken.replace(true) {
                subtask.do_send(WakeUp);
            }
        });
        let opened = match &mut self.head {
            Err(error) => Err(error.clone()),
            Ok(head) => head.control().open(&wake),
        };
        if let Err(error) = opened {
            self.fail(error, ctx);
            return;
        }
        self.phase = Phase::Running;
        if let Err(error) = self.replay_in_flight() {
            self.fail(error, ctx);
            return;
        }
        for (channel, barrier) in std::mem::take(&mut self.early_barriers) {
            if let Err(error) = self.on_unaligned_barrier(channel, barrier) {
                self.fail(error, ctx);
                return;
            }
        }
        if let Err(error) = self.announce_queued_barriers() {
            self.fail(error, ctx);
            return;
        }
        self.master.do_send(SubtaskOpened {
            attempt: self.ckpt.ack_to.attempt,
        });
        // Upstream subtasks may have started first: input can already be queued.
        self.schedule_pump(ctx);
    }
}

impl Handler<Deliver> for SubtaskActor {
    type Result = ();
    fn handle(&mut self, deliver: Deliver, ctx: &mut Context<Self>) {
        let channel = deliver.channel;
        let acted = match &deliver.event {
            // Unaligned barriers act on arrival, ahead of the queued input.
            ChannelEvent::Barrier(barrier) if barrier.unaligned => {
                match self.phase {
                    Phase::Created => self.early_barriers.push((channel, *barrier)),
                    Phase::Running => {
                        if let Err(error) = self.on_unaligned_barrier(channel, *barrier) {
                            self.fail(error, ctx);
                            return;
                        }
                    }
                    _ => {}
                }
                if self.phase == Phase::Running && !self.pump_scheduled {
                    self.pump(ctx);
                }
                return;
            }
            ChannelEvent::Barrier(barrier)
                if self.phase == Phase::Running && self.ckpt.barriers.wants_announcements() =>
            {
                self.on_announced_barrier(channel, *barrier)
            }
            ChannelEvent::Batch(batch) => self.ckpt.on_batch(channel, batch),
            _ => Ok(()),
        };
        if let Err(error) = acted {
            self.fail(error, ctx);
            return;
        }
        self.gate.push(channel, deliver.event);
        if matches!(
            self.mode,
            CheckpointMode::Unaligned | CheckpointMode::AlignedWithTimeout { .. }
        ) {
            // Processed in a pump round of its own, so that the mailbox (and any
            // unaligned barrier in it) is read between rounds.
            if self.phase == Phase::Running {
                self.schedule_pump(ctx);
            }
        } else if !self.pump_scheduled {
            self.pump(ctx);
        }
    }
}

/// The chain asked for a wake-up (see [`Wake`]).
#[derive(Message)]
#[rtype(result = "()")]
struct WakeUp;

impl Handler<WakeUp> for SubtaskActor {
    type Result = ();
    fn handle(&mut self, _: WakeUp, ctx: &mut Context<Self>) {
        self.on_woken(ctx);
    }
}

impl Handler<Credit> for SubtaskActor {
    type Result = ();
    fn handle(&mut self, credit: Credit, ctx: &mut Context<Self>) {
        self.net.grant(credit.channel, credit.batches);
        self.ckpt.on_output_progress(&self.net);
        if self.woken.get() {
            // The chain's wake-up waited for this credit; it goes on from there.
            self.on_woken(ctx);
            return;
        }
        match self.phase {
            Phase::Draining => self.finish_if_drained(ctx),
            Phase::Running if !self.pump_scheduled => self.pump(ctx),
            _ => {}
        }
    }
}

/// Sources: inject `barrier` (after snapshotting the chain). With `then_suspend`
/// (stop with a savepoint) the source emits nothing after it.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct TriggerCheckpoint {
    pub barrier: Barrier,
    pub then_suspend: bool,
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
        let id = trigger.barrier.id;
        if self.phase != Phase::Running {
            self.ckpt.ack_to.decline_finished(id);
            return;
        }
        let Head::Source(source) = self.head.as_mut().expect("running subtasks have a chain")
        else {
            unreachable!("only sources are triggered")
        };
        let taken = self.ckpt.snapshot_without_inputs(
            trigger.barrier,
            &mut self.net,
            |barrier, net, pending| source.checkpoint(barrier, net, pending),
        );
        match taken {
            Ok(()) => {
                self.suspended |= trigger.then_suspend;
                self.arm_barrier_send_timeout(ctx);
            }
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
            self.ckpt.on_aborted(notify.id);
            // An aborted alignment releases its channels; what an unaligned one kept
            // is dropped.
            let actions = self.ckpt.barriers.on_abort(notify.id);
            if let Err(error) = self.apply_barrier_actions(actions) {
                self.fail(error, ctx);
                return;
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

/// The final checkpoint of a bounded job: every subtask has finished, so each takes
/// its snapshot directly (no barrier has anything to align).
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct FinalCheckpoint {
    pub id: CheckpointId,
}

/// The last checkpoint of the job (the final one of a bounded job, or the savepoint
/// of a stop) completed: act on it (sinks commit), report done, stop.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct CompleteAndStop {
    pub id: CheckpointId,
}

impl Handler<FinalCheckpoint> for SubtaskActor {
    type Result = ();
    fn handle(&mut self, final_checkpoint: FinalCheckpoint, ctx: &mut Context<Self>) {
        if self.phase != Phase::Finished {
            return;
        }
        let id = final_checkpoint.id;
        let head = self.head.as_mut().expect("finished subtasks have a chain");
        let taken = self.ckpt.snapshot_without_inputs(
            Barrier::checkpoint(id),
            &mut self.net,
            |barrier, net, pending| head.control().checkpoint(barrier, net, pending),
        );
        if let Err(error) = taken {
            self.fail(error, ctx);
        }
    }
}

/// Every source is exhausted: an exhausted source ends its input now.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct EndInput;

impl Handler<EndInput> for SubtaskActor {
    type Result = ();
    fn handle(&mut self, _: EndInput, ctx: &mut Context<Self>) {
        if self.exhausted && self.phase == Phase::Running {
            if let Err(error) = self.finish_chain(ctx) {
                self.fail(error, ctx);
            }
        }
    }
}

/// A stop-savepoint failed: the source emits again.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct ResumeSource;

impl Handler<ResumeSource> for SubtaskActor {
    type Result = ();
    fn handle(&mut self, _: ResumeSource, ctx: &mut Context<Self>) {
        if self.suspended {
            self.suspended = false;
            if self.phase == Phase::Running && !self.pump_scheduled {
                self.pump(ctx);
            }
        }
    }
}

impl Handler<CompleteAndStop> for SubtaskActor {
    type Result = ();
    fn handle(&mut self, complete: CompleteAndStop, ctx: &mut Context<Self>) {
        if self.phase == Phase::Over {
            return;
        }
        let head = self.head.as_mut().expect("finished subtasks have a chain");
        if let Err(error) = head.control().notify_checkpoint(complete.id, true) {
            self.fail(error, ctx);
            return;
        }
        self.phase = Phase::Over;
        self.master.do_send(SubtaskDone {
            attempt: self.ckpt.ack_to.attempt,
        });
        ctx.stop();
    }
}
