//! The invariants of docs/design.md#how-a-request-becomes-a-subscription, checked once a schedule has settled,
//! and invariant 11, partners served in turn (docs/design.md#partners-in-the-simulation).

use std::collections::{BTreeMap, BTreeSet};

use autorenew::domain::cancel::CancelWhen;
use autorenew::domain::renewal::{RenewalChange, STATUS_CANCELED};
use autorenew::domain::{PartnerCode, PayId, PayKey, ResultEvent};
use autorenew::worker::memory::{LaneChange, LaneEvent};

use crate::schedule::{Books, World};

/// Every broken invariant, in words a reader of the trace can follow.
pub fn invariants(world: &World, books: &Books) -> Vec<String> {
    let mut violations = Vec::new();
    let subscriptions = world.stripe.subscriptions();
    // The store keys a payId by its partner (`partner1:ID`); the schedules' payIds are unique
    // across their partners, and Stripe's subscriptions and the books name the payId alone.
    let results: Results = world
        .store
        .results()
        .into_iter()
        .map(|(key, result)| match key.split_once(':') {
            Some((_, pay_id)) => (pay_id.to_owned(), result),
            None => (key, result),
        })
        .collect();
    let events = world.queue.events();

    // One payId never charges twice.
    for (pay_id, subs) in &subscriptions {
        if subs.len() > 1 {
            let ids: Vec<&str> = subs.iter().map(|(id, _)| id.as_str()).collect();
            violations.push(format!("{pay_id}: {} subscriptions {ids:?}", subs.len()));
        }
    }

    for pay_id in &books.accepted {
        let subs = subscriptions.get(pay_id).cloned().unwrap_or_default();
        // An acknowledged request is never lost: it ends, and the end agrees with Stripe.
        let Some(Some(result)) = results.get(pay_id) else {
            // After Redis lost everything, an ending stored before the loss is gone with it:
            // the query rebuilds it from Stripe (life_checks holds that to Stripe). The same for
            // a payId whose keys a partial loss took back.
            if !books.lost(pay_id) {
                violations.push(format!(
                    "{pay_id}: accepted but has no ending (still processing)"
                ));
            }
            continue;
        };
        if result.is_failed() {
            if !subs.is_empty() {
                violations.push(format!(
                    "{pay_id}: stored `failed` ({:?}) but subscription {} exists",
                    result.error.as_ref().map(|e| e.code),
                    subs[0].0
                ));
            }
        } else if !subs.iter().any(|(id, _)| *id == result.sub_id) {
            violations.push(format!(
                "{pay_id}: stored `{}` with subscription `{}`, which Stripe does not have",
                result.status, result.sub_id
            ));
        }
        // The stored result was announced.
        let outcome = if result.is_failed() {
            "failed"
        } else {
            "succeeded"
        };
        let announced = events.iter().any(|(_, event)| {
            event.subject == *pay_id
                && event.id == format!("{}:{pay_id}:{outcome}", event.data.partner_code)
                && event.data.sub_id == result.sub_id
                && event.data.status == result.status
        });
        if !announced {
            violations.push(format!(
                "{pay_id}: stored `{}` never announced",
                result.status
            ));
        }
    }

    violations.extend(event_checks(&events, &subscriptions, &results, books));
    violations.extend(life_checks(world, books, &results));

    // No lock is left held, but by a job that died with its worker (it expires by TTL).
    for (pay_id, token) in world.store.held_locks() {
        // A job that panicked leaves its lock to expire too (a cancel's, by design).
        let panicked = world.panicked.lock().is_ok_and(|p| p.contains(&token));
        if !books.crashed_tokens.contains(&token) && !panicked {
            violations.push(format!(
                "{pay_id}: lock still held by {token}, a job that is not running"
            ));
        }
    }
    violations
}

type Subscriptions = BTreeMap<String, Vec<(String, tokio::time::Instant)>>;
type Results = BTreeMap<String, Option<autorenew::domain::FinalResult>>;

