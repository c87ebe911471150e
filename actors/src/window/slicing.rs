//! Sliding and tumbling event-time windows as slices, I/O-free.
//!
//! Windows (Flink's, offset 0) start at multiples of `slide` and last `size`; a
//! tumbling window is the case `slide == size`. Instead of adding a record to each of
//! the `size / slide` windows that contain it, the time axis is cut into *slices* of
//! `gcd(size, slide)`: every slice lies entirely inside each window that overlaps it,
//! a record updates exactly one slice, and a window's result merges its
//! `size / slice` slices when it fires (the idea of Flink SQL's and Arroyo's slicing
//! window aggregation). Slices and windows are named by their (exclusive) end.

/// The slice geometry of one sliding (or tumbling) window assigner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slicing {
    size: i64,
    slide: i64,
    slice: i64,
}

fn gcd(a: i64, b: i64) -> i64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

impl Slicing {
    /// Windows of `size` ms every `slide` ms; `slide` must not exceed `size` (a record
    /// then belongs to at least one window).
    pub fn sliding(size: i64, slide: i64) -> Result<Slicing, String> {
        if size <= 0 || slide <= 0 {
            return Err(format!(
                "window size and slide must be positive (got size {size} ms, slide {slide} ms)"
            ));
        }
        if slide > size {
            return Err(format!(
                "the slide ({slide} ms) exceeds the window size ({size} ms): records between \
                 windows would belong to none"
            ));
        }
        Ok(Slicing {
            size,
            slide,
            slice: gcd(size, slide),
        })
    }

    pub fn tumbling(size: i64) -> Result<Slicing, String> {
        Slicing::sliding(size, size)
    }

    pub fn size(&self) -> i64 {
        self.size
    }

    pub fn slide(&self) -> i64 {
        self.slide
    }

    pub fn slice(&self) -> i64 {
        self.slice
    }

    /// The end of the slice holding event time `t`.
    pub fn slice_end(&self, t: i64) -> i64 {
        t.div_euclid(self.slice) * self.slice + self.slice
    }

    /// The end of the earliest window containing the slice that ends at `slice_end`.
    pub fn first_window_end(&self, slice_end: i64) -> i64 {
        // Window ends are k * slide + size: the smallest one >= slice_end.
        let k = -(self.size - slice_end).div_euclid(self.slide);
        k * self.slide + self.size
    }

    /// The end of the latest window containing the slice that ends at `slice_end`.
    pub fn last_window_end(&self, slice_end: i64) -> i64 {
        (slice_end - self.slice).div_euclid(self.slide) * self.slide + self.size
    }

    /// The ends of every window containing the slice, earliest first.
    pub fn window_ends(&self, slice_end: i64) -> impl Iterator<Item = i64> {
        let (first, last, slide) = (
            self.first_window_end(slice_end),
            self.last_window_end(slice_end),
            self.slide,
        );
        (0..)
            .map(move |i| first + i * slide)
            .take_while(move |&end| end <= last)
    }

    /// The ends of the slices that make up the window ending at `window_end`, oldest first.
    pub fn slices_of(&self, window_end: i64) -> impl Iterator<Item = i64> {
        let (first, slice) = (window_end - self.size + self.slice, self.slice);
        (0..)
            .map(move |i| first + i * slice)
            .take_while(move |&end| end <= window_end)
    }

    /// The slices of a window that no later window contains (those before the next
    /// window's start): they can be dropped once the window is done.
    pub fn expiring_slices(&self, window_end: i64) -> impl Iterator<Item = i64> {
        let (first, slice) = (window_end - self.size + self.slice, self.slice);
        let last = window_end - self.size + self.slide;
        (0..)
            .map(move |i| first + i * slice)
            .take_while(move |&end| end <= last)
    }

    /// Whether the slice ending at `slice_end` is also part of the window after the
    /// one ending at `window_end`.
    pub fn carried_to_next_window(&self, slice_end: i64, window_end: i64) -> bool {
        slice_end > window_end + self.slide - self.size
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Every window (start = k * slide) that contains `t`, by brute force.
    fn windows_containing(s: &Slicing, t: i64) -> Vec<i64> {
        let mut ends = Vec::new();
        let lowest_k = (t - s.size()).div_euclid(s.slide()) - 1;
        for k in lowest_k..=t.div_euclid(s.slide()) + 1 {
            let start = k * s.slide();
            if start <= t && t < start + s.size() {
                ends.push(start + s.size());
            }
        }
        ends
    }

    #[test]
    fn an_hour_every_minute_is_sixty_one_minute_slices() {
        let s = Slicing::sliding(3_600_000, 60_000).unwrap();
        assert_eq!(s.slice(), 60_000);
        assert_eq!(s.slices_of(3_600_000).count(), 60);
        assert_eq!(s.window_ends(s.slice_end(0)).count(), 60);
        let t = Slicing::tumbling(10).unwrap();
        assert_eq!(t.slice_end(-1), 0);
        assert_eq!(t.slice_end(0), 10);
        assert_eq!(t.window_ends(10).collect::<Vec<_>>(), vec![10]);
    }

    #[test]
    fn rejects_bad_geometry() {
        assert!(Slicing::sliding(0, 1).is_err());
        assert!(Slicing::sliding(10, -1).is_err());
        assert!(Slicing::sliding(10, 20).unwrap_err().contains("exceeds"));
    }

    proptest! {
        #[test]
        fn slices_assign_each_record_to_exactly_its_windows(
            size in 1i64..200, slide_div in 1i64..200, t in -1_000i64..1_000,
        ) {
            let slide = 1 + (slide_div - 1) % size;
            let s = Slicing::sliding(size, slide).unwrap();
            let e = s.slice_end(t);
            prop_assert!(e - s.slice() <= t && t < e);
            prop_assert_eq!(s.window_ends(e).collect::<Vec<_>>(), windows_containing(&s, t));
            for w in s.window_ends(e) {
                // The window's slices tile [w - size, w) and include the record's slice.
                let slices: Vec<i64> = s.slices_of(w).collect();
                prop_assert_eq!(slices.len() as i64, size / s.slice());
                prop_assert_eq!(slices[0] - s.slice(), w - size);
                prop_assert_eq!(*slices.last().unwrap(), w);
                prop_assert!(slices.contains(&e));
                prop_assert_eq!(
                    s.carried_to_next_window(e, w),
                    windows_containing(&s, t).contains(&(w + slide))
                );
            }
            prop_assert!(
                s.expiring_slices(s.last_window_end(e)).any(|x| x == e),
                "a slice expires with the last window containing it"
            );
            for w in s.window_ends(e) {
                prop_assert_eq!(
                    s.expiring_slices(w).any(|x| x == e),
                    !s.carried_to_next_window(e, w)
                );
            }
        }
    }
}
