//! Windows end to end: every result equals a straightforward batch computation over
//! the same input (written out below), for in-order input, input shuffled within the
//! out-of-orderness bound, and late input with and without allowed lateness; at
//! parallelism 1 and 2, on both state backends; and across a failure and resume.
//!
//! The input is replayed by one source subtask, one poll batch at a time, with a
//! watermark after every batch (`with_interval(0)`): so the watermark a record meets
//! at the window operator is exactly `max(event time of earlier batches) - bound - 1`,
//! and the reference can tell late records from on-time ones.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use weir::config::StateBackendChoice;
use weir::window::{AggregateFunction, Window, Windowed};
use weir::{
    CheckpointConfig, Context, EventTime, JobConfig, JobError, JobReport, RestartStrategy, Sink,
    Source, SourcePoll, StreamJob, WatermarkStrategy, Windows, MIN_WATERMARK,
};

/// (key, event time, value)
type Event = (u32, EventTime, i64);

const BOUND: i64 = 20;
const TUMBLE: i64 = 100;
const SLIDE_SIZE: i64 = 100;
const SLIDE: i64 = 30;
const GAP: i64 = 25;

// ---------------------------------------------------------------------------------
// Input

fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Disorder {
    InOrder,
    /// Event times jitter by less than the bound: nothing is late.
    WithinBound,
    /// Also every 23rd record is 30..400 ms behind: some late, some late but allowed.
    Late,
}

/// Poll batches of 40 records; event times advance 3 ms per record.
fn input(disorder: Disorder, records: usize, seed: u64) -> Vec<Vec<Event>> {
    let mut rng = seed;
    let events: Vec<Event> = (0..records)
        .map(|i| {
            let key = (splitmix(&mut rng) % 7) as u32;
            let value = (splitmix(&mut rng) % 1000) as i64 - 300;
            let base = i as i64 * 3;
            let ts = match disorder {
                Disorder::InOrder => base,
                Disorder::WithinBound | Disorder::Late => {
                    let jittered = base + (splitmix(&mut rng) % BOUND as u64) as i64;
                    if disorder == Disorder::Late && i % 23 == 22 {
                        base - 30 - (splitmix(&mut rng) % 370) as i64
                    } else {
                        jittered
                    }
                }
            };
            (key, ts, value)
        })
        .collect();
    events.chunks(40).map(<[Event]>::to_vec).collect()
}

/// Each record with the watermark it meets at the window operator.
fn with_watermarks(batches: &[Vec<Event>]) -> Vec<(Event, EventTime)> {
    let (mut max, mut out) = (None::<EventTime>, Vec::new());
    for batch in batches {
        let watermark = max.map_or(MIN_WATERMARK, |m| m - BOUND - 1);
        out.extend(batch.iter().map(|e| (*e, watermark)));
        let batch_max = batch.iter().map(|e| e.1).max();
        max = max.max(batch_max);
    }
    out
}

/// Replays the batches, one per poll; its position is the next batch.
struct Replay {
    batches: Arc<Vec<Vec<Event>>>,
    next: usize,
    /// Fail once before this batch (while armed), but only after its second
    /// snapshot (one checkpoint at a time: the first has completed).
    fail_before: Option<(usize, Arc<AtomicBool>)>,
    snapshots: u32,
}

impl Source for Replay {
    type Out = Event;
    fn poll(&mut self, ctx: &mut Context<'_, Event>, _max: usize) -> anyhow::Result<SourcePoll> {
        if let Some((at, armed)) = &self.fail_before {
            if self.next >= *at && self.snapshots >= 2 && armed.swap(false, Ordering::SeqCst) {
                panic!("injected failure before batch {}", self.next);
            }
        }
        let Some(batch) = self.batches.get(self.next) else {
            if let Some((_, armed)) = &self.fail_before {
                if armed.load(Ordering::SeqCst) {
                    // However slow the machine: the failure comes before the end.
                    return Ok(SourcePoll::Pending(Duration::from_millis(1)));
                }
            }
            return Ok(SourcePoll::Finished);
        };
        batch.iter().for_each(|e| ctx.emit(*e));
        self.next += 1;
        Ok(if self.fail_before.is_some() {
            // Slow enough for checkpoints to complete before the failure.
            SourcePoll::Pending(Duration::from_millis(1))
        } else {
            SourcePoll::Ready
        })
    }

