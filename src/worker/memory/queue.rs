//! The jobs queue and its satellites, in memory, with RabbitMQ's rules as the worker meets them:
//!
//! - a delivery stays unacked until acked or handed back; a nack with requeue, or a consumer
//!   that dies holding it, puts it back with the redelivered flag and one more delivery count;
//! - past the delivery limit the broker moves it to the expired-jobs queue (at-least-once
//!   dead-lettering), which the workers consume like the jobs queue;
//! - a delayed queue (retry stages, lock retry, reconciliation) gives the message back to the
//!   jobs queue when its TTL has passed, as a fresh delivery;
//! - publishes are confirmed; while the broker is away they fail, and a lost connection
//!   returns every unacked delivery;
//! - while the broker is up, a worker's publish may still be nacked (not routed), or its
//!   confirm may time out after the message was in fact routed (`set_publish_faults`).

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::Trace;
use crate::broker::BrokerError;
use crate::domain::ResultEvent;
use crate::domain::event::LifecycleEvent;
use crate::domain::job::JOB_MESSAGE_TYPE;
use crate::worker::ports::{Incoming, JobQueue, Wait};

/// How long a publish takes to reach the broker, and its confirm to come back.
const HOP: Duration = Duration::from_millis(1);
/// How long the worker waits for a confirm (`worker::PUBLISH_TIMEOUT`).
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(5);

/// The delays of the topology's delayed queues.
#[derive(Debug, Clone)]
pub struct QueueDelays {
    pub retry: Vec<Duration>,
    pub lock: Duration,
    pub reconcile: Duration,
}

/// A job message as the broker holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedJob {
    /// The AMQP `type`: a creation job, a cancel, a Stripe event.
    pub kind: String,
    pub body: Vec<u8>,
    pub message_id: String,
    pub attempt: u32,
    pub parked: bool,
    pub redelivered: bool,
    pub delivery_count: u32,
    /// The partner whose lane it travels in (none: the shared queue).
    pub partner: Option<String>,
}

impl QueuedJob {
    /// A creation job's first publish (the intake's, or a replay's).
    pub fn fresh(body: Vec<u8>, message_id: &str, attempt: u32) -> Self {
        QueuedJob::of_kind(JOB_MESSAGE_TYPE, body, message_id, attempt)
    }

    /// A first publish of a message of this `kind`.
    pub fn of_kind(kind: &str, body: Vec<u8>, message_id: &str, attempt: u32) -> Self {
        QueuedJob {
            kind: kind.to_owned(),
            body,
            message_id: message_id.to_owned(),
            attempt,
            parked: false,
            redelivered: false,
            delivery_count: 0,
            partner: None,
        }
    }

    /// This message in `partner`'s lane.
    pub fn for_partner(mut self, partner: &str) -> Self {
        self.partner = Some(partner.to_owned());
        self
    }

    fn copy_of(job: &Incoming, attempt: u32, parked: bool) -> Self {
        QueuedJob {
            kind: job.kind.clone(),
            body: job.body.clone(),
            message_id: job.message_id.clone(),
            attempt,
            parked,
            redelivered: false,
            delivery_count: 0,
            partner: job.partner.clone(),
        }
    }

    fn incoming(&self) -> Incoming {
        Incoming {
            kind: self.kind.clone(),
            body: self.body.clone(),
            message_id: self.message_id.clone(),
            attempt: self.attempt,
            redelivered: self.redelivered,
            parked: self.parked,
            delivery_count: self.delivery_count,
            partner: self.partner.clone(),
        }
    }
}

/// A message handed to a consumer, to be acked or handed back by its tag.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub tag: u64,
    pub incoming: Incoming,
}

#[derive(Debug, Default)]
struct State {
    jobs: VecDeque<QueuedJob>,
    expired: VecDeque<QueuedJob>,
    /// Due time and a sequence number (FIFO among equal times) → the message.
    delayed: BTreeMap<(Instant, u64), QueuedJob>,
    unacked: BTreeMap<u64, (String, QueuedJob)>,
    dead: Vec<(QueuedJob, String)>,
    events: Vec<(Instant, ResultEvent)>,
    changes: Vec<(Instant, LifecycleEvent)>,
    next: u64,
    down: bool,
    /// The worker's publishes that meet a fault while the broker is up: half nacked, half
    /// routed with their confirm timing out.
    publish_faults: Option<(fastrand::Rng, f64)>,
}

