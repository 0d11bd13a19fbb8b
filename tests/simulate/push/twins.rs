//! In-memory twins of what a delivery touches: the attempt log and breaker (the Lua scripts of
//! `src/store/push.rs`, rule for rule), the partner queues with their wait queues (RabbitMQ:
//! unacked deliveries come back when their consumer dies; a publish may be nacked while the
//! broker is up, or time out after it was routed), the partners' endpoints (late, failing,
//! silent, gone), and a clock on tokio's paused time.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use autorenew::broker::BrokerError;
use autorenew::broker::push::PushMessage;
use autorenew::domain::push::{AttemptRecord, DeliveryStatus, PushSecret};
use autorenew::push::Attempted;
use autorenew::push::ports::{BreakerRule, PushClock, PushLog, PushRetries, PushSender};
use autorenew::store::{BreakerStep, NewNotification, StoreError};
use bytes::Bytes;
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use tokio::time::Instant;

pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Wall time: a fixed epoch plus tokio's (paused) elapsed time.
#[derive(Clone, Copy)]
pub struct SimClock {
    pub start: Instant,
}

pub const EPOCH_MS: i64 = 1_800_000_000_000;

impl PushClock for SimClock {
    fn now_ms(&self) -> i64 {
        EPOCH_MS + i64::try_from(self.start.elapsed().as_millis()).unwrap_or(0)
    }
}

/// One event's record, as the `n:<webhook-id>` hash holds it.
#[derive(Debug, Clone)]
pub struct Record {
    pub event_id: String,
    pub body: Vec<u8>,
    pub status: DeliveryStatus,
    pub attempts: Vec<AttemptRecord>,
    /// Every status the record held, in order: the invariant "never back" reads it.
    pub history: Vec<DeliveryStatus>,
}

/// A partner's breaker and switch (`state`).
#[derive(Debug, Clone, Default)]
pub struct Breaker {
    pub failures: u32,
    pub failing_since: Option<i64>,
    pub open_until: i64,
    pub cooldown: Option<i64>,
    pub disabled: bool,
}

#[derive(Default)]
struct LogState {
    records: BTreeMap<(String, String), Record>,
    breakers: BTreeMap<String, Breaker>,
    away: bool,
    /// Calls still to run and then fail (a Redis timeout after the script ran).
    lose: u32,
}

/// The attempt log twin (`RECORD`, `ATTEMPT`, `FAILURE`, and the state commands).
#[derive(Clone)]
pub struct MemoryPushLog {
    state: Arc<Mutex<LogState>>,
    clock: SimClock,
}

impl MemoryPushLog {
    pub fn new(clock: SimClock) -> Self {
        MemoryPushLog {
            state: Arc::default(),
            clock,
        }
    }

    pub fn set_away(&self, away: bool) {
        lock(&self.state).away = away;
    }

    pub fn lose_answers(&self, calls: u32) {
        lock(&self.state).lose += calls;
    }

    pub fn records(&self) -> BTreeMap<(String, String), Record> {
        lock(&self.state).records.clone()
    }

    pub fn breaker(&self, partner: &str) -> Breaker {
        lock(&self.state)
            .breakers
            .get(partner)
            .cloned()
            .unwrap_or_default()
    }

    /// `autorenew push enable`.
    pub fn enable(&self, partner: &str) {
        lock(&self.state).breakers.remove(partner);
    }

    /// Runs `change` as one script: away fails it untouched; a lost answer runs it and fails.
    fn script<T>(&self, change: impl FnOnce(&mut LogState) -> T) -> Result<T, StoreError> {
        let mut state = lock(&self.state);
        if state.away {
            return Err(StoreError::Timeout(Duration::from_secs(1)));
        }
        let answer = change(&mut state);
        if state.lose > 0 {
            state.lose -= 1;
            return Err(StoreError::Timeout(Duration::from_secs(1)));
        }
        Ok(answer)
    }
}

/// Every call takes a round trip of Redis time, so other tasks run in between.
async fn round_trip() {
    tokio::time::sleep(Duration::from_millis(1)).await;
}

