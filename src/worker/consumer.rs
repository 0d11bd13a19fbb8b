//! The consumer loop: receive, run each job under a semaphore sized like the prefetch, route
//! by the outcome, ack. It stops taking jobs while Redis or RabbitMQ is away and resumes by
//! itself; on shutdown it stops consuming and lets the jobs in hand finish, within a bound.
//!
//! It consumes every lane (the shared jobs queue, each partner's, the expired jobs), each as a
//! consumer of its own with its own prefetch, smaller than the worker's slots: a partner's
//! backlog fills only its own consumer's window and never every slot, so another partner's job
//! is delivered and started at once (docs/design.md, "Partners served in turn").

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
};
use lapin::types::FieldTable;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::PUBLISH_TIMEOUT;
use super::creation::JobContext;
use super::message::{self, Message};
use super::ports::{Disposition, Incoming, Outcome};
use crate::broker::topology::EXPIRED_ROUTING_KEY;
use crate::broker::{Broker, JOB_DELIVERY_LIMIT, JobHeaders};
use crate::store::Store;
use crate::stripe::on_behalf_of;
use crate::telemetry::names::worker::{JOB_SECONDS, JOBS_TOTAL};
/// How often the loop checks that Redis still answers.
const HEALTH_INTERVAL: Duration = Duration::from_secs(1);

/// What the consumer loop shares with its job tasks and the probes.
pub struct Worker {
    pub broker: Broker,
    /// For the health checks; jobs reach Redis through their context's ports.
    pub store: Store,
    pub ctx: Arc<JobContext>,
    pub concurrency: u16,
    pub drain_timeout: Duration,
    /// Cancelled when the drain is out of time: the waits inside a job (budget, step retries)
    /// end on it, so the job hands itself back while the broker connection is still open.
    pub give_up: CancellationToken,
    /// True while a consumer is registered on the jobs queue.
    pub consuming: AtomicBool,
    /// Set by a job that found Redis away: the loop pauses until Redis answers again.
    pub store_trouble: AtomicBool,
}

