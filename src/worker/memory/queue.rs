//! The jobs queue and its satellites, in memory, with RabbitMQ's rules as the worker meets them:
//!
//! - a delivery stays unacked until acked or handed back; a nack with requeue, or a consumer
//!   that dies holding it, puts it back with the redelivered flag and one more delivery count;
//! - a message travels in its partner's lane if the workers know the partner, else in the
//!   shared jobs queue; each worker consumes every lane with a prefetch of its own, and the
//!   broker pushes deliveries to it (see `lanes`);
//! - past the delivery limit the broker moves it to the expired-jobs queue (at-least-once
//!   dead-lettering), which the workers consume like the lanes;
//! - a delayed queue (retry stages, lock retry, reconciliation) gives the message back to its
//!   lane when its TTL has passed, as a fresh delivery;
//! - publishes are confirmed; while the broker is away they fail, and a lost connection
//!   returns every unacked delivery;
//! - while the broker is up, a worker's publish may still be nacked (not routed), or its
//!   confirm may time out after the message was in fact routed (`set_publish_faults`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use tokio::sync::Notify;
use tokio::sync::futures::Notified;
use tokio::time::Instant;

use super::lanes::{Lane, LaneEvent, Lanes};
use super::{Pauses, Trace};
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
    /// The lanes, the shared and the expired-jobs queues, their consumers and unacked.
    lanes: Lanes,
    /// Due time and a sequence number (FIFO among equal times) → the message.
    delayed: BTreeMap<(Instant, u64), QueuedJob>,
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
    pauses: Pauses,
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
            pauses: Pauses::default(),
        }
    }

    /// The same broker, whose clients stop while `pauses` says they are paused: a paused
    /// consumer takes nothing new, and its publishes neither leave nor are confirmed.
    pub fn pausing(self, pauses: &Pauses) -> Self {
        MemoryQueue {
            pauses: pauses.clone(),
            ..self
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

    /// The partners whose lanes the workers consume; every other partner's messages go to
    /// the shared jobs queue (as a partner not in the workers' configuration yet).
    pub fn with_lanes(self, partners: &[String]) -> Self {
        self.state().lanes.set_partners(partners);
        self
    }

    /// Draws the order of the broker's pushes across lanes and consumers from `seed`.
    pub fn set_interleave(&self, seed: u64) {
        self.state().lanes.set_interleave(seed);
    }

    /// Publishes a job message to its lane, as the intake and `dlq replay` do.
    pub async fn publish(&self, job: QueuedJob) -> Result<(), BrokerError> {
        tokio::time::sleep(HOP).await;
        let pushed = {
            let mut state = self.state();
            if state.down {
                drop(state);
                self.note(|| format!("publish {} refused: broker away", job.message_id));
                return Err(BrokerError::Unavailable);
            }
            self.note(|| format!("publish {} attempt {}", job.message_id, job.attempt));
            let lane = state.lanes.route(&job);
            state.lanes.enqueue(lane, job);
            state.lanes.dispatch()
        };
        self.pushed(pushed);
        self.arrived.notify_waiters();
        tokio::time::sleep(HOP).await;
        Ok(())
    }

    /// A worker incarnation starts consuming every lane: `slots` jobs at once, `prefetch`
    /// unacked deliveries a lane.
    pub fn consume(&self, consumer: &str, slots: u16, prefetch: u16) {
        let pushed = {
            let mut state = self.state();
            state
                .lanes
                .consume(consumer, u32::from(slots), u32::from(prefetch));
            if state.down {
                Vec::new()
            } else {
                state.lanes.dispatch()
            }
        };
        self.pushed(pushed);
    }

    /// The worker gave delivery `tag` one of its slots (for the lanes' log).
    pub fn started(&self, tag: u64) {
        self.state().lanes.started(tag);
    }

    /// Every change of the lanes, in order (for the simulation's fairness check).
    pub fn lane_log(&self) -> Vec<LaneEvent> {
        self.state().lanes.log_entries()
    }

    /// Traces the broker's pushes and wakes the consumers.
    fn pushed(&self, pushed: Vec<(String, Lane, u64, QueuedJob)>) {
        if pushed.is_empty() {
            return;
        }
        for (consumer, lane, tag, job) in &pushed {
            self.trace.note(consumer, || {
                format!(
                    "deliver #{tag} {} attempt {}{}{} count {} ({lane})",
                    job.message_id,
                    job.attempt,
                    if job.redelivered { " redelivered" } else { "" },
                    if job.parked { " parked" } else { "" },
                    job.delivery_count
                )
            });
        }
        self.arrived.notify_waiters();
    }

    /// Moves the delayed messages that are due into their lanes, and pushes what it can.
    fn move_due(&self) {
        let pushed = {
            let mut state = self.state();
            if state.down {
                return;
            }
            let now = Instant::now();
            while let Some(entry) = state.delayed.first_entry() {
                if entry.key().0 > now {
                    break;
                }
                let job = entry.remove();
                let lane = state.lanes.route(&job);
                state.lanes.enqueue(lane, job);
            }
            state.lanes.dispatch()
        };
        self.pushed(pushed);
    }

    /// The next message for `consumer`: for a registered consumer, the next the broker pushed
    /// to it; for any other (the job path's tests), the head of the first queue that has one.
    /// None while the broker is away or nothing is there.
    pub fn try_receive(&self, consumer: &str) -> Option<Delivery> {
        self.move_due();
        let mut state = self.state();
        if state.down {
            return None;
        }
        if state.lanes.is_consumer(consumer) {
            let (tag, job) = state.lanes.take_pushed(consumer)?;
            return Some(Delivery {
                tag,
                incoming: job.incoming(),
            });
        }
        let (tag, lane, job) = state.lanes.pull(consumer)?;
        drop(state);
        self.pushed(vec![(consumer.to_owned(), lane, tag, job.clone())]);
        Some(Delivery {
            tag,
            incoming: job.incoming(),
        })
    }

    /// Waits for the next message for `consumer`.
    pub async fn receive(&self, consumer: &str) -> Delivery {
        loop {
            self.pauses.wait(consumer).await;
            let arrived = self.arrived.notified();
            tokio::pin!(arrived);
            arrived.as_mut().enable();
            if let Some(delivery) = self.try_receive(consumer) {
                return delivery;
            }
            self.until_arrived_or_due(arrived).await;
        }
    }

    /// The delayed queues' clock: moves each delayed message into its lane when its TTL has
    /// passed, whoever is waiting, as the broker does. Runs until dropped.
    pub async fn run_timers(&self) {
        loop {
            let arrived = self.arrived.notified();
            tokio::pin!(arrived);
            arrived.as_mut().enable();
            self.move_due();
            self.until_arrived_or_due(arrived).await;
        }
    }

    /// Waits until something arrives (`arrived`, enabled before the state was last read, so
    /// nothing slips between the read and the wait) or the first delayed message is due.
    async fn until_arrived_or_due(&self, arrived: std::pin::Pin<&mut Notified<'_>>) {
        match self.due_while_up() {
            Some(due) => {
                tokio::select! {
                    biased;
                    () = arrived => {}
                    () = tokio::time::sleep_until(due) => {}
                }
            }
            None => arrived.await,
        }
    }

    /// When the first delayed message is due; none while the broker is away (nothing moves
    /// then: wait for it to come back, or a message already due would wake a loop forever).
    fn due_while_up(&self) -> Option<Instant> {
        if self.state().down {
            None
        } else {
            self.next_due()
        }
    }

    /// When the first delayed message is due.
    pub fn next_due(&self) -> Option<Instant> {
        self.state().delayed.keys().next().map(|(due, _)| *due)
    }

    /// Removes an acked delivery; a tag the broker no longer knows (its connection was lost)
    /// changes nothing: the message is back on the queue.
    pub fn ack(&self, tag: u64) {
        let (acked, pushed) = {
            let mut state = self.state();
            let acked = state.lanes.end(tag).is_some();
            let pushed = if acked && !state.down {
                state.lanes.dispatch()
            } else {
                Vec::new()
            };
            (acked, pushed)
        };
        self.note(|| format!("ack #{tag}{}", if acked { "" } else { " (stale)" }));
        self.pushed(pushed);
    }

    /// Hands a delivery back: it is redelivered, one delivery count up.
    pub fn nack(&self, tag: u64) {
        let back = self.state().lanes.end(tag);
        self.note(|| {
            format!(
                "nack #{tag}{}",
                if back.is_some() { "" } else { " (stale)" }
            )
        });
        if let Some(held) = back {
            self.give_back(vec![(held.lane, held.job)]);
        }
    }

    /// A worker incarnation died: it consumes nothing more, and every delivery it held comes
    /// back.
    pub fn consumer_lost(&self, consumer: &str) {
        self.state().lanes.cancel(consumer);
        self.connection_lost(consumer);
    }

    /// A consumer's connection is gone: every delivery it held comes back.
    fn connection_lost(&self, consumer: &str) {
        let back: Vec<(Lane, QueuedJob)> = {
            let mut state = self.state();
            let tags = state.lanes.held_by(consumer);
            tags.into_iter()
                .filter_map(|tag| state.lanes.end(tag))
                .map(|held| (held.lane, held.job))
                .collect()
        };
        self.trace.note(consumer, || {
            format!("connection lost: {} unacked back", back.len())
        });
        self.give_back(back);
    }

    fn give_back(&self, back: Vec<(Lane, QueuedJob)>) {
        let pushed = {
            let mut state = self.state();
            for (lane, mut job) in back {
                job.redelivered = true;
                job.delivery_count += 1;
                if job.delivery_count > self.delivery_limit {
                    // x-dead-letter-strategy at-least-once into the expired-jobs queue.
                    state.lanes.enqueue(Lane::Expired, job);
                } else {
                    state.lanes.enqueue(lane, job);
                }
            }
            if state.down {
                Vec::new()
            } else {
                state.lanes.dispatch()
            }
        };
        self.pushed(pushed);
        self.arrived.notify_waiters();
    }

    /// The broker goes away (every connection with it, every unacked delivery back) or
    /// comes back (the workers' consumers with it).
    pub fn set_down(&self, down: bool) {
        let consumers: BTreeSet<String> = {
            let mut state = self.state();
            state.down = down;
            state.lanes.broker(!down);
            state
                .lanes
                .unacked
                .values()
                .map(|held| held.consumer.clone())
                .collect()
        };
        self.note(|| format!("broker {}", if down { "away" } else { "back" }));
        if down {
            for consumer in consumers {
                self.connection_lost(&consumer);
            }
        } else {
            self.move_due();
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
        state.lanes.is_empty() && state.delayed.is_empty()
    }

    /// From now on this share of the worker's publishes meets a fault while the broker is up
    /// (drawn from `seed`): a nack, or a confirm that times out after the message was routed.
    pub fn set_publish_faults(&self, seed: u64, rate: f64) {
        self.state().publish_faults = Some((fastrand::Rng::with_seed(seed), rate));
    }

    /// Waits one hop, then applies `publish` unless the broker is away or nacks it; a confirm
    /// that is lost leaves the message applied and fails after the client's timeout.
    async fn confirmed(&self, publish: impl FnOnce(&mut State)) -> Result<(), BrokerError> {
        self.pauses.hold(&self.who, "publish").await;
        let done = self.confirm(publish).await;
        self.pauses.wait(&self.who).await;
        done
    }

    /// The publish and its confirm, between the caller's pauses.
    async fn confirm(&self, publish: impl FnOnce(&mut State)) -> Result<(), BrokerError> {
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