impl PushLog for MemoryPushLog {
    fn record<'a>(
        &'a self,
        partner: &'a str,
        event: &'a NewNotification<'a>,
        _retention: Duration,
    ) -> BoxFuture<'a, Result<DeliveryStatus, StoreError>> {
        async move {
            round_trip().await;
            self.script(|state| {
                let key = (partner.to_owned(), event.webhook_id.to_owned());
                state
                    .records
                    .entry(key)
                    .or_insert_with(|| Record {
                        event_id: event.event_id.to_owned(),
                        body: event.body.to_vec(),
                        status: DeliveryStatus::Pending,
                        attempts: Vec::new(),
                        history: vec![DeliveryStatus::Pending],
                    })
                    .status
            })
        }
        .boxed()
    }

    fn attempt<'a>(
        &'a self,
        partner: &'a str,
        webhook_id: &'a str,
        attempt: &'a AttemptRecord,
        status: Option<DeliveryStatus>,
        _retention: Duration,
    ) -> BoxFuture<'a, Result<Option<DeliveryStatus>, StoreError>> {
        async move {
            round_trip().await;
            self.script(|state| {
                if status == Some(DeliveryStatus::Delivered) {
                    // A 2xx closes the breaker in the same script.
                    if let Some(breaker) = state.breakers.get_mut(partner) {
                        let disabled = breaker.disabled;
                        *breaker = Breaker {
                            disabled,
                            ..Breaker::default()
                        };
                    }
                }
                let key = (partner.to_owned(), webhook_id.to_owned());
                let record = state.records.get_mut(&key)?;
                record.attempts.push(attempt.clone());
                if let Some(new) = status
                    && record.status != DeliveryStatus::Delivered
                    && record.status != new
                {
                    record.status = new;
                    record.history.push(new);
                }
                Some(record.status)
            })
        }
        .boxed()
    }

    fn failure<'a>(
        &'a self,
        partner: &'a str,
        rule: BreakerRule,
    ) -> BoxFuture<'a, Result<BreakerStep, StoreError>> {
        async move {
            round_trip().await;
            let now = self.clock.now_ms();
            self.script(|state| {
                let breaker = state.breakers.entry(partner.to_owned()).or_default();
                breaker.failures += 1;
                let since = *breaker.failing_since.get_or_insert(now);
                let mut opened = false;
                if breaker.failures >= rule.failures && breaker.open_until <= now {
                    let cooldown = breaker.cooldown.unwrap_or(millis(rule.cooldown));
                    breaker.open_until = now + cooldown;
                    breaker.cooldown = Some((cooldown * 2).min(millis(rule.longest_cooldown)));
                    opened = true;
                }
                let mut disabled = false;
                if now - since >= millis(rule.disable_after) && !breaker.disabled {
                    breaker.disabled = true;
                    disabled = true;
                }
                BreakerStep { opened, disabled }
            })
        }
        .boxed()
    }

    fn disable<'a>(
        &'a self,
        partner: &'a str,
        _reason: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        async move {
            round_trip().await;
            self.script(|state| {
                state
                    .breakers
                    .entry(partner.to_owned())
                    .or_default()
                    .disabled = true;
            })
        }
        .boxed()
    }
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX / 4)
}

/// A message on a partner's queue.
#[derive(Debug, Clone)]
pub struct PushCopy {
    pub partner: String,
    pub body: Vec<u8>,
    pub attempts: u32,
    pub trigger: Option<String>,
}

#[derive(Default)]
struct QueueState {
    ready: BTreeMap<String, VecDeque<PushCopy>>,
    /// tag → (consumer, copy).
    unacked: BTreeMap<u64, (String, PushCopy)>,
    /// (due, sequence) → copy, on the wait queues.
    waiting: BTreeMap<(Instant, u64), PushCopy>,
    next: u64,
    down: bool,
    /// A share of publishes nacked while the broker is up, and of confirms that time out
    /// after the message was routed.
    nack_rate: f64,
    lost_confirm_rate: f64,
    rng: Option<fastrand::Rng>,
}

/// The partner queues, the wait queues and their return path.
#[derive(Clone)]
pub struct MemoryPushQueue {
    state: Arc<Mutex<QueueState>>,
}

