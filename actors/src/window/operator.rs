//! The window operator: a keyed operator over [`Slicing`] or [`Sessions`] and a
//! [`WindowFunction`], firing on event-time (or processing-time) timers.
//!
//! Sliding and tumbling windows: a record updates the pane of its slice and, if the
//! pane is new, registers a timer for the first window containing it. When a window's
//! timer fires, its slices merge into the result; if any of them belongs to the next
//! window as well, that window's timer is registered then: one timer per record and
//! one per fired window, never one per window per record. Sessions: per key, the set
//! of open sessions is a value in keyed state; merging moves panes and moves timers.
//!
//! Lateness (Flink's rules): a window fires when the watermark reaches its
//! `max_timestamp` and stays for `allowed_lateness` after that; a record for a window
//! that fired but is still kept updates it and fires it again at once; a record
//! whose every window is past `max_timestamp + allowed_lateness` is late and goes to
//! the side output ([`WindowOutput::Late`]). The last slice of a window that no
//! later window shares is cleared when the window is done.

use super::function::{Window, WindowFunction};
use super::session::Sessions;
use super::slicing::Slicing;
use crate::operator::{
    Data, EventTime, FiredTimer, Key, KeyedContext, KeyedOperator, SubtaskInfo, TimeDomain,
};
use serde::{Deserialize, Serialize};
use std::marker::PhantomData;
use std::sync::Arc;
use weir_state::{KeyedBackend, ValueState, ValueStateDescriptor};

/// Which windows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowKind {
    /// Tumbling (slide = size) and sliding windows.
    Sliding(Slicing),
    /// Sessions that close after `gap` ms without records.
    Session { gap: i64 },
}

/// Reads a record's event time.
pub type TimestampFn<T> = Arc<dyn Fn(&T) -> anyhow::Result<EventTime> + Send + Sync>;

/// Which clock places records in windows and fires them.
pub enum WindowTime<T> {
    /// The record's event time; windows fire on the watermark. An `Err` (a record
    /// without a usable time) fails the subtask with its message.
    Event(TimestampFn<T>),
    /// The wall clock when the record arrives; windows fire on processing-time timers.
    Processing,
}

impl<T> Clone for WindowTime<T> {
    fn clone(&self) -> Self {
        match self {
            WindowTime::Event(f) => WindowTime::Event(f.clone()),
            WindowTime::Processing => WindowTime::Processing,
        }
    }
}

/// A window result, or a record that came too late for all of its windows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum WindowOutput<R, T> {
    Result(R),
    Late(T),
}

/// The namespace of the operator's timers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
enum Due {
    /// The window ending at `time + 1` fires.
    Fire,
    /// The window fired `allowed_lateness` ago is done: drop what only it needs.
    Cleanup,
}

pub struct WindowOperator<K, T, F> {
    kind: WindowKind,
    time: WindowTime<T>,
    allowed_lateness: i64,
    function: F,
    sessions: Option<ValueState<Sessions>>,
    /// Sliding windows: per key, the ends of the slices that have a pane, ascending,
    /// so a firing window reads only the panes that exist.
    slices: Option<ValueState<Vec<i64>>>,
    _key: PhantomData<fn() -> K>,
}

impl<K, T, F> WindowOperator<K, T, F> {
    pub fn new(kind: WindowKind, time: WindowTime<T>, allowed_lateness: i64, function: F) -> Self {
        // Processing time never goes back: nothing is late.
        let allowed_lateness = match time {
            WindowTime::Event(_) => allowed_lateness.max(0),
            WindowTime::Processing => 0,
        };
        WindowOperator {
            kind,
            time,
            allowed_lateness,
            function,
            sessions: None,
            slices: None,
            _key: PhantomData,
        }
    }

    /// When a window ending at `end` stops taking late records.
    fn cleanup_time(&self, end: i64) -> i64 {
        (end - 1).saturating_add(self.allowed_lateness)
    }
}

type Ctx<'c, 'a, K, R, T> = &'c mut KeyedContext<'a, K, WindowOutput<R, T>>;

