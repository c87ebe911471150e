//! The timer service: event-time and processing-time timers per key and namespace.
//!
//! Timers are ordered by `(time, key group, key, namespace)` and deduplicated on that
//! tuple, so registering the same timer twice fires it once. Keys and namespaces are
//! held as their postcard bytes, which is also how they are snapshotted: as the
//! internal states [`EVENT_TIMERS`] / [`PROCESSING_TIMERS`] in the key-group format,
//! so timers follow their key group through rescaling. Both backends keep timers
//! here, in memory (as Flink's RocksDB backend can with heap timers); the queues are
//! copy-on-write so a snapshot's synchronous part only clones two pointers.

use crate::handle::{StateKind, StateMeta};
use crate::key_group::{KeyGroup, KeyGroupRange};
use crate::kg_file::RawEntry;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

pub const EVENT_TIMERS: &str = "_timers/event";
pub const PROCESSING_TIMERS: &str = "_timers/processing";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TimeDomain {
    EventTime,
    ProcessingTime,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RawTimer {
    pub time: u64,
    pub key_group: KeyGroup,
    pub key: Vec<u8>,
    pub namespace: Vec<u8>,
}

#[derive(Debug, Clone, Default)]
pub struct TimerService {
    event: Arc<BTreeSet<RawTimer>>,
    processing: Arc<BTreeSet<RawTimer>>,
}

/// A frozen view of both queues for a snapshot.
#[derive(Debug, Clone)]
pub struct TimerSnapshot {
    event: Arc<BTreeSet<RawTimer>>,
    processing: Arc<BTreeSet<RawTimer>>,
}

impl TimerService {
    fn queue(&mut self, domain: TimeDomain) -> &mut BTreeSet<RawTimer> {
        match domain {
            TimeDomain::EventTime => Arc::make_mut(&mut self.event),
            TimeDomain::ProcessingTime => Arc::make_mut(&mut self.processing),
        }
    }

    /// Returns false if the timer already existed.
    pub fn register(&mut self, domain: TimeDomain, timer: RawTimer) -> bool {
        self.queue(domain).insert(timer)
    }

    pub fn delete(&mut self, domain: TimeDomain, timer: &RawTimer) -> bool {
        self.queue(domain).remove(timer)
    }

    pub fn next_time(&self, domain: TimeDomain) -> Option<u64> {
        let q = match domain {
            TimeDomain::EventTime => &self.event,
            TimeDomain::ProcessingTime => &self.processing,
        };
        q.first().map(|t| t.time)
    }

    /// Removes and returns every timer with `time <= up_to`, in firing order.
    pub fn pop_due(&mut self, domain: TimeDomain, up_to: u64) -> Vec<RawTimer> {
        if self.next_time(domain).is_none_or(|t| t > up_to) {
            return Vec::new();
        }
        let q = self.queue(domain);
        let mut due = Vec::new();
        while q.first().is_some_and(|t| t.time <= up_to) {
            due.extend(q.pop_first());
        }
        due
    }

    /// Removes and returns the earliest timer if it is due at `up_to`. Firing one at a
    /// time lets a handler register timers that are due at once and fire in order.
    pub fn pop_next_due(&mut self, domain: TimeDomain, up_to: u64) -> Option<RawTimer> {
        if self.next_time(domain)? > up_to {
            return None;
        }
        self.queue(domain).pop_first()
    }

    pub fn len(&self) -> usize {
        self.event.len() + self.processing.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn freeze(&self) -> TimerSnapshot {
        TimerSnapshot {
            event: self.event.clone(),
            processing: self.processing.clone(),
        }
    }

    /// Restores one timer entry read from a snapshot of internal state `state`.
    pub fn restore_entry(&mut self, state: &str, key_group: KeyGroup, e: RawEntry) -> bool {
        let domain = match state {
            EVENT_TIMERS => TimeDomain::EventTime,
            PROCESSING_TIMERS => TimeDomain::ProcessingTime,
            _ => return false,
        };
        let Ok(time) = <[u8; 8]>::try_from(e.user_key.as_slice()) else {
            return false;
        };
        self.register(
            domain,
            RawTimer {
                time: u64::from_be_bytes(time),
                key_group,
                key: e.key,
                namespace: e.namespace,
            },
        );
        true
    }
}

pub fn timer_metas() -> [StateMeta; 2] {
    [EVENT_TIMERS, PROCESSING_TIMERS].map(|name| StateMeta {
        name: name.to_string(),
        kind: StateKind::Timers,
        ttl: None,
    })
}

impl TimerSnapshot {
    /// Entries per key group and per domain (index 0 = event, 1 = processing).
    pub fn by_key_group(&self, range: KeyGroupRange) -> BTreeMap<KeyGroup, [Vec<RawEntry>; 2]> {
        let mut out: BTreeMap<KeyGroup, [Vec<RawEntry>; 2]> = BTreeMap::new();
        for (idx, q) in [&self.event, &self.processing].into_iter().enumerate() {
            for t in q.iter().filter(|t| range.contains(t.key_group)) {
                out.entry(t.key_group).or_default()[idx].push(RawEntry {
                    key: t.key.clone(),
                    namespace: t.namespace.clone(),
                    user_key: t.time.to_be_bytes().to_vec(),
                    value: Vec::new(),
                });
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(time: u64, key: u8) -> RawTimer {
        RawTimer {
            time,
            key_group: 0,
            key: vec![key],
            namespace: vec![],
        }
    }

    #[test]
    fn dedups_and_fires_in_time_order_and_freeze_is_isolated() {
        let mut s = TimerService::default();
        assert!(s.register(TimeDomain::EventTime, t(5, 1)));
        assert!(!s.register(TimeDomain::EventTime, t(5, 1)));
        s.register(TimeDomain::EventTime, t(3, 2));
        s.register(TimeDomain::ProcessingTime, t(1, 1));
        let frozen = s.freeze();
        assert_eq!(s.next_time(TimeDomain::EventTime), Some(3));
        let fired = s.pop_due(TimeDomain::EventTime, 4);
        assert_eq!(fired, vec![t(3, 2)]);
        assert_eq!(s.len(), 2);
        assert_eq!(s.pop_next_due(TimeDomain::EventTime, 4), None);
        assert_eq!(s.pop_next_due(TimeDomain::EventTime, 5), Some(t(5, 1)));
        assert_eq!(s.pop_next_due(TimeDomain::EventTime, 5), None);
        s.register(TimeDomain::EventTime, t(5, 1));
        let groups = frozen.by_key_group(KeyGroupRange { start: 0, end: 1 });
        assert_eq!(
            groups[&0][0].len(),
            2,
            "the frozen view still has both event timers"
        );
    }
}
