//! Marking the records of enqueued messages, in batches.
//!
//! Once RabbitMQ has confirmed a message (a creation, a cancel, a Stripe event), its record
//! moves from `pending` to `enqueued`. The answer does not wait for that (the message is safe
//! already), so the marks of many requests can share one Redis round trip: one task takes whatever marks have piled up while
//! the previous batch was out, and sends them as one pipeline (on a Redis Cluster, one small
//! pipeline per record, sent together: a pipeline may not span slots). Under load that is one
//! round trip for dozens of requests instead of one each (`scripts/bench.sh intake`).
//!
//! A mark that is lost (Redis away, or the process gone first) leaves the record pending: a
//! retry after the claim's lease publishes the message again, which the worker's idempotency
//! makes harmless. A repeat while a mark is on its way finds the record pending, and waits
//! for the mark like for any other request between Redis and the broker.

use tokio::sync::mpsc;

use crate::store::{IntakeRecord, Store};

/// Most marks in one round trip.
const MAX_BATCH: usize = 512;

/// Where the intake hands in the records of confirmed messages. Cheap to clone.
#[derive(Debug, Clone)]
pub struct EnqueuedMarks {
    sender: mpsc::UnboundedSender<IntakeRecord>,
}

impl EnqueuedMarks {
    /// Starts the task that writes the marks; it ends when the last handle is dropped, after
    /// writing what was handed in.
    pub fn start(store: Store) -> Self {
        let (sender, receiver) = mpsc::unbounded_channel();
        tokio::spawn(write_marks(store, receiver));
        EnqueuedMarks { sender }
    }

    pub fn mark(&self, record: IntakeRecord) {
        // Fails only once the task is gone (the runtime is shutting down): the record stays
        // pending, which is safe (see the module's note).
        let _ = self.sender.send(record);
    }
}

async fn write_marks(store: Store, mut receiver: mpsc::UnboundedReceiver<IntakeRecord>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while receiver.recv_many(&mut batch, MAX_BATCH).await > 0 {
        if let Err(error) = store.mark_enqueued(&batch).await {
            tracing::warn!(count = batch.len(), %error, "messages enqueued but not marked");
        }
        batch.clear();
    }
}