impl<K, T, F> WindowOperator<K, T, F>
where
    K: Key,
    T: Data,
    F: WindowFunction<K, T>,
{
    fn domain(&self) -> TimeDomain {
        match self.time {
            WindowTime::Event(_) => TimeDomain::EventTime,
            WindowTime::Processing => TimeDomain::ProcessingTime,
        }
    }

    /// The time up to which windows have fired: the watermark, or (processing time)
    /// just before the clock: a record takes the clock's time, so the windows it
    /// lands in are still to fire and it is never late.
    fn now(&self, ctx: &KeyedContext<'_, K, WindowOutput<F::Out, T>>) -> EventTime {
        match self.time {
            WindowTime::Event(_) => ctx.current_watermark(),
            WindowTime::Processing => ctx.current_processing_time() - 1,
        }
    }

    fn set_timer(
        &self,
        ctx: Ctx<'_, '_, K, F::Out, T>,
        due: Due,
        time: i64,
        register: bool,
    ) -> anyhow::Result<()> {
        match (self.domain(), register) {
            (TimeDomain::EventTime, true) => ctx.register_event_time_timer_in(&due, time),
            (TimeDomain::EventTime, false) => ctx.delete_event_time_timer_in(&due, time),
            (TimeDomain::ProcessingTime, true) => ctx.register_processing_time_timer_in(&due, time),
            (TimeDomain::ProcessingTime, false) => ctx.delete_processing_time_timer_in(&due, time),
        }
    }

    /// Emits the window's pane (if it has records).
    fn emit(
        &mut self,
        window: Window,
        pane: Option<F::Pane>,
        ctx: Ctx<'_, '_, K, F::Out, T>,
    ) -> anyhow::Result<()> {
        let Some(pane) = pane else { return Ok(()) };
        let key = ctx.key().clone();
        self.function.emit(&key, window, pane, &mut |r| {
            ctx.emit(WindowOutput::Result(r))
        })
    }

    /// A window is done firing (on time or late): clean up now or after the lateness.
    fn fired(&mut self, end: i64, ctx: Ctx<'_, '_, K, F::Out, T>) -> anyhow::Result<()> {
        if self.allowed_lateness == 0 {
            self.clean_up(end, ctx)
        } else {
            self.set_timer(ctx, Due::Cleanup, self.cleanup_time(end), true)
        }
    }

    fn clean_up(&mut self, end: i64, ctx: Ctx<'_, '_, K, F::Out, T>) -> anyhow::Result<()> {
        match self.kind {
            WindowKind::Sliding(slicing) => {
                let index = self.slices.as_ref().expect("opened");
                let slices = index.value(ctx.state())?.unwrap_or_default();
                self.clean_up_slices(slicing, end, slices, ctx)
            }
            WindowKind::Session { .. } => {
                let handle = self.sessions.as_ref().expect("opened");
                let mut sessions = handle.value(ctx.state())?.unwrap_or_default();
                let Some(session) = sessions.ending_at(end) else {
                    return Ok(());
                };
                self.function.clear(ctx.state(), session.id)?;
                sessions.remove(session.id);
                if sessions.is_empty() {
                    handle.clear(ctx.state())?;
                } else {
                    handle.update(ctx.state(), sessions)?;
                }
                Ok(())
            }
        }
    }

    /// Drops the slices only the window ending at `end` (and earlier ones) had;
    /// `slices` is the key's slice index.
    fn clean_up_slices(
        &mut self,
        slicing: Slicing,
        end: i64,
        mut slices: Vec<i64>,
        ctx: Ctx<'_, '_, K, F::Out, T>,
    ) -> anyhow::Result<()> {
        let (first, last) = (end - slicing.size(), end - slicing.size() + slicing.slide());
        let before = slices.len();
        slices.retain(|&s| !(first < s && s <= last));
        if slices.len() == before {
            return Ok(());
        }
        for slice in slicing.expiring_slices(end) {
            self.function.clear(ctx.state(), slice)?;
        }
        let index = self.slices.as_ref().expect("opened");
        if slices.is_empty() {
            index.clear(ctx.state())?;
        } else {
            index.update(ctx.state(), slices)?;
        }
        Ok(())
    }

    /// The merged slices of a sliding window, whether any of them continues into
    /// the next window, and the key's slice index.
    fn merge_slices(
        &mut self,
        slicing: Slicing,
        end: i64,
        state: &mut KeyedBackend<K>,
    ) -> anyhow::Result<(Option<F::Pane>, bool, Vec<i64>)> {
        let (mut merged, mut continues) = (None::<F::Pane>, false);
        let index = self.slices.as_ref().expect("opened");
        let slices = index.value(state)?.unwrap_or_default();
        let start = end - slicing.size();
        for &slice in slices.iter().filter(|&&s| start < s && s <= end) {
            let Some(pane) = self.function.get(state, slice)? else {
                continue;
            };
            continues |= slicing.carried_to_next_window(slice, end);
            match merged.as_mut() {
                Some(into) => self.function.merge(into, pane)?,
                None => merged = Some(pane),
            }
        }
        Ok((merged, continues, slices))
    }

    fn process_sliding(
        &mut self,
        slicing: Slicing,
        (t, now): (EventTime, EventTime),
        record: T,
        ctx: Ctx<'_, '_, K, F::Out, T>,
    ) -> anyhow::Result<()> {
        let slice = slicing.slice_end(t);
        if self.cleanup_time(slicing.last_window_end(slice)) <= now {
            ctx.emit(WindowOutput::Late(record));
            return Ok(());
        }
        let created = self.function.add(ctx.state(), slice, record)?;
        if created {
            let index = self.slices.as_ref().expect("opened");
            let mut slices = index.value(ctx.state())?.unwrap_or_default();
            if let Err(at) = slices.binary_search(&slice) {
                slices.insert(at, slice);
                index.update(ctx.state(), slices)?;
            }
        }
        let first = slicing.first_window_end(slice);
        if first - 1 > now {
            // On time. An existing pane registered this timer already.
            return if created {
                self.set_timer(ctx, Due::Fire, first - 1, true)
            } else {
                Ok(())
            };
        }
        // Late but allowed: windows that fired and are kept fire again; the first
        // window still to come gets its timer (the chain continues from there).
        for end in slicing.window_ends(slice) {
            if end - 1 > now {
                return self.set_timer(ctx, Due::Fire, end - 1, true);
            }
            if self.cleanup_time(end) > now {
                let (pane, _, _) = self.merge_slices(slicing, end, ctx.state())?;
                let window = Window {
                    start: end - slicing.size(),
                    end,
                };
                self.emit(window, pane, ctx)?;
                self.fired(end, ctx)?;
            }
        }
        Ok(())
    }

    fn fire_sliding(
        &mut self,
        slicing: Slicing,
        end: i64,
        ctx: Ctx<'_, '_, K, F::Out, T>,
    ) -> anyhow::Result<()> {
        let (pane, continues, slices) = self.merge_slices(slicing, end, ctx.state())?;
        let window = Window {
            start: end - slicing.size(),
            end,
        };
        self.emit(window, pane, ctx)?;
        if continues {
            self.set_timer(ctx, Due::Fire, end + slicing.slide() - 1, true)?;
        }
        if self.allowed_lateness == 0 {
            // The index at hand saves reading it again.
            self.clean_up_slices(slicing, end, slices, ctx)
        } else {
            self.fired(end, ctx)
        }
    }

    fn process_session(
        &mut self,
        gap: i64,
        (t, now): (EventTime, EventTime),
        record: T,
        ctx: Ctx<'_, '_, K, F::Out, T>,
    ) -> anyhow::Result<()> {
        let handle = self.sessions.as_ref().expect("opened");
        let mut sessions = handle.value(ctx.state())?.unwrap_or_default();
        let merge = sessions.plan(t, gap);
        let merged = merge.merged;
        if self.cleanup_time(merged.end) <= now {
            ctx.emit(WindowOutput::Late(record));
            return Ok(());
        }
        let mut moved = None::<F::Pane>;
        for from in merge.moved() {
            if let Some(pane) = self.function.get(ctx.state(), from.id)? {
                match moved.as_mut() {
                    Some(into) => self.function.merge(into, pane)?,
                    None => moved = Some(pane),
                }
            }
            self.function.clear(ctx.state(), from.id)?;
        }
        if let Some(moved) = moved {
            let pane = match self.function.get(ctx.state(), merged.id)? {
                Some(mut pane) => {
                    self.function.merge(&mut pane, moved)?;
                    pane
                }
                None => moved,
            };
            self.function.put(ctx.state(), merged.id, pane)?;
        }
        for old in &merge.replaced {
            if old.end != merged.end {
                self.set_timer(ctx, Due::Fire, old.end - 1, false)?;
                if self.allowed_lateness > 0 {
                    self.set_timer(ctx, Due::Cleanup, self.cleanup_time(old.end), false)?;
                }
            }
        }
        self.function.add(ctx.state(), merged.id, record)?;
        sessions.apply(&merge);
        let handle = self.sessions.as_ref().expect("opened");
        handle.update(ctx.state(), sessions)?;
        if merged.end - 1 > now {
            self.set_timer(ctx, Due::Fire, merged.end - 1, true)
        } else {
            // The session had fired and is kept: fire it again with this record.
            let pane = self.function.get(ctx.state(), merged.id)?;
            let window = Window {
                start: merged.start,
                end: merged.end,
            };
            self.emit(window, pane, ctx)?;
            self.fired(merged.end, ctx)
        }
    }

    fn fire_session(&mut self, end: i64, ctx: Ctx<'_, '_, K, F::Out, T>) -> anyhow::Result<()> {
        let handle = self.sessions.as_ref().expect("opened");
        let sessions = handle.value(ctx.state())?.unwrap_or_default();
        let Some(session) = sessions.ending_at(end) else {
            return Ok(());
        };
        let pane = self.function.get(ctx.state(), session.id)?;
        let window = Window {
            start: session.start,
            end,
        };
        self.emit(window, pane, ctx)?;
        self.fired(end, ctx)
    }
}