/// What the partner was told: one id per payId and outcome; never `succeeded` with another
/// subscription than the one that stands, never `failed` while a subscription existed.
fn event_checks(
    events: &[(tokio::time::Instant, ResultEvent)],
    subscriptions: &Subscriptions,
    results: &Results,
    books: &Books,
) -> Vec<String> {
    let mut violations = Vec::new();
    let mut ids: BTreeMap<(String, String), String> = BTreeMap::new();
    for (at, event) in events {
        let pay_id = &event.subject;
        let failed = event.data.error.is_some();
        let outcome = if failed { "failed" } else { "succeeded" };
        let first = ids
            .entry((pay_id.clone(), outcome.to_owned()))
            .or_insert_with(|| event.id.clone());
        if *first != event.id {
            violations.push(format!(
                "{pay_id}: `{outcome}` announced with ids {first} and {}",
                event.id
            ));
        }
        let subs = subscriptions.get(pay_id).cloned().unwrap_or_default();
        if failed {
            if let Some((sub, _)) = subs.iter().find(|(_, created)| created <= at) {
                violations.push(format!(
                    "{pay_id}: announced `failed` while subscription {sub} existed"
                ));
            }
        } else {
            let stored = results.get(pay_id).cloned().flatten();
            // After Redis lost everything, no stored result is what the query rebuilds.
            let lost = books.lost(pay_id) && stored.is_none();
            if !lost
                && stored
                    .as_ref()
                    .is_none_or(|r| r.sub_id != event.data.sub_id)
            {
                violations.push(format!(
                    "{pay_id}: announced `succeeded` with {} but the stored result is {:?}",
                    event.data.sub_id,
                    stored.map(|r| (r.status, r.sub_id))
                ));
            }
        }
    }
    // An answer given stays given: a payId announced `failed` is never announced `succeeded`,
    // nor the other way round (whatever Redis lost in between).
    for (pay_id, outcome) in ids.keys() {
        if outcome == "failed" && ids.contains_key(&(pay_id.clone(), "succeeded".to_owned())) {
            violations.push(format!(
                "{pay_id}: announced `failed` and `succeeded`: a final answer changed"
            ));
        }
    }
    violations
}

/// The payId's key, under the partner that sent it.
fn pay_key(books: &Books, pay_id: &str) -> Option<PayKey> {
    Some(PayKey::new(
        PartnerCode::parse(books.partner_of.get(pay_id)?).ok()?,
        PayId::parse(pay_id).ok()?,
    ))
}

