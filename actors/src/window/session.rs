//! Session windows of one key, I/O-free (Flink's `MergingWindowSet`).
//!
//! A record at `t` opens the window `[t, t + gap)`; windows that intersect (touching
//! counts, as in Flink's `TimeWindow::intersects`) merge into one session spanning
//! them all. Each session's contents live in keyed state under the session's `id`;
//! when sessions merge, the one that starts first keeps its id and the others'
//! contents move into it. Planning a merge does not change the set, so a record
//! whose merged session turns out to be late can be dropped without a trace.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    pub start: i64,
    /// Exclusive: the session's last record was at `end - gap`.
    pub end: i64,
    /// The namespace of its contents in keyed state.
    pub id: i64,
}

impl Session {
    fn intersects(&self, start: i64, end: i64) -> bool {
        self.start <= end && start <= self.end
    }
}

/// The open sessions of one key, ordered by start and pairwise disjoint.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sessions {
    open: Vec<Session>,
    next_id: i64,
}

/// What adding a record does: `merged` replaces every session in `replaced`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Merge {
    pub merged: Session,
    /// The sessions it absorbs (it keeps the id of the first, if any).
    pub replaced: Vec<Session>,
}

impl Merge {
    /// Sessions whose contents must move into the merged one.
    pub fn moved(&self) -> impl Iterator<Item = &Session> {
        let id = self.merged.id;
        self.replaced.iter().filter(move |s| s.id != id)
    }
}

impl Sessions {
    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }

    pub fn open(&self) -> &[Session] {
        &self.open
    }

    /// The session a record at `t` would belong to, merged with those it touches.
    pub fn plan(&self, t: i64, gap: i64) -> Merge {
        let (mut start, mut end) = (t, t.saturating_add(gap));
        let replaced: Vec<Session> = self
            .open
            .iter()
            .filter(|s| s.intersects(t, t.saturating_add(gap)))
            .copied()
            .collect();
        for s in &replaced {
            start = start.min(s.start);
            end = end.max(s.end);
        }
        let id = replaced.first().map_or(self.next_id, |s| s.id);
        Merge {
            merged: Session { start, end, id },
            replaced,
        }
    }

    pub fn apply(&mut self, merge: &Merge) {
        if merge.replaced.is_empty() {
            self.next_id += 1;
        }
        self.open.retain(|s| !merge.replaced.contains(s));
        let at = self.open.partition_point(|s| s.start < merge.merged.start);
        self.open.insert(at, merge.merged);
    }

    /// The open session ending at `end`, if any.
    pub fn ending_at(&self, end: i64) -> Option<Session> {
        self.open.iter().find(|s| s.end == end).copied()
    }

    pub fn remove(&mut self, id: i64) {
        self.open.retain(|s| s.id != id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Sessions of sorted timestamps by brute force: a new one starts after a gap.
    fn batch_sessions(mut times: Vec<i64>, gap: i64) -> Vec<(i64, i64)> {
        times.sort_unstable();
        let mut out: Vec<(i64, i64)> = Vec::new();
        for t in times {
            match out.last_mut() {
                Some((_, end)) if t <= *end => *end = (*end).max(t + gap),
                _ => out.push((t, t + gap)),
            }
        }
        out
    }

    #[test]
    fn a_record_between_two_sessions_bridges_them() {
        let mut s = Sessions::default();
        for t in [0, 20] {
            let m = s.plan(t, 5);
            s.apply(&m);
        }
        assert_eq!(s.open().len(), 2);
        let bridge = s.plan(3, 17);
        assert_eq!(
            bridge.merged,
            Session {
                start: 0,
                end: 25,
                id: 0
            }
        );
        assert_eq!(bridge.moved().map(|s| s.id).collect::<Vec<_>>(), vec![1]);
        s.apply(&bridge);
        assert_eq!(s.open().len(), 1);
        assert_eq!(s.ending_at(25).map(|s| s.id), Some(0));
        s.remove(0);
        assert!(s.is_empty());
    }

    proptest! {
        #[test]
        fn merging_in_any_order_gives_the_batch_sessions(
            times in proptest::collection::vec(0i64..500, 1..60), gap in 1i64..40,
        ) {
            let mut s = Sessions::default();
            let mut contents: std::collections::HashMap<i64, Vec<i64>> = Default::default();
            for &t in &times {
                let m = s.plan(t, gap);
                for moved in m.moved() {
                    let items = contents.remove(&moved.id).unwrap();
                    contents.entry(m.merged.id).or_default().extend(items);
                }
                contents.entry(m.merged.id).or_default().push(t);
                s.apply(&m);
            }
            let got: Vec<(i64, i64)> = s.open().iter().map(|x| (x.start, x.end)).collect();
            prop_assert_eq!(got, batch_sessions(times.clone(), gap));
            // Every record's contents ended up in the session that covers it.
            let mut counted = 0;
            for session in s.open() {
                for t in &contents[&session.id] {
                    prop_assert!(session.start <= *t && *t < session.end);
                    counted += 1;
                }
            }
            prop_assert_eq!(counted, times.len());
        }
    }
}
