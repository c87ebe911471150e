//! The async I/O operator end to end: real jobs calling a simulated service (tokio
//! timers with per-record latencies) through `async_map` / `async_process`.
//! Ordered mode keeps the input order; unordered mode never moves a record across a
//! watermark; a failure with requests in flight loses none and commits each result
//! once; errors, timeouts, retries and the capacity do what their options say.

mod common;

use common::{assert_exactly_once, Faults, Numbers, KEYS, RECORDS};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use weir::{
    AsyncFunction, AsyncMode, AsyncOptions, AsyncResult, CheckpointConfig, CheckpointMode, Context,
    DataStream, EventTime, ExactlyOnceFileSink, JobConfig, JobError, Operator, RestartStrategy,
    RetryStrategy, Sink, Source, SourcePoll, StreamJob, SubtaskInfo, WatermarkStrategy,
};

/// A latency of 0–3 ms that varies from record to record, so requests complete out
/// of order.
fn latency(n: u64) -> Duration {
    Duration::from_millis(n.wrapping_mul(2_654_435_761) >> 7 & 3)
}

/// Counts the calls under way and the most at once.
#[derive(Clone, Default)]
struct Concurrency {
    now: Arc<AtomicUsize>,
    max: Arc<AtomicUsize>,
}

impl Concurrency {
    /// Waits `latency` as one call under way.
    async fn call(&self, latency: Duration) {
        let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.max.fetch_max(now, Ordering::SeqCst);
        tokio::time::sleep(latency).await;
        self.now.fetch_sub(1, Ordering::SeqCst);
    }

    fn max(&self) -> usize {
        self.max.load(Ordering::SeqCst)
    }
}

/// `index, index + p, …` below `end`, `per_poll` at a time.
struct Sequence {
    next: u64,
    step: u64,
    end: u64,
    per_poll: usize,
}

impl Sequence {
    fn new(info: &SubtaskInfo, end: u64) -> Self {
        Sequence {
            next: info.index as u64,
            step: info.parallelism as u64,
            end,
            per_poll: 1024,
        }
    }
}

impl Source for Sequence {
    type Out = u64;
    fn poll(&mut self, ctx: &mut Context<'_, u64>, max: usize) -> anyhow::Result<SourcePoll> {
        for _ in 0..max.min(self.per_poll) {
            if self.next >= self.end {
                return Ok(SourcePoll::Finished);
            }
            ctx.emit(self.next);
            self.next += self.step;
        }
        Ok(SourcePoll::Ready)
    }
}

/// Collects what each subtask receives, in order.
#[derive(Clone, Default)]
struct Collected<T>(Arc<Mutex<BTreeMap<u32, Vec<T>>>>);

impl<T> Collected<T> {
    fn sink(&self, info: &SubtaskInfo) -> CollectSink<T> {
        CollectSink(self.0.clone(), info.index)
    }

    fn take(&self) -> BTreeMap<u32, Vec<T>> {
        std::mem::take(&mut self.0.lock().unwrap())
    }
}

struct CollectSink<T>(Arc<Mutex<BTreeMap<u32, Vec<T>>>>, u32);

impl<T: weir::Data> Sink for CollectSink<T> {
    type In = T;
    fn write(&mut self, record: T) -> anyhow::Result<()> {
        self.0
            .lock()
            .unwrap()
            .entry(self.1)
            .or_default()
            .push(record);
        Ok(())
    }
}

/// `numbers (0..n) → lookup → out` at parallelism 1, `lookup` added by `with_lookup`:
/// the output in order, or the job's error.
fn run_lookup_job(
    n: u64,
    with_lookup: impl FnOnce(DataStream<u64>) -> DataStream<u64>,
) -> Result<Vec<u64>, JobError> {
    let job = StreamJob::new(JobConfig {
        parallelism: 1,
        ..JobConfig::default()
    });
    let out = Collected::default();
    let sink = out.clone();
    with_lookup(job.source("numbers", move |info| Sequence::new(info, n)))
        .sink("out", move |info| sink.sink(info));
    job.run()?;
    Ok(out.take().remove(&0).unwrap_or_default())
}