    fn snapshot_position(&mut self) -> anyhow::Result<Option<Vec<u8>>> {
        self.snapshots += 1;
        Ok(Some((self.next as u64).to_le_bytes().to_vec()))
    }

    fn restore_position(&mut self, position: &[u8]) -> anyhow::Result<()> {
        self.next = u64::from_le_bytes(position.try_into()?) as usize;
        Ok(())
    }
}

struct Collect<T>(Arc<Mutex<Vec<T>>>);

impl<T: weir::Data> Sink for Collect<T> {
    type In = T;
    fn write(&mut self, record: T) -> anyhow::Result<()> {
        self.0.lock().unwrap().push(record);
        Ok(())
    }
}

fn collector<T>() -> Arc<Mutex<Vec<T>>> {
    Arc::new(Mutex::new(Vec::new()))
}

fn taken<T: Clone>(c: &Arc<Mutex<Vec<T>>>) -> Vec<T> {
    c.lock().unwrap().clone()
}

// ---------------------------------------------------------------------------------
// The job: five window operators over one stream.

/// count, sum, min and max at once: a user aggregate function.
struct Stats;

impl AggregateFunction<Event> for Stats {
    type Acc = (u64, i64, i64, i64);
    type Out = (u64, i64, i64, i64);
    fn create_accumulator(&self) -> Self::Acc {
        (0, 0, i64::MAX, i64::MIN)
    }
    fn add(&self, acc: &mut Self::Acc, e: &Event) {
        *acc = (acc.0 + 1, acc.1 + e.2, acc.2.min(e.2), acc.3.max(e.2));
    }
    fn merge(&self, acc: &mut Self::Acc, o: Self::Acc) {
        *acc = (acc.0 + o.0, acc.1 + o.1, acc.2.min(o.2), acc.3.max(o.3));
    }
    fn result(&self, acc: Self::Acc) -> Self::Out {
        acc
    }
}

#[derive(Default)]
struct Outputs {
    tumbling_count: Vec<Windowed<u32, u64>>,
    tumbling_avg: Vec<Windowed<u32, f64>>,
    sliding_sum: Vec<Windowed<u32, i64>>,
    sliding_values: Vec<(u32, Window, Vec<i64>)>,
    session_stats: Vec<Windowed<u32, (u64, i64, i64, i64)>>,
    session_min: Vec<Windowed<u32, i64>>,
    session_values: Vec<(u32, Window, Vec<i64>)>,
    late_tumbling: Vec<Event>,
    late_sliding: Vec<Event>,
    late_sessions: Vec<Event>,
}

struct Run {
    parallelism: u32,
    backend: StateBackendChoice,
    lateness: i64,
    checkpoint: Option<CheckpointConfig>,
    restart: Option<RestartStrategy>,
    fail_before: Option<(usize, Arc<AtomicBool>)>,
}

