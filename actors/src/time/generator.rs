//! Watermarks at the sources, as Flink's `WatermarkStrategy`: the watermark trails the
//! highest event time seen by the allowed out-of-orderness (`max - bound - 1`), is
//! emitted at most once per `interval`, and a source that has produced nothing for
//! `idle_timeout` declares itself idle, so downstream operators stop waiting for it.

use super::watermarks::{EventTime, MIN_WATERMARK};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How a source derives event times and watermarks from its records.
pub struct WatermarkStrategy<T> {
    timestamp: Arc<dyn Fn(&T) -> EventTime + Send + Sync>,
    max_out_of_orderness_ms: i64,
    idle_timeout: Option<Duration>,
    interval: Duration,
}

impl<T> Clone for WatermarkStrategy<T> {
    fn clone(&self) -> Self {
        WatermarkStrategy {
            timestamp: self.timestamp.clone(),
            max_out_of_orderness_ms: self.max_out_of_orderness_ms,
            idle_timeout: self.idle_timeout,
            interval: self.interval,
        }
    }
}

impl<T> WatermarkStrategy<T> {
    /// Records may arrive up to `max` late relative to the latest event time seen.
    pub fn bounded_out_of_orderness(
        max: Duration,
        timestamp: impl Fn(&T) -> EventTime + Send + Sync + 'static,
    ) -> Self {
        WatermarkStrategy {
            timestamp: Arc::new(timestamp),
            max_out_of_orderness_ms: i64::try_from(max.as_millis()).unwrap_or(i64::MAX),
            idle_timeout: None,
            interval: Duration::from_millis(200),
        }
    }

    /// Event times never decrease.
    pub fn monotonous(timestamp: impl Fn(&T) -> EventTime + Send + Sync + 'static) -> Self {
        Self::bounded_out_of_orderness(Duration::ZERO, timestamp)
    }

    /// Declare the source idle after `timeout` without records.
    pub fn with_idleness(mut self, timeout: Duration) -> Self {
        self.idle_timeout = Some(timeout);
        self
    }

    /// Emit watermarks at most this often (default 200 ms).
    pub fn with_interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    pub fn timestamp_of(&self, record: &T) -> EventTime {
        (self.timestamp)(record)
    }
}

/// What a source stage forwards after a poll.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct WatermarkUpdate {
    /// The source was idle and has records again (forward before the records).
    pub active_again: bool,
    pub watermark: Option<EventTime>,
    /// The source just became idle.
    pub idle: bool,
}

pub struct WatermarkGenerator<T> {
    strategy: WatermarkStrategy<T>,
    max_timestamp: Option<EventTime>,
    emitted: EventTime,
    last_emit: Option<Instant>,
    last_record: Instant,
    idle: bool,
}

impl<T> WatermarkGenerator<T> {
    pub fn new(strategy: WatermarkStrategy<T>, now: Instant) -> Self {
        WatermarkGenerator {
            strategy,
            max_timestamp: None,
            emitted: MIN_WATERMARK,
            last_emit: None,
            last_record: now,
            idle: false,
        }
    }

    /// The records one poll produced, at `now`.
    pub fn observe(&mut self, records: &[T], now: Instant) -> anyhow::Result<WatermarkUpdate> {
        let mut update = WatermarkUpdate::default();
        if let Some(max) = records.iter().map(|r| self.strategy.timestamp_of(r)).max() {
            self.max_timestamp = Some(self.max_timestamp.map_or(max, |m| m.max(max)));
            self.last_record = now;
            if self.idle {
                self.idle = false;
                update.active_again = true;
            }
        }
        let due = self
            .last_emit
            .is_none_or(|t| now.duration_since(t) >= self.strategy.interval);
        if let (true, Some(max)) = (due, self.max_timestamp) {
            let watermark = max
                .saturating_sub(self.strategy.max_out_of_orderness_ms)
                .saturating_sub(1);
            if watermark > self.emitted {
                self.emitted = watermark;
                self.last_emit = Some(now);
                update.watermark = Some(watermark);
            }
        }
        let quiet_for = now.duration_since(self.last_record);
        if records.is_empty()
            && !self.idle
            && self.strategy.idle_timeout.is_some_and(|t| quiet_for >= t)
        {
            self.idle = true;
            update.idle = true;
        }
        Ok(update)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trails_the_highest_event_time_by_the_bound_and_respects_the_interval() {
        let strategy =
            WatermarkStrategy::bounded_out_of_orderness(Duration::from_millis(10), |t: &i64| *t)
                .with_interval(Duration::from_millis(100));
        let start = Instant::now();
        let mut g = WatermarkGenerator::new(strategy, start);
        assert_eq!(g.observe(&[50, 40], start).unwrap().watermark, Some(39));
        assert_eq!(
            g.observe(&[70], start + Duration::from_millis(50))
                .unwrap()
                .watermark,
            None,
            "too soon"
        );
        assert_eq!(
            g.observe(&[60], start + Duration::from_millis(100))
                .unwrap()
                .watermark,
            Some(59)
        );
    }

    #[test]
    fn a_quiet_source_goes_idle_and_comes_back() {
        let strategy = WatermarkStrategy::monotonous(|t: &i64| *t)
            .with_idleness(Duration::from_millis(30))
            .with_interval(Duration::from_millis(1));
        let start = Instant::now();
        let mut g = WatermarkGenerator::new(strategy, start);
        g.observe(&[1], start).unwrap();
        assert!(
            !g.observe(&[], start + Duration::from_millis(10))
                .unwrap()
                .idle
        );
        assert!(
            g.observe(&[], start + Duration::from_millis(40))
                .unwrap()
                .idle
        );
        assert!(
            !g.observe(&[], start + Duration::from_millis(50))
                .unwrap()
                .idle,
            "said once"
        );
        let back = g.observe(&[5], start + Duration::from_millis(60)).unwrap();
        assert!(back.active_again);
        assert_eq!(back.watermark, Some(4));
    }
}
