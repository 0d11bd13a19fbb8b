//! In-memory adapters of the job path's ports, keeping the real systems' rules: a nack
//! redelivers with the redelivered flag, a lock expires, Stripe's idempotency keys compare
//! parameters and live 24 h, a key in flight answers 409, a stored 500 is replayed.
//!
//! They run on tokio's clock, so under a paused runtime (the deterministic simulation,
//! `tests/simulate`) every delay, TTL and timeout is virtual, and a seed replays a schedule
//! exactly: nothing here reads the wall clock or the OS's randomness, and every map is ordered.
//! Each adapter is a cheap handle on shared state; [`MemoryQueue::named`] and its siblings give
//! one worker its own handle, so the trace says who made each call.

mod clock;
mod keyspace;
mod lanes;
mod pause;
mod queue;
mod store;
mod stripe;
mod trace;

pub use clock::VirtualClock;
pub use lanes::{Lane, LaneChange, LaneEvent};
pub use pause::Pauses;
pub use queue::{Delivery, MemoryQueue, QueueDelays, QueuedJob};
pub use store::{CreationClaim, MemoryStore};
pub use stripe::{Fault as StripeFault, Faults, MemoryStripe, StripeCounts};
pub use trace::Trace;