fn run(batches: Arc<Vec<Vec<Event>>>, r: Run) -> (Result<JobReport, JobError>, Outputs) {
    let job = StreamJob::new(JobConfig {
        parallelism: r.parallelism,
        workers: 2,
        state_backend: r.backend,
        checkpoint: r.checkpoint,
        restart: r.restart,
        ..JobConfig::default()
    });
    let strategy = WatermarkStrategy::bounded_out_of_orderness(
        Duration::from_millis(BOUND as u64),
        |e: &Event| e.1,
    )
    .with_interval(Duration::ZERO);
    let fail_before = r.fail_before.clone();
    let events = job
        .source_with_watermarks("events", strategy, move |_| Replay {
            batches: batches.clone(),
            next: 0,
            fail_before: fail_before.clone(),
            snapshots: 0,
        })
        .parallelism(1);
    let lateness = Duration::from_millis(r.lateness as u64);
    let c = (
        collector(),
        collector(),
        collector(),
        collector(),
        collector(),
        collector(),
        collector(),
        collector(),
        collector(),
    );
    let tumbling =
        || Windows::tumbling(Duration::from_millis(TUMBLE as u64)).event_time(|e: &Event| e.1);
    let sliding = || {
        Windows::sliding(
            Duration::from_millis(SLIDE_SIZE as u64),
            Duration::from_millis(SLIDE as u64),
        )
        .event_time(|e: &Event| e.1)
    };
    let sessions =
        || Windows::session(Duration::from_millis(GAP as u64)).event_time(|e: &Event| e.1);

    let (out, late) = (c.0.clone(), c.6.clone());
    events
        .clone()
        .key_by(|e| e.0)
        .window(tumbling())
        .allowed_lateness(lateness)
        .late_records(move |s| s.sink("late-tumbling", move |_| Collect(late.clone())))
        .count("tumbling-count")
        .sink("c1", move |_| Collect(out.clone()));
    let out = c.1.clone();
    events
        .clone()
        .key_by(|e| e.0)
        .window(tumbling())
        .allowed_lateness(lateness)
        .avg("tumbling-avg", |e| e.2 as f64)
        .sink("c2", move |_| Collect(out.clone()));
    let (out, late) = (c.2.clone(), c.7.clone());
    events
        .clone()
        .key_by(|e| e.0)
        .window(sliding())
        .allowed_lateness(lateness)
        .late_records(move |s| s.sink("late-sliding", move |_| Collect(late.clone())))
        .sum("sliding-sum", |e| e.2)
        .sink("c3", move |_| Collect(out.clone()));
    let out = c.3.clone();
    events
        .clone()
        .key_by(|e| e.0)
        .window(sliding())
        .allowed_lateness(lateness)
        .process(
            "sliding-values",
            |k: &u32, w: &Window, records: Vec<Event>| {
                let mut values: Vec<i64> = records.iter().map(|e| e.2).collect();
                values.sort_unstable();
                Some((*k, *w, values))
            },
        )
        .sink("c4", move |_| Collect(out.clone()));
    let (out, late) = (c.4.clone(), c.8.clone());
    events
        .clone()
        .key_by(|e| e.0)
        .window(sessions())
        .allowed_lateness(lateness)
        .late_records(move |s| s.sink("late-sessions", move |_| Collect(late.clone())))
        .aggregate("session-stats", Stats)
        .sink("c5", move |_| Collect(out.clone()));
    let out = c.5.clone();
    events
        .clone()
        .key_by(|e| e.0)
        .window(sessions())
        .allowed_lateness(lateness)
        .min("session-min", |e| e.2)
        .sink("c6", move |_| Collect(out.clone()));
    let session_values = collector();
    let out = session_values.clone();
    events
        .key_by(|e| e.0)
        .window(sessions())
        .allowed_lateness(lateness)
        .process(
            "session-values",
            |k: &u32, w: &Window, records: Vec<Event>| {
                let mut values: Vec<i64> = records.iter().map(|e| e.2).collect();
                values.sort_unstable();
                Some((*k, *w, values))
            },
        )
        .sink("c7", move |_| Collect(out.clone()));
    let result = job.run();
    let outputs = Outputs {
        tumbling_count: taken(&c.0),
        tumbling_avg: taken(&c.1),
        sliding_sum: taken(&c.2),
        sliding_values: taken(&c.3),
        session_stats: taken(&c.4),
        session_min: taken(&c.5),
        session_values: taken(&session_values),
        late_tumbling: taken(&c.6),
        late_sliding: taken(&c.7),
        late_sessions: taken(&c.8),
    };
    (result, outputs)
}