/// What becomes of one publish while the broker is up.
enum PublishFault {
    Nacked,
    ConfirmLost,
}

/// The broker: one per simulated world, one named handle per worker.
#[derive(Clone)]
pub struct MemoryQueue {
    state: Arc<Mutex<State>>,
    arrived: Arc<Notify>,
    delays: Arc<QueueDelays>,
    delivery_limit: u32,
    who: Arc<str>,
    trace: Trace,
}

impl MemoryQueue {
    pub fn new(delays: QueueDelays, delivery_limit: u32, trace: Trace) -> Self {
        MemoryQueue {
            state: Arc::default(),
            arrived: Arc::new(Notify::new()),
            delays: Arc::new(delays),
            delivery_limit,
            who: "broker".into(),
            trace,
        }
    }

    /// The same broker, with calls traced under `who`.
    pub fn named(&self, who: &str) -> Self {
        MemoryQueue {
            who: who.into(),
            ..self.clone()
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A poisoned lock means a panic while holding it; the state is still consistent
        // (every update is a single step), so carry on with it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn note(&self, what: impl FnOnce() -> String) {
        self.trace.note(&self.who, what);
    }

    /// Publishes a job message to the jobs queue, as the intake and `dlq replay` do.
    pub async fn publish(&self, job: QueuedJob) -> Result<(), BrokerError> {
        tokio::time::sleep(HOP).await;
        {
            let mut state = self.state();
            if state.down {
                drop(state);
                self.note(|| format!("publish {} refused: broker away", job.message_id));
                return Err(BrokerError::Unavailable);
            }
            self.note(|| format!("publish {} attempt {}", job.message_id, job.attempt));
            state.jobs.push_back(job);
        }
        self.arrived.notify_waiters();
        tokio::time::sleep(HOP).await;
        Ok(())
    }

    /// The next message for `consumer`, moving due delayed messages first; None while the
    /// broker is away or nothing is ready.
    pub fn try_receive(&self, consumer: &str) -> Option<Delivery> {
        let mut state = self.state();
        if state.down {
            return None;
        }
        let now = Instant::now();
        while let Some(entry) = state.delayed.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let job = entry.remove();
            state.jobs.push_back(job);
        }
        let job = state
            .expired
            .pop_front()
            .or_else(|| state.jobs.pop_front())?;
        state.next += 1;
        let tag = state.next;
        let incoming = job.incoming();
        state.unacked.insert(tag, (consumer.to_owned(), job));
        drop(state);
        self.trace.note(consumer, || {
            format!(
                "deliver #{tag} {} attempt {}{}{} count {}",
                incoming.message_id,
                incoming.attempt,
                if incoming.redelivered {
                    " redelivered"
                } else {
                    ""
                },
                if incoming.parked { " parked" } else { "" },
                incoming.delivery_count
            )
        });
        Some(Delivery { tag, incoming })
    }

    /// Waits for the next message for `consumer`.
    pub async fn receive(&self, consumer: &str) -> Delivery {
        loop {
            let arrived = self.arrived.notified();
            tokio::pin!(arrived);
            arrived.as_mut().enable();
            if let Some(delivery) = self.try_receive(consumer) {
                return delivery;
            }
            // While the broker is away nothing is delivered: wait for it to come back (a
            // delayed message already due would otherwise wake this loop forever).
            let due = if self.state().down {
                None
            } else {
                self.next_due()
            };
            match due {
                Some(due) => {
                    tokio::select! {
                        biased;
                        () = &mut arrived => {}
                        () = tokio::time::sleep_until(due) => {}
                    }
                }
                None => arrived.await,
            }
        }
    }

    /// When the first delayed message is due.
    pub fn next_due(&self) -> Option<Instant> {
        self.state().delayed.keys().next().map(|(due, _)| *due)
    }

