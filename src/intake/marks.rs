//! Marking the records of enqueued jobs, in batches.
//!
//! Once RabbitMQ has confirmed a job, its record moves from `pending` to `enqueued`. The answer
//! to the partner does not wait for that (the job is safe already), so the marks of many
//! requests can share one Redis round trip: one task takes whatever marks have piled up while
//! the previous batch was out, and sends them as one pipeline (on a Redis Cluster, one small
//! pipeline per record, sent together: a pipeline may not span slots). Under load that is one
//! round trip for dozens of requests instead of one each (`scripts/bench.sh intake`).
//!
//! A mark that is lost (Redis away, or the process gone first) leaves the record pending: a
//! retry after the claim's lease publishes the job again, which the worker's idempotency
//! makes harmless.

use tokio::sync::mpsc;

use crate::domain::PayKey;
use crate::store::Store;

/// Most marks in one round trip.
const MAX_BATCH: usize = 512;

/// Where the intake hands in the payIds of confirmed jobs. Cheap to clone.
#[derive(Debug, Clone)]
pub struct EnqueuedMarks {
    sender: mpsc::UnboundedSender<PayKey>,
}

impl EnqueuedMarks {
    /// Starts the task that writes the marks; it ends when the last handle is dropped, after
    /// writing what was handed in.
    pub fn start(store: Store) -> Self {
        let (sender, receiver) = mpsc::unbounded_channel();
        tokio::spawn(write_marks(store, receiver));
        EnqueuedMarks { sender }
    }

    pub fn mark(&self, pay_key: PayKey) {
        // Fails only once the task is gone (the runtime is shutting down): the record stays
        // pending, which is safe (see the module's note).
        let _ = self.sender.send(pay_key);
    }
}

async fn write_marks(store: Store, mut receiver: mpsc::UnboundedReceiver<PayKey>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while receiver.recv_many(&mut batch, MAX_BATCH).await > 0 {
        if let Err(error) = store.mark_enqueued(&batch).await {
            tracing::warn!(count = batch.len(), %error, "jobs enqueued but not marked");
        }
        batch.clear();
    }
}