// ---------------------------------------------------------------------------------
// The batch reference

type Contents = BTreeMap<(u32, Window), Vec<i64>>;

/// Every window `[k * slide, k * slide + size)` holding `t`.
fn windows_of(t: EventTime, size: i64, slide: i64) -> Vec<Window> {
    let mut out = Vec::new();
    let mut start = t.div_euclid(slide) * slide;
    while start > t - size {
        out.push(Window {
            start,
            end: start + size,
        });
        start -= slide;
    }
    out
}

/// Fixed windows: a record joins each of its windows that is not past
/// `max_timestamp + lateness`; one that joins none is late.
fn reference_fixed(
    input: &[(Event, EventTime)],
    size: i64,
    slide: i64,
    lateness: i64,
) -> (Contents, Vec<Event>) {
    let (mut contents, mut late) = (Contents::new(), Vec::new());
    for &(e, watermark) in input {
        let open: Vec<Window> = windows_of(e.1, size, slide)
            .into_iter()
            .filter(|w| w.end - 1 + lateness > watermark)
            .collect();
        if open.is_empty() {
            late.push(e);
        }
        for w in open {
            contents.entry((e.0, w)).or_default().push(e.2);
        }
    }
    (contents, late)
}

/// Sessions: per key a list of sessions; a record's window `[t, t + gap)` merges
/// with every session it touches, unless the merged session is past its lateness;
/// sessions past their lateness are closed and final.
fn reference_sessions(input: &[(Event, EventTime)], lateness: i64) -> (Contents, Vec<Event>) {
    let (mut closed, mut late) = (Contents::new(), Vec::new());
    let mut open: BTreeMap<u32, Vec<(Window, Vec<i64>)>> = BTreeMap::new();
    for &((key, t, value), watermark) in input {
        let sessions = open.entry(key).or_default();
        let (done, kept): (Vec<_>, Vec<_>) = std::mem::take(sessions)
            .into_iter()
            .partition(|(w, _)| w.end - 1 + lateness <= watermark);
        closed.extend(done.into_iter().map(|(w, v)| ((key, w), v)));
        let (touching, mut rest): (Vec<_>, Vec<_>) = kept
            .into_iter()
            .partition(|(w, _)| w.start <= t + GAP && t <= w.end);
        let mut merged = (
            Window {
                start: t,
                end: t + GAP,
            },
            vec![value],
        );
        for (w, values) in &touching {
            merged.0.start = merged.0.start.min(w.start);
            merged.0.end = merged.0.end.max(w.end);
            merged.1.extend(values);
        }
        if merged.0.end - 1 + lateness <= watermark {
            late.push((key, t, value));
            rest.extend(touching);
        } else {
            rest.push(merged);
        }
        *sessions = rest;
    }
    for (key, sessions) in open {
        closed.extend(sessions.into_iter().map(|(w, v)| ((key, w), v)));
    }
    (closed, late)
}

// ---------------------------------------------------------------------------------
// Comparing

/// The last result emitted per (key, window): a window that takes late records emits
/// again, and the last emission is its final result. Without lateness every window
/// must be emitted exactly once.
fn finals<V: Clone>(results: &[(u32, Window, V)], once: bool) -> BTreeMap<(u32, Window), V> {
    let mut out = BTreeMap::new();
    for (k, w, v) in results {
        let previous = out.insert((*k, *w), v.clone());
        assert!(
            !(once && previous.is_some()),
            "window {w:?} of key {k} emitted twice"
        );
    }
    out
}

fn triples<V: Clone>(r: &[Windowed<u32, V>]) -> Vec<(u32, Window, V)> {
    r.iter()
        .map(|w| (w.key, w.window, w.value.clone()))
        .collect()
}

