//! The async I/O operator's queue as an I/O-free state machine (Flink's
//! `OrderedStreamElementQueue` and `UnorderedStreamElementQueue`, plus the retry
//! decisions of its `AsyncRetryStrategy`).
//!
//! Every input record becomes an *entry* numbered in input order. An entry is
//! *waiting* (pushed, not yet issued: the overflow of a batch larger than the free
//! capacity), *running* (a request is under way), in *backoff* (waiting for a retry)
//! or *done* (its outputs are known but not yet emitted). At most `capacity` entries
//! are issued and not yet emitted; `accepts_input` is false while that many are, or
//! while any entry waits, so the subtask takes no more input (backpressure).
//!
//! Watermarks and idleness changes (*markers*) cut the entries into *sections*: a
//! marker follows every record before it and precedes every record after it. Ordered
//! mode emits entries in input order; unordered mode emits the entries of the oldest
//! section in the order they complete, and a section's markers once all its entries
//! are out: no record ever crosses a marker.
//!
//! The inputs of every entry not yet emitted are what a checkpoint keeps
//! ([`AsyncQueue::in_flight`]); a restored queue issues them again.

use super::RetryStrategy;
use crate::operator::EventTime;
use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

/// A watermark or a change of the input's idleness, kept in place among the records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Marker {
    Watermark(EventTime),
    Idle(bool),
}

/// What [`AsyncQueue::drain`] hands downstream, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Emitted<O> {
    /// The outputs of one entry.
    Outputs(Vec<O>),
    Marker(Marker),
}

/// How one attempt of a request ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome<O> {
    /// A result to emit.
    Returned(Vec<O>),
    /// A result the function asked to retry (its retry predicate matched); emitted
    /// if no retry is left.
    Unsatisfying(Vec<O>),
    /// An error: retried if the strategy allows, else the operator fails.
    Failed(String),
}

/// What the operator does after an attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The entry is done (or the report was stale: nothing to do).
    Done,
    Stale,
    /// Attempt `attempt` starts after `delay`.
    Retry {
        attempt: u32,
        delay: Duration,
    },
    /// The request failed for good: the operator fails.
    Fail {
        attempts: u32,
        cause: String,
    },
}

#[derive(Debug)]
enum State<O> {
    Waiting,
    Running { attempt: u32 },
    Backoff { attempt: u32 },
    Done(Vec<O>),
}

#[derive(Debug)]
struct Entry<I, O> {
    input: I,
    state: State<O>,
}

/// Entries numbered below `end` (and at or above the previous section's `end`),
/// then `markers`. The last section is open: `end` is `u64::MAX`, no markers.
#[derive(Debug)]
struct Section {
    end: u64,
    markers: Vec<Marker>,
    /// Done entries of this section in completion order (unordered mode).
    completed: VecDeque<u64>,
}

impl Section {
    fn open() -> Self {
        Section {
            end: u64::MAX,
            markers: Vec::new(),
            completed: VecDeque::new(),
        }
    }
}

#[derive(Debug)]
pub struct AsyncQueue<I, O> {
    ordered: bool,
    capacity: usize,
    retry: RetryStrategy,
    next_seq: u64,
    entries: BTreeMap<u64, Entry<I, O>>,
    sections: VecDeque<Section>,
    waiting: VecDeque<u64>,
    /// Issued and not yet emitted.
    occupied: usize,
}

impl<I, O> AsyncQueue<I, O> {
    /// # Panics
    /// If `capacity` is zero.
    pub fn new(ordered: bool, capacity: usize, retry: RetryStrategy) -> Self {
        assert!(
            capacity > 0,
            "the capacity of an async operator must be positive"
        );
        AsyncQueue {
            ordered,
            capacity,
            retry,
            next_seq: 0,
            entries: BTreeMap::new(),
            sections: VecDeque::from([Section::open()]),
            waiting: VecDeque::new(),
            occupied: 0,
        }
    }

    /// Whether the operator should take more input now.
    pub fn accepts_input(&self) -> bool {
        self.waiting.is_empty() && self.occupied < self.capacity
    }

