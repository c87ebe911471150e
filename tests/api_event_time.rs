//! Event time end to end: watermarks from sources, the minimum over inputs, idleness,
//! and the end of input as the end of event time.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use weir::{
    Context, EventTime, JobConfig, KeyedContext, KeyedOperator, Sink, Source, SourcePoll,
    StreamJob, WatermarkStrategy, MAX_WATERMARK,
};

/// Emits `(event_time, origin)` for i in 0..count: event time `offset + i + jitter(i)`
/// with jitter below `disorder`, `per_poll` records at a time with a pause between.
struct Timed {
    next: i64,
    count: i64,
    offset: i64,
    disorder: i64,
    per_poll: i64,
    done: Option<Arc<AtomicBool>>,
    /// At most this many records per millisecond since the first poll (a subtask
    /// may be polled again before its `Pending` delay, when credits come back).
    per_ms: Option<(i64, Option<Instant>)>,
}

impl Source for Timed {
    type Out = (EventTime, i64);
    fn poll(
        &mut self,
        ctx: &mut Context<'_, (EventTime, i64)>,
        _max: usize,
    ) -> anyhow::Result<SourcePoll> {
        let mut end = (self.next + self.per_poll).min(self.count);
        if let Some((per_ms, started)) = &mut self.per_ms {
            let started = *started.get_or_insert_with(Instant::now);
            let due = (started.elapsed().as_millis() as i64 + 1) * *per_ms;
            end = end.min(due).max(self.next);
        }
        for i in self.next..end {
            let jitter = if self.disorder > 0 {
                (i * 7_919) % self.disorder
            } else {
                0
            };
            ctx.emit((self.offset + i + jitter, self.offset));
        }
        self.next = end;
        if self.next == self.count {
            if let Some(done) = &self.done {
                done.store(true, Ordering::SeqCst);
            }
            return Ok(SourcePoll::Finished);
        }
        Ok(SourcePoll::Pending(Duration::from_micros(300)))
    }
}

/// One record at event time 0, then nothing until `until` is set.
struct QuietAfterOne {
    sent: bool,
    until: Arc<AtomicBool>,
    /// Set just before it finishes.
    ended: Arc<AtomicBool>,
}

impl Source for QuietAfterOne {
    type Out = (EventTime, i64);
    fn poll(
        &mut self,
        ctx: &mut Context<'_, (EventTime, i64)>,
        _max: usize,
    ) -> anyhow::Result<SourcePoll> {
        if !self.sent {
            self.sent = true;
            ctx.emit((0, -1));
        }
        if self.until.load(Ordering::SeqCst) {
            self.ended.store(true, Ordering::SeqCst);
            return Ok(SourcePoll::Finished);
        }
        Ok(SourcePoll::Pending(Duration::from_millis(2)))
    }
}

#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
struct Observed {
    watermarks: Vec<EventTime>,
    late: Vec<EventTime>,
    records: u64,
}

/// Records the watermarks it sees (until `until` is set, if given) and every record at
/// or before the watermark.
#[derive(Default)]
struct Observe(Observed, Option<Arc<AtomicBool>>);

impl KeyedOperator for Observe {
    type Key = i64;
    type In = (EventTime, i64);
    type Out = Observed;

    fn process(
        &mut self,
        (time, _): (EventTime, i64),
        ctx: &mut KeyedContext<'_, i64, Observed>,
    ) -> anyhow::Result<()> {
        self.0.records += 1;
        if time <= ctx.current_watermark() {
            self.0.late.push(time);
        }
        Ok(())
    }

    fn on_watermark(
        &mut self,
        watermark: EventTime,
        _ctx: &mut KeyedContext<'_, i64, Observed>,
    ) -> anyhow::Result<()> {
        if !self
            .1
            .as_ref()
            .is_some_and(|until| until.load(Ordering::SeqCst))
        {
            self.0.watermarks.push(watermark);
        }
        Ok(())
    }

    fn finish(&mut self, ctx: &mut KeyedContext<'_, i64, Observed>) -> anyhow::Result<()> {
        ctx.emit(std::mem::take(&mut self.0));
        Ok(())
    }
}

struct Collect(Arc<Mutex<Vec<Observed>>>);
impl Sink for Collect {
    type In = Observed;
    fn write(&mut self, record: Observed) -> anyhow::Result<()> {
        self.0.lock().unwrap().push(record);
        Ok(())
    }
}

fn strategy(disorder_ms: u64) -> WatermarkStrategy<(EventTime, i64)> {
    WatermarkStrategy::bounded_out_of_orderness(Duration::from_millis(disorder_ms), |(t, _)| *t)
        .with_interval(Duration::from_millis(1))
}

