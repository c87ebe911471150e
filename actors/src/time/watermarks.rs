//! Event-time watermarks across a subtask's input channels, as an I/O-free state
//! machine (Flink's `StatusWatermarkValve`).
//!
//! Each channel's watermark only moves forward. The subtask's watermark is the
//! minimum over its *active* channels: a channel whose source declared itself idle
//! does not hold the others back, and an ended channel no longer counts. When every
//! channel has ended, the watermark jumps to `MAX` so every pending event-time timer
//! fires. While all remaining channels are idle the subtask is idle too, and says so
//! downstream.

/// Event time in milliseconds.
pub type EventTime = i64;

/// No watermark yet.
pub const MIN_WATERMARK: EventTime = EventTime::MIN;
/// End of event time: every timer fires.
pub const MAX_WATERMARK: EventTime = EventTime::MAX;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Channel {
    watermark: EventTime,
    idle: bool,
    ended: bool,
}

/// What to forward downstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatermarkOutput {
    Advance(EventTime),
    Idle(bool),
}

#[derive(Debug)]
pub struct WatermarkTracker {
    channels: Vec<Channel>,
    current: EventTime,
    idle: bool,
}

impl WatermarkTracker {
    pub fn new(channels: usize) -> Self {
        let channel = Channel {
            watermark: MIN_WATERMARK,
            idle: false,
            ended: false,
        };
        WatermarkTracker {
            channels: vec![channel; channels],
            current: MIN_WATERMARK,
            idle: false,
        }
    }

    /// This subtask's watermark.
    pub fn current(&self) -> EventTime {
        self.current
    }

    pub fn on_watermark(&mut self, channel: usize, watermark: EventTime) -> Vec<WatermarkOutput> {
        let c = &mut self.channels[channel];
        c.watermark = c.watermark.max(watermark);
        // A watermark means the channel is active again.
        c.idle = false;
        self.recompute()
    }

    pub fn on_idle(&mut self, channel: usize, idle: bool) -> Vec<WatermarkOutput> {
        self.channels[channel].idle = idle;
        self.recompute()
    }

    pub fn on_end_of_input(&mut self, channel: usize) -> Vec<WatermarkOutput> {
        self.channels[channel].ended = true;
        self.recompute()
    }

    fn recompute(&mut self) -> Vec<WatermarkOutput> {
        let mut out = Vec::new();
        if self.channels.iter().all(|c| c.ended) {
            if self.current < MAX_WATERMARK {
                self.current = MAX_WATERMARK;
                out.push(WatermarkOutput::Advance(MAX_WATERMARK));
            }
            return out;
        }
        let active_min = self
            .channels
            .iter()
            .filter(|c| !c.ended && !c.idle)
            .map(|c| c.watermark)
            .min();
        let idle = active_min.is_none();
        if idle != self.idle {
            self.idle = idle;
            out.push(WatermarkOutput::Idle(idle));
        }
        if let Some(min) = active_min.filter(|&min| min > self.current) {
            self.current = min;
            out.push(WatermarkOutput::Advance(min));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use WatermarkOutput::*;

    #[test]
    fn the_slowest_active_channel_holds_the_watermark() {
        let mut t = WatermarkTracker::new(2);
        assert_eq!(
            t.on_watermark(0, 10),
            vec![],
            "channel 1 has no watermark yet"
        );
        assert_eq!(t.on_watermark(1, 5), vec![Advance(5)]);
        assert_eq!(t.on_watermark(1, 20), vec![Advance(10)]);
        assert_eq!(
            t.on_watermark(0, 8),
            vec![],
            "per-channel watermarks never go back"
        );
    }

    #[test]
    fn idle_channels_do_not_hold_back_and_all_idle_makes_the_subtask_idle() {
        let mut t = WatermarkTracker::new(2);
        t.on_watermark(0, 100);
        assert_eq!(t.on_idle(1, true), vec![Advance(100)]);
        assert_eq!(t.on_idle(0, true), vec![Idle(true)]);
        assert_eq!(
            t.on_watermark(1, 50),
            vec![Idle(false)],
            "active again, but behind the current watermark"
        );
        assert_eq!(t.current(), 100);
    }

    #[test]
    fn the_end_of_every_input_releases_all_timers() {
        let mut t = WatermarkTracker::new(2);
        t.on_watermark(0, 7);
        assert_eq!(t.on_end_of_input(1), vec![Advance(7)]);
        assert_eq!(t.on_end_of_input(0), vec![Advance(MAX_WATERMARK)]);
    }

    proptest! {
        /// The output only moves forward, and every advance (before the end) is the
        /// minimum over the channels that are active at that moment.
        #[test]
        fn monotonic_and_the_minimum_of_the_active_channels(
            events in proptest::collection::vec((0u8..4, 0usize..3, 0i64..1_000), 0..200),
        ) {
            let mut t = WatermarkTracker::new(3);
            let mut last = MIN_WATERMARK;
            for (kind, channel, time) in events {
                let out = match kind {
                    0 | 1 => t.on_watermark(channel, time),
                    2 => t.on_idle(channel, time % 2 == 0),
                    _ => t.on_end_of_input(channel),
                };
                for o in out {
                    if let Advance(w) = o {
                        prop_assert!(w > last);
                        last = w;
                        if w != MAX_WATERMARK {
                            let min = t.channels.iter().filter(|c| !c.ended && !c.idle).map(|c| c.watermark).min();
                            prop_assert_eq!(Some(w), min);
                        }
                    }
                }
            }
        }
    }
}