/// The subscription's life after its creation: every accepted cancel reached Stripe; the stored
/// state never went back; what the query would answer agrees with Stripe.
fn life_checks(world: &World, books: &Books, results: &Results) -> Vec<String> {
    let mut violations = Vec::new();
    let states = world.stripe.states();
    let subscriptions = world.stripe.subscriptions();
    for pay_id in &books.accepted {
        let Some(key) = pay_key(books, pay_id) else {
            continue;
        };
        // The result, or what the query rebuilds from Stripe when Redis lost it.
        let result = results.get(pay_id).cloned().flatten();
        let sub_id = match &result {
            Some(result) if result.is_failed() => continue,
            Some(result) => result.sub_id.clone(),
            None => match subscriptions.get(pay_id).and_then(|subs| subs.first()) {
                Some((id, _)) => id.clone(),
                None => continue,
            },
        };
        let Some((_, stripe)) = states.get(&sub_id) else {
            continue;
        };
        // An accepted cancel reaches Stripe.
        for (_, when) in books.cancels.iter().filter(|(id, _)| id == pay_id) {
            let reached = match when {
                CancelWhen::Now => stripe.status == STATUS_CANCELED,
                CancelWhen::PeriodEnd => {
                    stripe.cancel_at_period_end || stripe.status == STATUS_CANCELED
                }
            };
            if !reached {
                violations.push(format!(
                    "{pay_id}: cancel {when} accepted, but Stripe has {} with \
                     cancel_at_period_end {}",
                    stripe.status, stripe.cancel_at_period_end
                ));
            }
        }
        // The stored state never goes back: no live state after `canceled`, no
        // `cancel_at_period_end` taken back (nothing in the schedules resumes a subscription).
        let mut canceled = false;
        let mut ending = false;
        for change in world.store.renewal_history(&key) {
            if let RenewalChange::Subscription {
                status,
                cancel_at_period_end,
                ..
            } = change
            {
                let now_canceled = status == STATUS_CANCELED;
                if (canceled && !now_canceled) || (ending && !cancel_at_period_end && !now_canceled)
                {
                    violations.push(format!(
                        "{pay_id}: the stored state went back to {status} with \
                         cancel_at_period_end {cancel_at_period_end}"
                    ));
                }
                canceled |= now_canceled;
                ending |= cancel_at_period_end;
            }
        }
        // What `/queryAutoRenewalRecord` answers (the renewal state, else the creation's
        // result) agrees with Stripe.
        let (status, cancel_at_period_end) = match world.store.renewal(&key) {
            Some((
                _,
                RenewalChange::Subscription {
                    status,
                    cancel_at_period_end,
                    ..
                },
            )) => (status, cancel_at_period_end),
            _ => match &result {
                Some(result) => (result.status.clone(), false),
                // Nothing stored: the query rebuilds it from Stripe.
                None => (stripe.status.clone(), stripe.cancel_at_period_end),
            },
        };
        if status != stripe.status || cancel_at_period_end != stripe.cancel_at_period_end {
            violations.push(format!(
                "{pay_id}: the query answers {status} with cancel_at_period_end \
                 {cancel_at_period_end}, Stripe has {} with {}",
                stripe.status, stripe.cancel_at_period_end
            ));
        }
    }
    // Each change is announced under one id, and one id means one change.
    let mut seen: BTreeMap<String, (String, String)> = BTreeMap::new();
    for (_, event) in world.queue.changes() {
        let content = (event.kind.clone(), event.subject.clone());
        if let Some(first) = seen.insert(event.id.clone(), content.clone())
            && first != content
        {
            violations.push(format!(
                "{}: id {} announced for {first:?} and {content:?}",
                event.subject, event.id
            ));
        }
    }
    violations
}

/// Invariant 11, partners served in turn (docs/design.md, "Partners served in turn"): **no job
/// waits behind another lane's backlog**. A job's lane is its partner's if the workers have one
/// for the partner, else the shared queue; the expired-jobs queue once past the delivery limit.
/// It is worked out here from the books (which partner sent each message), not from where the
/// twin put the message, so a routing that mixes lanes shows. For every stay of a message on a
/// queue (published, handed back, back from a delay):
///
/// - **(a) in its queue**: once it is the oldest message of its lane still waiting, and some
///   worker is up (its broker connection too) with fewer than its prefetch `P` of that lane's
///   messages unacked, it has been delivered by the end of that instant: **0 s** of simulated
///   time, and so never after a later delivery of another lane's message. RabbitMQ pushes a
///   queue's head to a consumer with room within a round trip, whatever the other queues hold;
///   the twin pushes on every change. Only its own lane's earlier messages, or its lane's
///   prefetch being used up at every worker, may hold it.
/// - **(b) at its worker**: with `C` slots and `P = lane_prefetch(C)` at that worker, the jobs
///   of any one other lane that it waits behind there (those holding a slot when it was
///   delivered, plus those that start there before it) are at most **`B = min(P, C - 1)`**
///   (`P` for `C = 1`). Derivation: a lane has at most `P` unacked deliveries at a worker,
///   started or not; the worker starts deliveries in the order they reached it (lapin's merged
///   stream takes each consumer's deliveries in order and the loop takes one at a time), so a
///   delivery of that lane that reached the worker after this job starts after it. Hence at most
///   `P` of that lane's jobs were in hand or ahead of it when it came, and `P < C` for `C >= 2`
///   (`C - max(1, C / 4)`): one partner's backlog never holds every slot, and another partner's
///   job waits for at most `P` of its jobs, however deep the backlog.
///
/// The order in which the broker pushes several lanes' messages is drawn from the seed (see the
/// twin's `lanes`), and neither bound rests on it.
pub fn served_in_turn(log: &[LaneEvent], books: &Books) -> Vec<String> {
    let mut turns = Turns {
        books,
        start: log.first().map(|event| event.at),
        now: None,
        broker_up: true,
        stays: BTreeMap::new(),
        waiting: BTreeMap::new(),
        consumers: BTreeMap::new(),
        tags: BTreeMap::new(),
        flagged: BTreeSet::new(),
        violations: Vec::new(),
    };
    for event in log {
        if turns.now != Some(event.at) {
            turns.end_of_instant();
            turns.now = Some(event.at);
        }
        turns.apply(&event.what);
    }
    turns.end_of_instant();
    let mut violations = turns.violations;
    if violations.len() > SHOWN_TURNS {
        let more = violations.len() - SHOWN_TURNS;
        violations.truncate(SHOWN_TURNS);
        violations.push(format!(
            "... and {more} more jobs that waited behind another lane"
        ));
    }
    violations
}

