//! Timers in keyed operators: event-time timers fire once each, in time order, with
//! their key current, before the watermark that made them due travels on; deleted
//! timers do not fire; processing-time timers wake the subtask up.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use weir::{
    Context, EventTime, FiredTimer, JobConfig, KeyedContext, KeyedOperator, Operator, Sink, Source,
    SourcePoll, StreamJob, TimeDomain, WatermarkStrategy,
};

/// (key, event time) for i in 0..count, 50 per poll; keeps polling (with nothing to
/// emit) until `linger` has passed, so processing-time timers get their turn.
struct Events {
    next: i64,
    count: i64,
    linger: Duration,
    started: Option<Instant>,
}

impl Source for Events {
    type Out = (u32, EventTime);
    fn poll(
        &mut self,
        ctx: &mut Context<'_, (u32, EventTime)>,
        _: usize,
    ) -> anyhow::Result<SourcePoll> {
        let started = *self.started.get_or_insert_with(Instant::now);
        let end = (self.next + 50).min(self.count);
        for i in self.next..end {
            ctx.emit(((i % 5) as u32, i * 2));
        }
        self.next = end;
        if self.next < self.count {
            return Ok(SourcePoll::Ready);
        }
        if started.elapsed() < self.linger {
            return Ok(SourcePoll::Pending(Duration::from_millis(5)));
        }
        Ok(SourcePoll::Finished)
    }
}

/// (key the timer was registered for, key current in on_timer, timer time, domain,
/// watermark when it fired)
type Fired = (u32, u32, EventTime, bool, EventTime);

/// Registers an event-time timer at `t + 10` per record (twice, to test dedup),
/// and one at `t + 11` that it deletes again; optionally a processing-time timer.
struct Timing {
    processing: bool,
}

impl KeyedOperator for Timing {
    type Key = u32;
    type In = (u32, EventTime);
    type Out = Fired;

    fn process(
        &mut self,
        (key, t): (u32, EventTime),
        ctx: &mut KeyedContext<'_, u32, Fired>,
    ) -> anyhow::Result<()> {
        if self.processing {
            let at = ctx.current_processing_time() + 20;
            ctx.register_processing_time_timer_in(&key, at)?;
            return Ok(());
        }
        ctx.register_event_time_timer_in(&key, t + 10)?;
        ctx.register_event_time_timer_in(&key, t + 10)?;
        ctx.register_event_time_timer(t + 11)?;
        ctx.delete_event_time_timer(t + 11)?;
        Ok(())
    }

    fn on_timer(
        &mut self,
        timer: &FiredTimer,
        ctx: &mut KeyedContext<'_, u32, Fired>,
    ) -> anyhow::Result<()> {
        let registered_for: u32 = timer.namespace()?;
        let watermark = match timer.domain {
            TimeDomain::EventTime => ctx.current_watermark(),
            TimeDomain::ProcessingTime => ctx.current_processing_time(),
        };
        ctx.emit((
            registered_for,
            *ctx.key(),
            timer.time,
            timer.domain == TimeDomain::ProcessingTime,
            watermark,
        ));
        Ok(())
    }
}

/// Downstream of the timers: records the watermark each output met here.
struct SeenBefore;

impl Operator for SeenBefore {
    type In = Fired;
    type Out = (Fired, EventTime);
    fn process(
        &mut self,
        f: Fired,
        ctx: &mut Context<'_, (Fired, EventTime)>,
    ) -> anyhow::Result<()> {
        let here = ctx.current_watermark();
        ctx.emit((f, here));
        Ok(())
    }
}

struct Collect(Arc<Mutex<Vec<(Fired, EventTime)>>>);

impl Sink for Collect {
    type In = (Fired, EventTime);
    fn write(&mut self, r: (Fired, EventTime)) -> anyhow::Result<()> {
        self.0.lock().unwrap().push(r);
        Ok(())
    }
}

fn run(processing: bool, count: i64, linger: Duration) -> Vec<(Fired, EventTime)> {
    let out = Arc::new(Mutex::new(Vec::new()));
    let job = StreamJob::new(JobConfig {
        parallelism: 2,
        workers: 2,
        ..JobConfig::default()
    });
    let sink = out.clone();
    let strategy =
        WatermarkStrategy::monotonous(|e: &(u32, EventTime)| e.1).with_interval(Duration::ZERO);
    job.source_with_watermarks("events", strategy, move |_| Events {
        next: 0,
        count,
        linger,
        started: None,
    })
    .parallelism(1)
    .key_by(|e| e.0)
    .process("timers", move |_| Timing { processing })
    .process("after", |_| SeenBefore)
    .sink("collect", move |_| Collect(sink.clone()));
    job.run().unwrap();
    let out = out.lock().unwrap().clone();
    out
}

#[test]
fn event_time_timers_fire_once_in_order_with_their_key_before_the_watermark() {
    let fired = run(false, 1_000, Duration::ZERO);
    // One timer per distinct (key, t + 10); the deleted ones at t + 11 never fire.
    let expected: BTreeMap<(u32, EventTime), usize> = (0..1_000i64)
        .map(|i| (((i % 5) as u32, i * 2 + 10), 1))
        .collect();
    let mut got: BTreeMap<(u32, EventTime), usize> = BTreeMap::new();
    let mut last_per_key: BTreeMap<u32, EventTime> = BTreeMap::new();
    for &((registered_for, current, time, processing, watermark), downstream) in &fired {
        assert!(!processing);
        assert_eq!(
            registered_for, current,
            "the timer's key is current in on_timer"
        );
        assert!(
            watermark >= time,
            "fired at watermark {watermark}, due at {time}"
        );
        assert!(
            downstream < time,
            "the output of a timer due at {time} travels ahead of the watermark that fired it (saw {downstream})"
        );
        let last = last_per_key.entry(current).or_insert(EventTime::MIN);
        assert!(*last <= time, "timers of a subtask fire in time order");
        *last = time;
        *got.entry((current, time)).or_default() += 1;
    }
    assert_eq!(got, expected);
}

#[test]
fn processing_time_timers_wake_the_subtask() {
    let fired = run(true, 100, Duration::from_millis(400));
    let keys: std::collections::BTreeSet<u32> = fired.iter().map(|f| f.0 .1).collect();
    assert_eq!(
        keys,
        (0..5).collect(),
        "every key's processing-time timer fired"
    );
    for &((registered_for, current, time, processing, now), _) in &fired {
        assert!(processing);
        assert_eq!(registered_for, current);
        assert!(now >= time, "fired at {now}, due at {time}");
    }
}
