//! A clock on tokio's time: wall time is a fixed epoch plus the runtime's elapsed time, so a
//! paused runtime's clock moves only when the simulation advances it.

use tokio::time::Instant;

use crate::worker::ports::Clock;

#[derive(Debug, Clone, Copy)]
pub struct VirtualClock {
    epoch_ms: u64,
    start: Instant,
}

impl VirtualClock {
    /// A clock that reads `epoch_ms` now.
    pub fn new(epoch_ms: u64) -> Self {
        VirtualClock {
            epoch_ms,
            start: Instant::now(),
        }
    }
}

impl VirtualClock {
    /// The same clock, off by `offset_ms` (a worker whose host clock runs ahead or behind).
    pub fn skewed(self, offset_ms: i64) -> Self {
        VirtualClock {
            epoch_ms: self.epoch_ms.saturating_add_signed(offset_ms),
            start: self.start,
        }
    }
}

impl Clock for VirtualClock {
    fn now_ms(&self) -> u64 {
        let elapsed = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.epoch_ms.saturating_add(elapsed)
    }
}
