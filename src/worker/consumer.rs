//! The consumer loop: receive, run each job under a semaphore sized like the prefetch, route
//! by the outcome, ack. It stops taking jobs while Redis or RabbitMQ is away and resumes by
//! itself; on shutdown it stops consuming and lets the jobs in hand finish, within a bound.

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

use super::process::{DeliveryInfo, JobContext, Outcome, failed_result, process};
use super::route::{self, RouteError, attempt_of};
use crate::broker::Broker;
use crate::domain::{FailureCode, FailureDetail, Job};

/// How long a confirm of the worker's own publishes may take.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the loop checks that Redis still answers.
const HEALTH_INTERVAL: Duration = Duration::from_secs(1);

pub const JOBS_TOTAL: &str = "autorenew_worker_jobs_total";
pub const JOB_SECONDS: &str = "autorenew_worker_job_duration_seconds";

/// What the consumer loop shares with its job tasks and the probes.
pub struct Worker {
    pub broker: Broker,
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
            if self.broker.is_ready() && self.ctx.store.ping().await {
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
        channel
            .basic_qos(self.concurrency, BasicQosOptions::default())
            .await?;
        let tag = format!(
            "autorenew-worker-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        );
        let mut consumer = channel
            .basic_consume(
                self.broker.topology().jobs().into(),
                tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        self.consuming.store(true, Ordering::SeqCst);
        tracing::info!(queue = %self.broker.topology().jobs(), "consuming jobs");
        let mut health = tokio::time::interval(HEALTH_INTERVAL);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                _ = health.tick() => {
                    if self.store_trouble.load(Ordering::SeqCst) || !self.ctx.store.ping().await {
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
        let _ = channel
            .basic_cancel(tag.as_str().into(), BasicCancelOptions::default())
            .await;
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
        let attempt = attempt_of(&delivery.properties);
        let message_id = delivery
            .properties
            .message_id()
            .as_ref()
            .map(|id| id.to_string())
            .unwrap_or_default();
        let job = match Job::decode(&delivery.data) {
            Ok(job) => job,
            Err(error) => {
                tracing::warn!(%error, message_id, "a message that is not a job goes to the dead letters");
                // Boxed, like the routing of a job below: a rare path should not size every task.
                let routed = Box::pin(route::dead_letter(
                    &self.broker,
                    &delivery.data,
                    &message_id,
                    &format!("unparseable: {error}"),
                    attempt,
                    PUBLISH_TIMEOUT,
                ))
                .await;
                settle(&delivery, routed.map_err(RouteError::from)).await;
                metrics::counter!(JOBS_TOTAL, "outcome" => "poison").increment(1);
                return;
            }
        };
        let info = DeliveryInfo {
            attempt,
            redelivered: delivery.redelivered,
        };
        let span =
            tracing::info_span!("job", pay_id = %job.pay_id, request_id = %job.request_id, attempt);
        self.run_job(job, delivery, info, started)
            .instrument(span)
            .await;
    }

    async fn run_job(
        &self,
        job: Job,
        delivery: Delivery,
        info: DeliveryInfo,
        started: std::time::Instant,
    ) {
        // A panic inside a job must not take the consumer with it: run it as its own task.
        let running = spawn_process(&self.ctx, &job, info);
        let outcome = match running.await {
            Ok(outcome) => outcome,
            Err(panic) => Outcome::RetryLater(format!("the job panicked: {panic}")),
        };
        let label = outcome_label(&outcome);
        // Boxed: this task spends nearly all its life awaiting the job above, and the routing's
        // publishes and writes would otherwise size every waiting task (about 8 KB a job in
        // flight, measured with heaptrack) for the few milliseconds they run.
        let routed = Box::pin(self.route(&job, &delivery, info, outcome)).await;
        if matches!(routed, Err(RouteError::Store(_))) {
            // Redis went away mid-job: pause taking jobs, so the one handed back is not
            // redelivered to us in a loop.
            self.store_trouble.store(true, Ordering::SeqCst);
        }
        metrics::counter!(JOBS_TOTAL, "outcome" => label).increment(1);
        metrics::histogram!(JOB_SECONDS).record(started.elapsed().as_secs_f64());
        settle(&delivery, routed).await;
    }

    async fn route(
        &self,
        job: &Job,
        delivery: &Delivery,
        info: DeliveryInfo,
        outcome: Outcome,
    ) -> Result<(), RouteError> {
        let pay_id = job.pay_id.as_str();
        match outcome {
            Outcome::Final(result) => {
                let stored =
                    route::finish(&self.broker, &self.ctx.store, job, &result, PUBLISH_TIMEOUT)
                        .await?;
                tracing::info!(pay_id, status = %stored.status, attempts = stored.attempts, "job finished");
                Ok(())
            }
            Outcome::Settled(result) => {
                route::publish_event(&self.broker, job, &result, PUBLISH_TIMEOUT).await?;
                tracing::info!(pay_id, "job was settled already; event published again");
                Ok(())
            }
            Outcome::Locked => {
                let queue = self.broker.topology().lock_retry_queue();
                route::delay(
                    &self.broker,
                    &queue,
                    &delivery.data,
                    pay_id,
                    info.attempt,
                    PUBLISH_TIMEOUT,
                )
                .await?;
                Ok(())
            }
            Outcome::RetryLater(reason) => {
                let delays = self.broker.topology().retry_queues();
                match delays.get(info.attempt as usize - 1) {
                    Some((delay, queue)) => {
                        tracing::warn!(
                            pay_id,
                            attempt = info.attempt,
                            ?delay,
                            reason,
                            "job will be retried"
                        );
                        route::delay(
                            &self.broker,
                            queue,
                            &delivery.data,
                            pay_id,
                            info.attempt + 1,
                            PUBLISH_TIMEOUT,
                        )
                        .await?;
                        Ok(())
                    }
                    None => {
                        tracing::warn!(
                            pay_id,
                            attempt = info.attempt,
                            reason,
                            "retries spent: the job fails"
                        );
                        let detail = FailureDetail {
                            code: FailureCode::StripeUnavailable,
                            message: format!(
                                "Stripe kept failing after {} attempts: {reason}",
                                info.attempt
                            ),
                            stripe_code: None,
                            decline_code: None,
                        };
                        let result = failed_result(job, info.attempt, detail);
                        // Dead letter first: if we die after it, the redelivered job still
                        // stores and announces its result.
                        route::dead_letter(
                            &self.broker,
                            &delivery.data,
                            pay_id,
                            "retries spent",
                            info.attempt,
                            PUBLISH_TIMEOUT,
                        )
                        .await?;
                        route::finish(&self.broker, &self.ctx.store, job, &result, PUBLISH_TIMEOUT)
                            .await?;
                        Ok(())
                    }
                }
            }
            Outcome::HandBack(reason) => {
                tracing::warn!(pay_id, reason, "job handed back");
                self.store_trouble.store(true, Ordering::SeqCst);
                Err(RouteError::HandBack(reason))
            }
        }
    }
}

async fn join_all(jobs: &mut JoinSet<()>) {
    while jobs.join_next().await.is_some() {}
}

/// Acks a message whose routing succeeded; hands it back (requeue) otherwise, so it is
/// never lost. The consumer pauses while Redis is away, so this is no requeue loop.
async fn settle(delivery: &Delivery, routed: Result<(), RouteError>) {
    let done = match routed {
        Ok(()) => delivery.ack(BasicAckOptions::default()).await,
        Err(error) => {
            tracing::warn!(%error, "job not settled; handing it back");
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

fn outcome_label(outcome: &Outcome) -> &'static str {
    match outcome {
        Outcome::Final(result) if result.is_failed() => "failed",
        Outcome::Final(_) => "succeeded",
        Outcome::Settled(_) => "settled",
        Outcome::RetryLater(_) => "retry",
        Outcome::Locked => "locked",
        Outcome::HandBack(_) => "handed_back",
    }
}

/// Starts a job's steps as a task of their own. Not inline in the caller: a future built in an
/// `async fn` is counted in that function's state even after it is moved into the task, which
/// doubled every job's memory (about 11 KB a job in flight, measured with `size_of_val`).
fn spawn_process(
    ctx: &Arc<JobContext>,
    job: &Job,
    info: DeliveryInfo,
) -> tokio::task::JoinHandle<Outcome> {
    let ctx = ctx.clone();
    let job = job.clone();
    tokio::spawn(async move { process(&job, info, &ctx).await }.in_current_span())
}