/// Sessions that a later emission merged into a larger one are superseded.
fn final_sessions<V: Clone>(all: BTreeMap<(u32, Window), V>) -> BTreeMap<(u32, Window), V> {
    let windows: Vec<(u32, Window)> = all.keys().copied().collect();
    all.into_iter()
        .filter(|((k, w), _)| {
            !windows
                .iter()
                .any(|(k2, w2)| k2 == k && w2 != w && w2.start <= w.start && w.end <= w2.end)
        })
        .collect()
}

fn sorted(mut v: Vec<Event>) -> Vec<Event> {
    v.sort_unstable();
    v
}

fn check(disorder: Disorder, parallelism: u32, backend: StateBackendChoice, lateness: i64) {
    let batches = input(disorder, 3_000, 7 + parallelism as u64);
    let timed = with_watermarks(&batches);
    let (result, out) = run(
        Arc::new(batches),
        Run {
            parallelism,
            backend,
            lateness,
            checkpoint: None,
            restart: None,
            fail_before: None,
        },
    );
    result.expect("the job completes");
    let once = lateness == 0;
    let what = format!("{disorder:?} {backend:?} p={parallelism} lateness={lateness}");

    let (tumbling, late_tumbling) = reference_fixed(&timed, TUMBLE, TUMBLE, lateness);
    let (sliding, late_sliding) = reference_fixed(&timed, SLIDE_SIZE, SLIDE, lateness);
    let (sessions, late_sessions) = reference_sessions(&timed, lateness);
    if disorder != Disorder::Late {
        assert!(late_tumbling.is_empty() && late_sliding.is_empty() && late_sessions.is_empty());
    } else {
        assert!(!late_sliding.is_empty(), "the late input has late records");
    }

    let count = |m: &Contents| -> BTreeMap<_, u64> {
        m.iter().map(|(k, v)| (*k, v.len() as u64)).collect()
    };
    assert_eq!(
        finals(&triples(&out.tumbling_count), once),
        count(&tumbling),
        "{what}"
    );
    let avg: BTreeMap<_, f64> = tumbling
        .iter()
        .map(|(k, v)| (*k, v.iter().sum::<i64>() as f64 / v.len() as f64))
        .collect();
    let got_avg = finals(&triples(&out.tumbling_avg), once);
    assert_eq!(got_avg.len(), avg.len(), "{what}");
    for (k, v) in &avg {
        assert!((got_avg[k] - v).abs() < 1e-9, "{what}: avg of {k:?}");
    }
    let sum: BTreeMap<_, i64> = sliding.iter().map(|(k, v)| (*k, v.iter().sum())).collect();
    assert_eq!(finals(&triples(&out.sliding_sum), once), sum, "{what}");
    let values: BTreeMap<_, Vec<i64>> = sliding
        .iter()
        .map(|(k, v)| {
            let mut v = v.clone();
            v.sort_unstable();
            (*k, v)
        })
        .collect();
    assert_eq!(finals(&out.sliding_values, once), values, "{what}");
    let stats: BTreeMap<_, _> = sessions
        .iter()
        .map(|(k, v)| {
            let (min, max) = (*v.iter().min().unwrap(), *v.iter().max().unwrap());
            (*k, (v.len() as u64, v.iter().sum::<i64>(), min, max))
        })
        .collect();
    let min: BTreeMap<_, i64> = stats.iter().map(|(k, s)| (*k, s.2)).collect();
    assert_eq!(
        final_sessions(finals(&triples(&out.session_stats), once)),
        stats,
        "{what}"
    );
    assert_eq!(
        final_sessions(finals(&triples(&out.session_min), once)),
        min,
        "{what}"
    );
    let session_values: BTreeMap<_, Vec<i64>> = sessions
        .iter()
        .map(|(k, v)| {
            let mut v = v.clone();
            v.sort_unstable();
            (*k, v)
        })
        .collect();
    assert_eq!(
        final_sessions(finals(&out.session_values, once)),
        session_values,
        "{what}"
    );

    if disorder == Disorder::Late && lateness > 0 {
        let fired: Vec<_> = out.sliding_sum.iter().map(|w| (w.key, w.window)).collect();
        let distinct: BTreeSet<_> = fired.iter().collect();
        assert!(
            distinct.len() < fired.len(),
            "{what}: late records within the lateness fired their windows again"
        );
    }
    assert_eq!(sorted(out.late_tumbling), sorted(late_tumbling), "{what}");
    assert_eq!(sorted(out.late_sliding), sorted(late_sliding), "{what}");
    assert_eq!(sorted(out.late_sessions), sorted(late_sessions), "{what}");
}

