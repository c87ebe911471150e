//! Time-to-live on processing time: pure decisions plus the clock the backends read.
//!
//! A value is visible while `now < ts + ttl`; an expired value is never returned. It
//! is removed lazily: when a read finds it expired, and it is left out of snapshots.

use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// When a value's timestamp is refreshed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TtlUpdate {
    OnCreateAndWrite,
    OnReadAndWrite,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TtlConfig {
    pub ttl_ms: u64,
    pub update: TtlUpdate,
}

impl TtlConfig {
    pub fn new(ttl: std::time::Duration) -> Self {
        TtlConfig {
            ttl_ms: ttl.as_millis() as u64,
            update: TtlUpdate::OnCreateAndWrite,
        }
    }

    pub fn refresh_on_read(mut self) -> Self {
        self.update = TtlUpdate::OnReadAndWrite;
        self
    }
}

/// Whether a value stamped at `ts` is expired at `now` under `ttl`.
pub fn is_expired(ttl: Option<&TtlConfig>, ts: u64, now: u64) -> bool {
    match ttl {
        Some(cfg) => ts.saturating_add(cfg.ttl_ms) <= now,
        None => false,
    }
}

/// Whether a successful read refreshes the timestamp.
pub fn refreshes_on_read(ttl: Option<&TtlConfig>) -> bool {
    matches!(
        ttl,
        Some(TtlConfig {
            update: TtlUpdate::OnReadAndWrite,
            ..
        })
    )
}

/// Processing time in milliseconds, injectable for tests.
#[derive(Clone)]
pub struct Clock(Arc<dyn Fn() -> u64 + Send + Sync>);

impl Clock {
    pub fn system() -> Self {
        Clock(Arc::new(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0)
        }))
    }

    pub fn from_fn(f: impl Fn() -> u64 + Send + Sync + 'static) -> Self {
        Clock(Arc::new(f))
    }

    pub fn now(&self) -> u64 {
        (self.0)()
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::system()
    }
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Clock")
    }
}

/// A clock that moves only when told to.
#[derive(Debug, Clone, Default)]
pub struct ManualClock(Arc<AtomicU64>);

impl ManualClock {
    pub fn new(start: u64) -> Self {
        ManualClock(Arc::new(AtomicU64::new(start)))
    }
    pub fn set(&self, now: u64) {
        self.0.store(now, Ordering::SeqCst);
    }
    pub fn advance(&self, by: u64) {
        self.0.fetch_add(by, Ordering::SeqCst);
    }
    pub fn clock(&self) -> Clock {
        let inner = self.0.clone();
        Clock::from_fn(move || inner.load(Ordering::SeqCst))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_boundary_is_exclusive_of_ttl() {
        let cfg = TtlConfig {
            ttl_ms: 10,
            update: TtlUpdate::OnCreateAndWrite,
        };
        assert!(!is_expired(Some(&cfg), 100, 109));
        assert!(is_expired(Some(&cfg), 100, 110));
        assert!(!is_expired(None, 0, u64::MAX));
        assert!(
            !is_expired(Some(&cfg), u64::MAX - 5, u64::MAX - 1),
            "no overflow"
        );
        assert!(!refreshes_on_read(Some(&cfg)));
        assert!(refreshes_on_read(Some(&cfg.refresh_on_read())));
    }
}