    /// No entry left (every marker pushed has been drained too, once `drain` ran).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Entries issued and not yet emitted (never above the capacity).
    #[cfg(test)]
    pub fn occupied(&self) -> usize {
        self.occupied
    }

    /// Appends a record; it waits until [`AsyncQueue::next_issue`] issues it.
    pub fn push(&mut self, input: I) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.entries.insert(
            seq,
            Entry {
                input,
                state: State::Waiting,
            },
        );
        self.waiting.push_back(seq);
        seq
    }

    /// Appends a watermark or idleness change behind every record pushed so far.
    /// Markers with no record between them are coalesced: the later watermark
    /// stands for both, a repeated status is dropped and a status change undone
    /// before any record cancels out (the downstream channel ends in the same state).
    pub fn push_marker(&mut self, marker: Marker) {
        let open_start = match self.sections.len() {
            1 => None,
            n => Some(self.sections[n - 2].end),
        };
        let open_is_empty = open_start == Some(self.next_seq);
        if !open_is_empty {
            // Close the open section behind the records so far.
            let open = self.sections.back_mut().expect("there is an open section");
            open.end = self.next_seq;
            open.markers.push(marker);
            self.sections.push_back(Section::open());
            return;
        }
        let n = self.sections.len();
        let markers = &mut self.sections[n - 2].markers;
        match (markers.last().copied(), marker) {
            (Some(Marker::Watermark(a)), Marker::Watermark(b)) => {
                *markers.last_mut().expect("a last marker") = Marker::Watermark(a.max(b));
            }
            (Some(Marker::Idle(a)), Marker::Idle(b)) if a == b => {}
            (Some(Marker::Idle(_)), Marker::Idle(_)) => {
                markers.pop();
            }
            _ => markers.push(marker),
        }
    }

    /// The next entry to issue (its first attempt), if the capacity allows.
    pub fn next_issue(&mut self) -> Option<u64> {
        if self.occupied >= self.capacity {
            return None;
        }
        let seq = self.waiting.pop_front()?;
        self.entries
            .get_mut(&seq)
            .expect("waiting entries exist")
            .state = State::Running { attempt: 1 };
        self.occupied += 1;
        Some(seq)
    }

    pub fn input(&self, seq: u64) -> Option<&I> {
        self.entries.get(&seq).map(|e| &e.input)
    }

    /// Whether `attempt` is the current attempt of `seq` (running or in backoff):
    /// reports about older attempts, or about entries done, are stale.
    pub fn is_current(&self, seq: u64, attempt: u32) -> bool {
        matches!(
            self.entries.get(&seq).map(|e| &e.state),
            Some(State::Running { attempt: a } | State::Backoff { attempt: a }) if *a == attempt
        )
    }

    /// Attempt `attempt` of `seq` ended with `outcome`.
    pub fn on_attempt(&mut self, seq: u64, attempt: u32, outcome: Outcome<O>) -> Decision {
        let running = matches!(
            self.entries.get(&seq).map(|e| &e.state),
            Some(State::Running { attempt: a }) if *a == attempt
        );
        if !running {
            return Decision::Stale;
        }
        let retry_delay = self.retry.delay_before(attempt + 1);
        match (outcome, retry_delay) {
            (Outcome::Returned(outputs), _) | (Outcome::Unsatisfying(outputs), None) => {
                self.complete(seq, outputs);
                Decision::Done
            }
            (Outcome::Unsatisfying(_) | Outcome::Failed(_), Some(delay)) => {
                let entry = self.entries.get_mut(&seq).expect("checked above");
                entry.state = State::Backoff {
                    attempt: attempt + 1,
                };
                Decision::Retry {
                    attempt: attempt + 1,
                    delay,
                }
            }
            (Outcome::Failed(cause), None) => Decision::Fail {
                attempts: attempt,
                cause,
            },
        }
    }

    /// The backoff before attempt `attempt` of `seq` is over: true if it should
    /// start now (it is not stale).
    pub fn retry_due(&mut self, seq: u64, attempt: u32) -> bool {
        let Some(entry) = self.entries.get_mut(&seq) else {
            return false;
        };
        match entry.state {
            State::Backoff { attempt: a } if a == attempt => {
                entry.state = State::Running { attempt };
                true
            }
            _ => false,
        }
    }

    /// `seq` is done with `outputs` (a result, or what the timeout handler gave),
    /// whatever attempt is under way.
    pub fn complete(&mut self, seq: u64, outputs: Vec<O>) {
        let Some(entry) = self.entries.get_mut(&seq) else {
            return;
        };
        if matches!(entry.state, State::Waiting | State::Done(_)) {
            return;
        }
        entry.state = State::Done(outputs);
        if !self.ordered {
            let section = self.sections.partition_point(|s| s.end <= seq);
            self.sections[section].completed.push_back(seq);
        }
    }

    /// Appends to `out` everything that may go downstream now, in order.
    pub fn drain(&mut self, out: &mut Vec<Emitted<O>>) {
        loop {
            let section = self.sections.front_mut().expect("there is an open section");
            if self.ordered {
                while let Some(first) = self.entries.first_entry() {
                    if *first.key() >= section.end || !matches!(first.get().state, State::Done(_)) {
                        break;
                    }
                    let State::Done(outputs) = first.remove().state else {
                        unreachable!("checked above")
                    };
                    self.occupied -= 1;
                    out.push(Emitted::Outputs(outputs));
                }
            } else {
                while let Some(seq) = section.completed.pop_front() {
                    let entry = self.entries.remove(&seq).expect("completed entries exist");
                    let State::Done(outputs) = entry.state else {
                        unreachable!("only done entries are completed")
                    };
                    self.occupied -= 1;
                    out.push(Emitted::Outputs(outputs));
                }
            }
            let section_left = self.entries.range(..section.end).next().is_some();
            if section_left || self.sections.len() == 1 {
                return;
            }
            let section = self.sections.pop_front().expect("checked above");
            out.extend(section.markers.into_iter().map(Emitted::Marker));
        }
    }

    /// The inputs of every entry not yet emitted, in input order: what a checkpoint
    /// keeps and a restored operator issues again.
    pub fn in_flight(&self) -> impl Iterator<Item = &I> {
        self.entries.values().map(|e| &e.input)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    fn queue(ordered: bool, capacity: usize) -> AsyncQueue<u32, u32> {
        AsyncQueue::new(ordered, capacity, RetryStrategy::None)
    }

    fn drained(q: &mut AsyncQueue<u32, u32>) -> Vec<Emitted<u32>> {
        let mut out = Vec::new();
        q.drain(&mut out);
        out
    }

    fn issue_all(q: &mut AsyncQueue<u32, u32>) -> Vec<u64> {
        std::iter::from_fn(|| q.next_issue()).collect()
    }

    use Emitted::{Marker as M, Outputs as O};

    #[test]
    fn ordered_mode_emits_in_input_order_whatever_completes_first() {
        let mut q = queue(true, 10);
        for i in 0..3 {
            q.push(i);
        }
        assert_eq!(issue_all(&mut q), [0, 1, 2]);
        q.on_attempt(2, 1, Outcome::Returned(vec![20]));
        q.on_attempt(1, 1, Outcome::Returned(vec![10, 11]));
        assert_eq!(drained(&mut q), []);
        q.on_attempt(0, 1, Outcome::Returned(vec![]));
        assert_eq!(drained(&mut q), [O(vec![]), O(vec![10, 11]), O(vec![20])]);
        assert!(q.is_empty());
        assert_eq!(q.occupied(), 0);
    }

    #[test]
    fn unordered_mode_emits_as_completed_but_never_across_a_watermark() {
        let mut q = queue(false, 10);
        q.push(0);
        q.push(1);
        q.push_marker(Marker::Watermark(5));
        q.push(2);
        issue_all(&mut q);
        q.on_attempt(2, 1, Outcome::Returned(vec![2]));
        q.on_attempt(1, 1, Outcome::Returned(vec![1]));
        assert_eq!(
            drained(&mut q),
            [O(vec![1])],
            "2 waits behind the watermark"
        );
        q.on_attempt(0, 1, Outcome::Returned(vec![0]));
        assert_eq!(
            drained(&mut q),
            [O(vec![0]), M(Marker::Watermark(5)), O(vec![2])]
        );
    }

    #[test]
    fn a_marker_on_an_empty_queue_goes_out_at_once() {
        let mut q = queue(false, 10);
        q.push_marker(Marker::Watermark(1));
        assert_eq!(drained(&mut q), [M(Marker::Watermark(1))]);
        q.push_marker(Marker::Idle(true));
        assert_eq!(drained(&mut q), [M(Marker::Idle(true))]);
    }

    #[test]
    fn markers_without_records_between_them_coalesce() {
        let mut q = queue(true, 10);
        q.push(0);
        q.push_marker(Marker::Idle(false));
        q.push_marker(Marker::Watermark(1));
        q.push_marker(Marker::Watermark(3));
        q.push_marker(Marker::Idle(true));
        q.push_marker(Marker::Idle(true));
        q.push_marker(Marker::Idle(false));
        issue_all(&mut q);
        q.on_attempt(0, 1, Outcome::Returned(vec![0]));
        assert_eq!(
            drained(&mut q),
            [O(vec![0]), M(Marker::Idle(false)), M(Marker::Watermark(3))]
        );
    }

    #[test]
    fn capacity_bounds_issued_entries_until_they_are_emitted() {
        let mut q = queue(true, 2);
        for i in 0..5 {
            q.push(i);
        }
        assert!(!q.accepts_input(), "entries wait");
        assert_eq!(issue_all(&mut q), [0, 1]);
        q.on_attempt(1, 1, Outcome::Returned(vec![1]));
        assert_eq!(q.next_issue(), None, "done but not emitted still occupies");
        q.on_attempt(0, 1, Outcome::Returned(vec![0]));
        drained(&mut q);
        assert_eq!(issue_all(&mut q), [2, 3]);
        assert!(!q.accepts_input());
        q.on_attempt(2, 1, Outcome::Returned(vec![2]));
        q.on_attempt(3, 1, Outcome::Returned(vec![3]));
        drained(&mut q);
        assert_eq!(issue_all(&mut q), [4]);
        assert!(q.accepts_input());
    }

    #[test]
    fn in_flight_lists_every_entry_not_emitted_in_input_order() {
        let mut q = queue(false, 2);
        for i in 0..4 {
            q.push(i * 10);
        }
        issue_all(&mut q);
        q.on_attempt(1, 1, Outcome::Returned(vec![1]));
        assert_eq!(q.in_flight().copied().collect::<Vec<_>>(), [0, 10, 20, 30]);
        drained(&mut q);
        assert_eq!(q.in_flight().copied().collect::<Vec<_>>(), [0, 20, 30]);
    }

    #[test]
    fn errors_retry_with_the_strategy_then_fail() {
        let mut q: AsyncQueue<u32, u32> =
            AsyncQueue::new(true, 4, RetryStrategy::fixed(2, Duration::from_millis(10)));
        q.push(7);
        issue_all(&mut q);
        let failed = || Outcome::Failed("refused".into());
        let retry = |attempt| Decision::Retry {
            attempt,
            delay: Duration::from_millis(10),
        };
        assert_eq!(q.on_attempt(0, 1, failed()), retry(2));
        assert!(q.is_current(0, 2) && !q.is_current(0, 1));
        assert_eq!(q.on_attempt(0, 2, failed()), Decision::Stale, "in backoff");
        assert!(q.retry_due(0, 2));
        assert!(!q.retry_due(0, 2), "once");
        assert_eq!(q.on_attempt(0, 2, failed()), retry(3));
        assert!(q.retry_due(0, 3));
        assert_eq!(
            q.on_attempt(0, 3, failed()),
            Decision::Fail {
                attempts: 3,
                cause: "refused".into()
            }
        );
    }

    #[test]
    fn unsatisfying_results_retry_and_the_last_one_is_emitted() {
        let mut q: AsyncQueue<u32, u32> = AsyncQueue::new(
            true,
            4,
            RetryStrategy::exponential(1, Duration::from_millis(4), Duration::from_secs(1), 2.0),
        );
        q.push(7);
        issue_all(&mut q);
        assert!(matches!(
            q.on_attempt(0, 1, Outcome::Unsatisfying(vec![1])),
            Decision::Retry { attempt: 2, .. }
        ));
        assert!(q.retry_due(0, 2));
        assert_eq!(
            q.on_attempt(0, 2, Outcome::Unsatisfying(vec![2])),
            Decision::Done
        );
        assert_eq!(drained(&mut q), [O(vec![2])]);
    }

    #[test]
    fn a_timeout_completes_whatever_attempt_runs() {
        let mut q = queue(true, 4);
        q.push(1);
        issue_all(&mut q);
        q.complete(0, vec![99]);
        assert_eq!(
            q.on_attempt(0, 1, Outcome::Returned(vec![1])),
            Decision::Stale
        );
        assert_eq!(drained(&mut q), [O(vec![99])]);
    }

    /// One step of a random run.
    #[derive(Debug, Clone)]
    enum Op {
        Push,
        Watermark,
        /// Ends the attempt of the `n`th running entry (modulo their number): a
        /// result, or an error that is retried.
        Finish(usize, bool),
        /// Ends the backoff of the `n`th entry in backoff.
        RetryDue(usize),
        Drain,
        /// Checkpoint: what was emitted and what is in flight are the input so far.
        Snapshot,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => Just(Op::Push),
            1 => Just(Op::Watermark),
            4 => (any::<usize>(), proptest::bool::weighted(0.2)).prop_map(|(n, e)| Op::Finish(n, e)),
            1 => any::<usize>().prop_map(Op::RetryDue),
            2 => Just(Op::Drain),
            1 => Just(Op::Snapshot),
        ]
    }

    /// The run's events as they went in (records and watermarks) and came out.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
    enum Event {
        Record(u32),
        Watermark(EventTime),
    }

    fn run(ordered: bool, capacity: usize, ops: &[Op]) -> (Vec<Event>, Vec<Event>) {
        let mut q: AsyncQueue<u32, u32> = AsyncQueue::new(
            ordered,
            capacity,
            RetryStrategy::fixed(u32::MAX, Duration::ZERO),
        );
        let (mut input, mut output) = (Vec::new(), Vec::new());
        let (mut next, mut watermark) = (0u32, 0);
        let mut emitted = Vec::new();
        let mut take = |q: &mut AsyncQueue<u32, u32>, output: &mut Vec<Event>| {
            q.drain(&mut emitted);
            for e in emitted.drain(..) {
                match e {
                    Emitted::Outputs(records) => {
                        output.extend(records.into_iter().map(Event::Record))
                    }
                    Emitted::Marker(Marker::Watermark(w)) => output.push(Event::Watermark(w)),
                    Emitted::Marker(Marker::Idle(_)) => unreachable!("none pushed"),
                }
            }
        };
        let states = |q: &AsyncQueue<u32, u32>, backoff: bool| -> Vec<(u64, u32)> {
            q.entries
                .iter()
                .filter_map(|(seq, e)| match e.state {
                    State::Running { attempt } if !backoff => Some((*seq, attempt)),
                    State::Backoff { attempt } if backoff => Some((*seq, attempt)),
                    _ => None,
                })
                .collect()
        };
        for op in ops {
            match op {
                Op::Push if q.accepts_input() => {
                    q.push(next);
                    input.push(Event::Record(next));
                    next += 1;
                }
                Op::Push => {}
                Op::Watermark => {
                    watermark += 1;
                    q.push_marker(Marker::Watermark(watermark));
                    input.push(Event::Watermark(watermark));
                }
                Op::Finish(n, error) => {
                    let running = states(&q, false);
                    if let Some(&(seq, attempt)) = running.get(n % running.len().max(1)) {
                        let input = *q.input(seq).unwrap();
                        let outcome = if *error {
                            Outcome::Failed("flaky".into())
                        } else {
                            Outcome::Returned(vec![input])
                        };
                        let decision = q.on_attempt(seq, attempt, outcome);
                        assert!(matches!(decision, Decision::Done | Decision::Retry { .. }));
                    }
                }
                Op::RetryDue(n) => {
                    let backoff = states(&q, true);
                    if let Some(&(seq, attempt)) = backoff.get(n % backoff.len().max(1)) {
                        assert!(q.retry_due(seq, attempt));
                    }
                }
                Op::Drain => take(&mut q, &mut output),
                Op::Snapshot => {
                    let mut covered: Vec<u32> = q.in_flight().copied().collect();
                    covered.extend(output.iter().filter_map(|e| match e {
                        Event::Record(r) => Some(*r),
                        Event::Watermark(_) => None,
                    }));
                    covered.sort_unstable();
                    assert_eq!(covered, (0..next).collect::<Vec<_>>(), "lost or doubled");
                }
            }
            while q.next_issue().is_some() {}
            assert!(q.occupied() <= capacity);
        }
        // The end of input: every request completes.
        while !q.is_empty() {
            for (seq, attempt) in states(&q, true) {
                q.retry_due(seq, attempt);
            }
            for (seq, attempt) in states(&q, false) {
                let input = *q.input(seq).unwrap();
                q.on_attempt(seq, attempt, Outcome::Returned(vec![input]));
            }
            take(&mut q, &mut output);
            while q.next_issue().is_some() {}
        }
        take(&mut q, &mut output);
        (input, output)
    }

    /// The input as the queue passed it on: watermarks with no record between them
    /// may coalesce into the last of them (asserted: only those are missing), so the
    /// watermarks missing from `output` are left out.
    fn as_passed_on(input: &[Event], output: &[Event]) -> Vec<Event> {
        let kept: BTreeSet<&Event> = output.iter().collect();
        input
            .iter()
            .enumerate()
            .filter(|&(i, e)| {
                let coalesced = matches!(e, Event::Watermark(_)) && !kept.contains(e);
                if coalesced {
                    assert!(
                        matches!(input.get(i + 1), Some(Event::Watermark(_))),
                        "{e:?} went missing, not coalesced into a later one"
                    );
                }
                !coalesced
            })
            .map(|(_, e)| *e)
            .collect()
    }

    /// The number of watermarks before each record.
    fn epochs(events: &[Event]) -> BTreeMap<u32, usize> {
        let mut watermarks = 0;
        let mut epochs = BTreeMap::new();
        for e in events {
            match e {
                Event::Watermark(_) => watermarks += 1,
                Event::Record(r) => {
                    epochs.insert(*r, watermarks);
                }
            }
        }
        epochs
    }

    proptest! {
        #[test]
        fn ordered_output_is_the_input(capacity in 1usize..6, ops in proptest::collection::vec(op(), 0..200)) {
            let (input, output) = run(true, capacity, &ops);
            prop_assert_eq!(as_passed_on(&input, &output), output);
        }

        #[test]
        fn unordered_output_keeps_every_record_between_its_watermarks(capacity in 1usize..6, ops in proptest::collection::vec(op(), 0..200)) {
            let (input, output) = run(false, capacity, &ops);
            let input = as_passed_on(&input, &output);
            let watermarks = |e: &[Event]| e.iter().filter(|e| matches!(e, Event::Watermark(_))).copied().collect::<Vec<_>>();
            prop_assert_eq!(watermarks(&output), watermarks(&input), "every watermark, in order");
            prop_assert_eq!(epochs(&output), epochs(&input), "no record crossed one");
            let records = |e: &[Event]| e.iter().filter(|e| matches!(e, Event::Record(_))).count();
            prop_assert_eq!(records(&output), records(&input), "none twice");
            let distinct: BTreeSet<_> = output.iter().collect();
            prop_assert_eq!(distinct.len(), output.len());
        }
    }
}