fn both_backends(disorder: Disorder, lateness: i64) {
    for backend in [StateBackendChoice::Memory, StateBackendChoice::RocksDb] {
        for parallelism in [1, 2] {
            check(disorder, parallelism, backend, lateness);
        }
    }
}

#[test]
fn in_order_input_gives_the_batch_results() {
    both_backends(Disorder::InOrder, 0);
}

#[test]
fn input_shuffled_within_the_bound_gives_the_batch_results() {
    both_backends(Disorder::WithinBound, 0);
}

#[test]
fn late_records_go_to_the_side_output_without_allowed_lateness() {
    both_backends(Disorder::Late, 0);
}

#[test]
fn late_records_within_the_allowed_lateness_update_their_windows() {
    both_backends(Disorder::Late, 150);
}

// ---------------------------------------------------------------------------------
// Failure and resume

#[test]
fn a_failed_window_job_recovers_from_its_checkpoint_with_the_failure_free_results() {
    let batches = Arc::new(input(Disorder::WithinBound, 6_000, 99));
    let plain = |r: Run| run(batches.clone(), r);
    let (clean, expected) = plain(Run {
        parallelism: 2,
        backend: StateBackendChoice::Memory,
        lateness: 0,
        checkpoint: None,
        restart: None,
        fail_before: None,
    });
    clean.unwrap();

    let checkpointed = |backend, parallelism, restart, dir: &Path, armed: &Arc<AtomicBool>| {
        plain(Run {
            parallelism,
            backend,
            lateness: 0,
            checkpoint: Some(CheckpointConfig {
                interval: Duration::from_millis(15),
                ..CheckpointConfig::new(dir)
            }),
            restart,
            fail_before: Some((batches.len() / 2, armed.clone())),
        })
    };

    // A run that fails (no restarts), then a run on the same checkpoints that
    // resumes at another parallelism: panes and timers follow their key groups.
    for (backend, rescaled) in [
        (StateBackendChoice::Memory, 3),
        (StateBackendChoice::RocksDb, 1),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let armed = Arc::new(AtomicBool::new(true));
        let no_restarts = Some(RestartStrategy::None);
        let (first, before) = checkpointed(backend, 2, no_restarts.clone(), dir.path(), &armed);
        assert!(first.unwrap_err().to_string().contains("injected failure"));
        let (second, after) = checkpointed(backend, rescaled, no_restarts, dir.path(), &armed);
        second.expect("the resumed run completes");
        assert!(
            !after.tumbling_count.is_empty()
                && after.tumbling_count.len() < expected.tumbling_count.len(),
            "the second run resumed instead of starting over"
        );
        assert_same_windows(&[&before, &after], &expected);
    }

    // The same failure restarted in-process from the latest checkpoint (the default
    // for a checkpointed job).
    for backend in [StateBackendChoice::Memory, StateBackendChoice::RocksDb] {
        let dir = tempfile::tempdir().unwrap();
        let armed = Arc::new(AtomicBool::new(true));
        let (report, out) = checkpointed(backend, 2, None, dir.path(), &armed);
        assert_eq!(report.expect("the job recovers").restarts, 1);
        assert_same_windows(&[&out], &expected);
    }
}