#[test]
fn the_watermark_is_the_minimum_over_inputs_so_no_record_within_the_bound_is_late() {
    let out = Arc::new(Mutex::new(Vec::new()));
    let job = StreamJob::new(JobConfig {
        parallelism: 2,
        workers: 2,
        ..JobConfig::default()
    });
    // `early` runs far ahead in event time; if the slower input did not hold the
    // watermark back, `late`'s records would arrive behind it.
    let slow = job
        .source_with_watermarks("slow", strategy(50), |_| Timed {
            next: 0,
            count: 20_000,
            offset: 0,
            disorder: 50,
            per_poll: 40,
            done: None,
            per_ms: None,
        })
        .parallelism(1);
    let fast = job
        .source_with_watermarks("fast", strategy(50), |_| Timed {
            next: 0,
            count: 20_000,
            offset: 1_000_000,
            disorder: 50,
            per_poll: 2_000,
            done: None,
            per_ms: None,
        })
        .parallelism(1);
    let sink = out.clone();
    slow.union(vec![fast])
        .process("merge", |_| PassThrough)
        .key_by(|(t, _)| t % 4)
        .process("observe", |_| Observe::default())
        .sink("collect", move |_| Collect(sink.clone()));
    job.run().unwrap();

    let observed = out.lock().unwrap();
    assert_eq!(observed.iter().map(|o| o.records).sum::<u64>(), 40_000);
    for o in observed.iter() {
        assert!(
            o.late.is_empty(),
            "late records: {:?}",
            &o.late[..o.late.len().min(10)]
        );
        assert!(
            o.watermarks.windows(2).all(|w| w[0] < w[1]),
            "watermarks go forward"
        );
        assert_eq!(
            o.watermarks.last(),
            Some(&MAX_WATERMARK),
            "the end of input ends event time"
        );
        let before_end: Vec<_> = o
            .watermarks
            .iter()
            .filter(|&&w| w != MAX_WATERMARK)
            .collect();
        assert!(
            before_end.len() >= 5,
            "watermarks flowed while the job ran: {before_end:?}"
        );
    }
}

/// Forwards records: a network hop between the union and the keyed operator.
struct PassThrough;
impl weir::Operator for PassThrough {
    type In = (EventTime, i64);
    type Out = (EventTime, i64);
    fn process(
        &mut self,
        record: (EventTime, i64),
        ctx: &mut Context<'_, (EventTime, i64)>,
    ) -> anyhow::Result<()> {
        ctx.emit(record);
        Ok(())
    }
}

/// The highest watermark `observe` saw while the quiet source was still running.
fn highest_watermark_before_end(idle_timeout: Option<Duration>) -> EventTime {
    let out = Arc::new(Mutex::new(Vec::new()));
    let job = StreamJob::new(JobConfig {
        parallelism: 1,
        workers: 2,
        ..JobConfig::default()
    });
    let done = Arc::new(AtomicBool::new(false));
    let busy_done = done.clone();
    let busy = job.source_with_watermarks("busy", strategy(0), move |_| Timed {
        next: 0,
        count: 30_000,
        offset: 0,
        disorder: 0,
        per_poll: 100,
        done: Some(busy_done.clone()),
        // 30 000 records over at least 100 ms: well past the 20 ms idle timeout.
        per_ms: Some((300, None)),
    });
    let quiet_strategy = match idle_timeout {
        Some(timeout) => strategy(0).with_idleness(timeout),
        None => strategy(0),
    };
    // Once the quiet source has ended, the watermark may jump to the busy one's:
    // only what is seen while it lives counts.
    let quiet_ended = Arc::new(AtomicBool::new(false));
    let ended = quiet_ended.clone();
    let quiet = job.source_with_watermarks("quiet", quiet_strategy, move |_| QuietAfterOne {
        sent: false,
        until: done.clone(),
        ended: ended.clone(),
    });
    let sink = out.clone();
    busy.union(vec![quiet.rebalance()])
        .process("merge", |_| PassThrough)
        .key_by(|(_, origin)| *origin)
        .process("observe", move |_| {
            Observe(Observed::default(), Some(quiet_ended.clone()))
        })
        .sink("collect", move |_| Collect(sink.clone()));
    job.run().unwrap();
    let observed = out.lock().unwrap();
    observed
        .iter()
        .flat_map(|o| o.watermarks.iter().copied())
        .filter(|&w| w != MAX_WATERMARK)
        .max()
        .unwrap_or(i64::MIN)
}

#[test]
fn an_idle_source_stops_holding_the_watermark_back_only_when_it_declares_idleness() {
    let held = highest_watermark_before_end(None);
    assert!(
        held <= 0,
        "without idleness the quiet source (event time 0) holds the watermark: {held}"
    );
    let advanced = highest_watermark_before_end(Some(Duration::from_millis(20)));
    assert!(
        advanced > 5_000,
        "with idleness the busy source drives the watermark: {advanced}"
    );
}
