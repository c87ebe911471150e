//! Real jobs through the typed API: exact results at several parallelisms, failures
//! that name their operator, and backpressure that bounds what is buffered.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use weir::{Context, JobConfig, JobError, Sink, Source, SourcePoll, StreamJob, SubtaskInfo};

/// Emits its share of `items`: subtask i of p takes every p-th item from i.
struct Items<T> {
    items: Arc<Vec<T>>,
    next: usize,
    step: usize,
}

impl<T: weir::Data + Sync> Items<T> {
    fn new(items: Arc<Vec<T>>, info: &SubtaskInfo) -> Self {
        Items {
            items,
            next: info.index as usize,
            step: info.parallelism as usize,
        }
    }
}

impl<T: weir::Data + Sync> Source for Items<T> {
    type Out = T;
    fn poll(&mut self, ctx: &mut Context<'_, T>, max: usize) -> anyhow::Result<SourcePoll> {
        for _ in 0..max {
            match self.items.get(self.next) {
                Some(item) => ctx.emit(item.clone()),
                None => return Ok(SourcePoll::Finished),
            }
            self.next += self.step;
        }
        Ok(SourcePoll::Ready)
    }
}

/// Collects everything it receives into a shared vector.
struct Collect<T>(Arc<Mutex<Vec<T>>>);

impl<T: weir::Data> Sink for Collect<T> {
    type In = T;
    fn write(&mut self, record: T) -> anyhow::Result<()> {
        self.0.lock().unwrap().push(record);
        Ok(())
    }
}

fn config(parallelism: u32) -> JobConfig {
    JobConfig {
        parallelism,
        workers: 2,
        ..JobConfig::default()
    }
}

const TEXT: &str =
    "the quick brown fox jumps over the lazy dog\nthe dog barks\n\nfox and dog and fox";

fn lines(repeat: usize) -> Arc<Vec<String>> {
    Arc::new(
        (0..repeat)
            .flat_map(|_| TEXT.lines().map(str::to_string))
            .collect(),
    )
}

/// Final count per word: the last (highest) running count emitted for it.
fn word_count(parallelism: u32, repeat: usize) -> BTreeMap<String, u64> {
    let out = Arc::new(Mutex::new(Vec::new()));
    let job = StreamJob::new(config(parallelism));
    let (input, sink) = (lines(repeat), out.clone());
    job.source("lines", move |info| Items::new(input.clone(), info))
        .flat_map("split", |line: String| {
            line.split_whitespace()
                .map(|w| (w.to_string(), 1u64))
                .collect::<Vec<_>>()
        })
        .key_by(|(word, _)| word.clone())
        .reduce("count", |(word, a), (_, b)| (word.clone(), a + b))
        .sink("collect", move |_| Collect(sink.clone()));
    let report = job.run().expect("job runs");
    let words = TEXT.split_whitespace().count() as u64 * repeat as u64;
    assert_eq!(report.operator("count").unwrap().records_in, words);
    assert_eq!(report.operator("collect").unwrap().records_in, words);
    let mut counts = BTreeMap::new();
    for (word, count) in out.lock().unwrap().drain(..) {
        let best = counts.entry(word).or_insert(0);
        *best = count.max(*best);
    }
    counts
}

#[test]
fn word_count_is_exact_at_parallelism_1_2_and_4() {
    let repeat = 3_000;
    let mut expected = BTreeMap::new();
    for word in TEXT.split_whitespace() {
        *expected.entry(word.to_string()).or_insert(0) += repeat as u64;
    }
    for parallelism in [1, 2, 4] {
        assert_eq!(
            word_count(parallelism, repeat),
            expected,
            "parallelism {parallelism}"
        );
    }
}

#[test]
fn every_running_count_is_emitted_exactly_once() {
    // Per key, the running counts must be exactly 1..=n: nothing lost, nothing doubled.
    let out = Arc::new(Mutex::new(Vec::new()));
    let job = StreamJob::new(config(3));
    let input = Arc::new((0..60_000u64).collect::<Vec<_>>());
    let sink = out.clone();
    job.source("numbers", move |info| Items::new(input.clone(), info))
        .map("pair", |n| (n % 100, 1u64))
        .key_by(|(k, _)| *k)
        .reduce("count", |(k, a), (_, b)| (*k, a + b))
        .sink_with_parallelism("collect", 2, move |_| Collect(sink.clone()));
    job.run().unwrap();
    let mut per_key: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    for (k, c) in out.lock().unwrap().drain(..) {
        per_key.entry(k).or_default().push(c);
    }
    assert_eq!(per_key.len(), 100);
    for (key, mut counts) in per_key {
        counts.sort_unstable();
        assert_eq!(counts, (1..=600).collect::<Vec<_>>(), "key {key}");
    }
}