fn options(mode: AsyncMode, capacity: usize) -> AsyncOptions {
    AsyncOptions {
        mode,
        capacity,
        ..AsyncOptions::default()
    }
}

#[test]
fn ordered_mode_keeps_the_input_order_whatever_the_latencies() {
    const N: u64 = 6_000;
    let job = StreamJob::new(JobConfig {
        parallelism: 2,
        workers: 2,
        ..JobConfig::default()
    });
    let completed = Arc::new(Mutex::new(Vec::new()));
    let (out, service) = (Collected::default(), completed.clone());
    let sink = out.clone();
    job.source("numbers", |info| Sequence::new(info, N))
        .async_map("lookup", options(AsyncMode::Ordered, 50), move |_| {
            let completed = service.clone();
            move |n: u64| {
                let completed = completed.clone();
                async move {
                    tokio::time::sleep(latency(n)).await;
                    completed.lock().unwrap().push(n);
                    Ok(n * 10)
                }
            }
        })
        .sink("out", move |info| sink.sink(info));
    job.run().unwrap();

    let out = out.take();
    for index in 0..2u64 {
        let expected: Vec<u64> = (index..N).step_by(2).map(|n| n * 10).collect();
        assert_eq!(out[&(index as u32)], expected, "subtask {index}");
    }
    let completed = completed.lock().unwrap();
    assert!(
        completed.windows(2).filter(|w| w[0] > w[1]).count() > N as usize / 50,
        "the service completed requests out of order: {} inversions",
        completed.windows(2).filter(|w| w[0] > w[1]).count()
    );
}

/// Event times `0, 1, 2, …` below `end`, `per_poll` at a time with a pause between,
/// so that watermarks (every 1 ms) fall between the records.
struct Timed {
    next: i64,
    end: i64,
}

impl Source for Timed {
    type Out = i64;
    fn poll(&mut self, ctx: &mut Context<'_, i64>, _max: usize) -> anyhow::Result<SourcePoll> {
        for _ in 0..40 {
            if self.next == self.end {
                return Ok(SourcePoll::Finished);
            }
            ctx.emit(self.next);
            self.next += 1;
        }
        Ok(SourcePoll::Pending(Duration::from_micros(500)))
    }
}

/// Tags each record with the watermark that preceded it here.
struct TagWatermark;

impl Operator for TagWatermark {
    type In = i64;
    type Out = (i64, EventTime);
    fn process(&mut self, t: i64, ctx: &mut Context<'_, (i64, EventTime)>) -> anyhow::Result<()> {
        ctx.emit((t, ctx.current_watermark()));
        Ok(())
    }
}

/// Whether the watermark that precedes a record here is the one that preceded it
/// before the async operator: then no record moved across a watermark.
struct SameWatermark {
    watermarks: Arc<AtomicUsize>,
}

impl Operator for SameWatermark {
    type In = (i64, EventTime);
    type Out = (i64, bool);
    fn process(
        &mut self,
        (t, before): (i64, EventTime),
        ctx: &mut Context<'_, (i64, bool)>,
    ) -> anyhow::Result<()> {
        ctx.emit((t, before == ctx.current_watermark()));
        Ok(())
    }