impl MemoryPushQueue {
    pub fn new(seed: u64) -> Self {
        MemoryPushQueue {
            state: Arc::new(Mutex::new(QueueState {
                rng: Some(fastrand::Rng::with_seed(seed)),
                ..QueueState::default()
            })),
        }
    }

    pub fn set_faults(&self, nack_rate: f64, lost_confirm_rate: f64) {
        let mut state = lock(&self.state);
        state.nack_rate = nack_rate;
        state.lost_confirm_rate = lost_confirm_rate;
    }

    pub fn set_down(&self, down: bool) {
        let mut state = lock(&self.state);
        state.down = down;
        if down {
            // The connection is gone: every unacked delivery returns, at the head.
            let unacked = std::mem::take(&mut state.unacked);
            for (_, (_, copy)) in unacked.into_iter().rev() {
                state
                    .ready
                    .entry(copy.partner.clone())
                    .or_default()
                    .push_front(copy);
            }
        }
    }

    pub fn is_down(&self) -> bool {
        lock(&self.state).down
    }

    /// A publish to a partner's queue, with the broker's confirm: Err when it was nacked, the
    /// broker was away, or the confirm did not come (the copy may then be routed all the same).
    pub async fn publish(
        &self,
        copy: PushCopy,
        delay: Option<Duration>,
    ) -> Result<(), BrokerError> {
        tokio::time::sleep(Duration::from_millis(1)).await;
        let mut state = lock(&self.state);
        if state.down {
            return Err(BrokerError::Unavailable);
        }
        let (nack_rate, lost_rate) = (state.nack_rate, state.lost_confirm_rate);
        let draw = state.rng.as_mut().map_or(1.0, fastrand::Rng::f64);
        if draw < nack_rate {
            return Err(BrokerError::Nacked);
        }
        state.next += 1;
        let sequence = state.next;
        match delay {
            Some(delay) => {
                state
                    .waiting
                    .insert((Instant::now() + delay, sequence), copy);
            }
            None => state
                .ready
                .entry(copy.partner.clone())
                .or_default()
                .push_back(copy),
        }
        if draw < nack_rate + lost_rate {
            return Err(BrokerError::Timeout(Duration::from_secs(5)));
        }
        Ok(())
    }

    /// The next message of `partner`'s queue for `consumer`, if one is ready.
    pub fn take(&self, partner: &str, consumer: &str) -> Option<(u64, PushCopy)> {
        let mut state = lock(&self.state);
        if state.down {
            return None;
        }
        let now = Instant::now();
        let due: Vec<(Instant, u64)> = state
            .waiting
            .range(..(now, u64::MAX))
            .map(|(k, _)| *k)
            .collect();
        for key in due {
            if let Some(copy) = state.waiting.remove(&key) {
                state
                    .ready
                    .entry(copy.partner.clone())
                    .or_default()
                    .push_back(copy);
            }
        }
        let copy = state.ready.get_mut(partner)?.pop_front()?;
        state.next += 1;
        let tag = state.next;
        state
            .unacked
            .insert(tag, (consumer.to_owned(), copy.clone()));
        Some((tag, copy))
    }

    pub fn ack(&self, tag: u64) {
        lock(&self.state).unacked.remove(&tag);
    }

    /// A nack with requeue: back at the head of its queue.
    pub fn nack(&self, tag: u64) {
        let mut state = lock(&self.state);
        if let Some((_, copy)) = state.unacked.remove(&tag) {
            state
                .ready
                .entry(copy.partner.clone())
                .or_default()
                .push_front(copy);
        }
    }

    /// A consumer died: its unacked deliveries come back.
    pub fn consumer_lost(&self, consumer: &str) {
        let mut state = lock(&self.state);
        let tags: Vec<u64> = state
            .unacked
            .iter()
            .filter(|(_, (owner, _))| owner == consumer)
            .map(|(tag, _)| *tag)
            .collect();
        for tag in tags.into_iter().rev() {
            if let Some((_, copy)) = state.unacked.remove(&tag) {
                state
                    .ready
                    .entry(copy.partner.clone())
                    .or_default()
                    .push_front(copy);
            }
        }
    }

