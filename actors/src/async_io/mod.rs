//! Async I/O (Flink's `AsyncWaitOperator`): an operator that calls an external
//! service per record without waiting for each answer in turn.
//!
//! The protocol. Each record starts a request (a future of the user's
//! [`AsyncFunction`]), spawned on the subtask's worker thread; when it completes it
//! leaves its result in the stage and wakes the subtask (a message), which then runs
//! the chain's `on_wake`: results go downstream, failed attempts are retried after
//! their backoff, and waiting records are issued as capacity frees up. At most
//! `capacity` records are issued and not yet emitted; a batch larger than the free
//! capacity waits inside the stage (at most one batch), and while anything waits
//! the chain says it is full, so the subtask takes no more input from its gate (or
//! source): credits stop, backpressure reaches the sources. Ordered mode emits in
//! input order; unordered mode emits results as they complete but never across a
//! watermark (see `queue.rs`, the I/O-free queue and retry decisions).
//!
//! A checkpoint keeps the input of every record whose result has not gone
//! downstream yet (pending, in backoff, done but held back, or waiting) as the
//! operator-state list [`ASYNC_IN_FLIGHT_STATE`] (split redistribution, like a
//! source's splits); a restored subtask issues its share again before any new
//! input. Results emitted before the barrier are covered by the downstream state,
//! the rest are produced again: exactly once with an exactly-once sink. At the end
//! of input the stage waits for every request before it finishes. Watermarks in the
//! queue are not kept (the sources regenerate them; none of them had gone
//! downstream).

pub(crate) mod queue;
pub(crate) mod stage;

use crate::operator::{Data, SubtaskInfo};
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

/// The operator-state list (split redistribution) in which an async operator's
/// in-flight inputs are kept in a checkpoint: one element per record, postcard bytes.
pub const ASYNC_IN_FLIGHT_STATE: &str = "async-in-flight";

/// The future of one request: the outputs of its record (any number), or an error.
pub type AsyncResult<Out> = Pin<Box<dyn Future<Output = anyhow::Result<Vec<Out>>>>>;

/// A function that answers each record asynchronously (Flink's `AsyncFunction`).
///
/// One instance per subtask, built on the subtask's worker thread (so it need not
/// be `Send`); its futures run there too, on a tokio current-thread runtime:
/// tokio timers and other single-threaded async I/O work; blocking calls stall
/// the worker thread and every subtask on it.
pub trait AsyncFunction: 'static {
    type In: Data;
    type Out: Data;

    fn open(&mut self, _info: &SubtaskInfo) -> anyhow::Result<()> {
        Ok(())
    }

    /// Starts the request for `input`. Called again for every retry, and again
    /// after a restore for requests a checkpoint caught in flight: the service may
    /// see a record more than once (at-least-once calls), the output downstream
    /// holds each result once.
    fn invoke(&mut self, input: Self::In) -> AsyncResult<Self::Out>;

    /// A result that should be retried (Flink's result predicate), as the retry
    /// strategy allows; if no retry is left it is emitted.
    fn retry_result(&mut self, _outputs: &[Self::Out]) -> bool {
        false
    }

    /// No result within the timeout (retries included): `Ok(None)` (the default)
    /// fails the operator with a timeout error, `Ok(Some(outputs))` emits those
    /// instead, `Err` fails with that error.
    fn timeout(&mut self, _input: &Self::In) -> anyhow::Result<Option<Vec<Self::Out>>> {
        Ok(None)
    }
}

/// The order in which results go downstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AsyncMode {
    /// In input order (Flink's `orderedWait`): a slow request holds back the results
    /// after it.
    #[default]
    Ordered,
    /// As requests complete (Flink's `unorderedWait`), but never across a watermark:
    /// the records between two watermarks leave between them.
    Unordered,
}

/// When a failed attempt (an error, or a result [`AsyncFunction::retry_result`]
/// rejects) is tried again.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum RetryStrategy {
    /// The first error fails the operator.
    #[default]
    None,
    /// Up to `max_retries` more attempts, `delay` apart.
    Fixed { max_retries: u32, delay: Duration },
    /// Up to `max_retries` more attempts, the first after `initial`, each next delay
    /// `multiplier` times the last, at most `max`.
    Exponential {
        max_retries: u32,
        initial: Duration,
        max: Duration,
        multiplier: f64,
    },
}

impl RetryStrategy {
    pub fn fixed(max_retries: u32, delay: Duration) -> Self {
        RetryStrategy::Fixed { max_retries, delay }
    }

    pub fn exponential(
        max_retries: u32,
        initial: Duration,
        max: Duration,
        multiplier: f64,
    ) -> Self {
        RetryStrategy::Exponential {
            max_retries,
            initial,
            max,
            multiplier,
        }
    }

    /// The delay before attempt `attempt` (the first retry is attempt 2), or `None`
    /// if no such attempt is allowed.
    pub fn delay_before(&self, attempt: u32) -> Option<Duration> {
        let retry = attempt.checked_sub(1).filter(|&r| r >= 1)?;
        match *self {
            RetryStrategy::None => None,
            RetryStrategy::Fixed { max_retries, delay } => (retry <= max_retries).then_some(delay),
            RetryStrategy::Exponential {
                max_retries,
                initial,
                max,
                multiplier,
            } => (retry <= max_retries).then(|| {
                let factor = multiplier.max(1.0).powi(retry as i32 - 1);
                Duration::try_from_secs_f64(initial.as_secs_f64() * factor)
                    .unwrap_or(max)
                    .min(max)
            }),
        }
    }
}

/// How an async operator runs. The defaults: ordered, capacity 100, a 10 s timeout,
/// no retries.
#[derive(Debug, Clone, PartialEq)]
pub struct AsyncOptions {
    pub mode: AsyncMode,
    /// Records issued and not yet emitted, at most (per subtask); must be positive.
    pub capacity: usize,
    /// How long a request may take from its first attempt to its result, retries and
    /// their delays included (as in Flink); then [`AsyncFunction::timeout`] decides.
    pub timeout: Duration,
    pub retry: RetryStrategy,
}

impl Default for AsyncOptions {
    fn default() -> Self {
        AsyncOptions {
            mode: AsyncMode::Ordered,
            capacity: 100,
            timeout: Duration::from_secs(10),
            retry: RetryStrategy::None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delays_follow_the_strategy_and_stop_after_the_last_retry() {
        let ms = Duration::from_millis;
        let delays = |s: RetryStrategy| (1..6).map(|a| s.delay_before(a)).collect::<Vec<_>>();
        assert_eq!(delays(RetryStrategy::None), [None; 5]);
        assert_eq!(
            delays(RetryStrategy::fixed(2, ms(5))),
            [None, Some(ms(5)), Some(ms(5)), None, None]
        );
        assert_eq!(
            delays(RetryStrategy::exponential(4, ms(10), ms(30), 2.0)),
            [None, Some(ms(10)), Some(ms(20)), Some(ms(30)), Some(ms(30))]
        );
    }
}