/// How many fairness violations of one schedule are told one by one.
const SHOWN_TURNS: usize = 5;

/// A queue as the check sees it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Queue {
    Expired,
    Shared,
    Partner(String),
}

impl std::fmt::Display for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Queue::Expired => f.write_str("the expired queue"),
            Queue::Shared => f.write_str("the shared queue"),
            Queue::Partner(code) => write!(f, "{code}'s lane"),
        }
    }
}

struct Consumer {
    slots: u32,
    prefetch: u32,
}

/// An unacked delivery.
struct Tag {
    consumer: String,
    queue: Queue,
    message_id: String,
    started: bool,
    /// The jobs of each other lane it waits behind at its worker.
    behind: BTreeMap<Queue, u32>,
}

struct Turns<'a> {
    books: &'a Books,
    start: Option<tokio::time::Instant>,
    now: Option<tokio::time::Instant>,
    broker_up: bool,
    /// Each stay on a queue: its lane and message.
    stays: BTreeMap<u64, (Queue, String)>,
    /// Per lane, the stays not delivered yet, oldest first.
    waiting: BTreeMap<Queue, BTreeSet<u64>>,
    /// The consumers that are up.
    consumers: BTreeMap<String, Consumer>,
    tags: BTreeMap<u64, Tag>,
    /// Stays and tags already reported.
    flagged: BTreeSet<(bool, u64)>,
    violations: Vec<String>,
}