    /// Messages of `partner` not yet acked: ready, unacked or waiting.
    pub fn held(&self, partner: &str) -> usize {
        let state = lock(&self.state);
        state.ready.get(partner).map_or(0, VecDeque::len)
            + state
                .unacked
                .values()
                .filter(|(_, c)| c.partner == partner)
                .count()
            + state
                .waiting
                .values()
                .filter(|c| c.partner == partner)
                .count()
    }
}

/// The wait queues as the deliverer sees them (one per notifier process, for the trace).
pub struct Retries(pub MemoryPushQueue);

impl PushRetries for Retries {
    fn schedule<'a>(
        &'a self,
        message: PushMessage<'a>,
        delay: Duration,
    ) -> BoxFuture<'a, Result<(), BrokerError>> {
        let copy = PushCopy {
            partner: message.partner.to_owned(),
            body: message.body.to_vec(),
            attempts: message.attempts,
            trigger: message.trigger.map(str::to_owned),
        };
        async move { self.0.publish(copy, Some(delay)).await }.boxed()
    }
}

/// How a partner's endpoint answers now.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Endpoint {
    /// A 2xx after this long.
    Healthy(Duration),
    /// A 503 at once.
    Failing,
    /// Takes the request and never answers: the client times out.
    Silent,
    /// Takes the request, counts it delivered, and answers after the client gave up.
    Late,
    /// 410 Gone.
    Gone,
}

/// What a partner's endpoint saw of one event.
#[derive(Debug, Clone, Default)]
pub struct Seen {
    pub webhook_ids: BTreeSet<String>,
    /// Requests the partner took as delivered (a 2xx sent, in time or late).
    pub taken: u32,
}

#[derive(Default)]
struct EndpointState {
    endpoints: BTreeMap<String, Endpoint>,
    /// (partner, event id) → what arrived.
    seen: BTreeMap<(String, String), Seen>,
}

/// The partners' endpoints, as the notifier's HTTP client meets them.
#[derive(Clone)]
pub struct MemoryEndpoints {
    state: Arc<Mutex<EndpointState>>,
    timeout: Duration,
}

impl MemoryEndpoints {
    pub fn new(timeout: Duration) -> Self {
        MemoryEndpoints {
            state: Arc::default(),
            timeout,
        }
    }

    pub fn set(&self, partner: &str, endpoint: Endpoint) {
        lock(&self.state)
            .endpoints
            .insert(partner.to_owned(), endpoint);
    }

    pub fn seen(&self) -> BTreeMap<(String, String), Seen> {
        lock(&self.state).seen.clone()
    }
}

impl PushSender for MemoryEndpoints {
    fn send<'a>(
        &'a self,
        url: &'a str,
        webhook_id: &'a str,
        _secrets: &'a [PushSecret],
        body: &'a Bytes,
    ) -> BoxFuture<'a, Attempted> {
        async move {
            let started = Instant::now();
            let partner = url.rsplit('/').next().unwrap_or_default().to_owned();
            let event_id = serde_json::from_slice::<serde_json::Value>(body)
                .ok()
                .and_then(|v| v["id"].as_str().map(str::to_owned))
                .unwrap_or_default();
            let endpoint = {
                let mut state = lock(&self.state);
                let endpoint = state
                    .endpoints
                    .get(&partner)
                    .copied()
                    .unwrap_or(Endpoint::Healthy(Duration::from_millis(5)));
                let seen = state.seen.entry((partner, event_id)).or_default();
                seen.webhook_ids.insert(webhook_id.to_owned());
                if matches!(endpoint, Endpoint::Healthy(_) | Endpoint::Late) {
                    seen.taken += 1;
                }
                endpoint
            };
            let answered = |status: Option<u16>, error: Option<&'static str>| Attempted {
                status,
                error,
                retry_after: None,
                duration: started.elapsed(),
            };
            match endpoint {
                Endpoint::Healthy(latency) if latency < self.timeout => {
                    tokio::time::sleep(latency).await;
                    answered(Some(200), None)
                }
                Endpoint::Healthy(_) | Endpoint::Silent | Endpoint::Late => {
                    tokio::time::sleep(self.timeout).await;
                    answered(None, Some("timeout"))
                }
                Endpoint::Failing => answered(Some(503), None),
                Endpoint::Gone => answered(Some(410), None),
            }
        }
        .boxed()
    }
}