    /// Removes an acked delivery; a tag the broker no longer knows (its connection was lost)
    /// changes nothing: the message is back on the queue.
    pub fn ack(&self, tag: u64) {
        let acked = self.state().unacked.remove(&tag);
        self.note(|| {
            format!(
                "ack #{tag}{}",
                if acked.is_some() { "" } else { " (stale)" }
            )
        });
    }

    /// Hands a delivery back: it is redelivered, one delivery count up.
    pub fn nack(&self, tag: u64) {
        let back = self.state().unacked.remove(&tag);
        self.note(|| {
            format!(
                "nack #{tag}{}",
                if back.is_some() { "" } else { " (stale)" }
            )
        });
        if let Some((_, job)) = back {
            self.give_back(job);
        }
    }

    /// A consumer died: every delivery it held comes back.
    pub fn consumer_lost(&self, consumer: &str) {
        let mut back = Vec::new();
        {
            let mut state = self.state();
            let tags: Vec<u64> = state
                .unacked
                .iter()
                .filter(|(_, (holder, _))| holder == consumer)
                .map(|(tag, _)| *tag)
                .collect();
            for tag in tags {
                if let Some((_, job)) = state.unacked.remove(&tag) {
                    back.push(job);
                }
            }
        }
        self.trace.note(consumer, || {
            format!("connection lost: {} unacked back", back.len())
        });
        for job in back {
            self.give_back(job);
        }
    }

    fn give_back(&self, mut job: QueuedJob) {
        job.redelivered = true;
        job.delivery_count += 1;
        {
            let mut state = self.state();
            if job.delivery_count > self.delivery_limit {
                // x-dead-letter-strategy at-least-once into the expired-jobs queue.
                state.expired.push_back(job);
            } else {
                state.jobs.push_back(job);
            }
        }
        self.arrived.notify_waiters();
    }

    /// The broker goes away (every connection with it, every unacked delivery back) or
    /// comes back.
    pub fn set_down(&self, down: bool) {
        let consumers: Vec<String> = {
            let mut state = self.state();
            state.down = down;
            state
                .unacked
                .values()
                .map(|(consumer, _)| consumer.clone())
                .collect()
        };
        self.note(|| format!("broker {}", if down { "away" } else { "back" }));
        if down {
            for consumer in consumers {
                self.consumer_lost(&consumer);
            }
        } else {
            self.arrived.notify_waiters();
        }
    }

    /// Takes every dead letter off its queue (for a replay).
    pub fn take_dead_letters(&self) -> Vec<(QueuedJob, String)> {
        std::mem::take(&mut self.state().dead)
    }

    /// Puts a dead letter back (a replay that could not publish it).
    pub fn return_dead_letter(&self, job: QueuedJob, reason: String) {
        self.state().dead.push((job, reason));
    }

    pub fn dead_letters(&self) -> Vec<(QueuedJob, String)> {
        self.state().dead.clone()
    }

    /// Every event announced, in order, with when it was confirmed.
    pub fn events(&self) -> Vec<(Instant, ResultEvent)> {
        self.state().events.clone()
    }

    /// Every change of a subscription's life announced, in order, with when it was confirmed.
    pub fn changes(&self) -> Vec<(Instant, LifecycleEvent)> {
        self.state().changes.clone()
    }

    /// Nothing ready, delayed or unacked.
    pub fn is_idle(&self) -> bool {
        let state = self.state();
        state.jobs.is_empty()
            && state.expired.is_empty()
            && state.delayed.is_empty()
            && state.unacked.is_empty()
    }

    /// From now on this share of the worker's publishes meets a fault while the broker is up
    /// (drawn from `seed`): a nack, or a confirm that times out after the message was routed.
    pub fn set_publish_faults(&self, seed: u64, rate: f64) {
        self.state().publish_faults = Some((fastrand::Rng::with_seed(seed), rate));
    }