impl Turns<'_> {
    fn lane(&self, message_id: &str, expired: bool) -> Queue {
        if expired {
            return Queue::Expired;
        }
        match self.books.partner_of.get(message_id) {
            Some(partner) if self.books.lanes.contains(partner) => Queue::Partner(partner.clone()),
            _ => Queue::Shared,
        }
    }

    fn at(&self) -> String {
        match (self.start, self.now) {
            (Some(start), Some(now)) => format!("{:.3} s", (now - start).as_secs_f64()),
            _ => "?".into(),
        }
    }

    fn apply(&mut self, what: &LaneChange) {
        match what {
            LaneChange::Ready {
                seq,
                message_id,
                expired,
                ..
            } => {
                let queue = self.lane(message_id, *expired);
                self.waiting.entry(queue.clone()).or_default().insert(*seq);
                self.stays.insert(*seq, (queue, message_id.clone()));
            }
            LaneChange::Delivered { seq, tag, consumer } => {
                let Some((queue, message_id)) = self.stays.remove(seq) else {
                    return;
                };
                if let Some(waiting) = self.waiting.get_mut(&queue) {
                    waiting.remove(seq);
                }
                let mut behind = BTreeMap::new();
                for other in self.tags.values() {
                    if other.consumer == *consumer && other.started && other.queue != queue {
                        *behind.entry(other.queue.clone()).or_default() += 1;
                    }
                }
                self.tags.insert(
                    *tag,
                    Tag {
                        consumer: consumer.clone(),
                        queue,
                        message_id,
                        started: false,
                        behind,
                    },
                );
                self.check_behind(*tag);
            }
            LaneChange::Started { tag } => {
                let Some(started) = self.tags.get_mut(tag) else {
                    return;
                };
                started.started = true;
                let (consumer, queue) = (started.consumer.clone(), started.queue.clone());
                let overtaken: Vec<u64> = self
                    .tags
                    .iter_mut()
                    .filter(|(_, t)| t.consumer == consumer && !t.started && t.queue != queue)
                    .map(|(waiting, t)| {
                        *t.behind.entry(queue.clone()).or_default() += 1;
                        *waiting
                    })
                    .collect();
                for waiting in overtaken {
                    self.check_behind(waiting);
                }
            }
            LaneChange::Ended { tag } => {
                self.tags.remove(tag);
            }
            LaneChange::ConsumerUp {
                consumer,
                slots,
                prefetch,
            } => {
                self.consumers.insert(
                    consumer.clone(),
                    Consumer {
                        slots: *slots,
                        prefetch: *prefetch,
                    },
                );
            }
            LaneChange::ConsumerDown { consumer } => {
                self.consumers.remove(consumer);
            }
            LaneChange::Broker { up } => self.broker_up = *up,
        }
    }

    /// (b): the jobs of one other lane that `tag` waits behind at its worker.
    fn check_behind(&mut self, tag: u64) {
        let Some(waiting) = self.tags.get(&tag) else {
            return;
        };
        let Some(consumer) = self.consumers.get(&waiting.consumer) else {
            return;
        };
        let bound = if consumer.slots >= 2 {
            consumer.prefetch.min(consumer.slots - 1)
        } else {
            consumer.prefetch
        };
        let Some((queue, count)) = waiting.behind.iter().find(|(_, count)| **count > bound) else {
            return;
        };
        if !self.flagged.insert((true, tag)) {
            return;
        }
        let message = format!(
            "{}: at {} it waited at {} (delivery #{tag}, in {}) behind {count} jobs of {queue}, \
             more than the bound {bound} ({} slots, {} a lane)",
            waiting.message_id,
            self.at(),
            waiting.consumer,
            waiting.queue,
            consumer.slots,
            consumer.prefetch
        );
        self.violations.push(message);
    }

    /// (a): after every instant, no lane's oldest waiting message is left while a worker that
    /// is up has room for it.
    fn end_of_instant(&mut self) {
        if !self.broker_up {
            return;
        }
        let mut found = Vec::new();
        for (queue, seqs) in &self.waiting {
            let Some(head) = seqs.first() else {
                continue;
            };
            let room = self.consumers.iter().find(|(name, consumer)| {
                let held = self
                    .tags
                    .values()
                    .filter(|t| t.consumer == **name && t.queue == *queue)
                    .count();
                held < consumer.prefetch as usize
            });
            if let Some((name, consumer)) = room {
                found.push((*head, queue.clone(), name.clone(), consumer.prefetch));
            }
        }
        for (head, queue, name, prefetch) in found {
            if !self.flagged.insert((false, head)) {
                continue;
            }
            let message_id = self
                .stays
                .get(&head)
                .map(|(_, id)| id.clone())
                .unwrap_or_default();
            let message = format!(
                "{message_id}: at {} it waited, first in {queue}, while {name} had room for it \
                 (prefetch {prefetch}): behind another lane's messages",
                self.at()
            );
            self.violations.push(message);
        }
    }
}

/// Invariant 13, the shared budget holds: the calls every worker sent to Stripe through its
/// gate, over any one second, are at most the rate plus the GCRA's tolerance. The turn script
/// lets a call go while the theoretical arrival time is at most one interval ahead, so any
/// window of one second holds at most `per_second + 2` calls (one for the tolerance, one for
/// the window's two ends). Redis losing everything resets the budget, so one more call may go
/// then.
pub fn within_budget(
    sent: &[tokio::time::Instant],
    per_second: u32,
    data_lost: bool,
) -> Vec<String> {
    let bound = per_second as usize + 2 + usize::from(data_lost);
    let second = std::time::Duration::from_secs(1);
    let mut first = 0;
    for (last, at) in sent.iter().enumerate() {
        while *at - sent[first] >= second {
            first += 1;
        }
        let in_window = last - first + 1;
        if in_window > bound {
            let start = sent.first().copied().unwrap_or(*at);
            return vec![format!(
                "stripe budget: {in_window} calls within one second up to {:.3} s, more than \
                 {per_second}/s allows ({bound})",
                (*at - start).as_secs_f64()
            )];
        }
    }
    Vec::new()
}