impl<K, T, F> KeyedOperator for WindowOperator<K, T, F>
where
    K: Key,
    T: Data,
    F: WindowFunction<K, T>,
{
    type Key = K;
    type In = T;
    type Out = WindowOutput<F::Out, T>;

    fn open(&mut self, _info: &SubtaskInfo, state: &mut KeyedBackend<K>) -> anyhow::Result<()> {
        self.function.register(state)?;
        match self.kind {
            WindowKind::Session { .. } => {
                self.sessions = Some(ValueStateDescriptor::new("window-sessions").register(state)?)
            }
            WindowKind::Sliding(_) => {
                self.slices = Some(ValueStateDescriptor::new("window-slices").register(state)?)
            }
        }
        Ok(())
    }

    fn process(&mut self, record: T, ctx: Ctx<'_, '_, K, F::Out, T>) -> anyhow::Result<()> {
        let now = self.now(ctx);
        let t = match &self.time {
            WindowTime::Event(timestamp) => timestamp(&record)?,
            WindowTime::Processing => now + 1,
        };
        match self.kind {
            WindowKind::Sliding(slicing) => self.process_sliding(slicing, (t, now), record, ctx),
            WindowKind::Session { gap } => self.process_session(gap, (t, now), record, ctx),
        }
    }

    fn on_timer(
        &mut self,
        timer: &FiredTimer,
        ctx: Ctx<'_, '_, K, F::Out, T>,
    ) -> anyhow::Result<()> {
        let (due, end) = match timer.namespace::<Due>()? {
            Due::Fire => (Due::Fire, timer.time + 1),
            Due::Cleanup => (Due::Cleanup, timer.time + 1 - self.allowed_lateness),
        };
        match (due, self.kind) {
            (Due::Cleanup, _) => self.clean_up(end, ctx),
            (Due::Fire, WindowKind::Sliding(slicing)) => self.fire_sliding(slicing, end, ctx),
            (Due::Fire, WindowKind::Session { .. }) => self.fire_session(end, ctx),
        }
    }
}
