//! Following jobs to their result events, as any subscriber of the service would (docs/partners.md#events-and-the-broker):
//! a private queue bound to the results exchange before the first request, CloudEvents matched
//! to this run's payIds by `subject`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::StreamExt;
use lapin::options::{
    BasicConsumeOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{Connection, ExchangeKind};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::percentiles::{Percentiles, round3};
use super::progress::Live;

/// After the last expected event, how long to keep listening for a second event of a payId.
const DUPLICATE_GRACE: Duration = Duration::from_secs(2);
/// How often the wait for results checks what has arrived.
const CHECK_EVERY: Duration = Duration::from_millis(100);
/// How many payIds a report names per problem, to start an investigation with.
const EXAMPLES: usize = 10;

/// Where the result events are and which of them are ours.
#[derive(Debug, Clone)]
pub struct FollowSpec {
    pub amqp_url: SecretString,
    /// `<prefix>.results`.
    pub exchange: String,
    pub partner: String,
    pub result_timeout: Duration,
}

/// One result event as loadgen keeps it.
#[derive(Debug, Clone)]
pub(super) struct Event {
    pub(super) received: Instant,
    pub(super) id: String,
    /// `active`, `failed CARD_DECLINED`, …; for a renewal event, its type's last word.
    pub(super) outcome: String,
    /// An event of the auto-renewal's later life (docs/partners.md#the-rest-of-an-auto-renewals-life), not a job's result.
    pub(super) lifecycle: bool,
}

#[derive(Debug, Default)]
struct Seen {
    by_pay_id: HashMap<String, Vec<Event>>,
    /// Renewal events (`renewed`, `renewal_failed`) apart from the jobs' results: a payId has
    /// one result but a renewal event per period.
    renewals: HashMap<String, Vec<Event>>,
    unparsed: u64,
}

/// A running subscription to the results exchange.
pub struct Follower {
    connection: Connection,
    seen: Arc<Mutex<Seen>>,
    stop: CancellationToken,
    /// Returns true when the consumer stopped because the connection went away.
    consumer: tokio::task::JoinHandle<bool>,
    result_timeout: Duration,
}

/// What following found; part of the report.
#[derive(Debug, Default, Serialize)]
pub struct FollowOutcome {
    /// Accepted fresh requests, each of which should end in exactly one result.
    pub followed: u64,
    /// Of those, how many got a result event.
    pub received: u64,
    pub no_result: u64,
    pub no_result_examples: Vec<String>,
    /// By `data.status`, with the error's code for failed jobs: `active`, `failed CARD_DECLINED`.
    pub outcomes: BTreeMap<String, u64>,
    pub duplicate_events: DuplicateEvents,
    /// Events for payIds of this run that the intake never answered 200.
    pub unexpected_events: u64,
    /// Messages on the results exchange for this partner that were not CloudEvents JSON.
    pub unparsed_events: u64,
    /// From the request's due time to its result event's arrival.
    pub completion_ms: Option<Percentiles>,
    /// Results per second, from the first request to the last result.
    pub completed_per_s: f64,
    pub interrupted: bool,
    /// The subscription broke before the end: events after that were not seen.
    pub connection_lost: bool,
    /// With `--renewals N`: the renewal events that followed the simulator's advances.
    pub renewals: Option<super::renewals::RenewalOutcome>,
    /// When each followed job's first result arrived: what `--pace` counts per partner up to a
    /// moment of the run.
    #[serde(skip)]
    pub result_times: Vec<Instant>,
}

/// Result events beyond the first for one payId.
#[derive(Debug, Default, Serialize)]
pub struct DuplicateEvents {
    /// The same event `id` again: at-least-once delivery, which the contract allows
    /// (consumers de-duplicate by `id`).
    pub same_id: u64,
    /// Another event for a payId that already had one: two outcomes for one job. Never allowed.
    pub different_id: u64,
    pub different_id_examples: Vec<String>,
}

/// The parts of a CloudEvent (structured mode) that loadgen reads.
#[derive(Debug, Deserialize)]
struct CloudEvent {
    id: String,
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    subject: Option<String>,
    #[serde(default)]
    data: Option<EventData>,
}

#[derive(Debug, Deserialize)]
struct EventData {
    #[serde(rename = "payId", default)]
    pay_id: Option<String>,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    error: Option<EventError>,
}

#[derive(Debug, Deserialize)]
struct EventError {
    #[serde(default)]
    code: Option<String>,
}

impl Follower {
    /// Connects and binds a private queue; returns once events can no longer be missed.
    pub async fn start(
        spec: &FollowSpec,
        pay_id_prefix: String,
        live: Arc<Live>,
    ) -> anyhow::Result<Follower> {
        let connection = super::baseline::connect(&spec.amqp_url, "autorenew-loadgen")
            .await
            .context("connecting to RabbitMQ to follow the result events")?;
        let channel = connection.create_channel().await?;
        // Declared like the service declares it (durable topic, no arguments), so this works
        // before any intake or worker has started and never clashes with theirs.
        channel
            .exchange_declare(
                spec.exchange.as_str().into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    durable: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .with_context(|| format!("declaring the results exchange `{}`", spec.exchange))?;
        // Server-named, exclusive, auto-delete: it is ours alone and vanishes with us.
        let queue = channel
            .queue_declare(
                "".into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        channel
            .queue_bind(
                queue.name().clone(),
                spec.exchange.as_str().into(),
                binding_key(&spec.partner).into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        // No acks: the queue is private and transient, a lost event only shows as no result.
        let consumer = channel
            .basic_consume(
                queue.name().clone(),
                "loadgen".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        let seen = Arc::new(Mutex::new(Seen::default()));
        let stop = CancellationToken::new();
        let task = tokio::spawn(consume(
            consumer,
            seen.clone(),
            pay_id_prefix,
            live,
            stop.clone(),
        ));
        Ok(Follower {
            connection,
            seen,
            stop,
            consumer: task,
            result_timeout: spec.result_timeout,
        })
    }

    /// Waits (bounded by the result timeout) for a result for every job in `expected`;
    /// returns whether it was interrupted.
    async fn wait_results(
        &self,
        expected: &HashMap<String, Instant>,
        shutdown: &CancellationToken,
    ) -> bool {
        // Every job was accepted before now, so each gets at least the full result timeout.
        let deadline = tokio::time::Instant::now() + self.result_timeout;
        let mut pending: HashSet<&String> = expected.keys().collect();
        let mut tick = tokio::time::interval(CHECK_EVERY);
        while !pending.is_empty() {
            tokio::select! {
                () = shutdown.cancelled() => return true,
                () = tokio::time::sleep_until(deadline) => break,
                _ = tick.tick() => {
                    let seen = lock(&self.seen);
                    pending.retain(|pay_id| !seen.by_pay_id.contains_key(*pay_id));
                }
            }
        }
        false
    }

    /// `--renewals`: once every job has its result, advances the simulator `periods` times and
    /// waits (bounded by the result timeout) until every subscription created active has its
    /// renewal events.
    pub async fn follow_renewals(
        &self,
        expected: &HashMap<String, Instant>,
        periods: u32,
        sim: &url::Url,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<super::renewals::RenewalOutcome> {
        let interrupted = self.wait_results(expected, shutdown).await;
        let subscriptions: Vec<String> = {
            let seen = lock(&self.seen);
            expected
                .keys()
                .filter(|pay_id| {
                    seen.by_pay_id
                        .get(*pay_id)
                        .and_then(|events| events.first())
                        .is_some_and(|first| first.outcome == "active")
                })
                .cloned()
                .collect()
        };
        let advanced_at = Instant::now();
        if !interrupted {
            super::renewals::advance(sim, periods).await?;
        }
        let advance_took = advanced_at.elapsed();
        let deadline = tokio::time::Instant::now() + self.result_timeout;
        let mut pending: HashSet<&String> = subscriptions.iter().collect();
        let mut tick = tokio::time::interval(CHECK_EVERY);
        let mut stopped = interrupted;
        while !pending.is_empty() && !stopped {
            tokio::select! {
                () = shutdown.cancelled() => stopped = true,
                () = tokio::time::sleep_until(deadline) => break,
                _ = tick.tick() => {
                    let seen = lock(&self.seen);
                    pending.retain(|pay_id| {
                        !seen.renewals.get(*pay_id).is_some_and(|events| {
                            super::renewals::complete(events, periods)
                        })
                    });
                }
            }
        }
        let seen = lock(&self.seen);
        let mut outcome = super::renewals::summarize(
            &seen.renewals,
            &subscriptions,
            periods,
            advanced_at,
            advance_took,
        );
        outcome.interrupted = stopped;
        Ok(outcome)
    }

    /// Waits (bounded) for a result for every job in `expected` (payId → due time), then a
    /// short grace for late duplicates, and reports. `started` is when the first request was due.
    pub async fn finish(
        self,
        expected: HashMap<String, Instant>,
        started: Instant,
        shutdown: &CancellationToken,
    ) -> FollowOutcome {
        let mut interrupted = self.wait_results(&expected, shutdown).await;
        if !interrupted {
            tokio::select! {
                () = shutdown.cancelled() => interrupted = true,
                () = tokio::time::sleep(DUPLICATE_GRACE) => {}
            }
        }
        self.stop.cancel();
        let connection_lost = self.consumer.await.unwrap_or(true);
        let _ = self.connection.close(200, "loadgen done".into()).await;
        let seen = std::mem::take(&mut *lock(&self.seen));
        let mut outcome = summarize(seen, &expected, started);
        outcome.interrupted = interrupted;
        outcome.connection_lost = connection_lost;
        outcome
    }
}

/// `subscription.*.<partner>`, or everything when the code has characters a topic binding
/// would read as pattern syntax.
fn binding_key(partner: &str) -> String {
    if partner.contains(['.', '*', '#']) {
        "#".to_owned()
    } else {
        format!("subscription.*.{partner}")
    }
}

fn lock(seen: &Mutex<Seen>) -> std::sync::MutexGuard<'_, Seen> {
    // Only plain maps are behind the lock; a panic elsewhere leaves them usable.
    match seen.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
}

async fn consume(
    mut consumer: lapin::Consumer,
    seen: Arc<Mutex<Seen>>,
    prefix: String,
    live: Arc<Live>,
    stop: CancellationToken,
) -> bool {
    loop {
        let delivery = tokio::select! {
            () = stop.cancelled() => return false,
            delivery = consumer.next() => delivery,
        };
        let Some(Ok(delivery)) = delivery else {
            // The connection went away: what was seen so far is what the report shows.
            return true;
        };
        let received = Instant::now();
        let Some((pay_id, event)) = parse(&delivery.data, received) else {
            lock(&seen).unparsed += 1;
            continue;
        };
        // The exchange carries every run's and every client's events; keep ours.
        if !pay_id.starts_with(&prefix) {
            continue;
        }
        if event.lifecycle {
            if is_renewal(&event) {
                lock(&seen).renewals.entry(pay_id).or_default().push(event);
            }
        } else {
            let mut seen = lock(&seen);
            let events = seen.by_pay_id.entry(pay_id).or_default();
            if events.is_empty() {
                live.result();
            }
            events.push(event);
        }
    }
}

/// The renewal events `--renewals` counts; other lifecycle events (`canceled`, …) after a
/// renewal failed for good are neither results nor renewals.
pub(super) const RENEWED: &str = "renewed";
pub(super) const RENEWAL_FAILED: &str = "renewal_failed";
const RENEWAL_TYPES: [&str; 2] = [
    "autorenew.subscription.renewed",
    "autorenew.subscription.renewal_failed",
];
const OTHER_LIFECYCLE_TYPES: [&str; 2] = [
    "autorenew.subscription.canceled",
    "autorenew.subscription.updated",
];

fn is_renewal(event: &Event) -> bool {
    event.outcome == RENEWED || event.outcome == RENEWAL_FAILED
}

fn parse(body: &[u8], received: Instant) -> Option<(String, Event)> {
    let event: CloudEvent = serde_json::from_slice(body).ok()?;
    if RENEWAL_TYPES.contains(&event.kind.as_str())
        || OTHER_LIFECYCLE_TYPES.contains(&event.kind.as_str())
    {
        let pay_id = event
            .subject
            .or_else(|| event.data.as_ref().and_then(|d| d.pay_id.clone()))?;
        let outcome = event.kind.rsplit('.').next().unwrap_or("").to_owned();
        return Some((
            pay_id,
            Event {
                received,
                id: event.id,
                outcome,
                lifecycle: true,
            },
        ));
    }
    let data = event.data;
    let pay_id = event
        .subject
        .or_else(|| data.as_ref().and_then(|d| d.pay_id.clone()))?;
    let status = data
        .as_ref()
        .and_then(|d| d.status.clone())
        .unwrap_or_else(|| event.kind.rsplit('.').next().unwrap_or("").to_owned());
    let code = data
        .and_then(|d| d.error)
        .and_then(|e| e.code)
        .filter(|c| !c.is_empty());
    let outcome = match code {
        Some(code) => format!("{status} {code}"),
        None => status,
    };
    Some((
        pay_id,
        Event {
            received,
            id: event.id,
            outcome,
            lifecycle: false,
        },
    ))
}

fn summarize(seen: Seen, expected: &HashMap<String, Instant>, started: Instant) -> FollowOutcome {
    let mut outcome = FollowOutcome {
        followed: expected.len() as u64,
        unparsed_events: seen.unparsed,
        ..FollowOutcome::default()
    };
    let mut completions = Vec::with_capacity(expected.len());
    let mut last = None::<Instant>;
    for (pay_id, events) in &seen.by_pay_id {
        let Some(first) = events.first() else {
            continue;
        };
        let Some(due) = expected.get(pay_id) else {
            outcome.unexpected_events += events.len() as u64;
            continue;
        };
        outcome.received += 1;
        *outcome.outcomes.entry(first.outcome.clone()).or_insert(0) += 1;
        completions.push(first.received.saturating_duration_since(*due));
        outcome.result_times.push(first.received);
        last = Some(last.map_or(first.received, |l| l.max(first.received)));
        let mut different = false;
        for later in &events[1..] {
            if later.id == first.id {
                outcome.duplicate_events.same_id += 1;
            } else {
                outcome.duplicate_events.different_id += 1;
                different = true;
            }
        }
        if different && outcome.duplicate_events.different_id_examples.len() < EXAMPLES {
            outcome
                .duplicate_events
                .different_id_examples
                .push(pay_id.clone());
        }
    }
    outcome.no_result = outcome.followed - outcome.received;
    let mut missing: Vec<&String> = expected
        .keys()
        .filter(|p| !seen.by_pay_id.contains_key(*p))
        .collect();
    missing.sort();
    outcome.no_result_examples = missing.into_iter().take(EXAMPLES).cloned().collect();
    outcome.completion_ms = Percentiles::of(completions);
    if let Some(last) = last {
        let seconds = last.saturating_duration_since(started).as_secs_f64();
        if seconds > 0.0 {
            outcome.completed_per_s = round3(outcome.received as f64 / seconds);
        }
    }
    outcome
}

impl FollowOutcome {
    pub(super) fn write_table(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "\nresults: {} of {} accepted jobs, {:.1}/s; {} without result{}",
            self.received,
            self.followed,
            self.completed_per_s,
            self.no_result,
            if self.interrupted {
                " (interrupted)"
            } else {
                ""
            }
        );
        for (outcome, count) in &self.outcomes {
            let _ = writeln!(out, "  {outcome:<40} {count:>8}");
        }
        let d = &self.duplicate_events;
        let _ = writeln!(
            out,
            "  duplicate events: {} different (must be 0), {} redelivered (same id)",
            d.different_id, d.same_id
        );
        if self.unexpected_events > 0 || self.unparsed_events > 0 {
            let _ = writeln!(
                out,
                "  {} events for payIds never accepted, {} unreadable",
                self.unexpected_events, self.unparsed_events
            );
        }
        if self.connection_lost {
            let _ = writeln!(
                out,
                "  ! lost the RabbitMQ connection: later events were missed"
            );
        }
        if !self.no_result_examples.is_empty() {
            let _ = writeln!(
                out,
                "  no result, e.g.: {}",
                self.no_result_examples.join(", ")
            );
        }
        if let Some(renewals) = &self.renewals {
            renewals.write_table(out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(pay_id: &str, id: &str, status: &str, code: Option<&str>) -> Vec<u8> {
        let error = code.map(|c| serde_json::json!({"code": c, "message": "m"}));
        serde_json::to_vec(&serde_json::json!({
            "specversion": "1.0", "id": id, "source": "autorenew",
            "type": format!("autorenew.subscription.{}", if code.is_some() {"failed"} else {"succeeded"}),
            "subject": pay_id, "time": "2025-01-01T00:00:00Z",
            "data": {"payId": pay_id, "status": status, "error": error},
        }))
        .expect("json")
    }

    #[test]
    fn events_are_matched_counted_and_checked_for_duplicates() {
        let now = Instant::now();
        let mut seen = Seen::default();
        for body in [
            event("a", "e1", "active", None),
            event("a", "e1", "active", None),
            event("b", "e2", "failed", Some("CARD_DECLINED")),
            event("b", "e3", "active", None),
            event("z", "e4", "active", None),
        ] {
            let (pay_id, event) = parse(&body, now).expect("parses");
            seen.by_pay_id.entry(pay_id).or_default().push(event);
        }
        let expected: HashMap<String, Instant> = ["a", "b", "c"]
            .iter()
            .map(|p| (p.to_string(), now))
            .collect();
        let outcome = summarize(seen, &expected, now);
        assert_eq!(outcome.followed, 3);
        assert_eq!(outcome.received, 2);
        assert_eq!(outcome.no_result, 1);
        assert_eq!(outcome.no_result_examples, ["c"]);
        assert_eq!(outcome.outcomes["active"], 1);
        assert_eq!(outcome.outcomes["failed CARD_DECLINED"], 1);
        assert_eq!(outcome.duplicate_events.same_id, 1);
        assert_eq!(outcome.duplicate_events.different_id, 1);
        assert_eq!(outcome.duplicate_events.different_id_examples, ["b"]);
        assert_eq!(outcome.unexpected_events, 1);
    }

    #[test]
    fn a_message_that_is_not_a_cloud_event_is_not_parsed() {
        assert!(parse(b"not json", Instant::now()).is_none());
        assert!(
            parse(br#"{"id":"x"}"#, Instant::now()).is_none(),
            "no subject"
        );
    }

    #[test]
    fn the_binding_key_names_the_partner_unless_it_has_pattern_characters() {
        assert_eq!(binding_key("P000818"), "subscription.*.P000818");
        assert_eq!(binding_key("a.b"), "#");
    }
}