#[test]
fn a_panicking_operator_fails_the_job_with_its_name_subtask_and_cause() {
    let job = StreamJob::new(config(2));
    let input = Arc::new((0..10_000u64).collect::<Vec<_>>());
    job.source("numbers", move |info| Items::new(input.clone(), info))
        .map("explode", |n| {
            if n == 7_777 {
                panic!("record {n} is cursed")
            } else {
                n
            }
        })
        .sink("drop", |_| Collect(Arc::default()));
    let error = job.run().expect_err("the job must fail");
    match &error {
        JobError::OperatorFailed {
            operator,
            subtask,
            cause,
        } => {
            assert_eq!(operator, "explode");
            assert_eq!(*subtask, 7_777 % 2);
            assert!(
                cause.starts_with("panic: record 7777 is cursed (at tests/api_jobs.rs:144:"),
                "{cause}"
            );
        }
        other => panic!("unexpected error {other:?}"),
    }
}

struct FailingSink;
impl Sink for FailingSink {
    type In = u64;
    fn write(&mut self, record: u64) -> anyhow::Result<()> {
        anyhow::ensure!(record < 500, "disk full at record {record}");
        Ok(())
    }
}

#[test]
fn an_operator_error_fails_the_job_and_names_the_operator() {
    let job = StreamJob::new(config(1));
    let input = Arc::new((0..1_000u64).collect::<Vec<_>>());
    job.source("numbers", move |info| Items::new(input.clone(), info))
        .sink("store", |_| FailingSink);
    let error = job.run().expect_err("the job must fail").to_string();
    assert_eq!(
        error,
        "operator store (subtask 0) failed: disk full at record 500"
    );
}

/// Counts and sleeps: a sink slower than its source.
struct SlowSink {
    received: Arc<AtomicU64>,
}

impl Sink for SlowSink {
    type In = u64;
    fn write(&mut self, _: u64) -> anyhow::Result<()> {
        if self.received.fetch_add(1, Ordering::Relaxed) % 256 == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(())
    }
}

struct Counting {
    next: u64,
    end: u64,
    emitted: Arc<AtomicU64>,
}

impl Source for Counting {
    type Out = u64;
    fn poll(&mut self, ctx: &mut Context<'_, u64>, max: usize) -> anyhow::Result<SourcePoll> {
        let n = (max as u64).min(self.end - self.next);
        (self.next..self.next + n).for_each(|i| ctx.emit(i));
        self.next += n;
        self.emitted.fetch_add(n, Ordering::Relaxed);
        Ok(if self.next == self.end {
            SourcePoll::Finished
        } else {
            SourcePoll::Ready
        })
    }
}

#[test]
fn a_slow_sink_holds_the_source_back_within_the_credit_bound() {
    let (batch_size, capacity) = (256usize, 2usize);
    let cfg = JobConfig {
        batch_size,
        channel_capacity: capacity,
        ..config(1)
    };
    let (emitted, received) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let job = StreamJob::new(cfg);
    let (e, r) = (emitted.clone(), received.clone());
    job.source("fast", move |_| Counting {
        next: 0,
        end: 200_000,
        emitted: e.clone(),
    })
    .rebalance()
    .sink("slow", move |_| SlowSink {
        received: r.clone(),
    });
    let (e, r) = (emitted.clone(), received.clone());
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watching = done.clone();
    let watcher = std::thread::spawn(move || {
        let mut peak = 0;
        while !watching.load(Ordering::Relaxed) {
            let buffered = e
                .load(Ordering::Relaxed)
                .saturating_sub(r.load(Ordering::Relaxed));
            peak = peak.max(buffered);
            std::thread::sleep(Duration::from_micros(200));
        }
        peak
    });
    let started = Instant::now();
    job.run().unwrap();
    done.store(true, Ordering::Relaxed);
    let peak = watcher.join().unwrap();
    assert_eq!(received.load(Ordering::Relaxed), 200_000);
    // In flight: `capacity` credited batches + one waiting batch + one being filled +
    // the batch the source just polled + the one the sink is writing.
    let bound = (capacity as u64 + 4) * batch_size as u64;
    println!(
        "peak buffered {peak} records (bound {bound}) in {:?}",
        started.elapsed()
    );
    assert!(
        peak <= bound,
        "peak buffered {peak} exceeds the credit bound {bound}"
    );
    assert!(peak > 0, "the watcher saw the pipeline");
}