/// The windows emitted by `runs` together equal the failure-free ones. The
/// collecting sink is at-least-once: windows that fired after the checkpoint a run
/// resumed from fire again. So results are deduplicated by (key, window), and
/// repeated emissions must agree.
fn assert_same_windows(runs: &[&Outputs], expected: &Outputs) {
    fn union<V: Clone + PartialEq + std::fmt::Debug>(
        runs: impl Iterator<Item = Vec<(u32, Window, V)>>,
    ) -> BTreeMap<(u32, Window), V> {
        let mut out = BTreeMap::new();
        for (k, w, v) in runs.flatten() {
            if let Some(previous) = out.insert((k, w), v.clone()) {
                assert_eq!(previous, v, "a repeated window result differs");
            }
        }
        out
    }
    let once = |r: &[Windowed<u32, i64>]| finals(&triples(r), true);
    assert_eq!(
        union(runs.iter().map(|r| triples(&r.tumbling_count))),
        finals(&triples(&expected.tumbling_count), true)
    );
    assert_eq!(
        union(runs.iter().map(|r| triples(&r.sliding_sum))),
        once(&expected.sliding_sum)
    );
    assert_eq!(
        union(runs.iter().map(|r| r.sliding_values.clone())),
        finals(&expected.sliding_values, true)
    );
    assert_eq!(
        union(runs.iter().map(|r| triples(&r.session_stats))),
        finals(&triples(&expected.session_stats), true)
    );
    assert_eq!(
        union(runs.iter().map(|r| r.session_values.clone())),
        finals(&expected.session_values, true)
    );
}

// ---------------------------------------------------------------------------------
// Processing time

/// 40 rounds of 25 records, at least 5 ms apart: about 200 ms of wall clock. (A
/// source may be polled again before its `Pending` delay, so it keeps the time.)
struct Paced {
    rounds: usize,
    last: Option<std::time::Instant>,
}

impl Source for Paced {
    type Out = Event;
    fn poll(&mut self, ctx: &mut Context<'_, Event>, _max: usize) -> anyhow::Result<SourcePoll> {
        if self.rounds == 40 {
            return Ok(SourcePoll::Finished);
        }
        let pause = Duration::from_millis(5);
        if self.last.is_some_and(|last| last.elapsed() < pause) {
            return Ok(SourcePoll::Pending(Duration::from_millis(1)));
        }
        self.last = Some(std::time::Instant::now());
        for i in 0..25 {
            ctx.emit(((i % 3) as u32, 0, 1));
        }
        self.rounds += 1;
        Ok(SourcePoll::Pending(pause))
    }
}

#[test]
fn processing_time_windows_count_every_record_once_by_the_wall_clock() {
    let out = collector();
    let job = StreamJob::new(JobConfig {
        parallelism: 2,
        workers: 2,
        ..JobConfig::default()
    });
    let sink = out.clone();
    job.source("paced", |_| Paced {
        rounds: 0,
        last: None,
    })
    .parallelism(1)
    .key_by(|e| e.0)
    .window(Windows::tumbling(Duration::from_millis(40)).processing_time())
    .count("counts")
    .sink("collect", move |_| Collect(sink.clone()));
    let started = weir::EventTime::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap();
    job.run().unwrap();
    let results: Vec<Windowed<u32, u64>> = taken(&out);
    // Windows still open when the input ended do not fire (as in Flink); the rest
    // hold every record of their time once.
    let total: u64 = results.iter().map(|w| w.value).sum();
    assert!((500..=1_000).contains(&total), "counted {total}");
    let windows: BTreeSet<(u32, Window)> = results.iter().map(|w| (w.key, w.window)).collect();
    assert_eq!(windows.len(), results.len(), "each window fires once");
    for w in &results {
        assert_eq!(w.window.end - w.window.start, 40);
        assert_eq!(w.window.start % 40, 0);
        assert!(w.window.end > started, "windows are in wall-clock time");
    }
    assert!(windows.len() >= 3, "the input spans several windows");
}