impl Worker {
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let slots = Arc::new(Semaphore::new(usize::from(self.concurrency)));
        let mut jobs = JoinSet::new();
        while !shutdown.is_cancelled() {
            if !self.wait_until_healthy(&shutdown).await {
                break;
            }
            match self.consume(&shutdown, &slots, &mut jobs).await {
                Ok(()) => {}
                Err(error) => tracing::warn!(%error, "consumer stopped; resuming when possible"),
            }
            self.consuming.store(false, Ordering::SeqCst);
            // Reap finished tasks so the set does not grow across reconnects.
            while jobs.try_join_next().is_some() {}
        }
        self.drain(&mut jobs).await;
    }

    /// Waits until RabbitMQ is connected and Redis answers; false on shutdown.
    async fn wait_until_healthy(&self, shutdown: &CancellationToken) -> bool {
        loop {
            if shutdown.is_cancelled() {
                return false;
            }
            if self.broker.is_ready() && self.store.ping().await {
                self.store_trouble.store(false, Ordering::SeqCst);
                return true;
            }
            tokio::select! {
                () = shutdown.cancelled() => return false,
                () = tokio::time::sleep(Duration::from_millis(250)) => {}
            }
        }
    }

    async fn consume(
        self: &Arc<Self>,
        shutdown: &CancellationToken,
        slots: &Arc<Semaphore>,
        jobs: &mut JoinSet<()>,
    ) -> Result<(), lapin::Error> {
        let channel = match self.broker.open_channel().await {
            Ok(channel) => channel,
            Err(_) => return Ok(()),
        };
        // Set before the consumers are created, it is each one's own window.
        channel
            .basic_qos(lane_prefetch(self.concurrency), BasicQosOptions::default())
            .await?;
        let tag = format!(
            "autorenew-worker-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        );
        // The prefetch is per consumer (not `global`: quorum queues refuse a channel-wide
        // one), so each lane has its own window. The expired jobs are among the lanes: each
        // still gets its ending here.
        let queues = self.broker.topology().work_queues();
        let mut tags = Vec::with_capacity(queues.len());
        let mut consumers = Vec::with_capacity(queues.len());
        for (index, queue) in queues.iter().enumerate() {
            let lane_tag = format!("{tag}-{index}");
            consumers.push(
                channel
                    .basic_consume(
                        queue.as_str().into(),
                        lane_tag.as_str().into(),
                        BasicConsumeOptions::default(),
                        FieldTable::default(),
                    )
                    .await?,
            );
            tags.push(lane_tag);
        }
        let mut consumer = futures_util::stream::select_all(consumers);
        self.consuming.store(true, Ordering::SeqCst);
        tracing::info!(queues = %queues.join(","), "consuming jobs");
        let mut health = tokio::time::interval(HEALTH_INTERVAL);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                _ = health.tick() => {
                    if self.store_trouble.load(Ordering::SeqCst) || !self.store.ping().await {
                        tracing::warn!("Redis is away: pausing the consumer");
                        break;
                    }
                }
                delivery = consumer.next() => match delivery {
                    Some(Ok(delivery)) => {
                        // A finished task keeps its memory until it is joined: reap as we go,
                        // or a long-running worker grows with every job it has done.
                        while jobs.try_join_next().is_some() {}
                        let Ok(permit) = slots.clone().acquire_owned().await else { break };
                        let worker = self.clone();
                        // The job holds its channel: lapin closes a channel when its last handle
                        // goes, and an ack on a closed channel is silently not sent.
                        let held = channel.clone();
                        jobs.spawn(async move {
                            let _in_hand = crate::telemetry::JobInHand::enter();
                            worker.handle(delivery).await;
                            drop((permit, held));
                        });
                    }
                    Some(Err(error)) => return Err(error),
                    None => break,
                },
            }
        }
        // Stop the deliveries; jobs in hand keep their channel and may still ack.
        self.consuming.store(false, Ordering::SeqCst);
        for tag in &tags {
            let _ = channel
                .basic_cancel(tag.as_str().into(), BasicCancelOptions::default())
                .await;
        }
        if shutdown.is_cancelled() {
            // Drained here, so the channel is closed in order, before the connection.
            self.drain(jobs).await;
            let _ = channel.close(200, "drained".into()).await;
        }
        Ok(())
    }

    /// Lets the jobs in hand finish (store, publish, ack) within the drain timeout; the broker
    /// connection stays open until this returns. Past the timeout, the jobs' waits end and they
    /// hand themselves back; what still runs after that returns to the queue when the
    /// connection closes (unacked messages are requeued).
    async fn drain(&self, jobs: &mut JoinSet<()>) {
        let pending = jobs.len();
        if pending > 0 {
            tracing::info!(pending, "draining the jobs in hand");
        }
        if tokio::time::timeout(self.drain_timeout, join_all(jobs))
            .await
            .is_ok()
        {
            return;
        }
        tracing::warn!(left = jobs.len(), "drain timed out; handing the rest back");
        self.give_up.cancel();
        if tokio::time::timeout(PUBLISH_TIMEOUT, join_all(jobs))
            .await
            .is_err()
        {
            jobs.abort_all();
        }
    }

    async fn handle(self: Arc<Self>, delivery: Delivery) {
        let started = std::time::Instant::now();
        let headers = JobHeaders(&delivery.properties);
        // The broker dead-letters a job past its delivery limit under the expired routing key.
        let expired = delivery.routing_key.as_str() == EXPIRED_ROUTING_KEY;
        let incoming = Incoming {
            kind: headers.kind(),
            body: delivery.data.clone(),
            message_id: headers.message_id(),
            attempt: headers.attempt(),
            redelivered: delivery.redelivered,
            parked: headers.parked(),
            delivery_count: if expired {
                JOB_DELIVERY_LIMIT.max(headers.delivery_count())
            } else {
                headers.delivery_count()
            },
            partner: headers.partner(),
        };
        let decoded = Message::decode(&incoming);
        let span = Message::span(&decoded, &incoming);
        let outcome = run_job(&self.ctx, incoming, decoded).instrument(span).await;
        if outcome.disposition == Disposition::HandBack {
            // Redis or RabbitMQ went away mid-message: pause taking messages, so the one
            // handed back is not redelivered to us in a loop.
            self.store_trouble.store(true, Ordering::SeqCst);
        }
        metrics::counter!(JOBS_TOTAL, "outcome" => outcome.label).increment(1);
        metrics::histogram!(JOB_SECONDS).record(started.elapsed().as_secs_f64());
        dispose(&delivery, outcome.disposition).await;
    }
}