#[test]
fn partly_filled_batches_leave_after_the_linger() {
    // A trickle of 5 records with a 1024-record batch size must still arrive promptly.
    struct Trickle(u64);
    impl Source for Trickle {
        type Out = u64;
        fn poll(&mut self, ctx: &mut Context<'_, u64>, _: usize) -> anyhow::Result<SourcePoll> {
            if self.0 == 5 {
                return Ok(SourcePoll::Finished);
            }
            ctx.emit(self.0);
            self.0 += 1;
            Ok(SourcePoll::Pending(Duration::from_millis(20)))
        }
    }
    struct Stamp(Arc<Mutex<Vec<Instant>>>);
    impl Sink for Stamp {
        type In = u64;
        fn write(&mut self, _: u64) -> anyhow::Result<()> {
            self.0.lock().unwrap().push(Instant::now());
            Ok(())
        }
    }
    let stamps = Arc::new(Mutex::new(Vec::new()));
    let job = StreamJob::new(JobConfig {
        linger: Duration::from_millis(2),
        ..config(1)
    });
    let s = stamps.clone();
    let started = Instant::now();
    job.source("trickle", |_| Trickle(0))
        .rebalance()
        .sink("stamp", move |_| Stamp(s.clone()));
    job.run().unwrap();
    let stamps = stamps.lock().unwrap();
    assert_eq!(stamps.len(), 5);
    // Record i is emitted at ~20ms*i; without linger all would arrive at the end.
    let first = stamps[0].duration_since(started);
    assert!(
        first < Duration::from_millis(60),
        "first record took {first:?}"
    );
}

#[test]
fn jobs_complete_when_upstream_subtasks_start_before_downstream_ones() {
    // Sources start while their receivers may still wait for their own start message;
    // data that arrives that early must still be processed (once a lost wakeup).
    for attempt in 0..40 {
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let job = StreamJob::new(JobConfig {
                parallelism: 4,
                workers: 2,
                batch_size: 64,
                ..JobConfig::default()
            });
            let input = Arc::new((0..5_000u64).collect::<Vec<_>>());
            job.source("numbers", move |info| Items::new(input.clone(), info))
                .key_by(|n| *n % 97)
                .reduce("sum", |a, b| a + b)
                .sink("drop", |_| Collect(Arc::default()));
            let _ = done_tx.send(job.run().map(|r| r.operator("drop").unwrap().records_in));
        });
        let outcome = done_rx.recv_timeout(Duration::from_secs(20));
        assert_eq!(outcome, Ok(Ok(5_000)), "attempt {attempt} hung or failed");
    }
}

#[test]
fn fan_out_broadcast_and_union_deliver_every_record_as_expected() {
    // numbers (p=2) ─┬─ broadcast ─> every (p=3): each record reaches all 3 subtasks
    //                └─ rebalance ─> tag (p=1) ─┐
    //        letters (p=1) ─────────────────────┴─ union ─> both (p=2)
    let every = Arc::new(Mutex::new(Vec::new()));
    let both = Arc::new(Mutex::new(Vec::new()));
    let job = StreamJob::new(config(2));
    let numbers_input = Arc::new((0..3_000u64).collect::<Vec<_>>());
    let numbers = job
        .source("numbers", move |info| {
            Items::new(numbers_input.clone(), info)
        })
        .map("show", |n| format!("n{n}"));
    let every_sink = every.clone();
    numbers
        .clone()
        .broadcast()
        .sink_with_parallelism("every", 3, move |info| {
            let sink = every_sink.clone();
            let index = info.index;
            TaggedCollect { sink, index }
        });
    let tagged = numbers.rebalance().map("tag", |s| s).parallelism(1);
    let letters_input = Arc::new(
        (b'a'..=b'z')
            .map(|c| (c as char).to_string())
            .collect::<Vec<_>>(),
    );
    let letters = job
        .source("letters", move |info| {
            Items::new(letters_input.clone(), info)
        })
        .parallelism(1);
    let both_sink = both.clone();
    tagged
        .union(vec![letters.rebalance()])
        .sink("both", move |_| Collect(both_sink.clone()));
    let report = job.run().unwrap();
    assert_eq!(report.operator("every").unwrap().records_in, 9_000);

    let every = every.lock().unwrap();
    for subtask in 0..3 {
        let mut got: Vec<&str> = every
            .iter()
            .filter(|(s, _)| *s == subtask)
            .map(|(_, r)| r.as_str())
            .collect();
        got.sort_unstable();
        let mut expected: Vec<String> = (0..3_000).map(|n| format!("n{n}")).collect();
        expected.sort_unstable();
        assert_eq!(
            got,
            expected.iter().map(String::as_str).collect::<Vec<_>>(),
            "broadcast to subtask {subtask}"
        );
    }
    let mut got = both.lock().unwrap().clone();
    got.sort_unstable();
    let mut expected: Vec<String> = (0..3_000)
        .map(|n| format!("n{n}"))
        .chain((b'a'..=b'z').map(|c| (c as char).to_string()))
        .collect();
    expected.sort_unstable();
    assert_eq!(got, expected);
}

struct TaggedCollect {
    sink: Arc<Mutex<Vec<(u32, String)>>>,
    index: u32,
}

impl Sink for TaggedCollect {
    type In = String;
    fn write(&mut self, record: String) -> anyhow::Result<()> {
        self.sink.lock().unwrap().push((self.index, record));
        Ok(())
    }
}