    /// Waits one hop, then applies `publish` unless the broker is away or nacks it; a confirm
    /// that is lost leaves the message applied and fails after the client's timeout.
    async fn confirmed(&self, publish: impl FnOnce(&mut State)) -> Result<(), BrokerError> {
        tokio::time::sleep(HOP).await;
        let fault = {
            let mut state = self.state();
            if state.down {
                return Err(BrokerError::Unavailable);
            }
            let fault = state.publish_faults.as_mut().and_then(|(rng, rate)| {
                let draw = rng.f64();
                if draw < *rate / 2.0 {
                    Some(PublishFault::Nacked)
                } else if draw < *rate {
                    Some(PublishFault::ConfirmLost)
                } else {
                    None
                }
            });
            if matches!(fault, Some(PublishFault::Nacked)) {
                return Err(BrokerError::Nacked);
            }
            publish(&mut state);
            fault
        };
        // A consumer waiting with nothing due wakes up to see the new due time.
        self.arrived.notify_waiters();
        if matches!(fault, Some(PublishFault::ConfirmLost)) {
            tokio::time::sleep(CONFIRM_TIMEOUT).await;
            return Err(BrokerError::Timeout(CONFIRM_TIMEOUT));
        }
        tokio::time::sleep(HOP).await;
        Ok(())
    }
}

impl JobQueue for MemoryQueue {
    fn retry_stages(&self) -> usize {
        self.delays.retry.len()
    }

    fn delay<'a>(
        &'a self,
        wait: Wait,
        job: &'a Incoming,
        attempt: u32,
    ) -> BoxFuture<'a, Result<(), BrokerError>> {
        async move {
            let delay = match wait {
                Wait::Retry(stage) => self
                    .delays
                    .retry
                    .get(stage)
                    .or(self.delays.retry.last())
                    .copied()
                    .unwrap_or_default(),
                Wait::Lock => self.delays.lock,
                Wait::Reconcile => self.delays.reconcile,
            };
            let copy = QueuedJob::copy_of(job, attempt, wait == Wait::Reconcile);
            let done = self
                .confirmed(|state| {
                    state.next += 1;
                    let seq = state.next;
                    state.delayed.insert((Instant::now() + delay, seq), copy);
                })
                .await;
            self.note(|| {
                format!(
                    "delay {} {wait:?} attempt {attempt}: {}",
                    job.message_id,
                    outcome(&done)
                )
            });
            done
        }
        .boxed()
    }

    fn dead_letter<'a>(
        &'a self,
        job: &'a Incoming,
        reason: &'a str,
    ) -> BoxFuture<'a, Result<(), BrokerError>> {
        async move {
            let copy = QueuedJob::copy_of(job, job.attempt, false);
            let done = self
                .confirmed(|state| state.dead.push((copy, reason.to_owned())))
                .await;
            self.note(|| {
                format!(
                    "dead-letter {} ({reason}): {}",
                    job.message_id,
                    outcome(&done)
                )
            });
            done
        }
        .boxed()
    }

    fn announce<'a>(&'a self, event: &'a ResultEvent) -> BoxFuture<'a, Result<(), BrokerError>> {
        async move {
            let done = self
                .confirmed(|state| state.events.push((Instant::now(), event.clone())))
                .await;
            self.note(|| {
                format!(
                    "announce {} {}: {}",
                    event.id,
                    event.data.sub_id,
                    outcome(&done)
                )
            });
            done
        }
        .boxed()
    }

    fn announce_change<'a>(
        &'a self,
        event: &'a LifecycleEvent,
    ) -> BoxFuture<'a, Result<(), BrokerError>> {
        async move {
            let done = self
                .confirmed(|state| state.changes.push((Instant::now(), event.clone())))
                .await;
            self.note(|| format!("announce {} {}: {}", event.kind, event.id, outcome(&done)));
            done
        }
        .boxed()
    }

    fn event_source(&self) -> String {
        "urn:autorenew:memory".into()
    }
}

fn outcome(done: &Result<(), BrokerError>) -> &'static str {
    match done {
        Ok(()) => "ok",
        Err(BrokerError::Nacked) => "nacked",
        Err(BrokerError::Timeout(_)) => "confirm timed out (routed)",
        Err(_) => "broker away",
    }
}