/// How many unacked jobs one lane may hold: three quarters of the worker's slots, and always
/// at least one slot fewer than the worker has (below four slots a quarter rounds down to none).
/// However deep one partner's backlog, a slot stays free for the other lanes, so another
/// partner's job starts as soon as it is delivered instead of waiting for one of the flood's
/// jobs to finish (and those finish only as fast as Stripe's budget lets them). Three quarters
/// is still enough for one partner alone to keep the whole budget busy. A worker of one slot
/// has nothing to keep free: its lanes take one each.
pub fn lane_prefetch(concurrency: u16) -> u16 {
    concurrency.saturating_sub((concurrency / 4).max(1)).max(1)
}

/// Runs a message as a task of its own, so a panic inside it cannot take the consumer along; a
/// panicked message still ends (see [`message::after_panic`]).
///
/// Not inline in the caller: a future built in an `async fn` is counted in that function's
/// state even after it is moved into the task, which doubled every job's memory (about 11 KB a
/// job in flight, measured with `size_of_val`).
pub async fn run_job(
    ctx: &Arc<JobContext>,
    incoming: Incoming,
    decoded: Result<Message, String>,
) -> Outcome {
    let token = uuid::Uuid::new_v4().to_string();
    let incoming = Arc::new(incoming);
    let decoded = Arc::new(decoded);
    let task = {
        let ctx = ctx.clone();
        let (incoming, decoded) = (incoming.clone(), decoded.clone());
        let token = token.clone();
        tokio::spawn(
            async move {
                // Its Stripe calls draw on its partner's share of the budget.
                let partner = incoming.partner.clone();
                let work = message::handle(&ctx, &decoded, &incoming, &token);
                on_behalf_of(partner.as_deref(), work).await
            }
            .in_current_span(),
        )
    };
    match task.await {
        Ok(outcome) => outcome,
        Err(error) => {
            tracing::error!(%error, "the message panicked");
            Box::pin(message::after_panic(ctx, &decoded, &incoming, &token)).await
        }
    }
}

async fn join_all(jobs: &mut JoinSet<()>) {
    while jobs.join_next().await.is_some() {}
}

/// Acks or gives back the message as the worker decided. A message given back is redelivered;
/// the consumer pauses while Redis is away, so this is no requeue loop.
async fn dispose(delivery: &Delivery, disposition: Disposition) {
    let done = match disposition {
        Disposition::Ack => delivery.ack(BasicAckOptions::default()).await,
        Disposition::Requeue | Disposition::HandBack => {
            delivery
                .nack(BasicNackOptions {
                    requeue: true,
                    ..BasicNackOptions::default()
                })
                .await
        }
    };
    match done {
        Ok(true) => {}
        // lapin answers false, not an error, when the channel closed under the delivery.
        Ok(false) => tracing::warn!("ack/nack not sent: the channel is closed; redelivered"),
        // The channel is gone: RabbitMQ redelivers the message to another consumer.
        Err(error) => tracing::warn!(%error, "ack/nack failed; the message will be redelivered"),
    }
}

#[cfg(test)]
mod tests {
    use super::lane_prefetch;

    #[test]
    fn one_lane_never_fills_every_slot_but_keeps_most_of_them_busy() {
        assert_eq!(lane_prefetch(1), 1, "a worker of one slot still takes jobs");
        for concurrency in 2..=1000u16 {
            let prefetch = lane_prefetch(concurrency);
            assert!(
                prefetch < concurrency,
                "{concurrency} slots: a lane takes {prefetch}, leaving one for another partner"
            );
            assert!(
                prefetch * 2 >= concurrency,
                "{concurrency} slots: a lane alone keeps at least half of them busy ({prefetch})"
            );
        }
    }
}