    fn on_watermark(
        &mut self,
        _: EventTime,
        _: &mut Context<'_, (i64, bool)>,
    ) -> anyhow::Result<()> {
        self.watermarks.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

#[test]
fn unordered_mode_emits_as_completed_but_never_across_a_watermark() {
    const N: i64 = 4_000;
    let job = StreamJob::new(JobConfig {
        parallelism: 1,
        ..JobConfig::default()
    });
    let watermarks = WatermarkStrategy::monotonous(|t: &i64| *t).with_interval(Duration::ZERO);
    let (out, seen) = (Collected::default(), Arc::new(AtomicUsize::new(0)));
    let (sink, seen_by_check) = (out.clone(), seen.clone());
    job.source_with_watermarks("times", watermarks, |_| Timed { next: 0, end: N })
        .process("tag", |_| TagWatermark)
        .async_map("lookup", options(AsyncMode::Unordered, 100), |_| {
            |(t, before): (i64, EventTime)| async move {
                tokio::time::sleep(latency(t as u64)).await;
                Ok((t, before))
            }
        })
        .process("check", move |_| SameWatermark {
            watermarks: seen_by_check.clone(),
        })
        .sink("out", move |info| sink.sink(info));
    job.run().unwrap();

    let out = out.take().remove(&0).unwrap();
    let crossed: Vec<i64> = out.iter().filter(|(_, ok)| !ok).map(|(t, _)| *t).collect();
    assert!(
        crossed.is_empty(),
        "records moved across a watermark: {crossed:?}"
    );
    let mut times: Vec<i64> = out.iter().map(|(t, _)| *t).collect();
    let inversions = times.windows(2).filter(|w| w[0] > w[1]).count();
    times.sort_unstable();
    assert_eq!(times, (0..N).collect::<Vec<_>>(), "every record once");
    assert!(
        inversions > 0,
        "results left as they completed, not in order"
    );
    assert!(
        seen.load(Ordering::SeqCst) > 20,
        "watermarks fell between the records: {}",
        seen.load(Ordering::SeqCst)
    );
}

#[test]
fn the_capacity_bounds_the_requests_under_way() {
    // Chained after the source, or fed over the network.
    for (mode, rebalance) in [(AsyncMode::Ordered, false), (AsyncMode::Unordered, true)] {
        let concurrency = Concurrency::default();
        let service = concurrency.clone();
        let out = run_lookup_job(2_000, |numbers| {
            let numbers = if rebalance {
                numbers.rebalance()
            } else {
                numbers
            };
            numbers.async_map("lookup", options(mode, 7), move |_| {
                let service = service.clone();
                move |n: u64| {
                    let service = service.clone();
                    async move {
                        service.call(Duration::from_millis(1)).await;
                        Ok(n)
                    }
                }
            })
        })
        .unwrap();
        assert_eq!(out.len(), 2_000, "{mode:?}");
        assert_eq!(
            concurrency.max(),
            7,
            "{mode:?}: up to the capacity, never more"
        );
    }
}

/// A service that fails its first `failures` calls, then answers.
fn flaky(failures: usize) -> impl Fn(&SubtaskInfo) -> Box<dyn FnMut(u64) -> AsyncResult<u64>> {
    let calls = Arc::new(AtomicUsize::new(0));
    move |_| {
        let calls = calls.clone();
        Box::new(move |n| {
            let call = calls.fetch_add(1, Ordering::SeqCst);
            Box::pin(async move {
                tokio::time::sleep(latency(n)).await;
                anyhow::ensure!(call >= failures, "service unavailable (call {call})");
                Ok(vec![n])
            })
        })
    }
}

/// `numbers → lookup (flaky) → out`; the output, or the job's error.
fn run_flaky(failures: usize, options: AsyncOptions) -> Result<Vec<u64>, JobError> {
    let service = flaky(failures);
    let mut records = run_lookup_job(500, |numbers| {
        numbers.async_map("lookup", options, move |info| {
            let mut call = service(info);
            move |n: u64| {
                let request = call(n);
                async move { Ok(request.await?[0]) }
            }
        })
    })?;
    records.sort_unstable();
    Ok(records)
}

#[test]
fn a_flaky_service_succeeds_with_retries_and_fails_the_job_without() {
    let retried = run_flaky(
        5,
        AsyncOptions {
            retry: RetryStrategy::fixed(3, Duration::from_millis(2)),
            ..options(AsyncMode::Unordered, 4)
        },
    )
    .unwrap();
    assert_eq!(retried, (0..500).collect::<Vec<_>>());

    let exponential = run_flaky(
        5,
        AsyncOptions {
            retry: RetryStrategy::exponential(
                5,
                Duration::from_millis(1),
                Duration::from_millis(8),
                2.0,
            ),
            ..options(AsyncMode::Ordered, 1)
        },
    )
    .unwrap();
    assert_eq!(
        exponential,
        (0..500).collect::<Vec<_>>(),
        "one request, five retries"
    );

    let error = run_flaky(5, options(AsyncMode::Ordered, 4)).unwrap_err();
    let JobError::OperatorFailed {
        operator, cause, ..
    } = &error
    else {
        panic!("{error}")
    };
    assert_eq!(operator, "lookup");
    assert!(
        cause.contains("an async request failed: service unavailable"),
        "{error}"
    );

    let exhausted = run_flaky(
        5,
        AsyncOptions {
            retry: RetryStrategy::fixed(2, Duration::from_millis(1)),
            ..options(AsyncMode::Ordered, 1)
        },
    )
    .unwrap_err()
    .to_string();
    assert!(
        exhausted.contains("operator lookup (subtask 0) failed: an async request failed 3 times"),
        "{exhausted}"
    );
}

/// Answers every record but `stuck`, for which it never answers; a timeout handler
/// (if `fallback`) answers `u64::MAX` instead. Retries results of 0 once (the
/// service answers 0 to the first call for each multiple of 10).
struct Lookup {
    stuck: u64,
    fallback: bool,
    first_calls: std::collections::HashSet<u64>,
}

impl AsyncFunction for Lookup {
    type In = u64;
    type Out = u64;

    fn invoke(&mut self, n: u64) -> AsyncResult<u64> {
        let first = self.first_calls.insert(n);
        let stuck = n == self.stuck;
        Box::pin(async move {
            if stuck {
                tokio::time::sleep(Duration::from_secs(3600)).await;
            }
            tokio::time::sleep(latency(n)).await;
            Ok(vec![if first && n % 10 == 0 { 0 } else { n + 1 }])
        })
    }

    fn retry_result(&mut self, outputs: &[u64]) -> bool {
        outputs == [0]
    }

    fn timeout(&mut self, _: &u64) -> anyhow::Result<Option<Vec<u64>>> {
        Ok(self.fallback.then(|| vec![u64::MAX]))
    }
}

fn run_lookup(stuck: u64, fallback: bool) -> Result<Vec<u64>, JobError> {
    let options = AsyncOptions {
        timeout: Duration::from_millis(200),
        retry: RetryStrategy::fixed(1, Duration::from_millis(1)),
        ..options(AsyncMode::Ordered, 20)
    };
    run_lookup_job(300, |numbers| {
        numbers.async_process("lookup", options, move |_| Lookup {
            stuck,
            fallback,
            first_calls: Default::default(),
        })
    })
}

#[test]
fn a_request_without_an_answer_times_out_and_unsatisfying_results_are_retried() {
    let answered = run_lookup(u64::MAX, false).unwrap();
    assert_eq!(
        answered,
        (1..=300).collect::<Vec<_>>(),
        "each 0 result was retried (once) and gave way to the answer"
    );

    let error = run_lookup(42, false).unwrap_err().to_string();
    assert!(
        error
            .contains("operator lookup (subtask 0) failed: an async request timed out after 200ms"),
        "{error}"
    );

    let handled = run_lookup(42, true).unwrap();
    let mut expected: Vec<u64> = (1..=300).collect();
    expected[42] = u64::MAX;
    assert_eq!(
        handled, expected,
        "the timeout handler's answer, in its place"
    );
}

#[test]
fn a_panicking_request_fails_the_job_naming_the_operator() {
    let job = StreamJob::new(JobConfig::default());
    job.source("numbers", |info| Sequence::new(info, 100))
        .async_map("lookup", AsyncOptions::default(), |_| {
            |n: u64| async move {
                tokio::time::sleep(latency(n)).await;
                assert!(n != 57, "no answer for {n}");
                Ok(n)
            }
        })
        .sink("out", |_| CollectSink(Arc::default(), 0));
    let error = job.run().unwrap_err().to_string();
    assert!(error.contains("operator lookup"), "{error}");
    assert!(error.contains("panic: no answer for 57"), "{error}");
}

/// A `Numbers` source that records where each subtask resumed.
struct Resuming {
    numbers: Numbers,
    index: u32,
    resumed: Arc<Mutex<BTreeMap<u32, u64>>>,
}

impl Source for Resuming {
    type Out = u64;
    fn poll(&mut self, ctx: &mut Context<'_, u64>, max: usize) -> anyhow::Result<SourcePoll> {
        self.numbers.poll(ctx, max)
    }
    fn snapshot_position(&mut self) -> anyhow::Result<Option<Vec<u8>>> {
        self.numbers.snapshot_position()
    }
    fn restore_position(&mut self, position: &[u8]) -> anyhow::Result<()> {
        let at = u64::from_le_bytes(position.try_into()?);
        self.resumed.lock().unwrap().insert(self.index, at);
        self.numbers.restore_position(position)
    }
}

#[test]
fn a_failure_with_requests_in_flight_loses_none_and_commits_each_result_once() {
    // Chained after the source, or fed over the network (its subtask then stops
    // taking batches from its gate while full); aligned or unaligned checkpoints.
    for (mode, checkpoints, rebalance) in [
        (AsyncMode::Ordered, CheckpointMode::Aligned, false),
        (AsyncMode::Unordered, CheckpointMode::Aligned, true),
        (AsyncMode::Ordered, CheckpointMode::Unaligned, true),
    ] {
        let setting = format!("{mode:?}, {checkpoints:?}, rebalanced: {rebalance}");
        let (chk, out) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let job = StreamJob::new(JobConfig {
            parallelism: 2,
            workers: 2,
            checkpoint: Some(CheckpointConfig {
                interval: Duration::from_millis(20),
                mode: checkpoints,
                ..CheckpointConfig::new(chk.path())
            }),
            restart: Some(RestartStrategy::FixedDelay {
                attempts: 3,
                delay_ms: 5,
            }),
            ..JobConfig::default()
        });
        let files = ExactlyOnceFileSink::new(out.path(), |(key, count): &(u64, u64), line| {
            line.push_str(&format!("{key},{count}\n"))
        })
        .roll_bytes(4096);
        let resumed = Arc::new(Mutex::new(BTreeMap::new()));
        let calls = Arc::new(Mutex::new(Vec::new()));
        let concurrency = Concurrency::default();
        let in_flight_at_failure = Arc::new(AtomicUsize::new(0));
        let (resumed_at, service, calls_seen) =
            (resumed.clone(), concurrency.clone(), calls.clone());
        let failed = in_flight_at_failure.clone();
        let numbers = job.source("numbers", move |info| Resuming {
            numbers: Numbers::new(info, Faults::default()),
            index: info.index,
            resumed: resumed_at.clone(),
        });
        let numbers = if rebalance {
            numbers.rebalance()
        } else {
            numbers
        };
        numbers
            .async_map("lookup", options(mode, 100), move |info| {
                let (service, calls, attempt) = (service.clone(), calls_seen.clone(), info.attempt);
                move |n: u64| {
                    calls.lock().unwrap().push((attempt, n));
                    let service = service.clone();
                    async move {
                        service.call(latency(n)).await;
                        Ok(n)
                    }
                }
            })
            .map("fail once", move |n| {
                // Downstream of the requests under way, once (the first attempt only).
                if n >= RECORDS / 2 && failed.load(Ordering::SeqCst) == 0 {
                    failed.store(concurrency.now.load(Ordering::SeqCst) + 1, Ordering::SeqCst);
                    panic!("injected failure at record {n}");
                }
                (n % KEYS, 1u64)
            })
            .key_by(|(key, _)| *key)
            .reduce("count", |(key, a), (_, b)| (*key, a + b))
            .sink("files", move |_| files.clone());
        let report = job.run().unwrap();

        assert_eq!(report.restarts, 1, "{setting}");
        assert!(
            in_flight_at_failure.load(Ordering::SeqCst) > 1,
            "{setting}: requests were under way when the job failed"
        );
        assert_exactly_once(out.path());
        // The restored attempt called the service again for records its sources did
        // not replay: requests the checkpoint caught in flight.
        let resumed = resumed.lock().unwrap();
        let reissued = calls
            .lock()
            .unwrap()
            .iter()
            .filter(|(attempt, n)| *attempt > 0 && *n < resumed[&((n % 2) as u32)])
            .count();
        assert!(reissued > 0, "{setting}: in-flight requests were re-issued");
    }
}
