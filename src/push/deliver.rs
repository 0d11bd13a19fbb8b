//! One push message, from its delivery to its settling: record the event, attempt it unless
//! the partner is paused, log the attempt, feed the breaker, then ack, schedule the retry, or
//! hand the message back. Acked only after a 2xx, or once the attempt is logged and its retry
//! is confirmed on a wait queue: a notifier that dies before that leaves the message to be
//! delivered again, under the same `webhook-id`.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use lapin::message::Delivery;

use super::Notifier;
use super::acks::Acks;
use super::client::Attempted;
use super::lane::Lane;
use super::ports::{BreakerRule, PushClock, PushLog, PushRetries, PushSender};
use super::retry::{self, Next};
use crate::broker::push::{PushHeaders, PushMessage};
use crate::domain::clock::{parse_rfc3339_ms, rfc3339_ms};
use crate::domain::push::{self, AttemptRecord, DeliveryStatus, EventHead, Trigger};
use crate::store::{NewNotification, StoreError};
use crate::telemetry::names::push::{ATTEMPTS_TOTAL, DELIVERY_SECONDS};

/// How long a message waits before it is handed back after Redis failed it, so a Redis outage
/// is not a redelivery loop.
const STORE_TROUBLE_PAUSE: Duration = Duration::from_secs(1);

/// How a delivery ends on the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryEnd {
    Ack,
    /// Back to the partner's queue, no attempt spent: the partner is paused or disabled, or
    /// Redis or RabbitMQ could not record the outcome.
    HandBack,
}

/// The follow-up a finished attempt asks for.
enum Then {
    Done,
    Retry(Duration),
    Disable,
}

impl Notifier {
    /// Delivers one message and tells the channel's [`Acks`] how it ended; they send the ack
    /// or the nack.
    pub(super) async fn handle(
        self: Arc<Self>,
        lane: Arc<Lane>,
        mut delivery: Delivery,
        acks: Acks,
    ) {
        let headers = PushHeaders::read(&delivery.properties);
        let trigger = Trigger::parse(headers.trigger.as_deref());
        let body = Bytes::from(std::mem::take(&mut delivery.data));
        let end = self
            .deliverer
            .deliver(&lane, &body, headers.attempts, trigger)
            .await;
        acks.ended(delivery.delivery_tag, end);
    }
}

/// One delivery's code, on its ports: the same in the notifier and in the simulation.
pub struct Deliverer {
    pub log: Arc<dyn PushLog>,
    pub sender: Arc<dyn PushSender>,
    pub retries: Arc<dyn PushRetries>,
    pub clock: Arc<dyn PushClock>,
    /// `push.retry_schedule_secs`.
    pub schedule: Vec<Duration>,
    /// `push.log_retention_days`.
    pub retention: Duration,
    pub breaker: BreakerRule,
    /// Draws the retries' jitter: seeded in the simulation, so a seed replays.
    pub jitter: Mutex<fastrand::Rng>,
}

impl Deliverer {
    /// `attempts`: the scheduled attempts of this event that failed before.
    pub async fn deliver(
        &self,
        lane: &Lane,
        body: &Bytes,
        attempts: u32,
        trigger: Trigger,
    ) -> DeliveryEnd {
        let partner = lane.partner.as_str();
        let head = match EventHead::parse(body) {
            Ok(head) => head,
            Err(error) => {
                // Nothing can be signed under a stable id without the event's id.
                tracing::error!(partner, %error, "an unreadable result event is not pushed");
                metrics::counter!(ATTEMPTS_TOTAL, "partner" => lane.partner.clone(), "outcome" => "unreadable")
                    .increment(1);
                return DeliveryEnd::Ack;
            }
        };
        let webhook_id = push::webhook_id(&head.id);
        let time_ms = parse_rfc3339_ms(&head.time).unwrap_or_else(|| self.clock.now_ms());
        let record = NewNotification {
            webhook_id: &webhook_id,
            event_id: &head.id,
            kind: &head.kind,
            time: &head.time,
            pay_id: &head.subject,
            body,
            time_ms,
        };
        let status = match self.log.record(partner, &record, self.retention).await {
            Ok(status) => status,
            Err(error) => return store_trouble(partner, &error).await,
        };
        if status == DeliveryStatus::Delivered && trigger == Trigger::Scheduled {
            // A copy of a delivered event (a retry or a redelivery after a crash): done.
            return DeliveryEnd::Ack;
        }
        if lane.paused.load(Ordering::SeqCst) {
            return DeliveryEnd::HandBack;
        }

        let at = rfc3339_ms(self.clock.now_ms());
        let attempted = self
            .sender
            .send(&lane.url, &webhook_id, &lane.secrets, body)
            .await;
        metrics::counter!(ATTEMPTS_TOTAL, "partner" => lane.partner.clone(), "outcome" => attempted.outcome())
            .increment(1);
        let (status, then) = self.judge(&attempted, attempts, trigger);
        let entry = AttemptRecord {
            at,
            http_status: attempted.status,
            error: attempted.error.map(str::to_owned),
            duration_ms: u64::try_from(attempted.duration.as_millis()).unwrap_or(u64::MAX),
            trigger: trigger.as_str().to_owned(),
        };
        tracing::info!(
            partner,
            webhook_id,
            event_id = %head.id,
            status = ?attempted.status,
            error = ?attempted.error,
            trigger = trigger.as_str(),
            "push attempt"
        );
        let logged = self
            .log
            .attempt(partner, &webhook_id, &entry, status, self.retention)
            .await;
        if let Err(error) = logged {
            return store_trouble(partner, &error).await;
        }
        if let Err(error) = self.feed_breaker(lane, &attempted).await {
            tracing::warn!(partner, %error, "the breaker could not be updated");
        }
        if attempted.delivered() {
            let first = attempts == 0 && trigger == Trigger::Scheduled;
            let seconds = (self.clock.now_ms() - time_ms).max(0) as f64 / 1000.0;
            metrics::histogram!(DELIVERY_SECONDS, "partner" => lane.partner.clone(), "attempt" => if first { "first" } else { "retry" })
                .record(seconds);
        }
        match then {
            Then::Done => DeliveryEnd::Ack,
            Then::Disable => {
                tracing::warn!(
                    partner,
                    webhook_id,
                    "410 Gone: the partner's push is disabled"
                );
                if let Err(error) = self.log.disable(partner, "410 Gone").await {
                    tracing::warn!(partner, %error, "the push could not be disabled");
                }
                lane.pause();
                // Kept pending in the partner's queue until `autorenew push enable`.
                DeliveryEnd::HandBack
            }
            Then::Retry(delay) => {
                let message = PushMessage {
                    partner,
                    body,
                    message_id: &head.id,
                    attempts: attempts + 1,
                    trigger: None,
                };
                // Acked only once the retry is confirmed on its wait queue.
                match self.retries.schedule(message, delay).await {
                    Ok(()) => DeliveryEnd::Ack,
                    Err(error) => {
                        tracing::warn!(partner, %error, "the retry could not be scheduled; handed back");
                        DeliveryEnd::HandBack
                    }
                }
            }
        }
    }

    /// The event's status after an attempt (None: as it was) and what follows.
    fn judge(
        &self,
        attempted: &Attempted,
        attempts: u32,
        trigger: Trigger,
    ) -> (Option<DeliveryStatus>, Then) {
        if attempted.delivered() {
            return (Some(DeliveryStatus::Delivered), Then::Done);
        }
        if attempted.status == Some(410) {
            return (Some(DeliveryStatus::Pending), Then::Disable);
        }
        if trigger != Trigger::Scheduled {
            // A resend or a recovery is one attempt, outside the schedule.
            return (None, Then::Done);
        }
        let jitter = self
            .jitter
            .lock()
            .map_or(0.0, |mut rng| rng.f64() * 2.0 - 1.0);
        match retry::next(&self.schedule, attempts + 1, attempted.retry_after, jitter) {
            Next::Retry(delay) => (Some(DeliveryStatus::Pending), Then::Retry(delay)),
            Next::Spent => (Some(DeliveryStatus::Failed), Then::Done),
        }
    }

    /// A failure counts against the breaker; a 2xx closed it already, with its attempt's log.
    async fn feed_breaker(&self, lane: &Lane, attempted: &Attempted) -> Result<(), StoreError> {
        if attempted.delivered() {
            return Ok(());
        }
        let step = self.log.failure(&lane.partner, self.breaker).await?;
        if step.opened || step.disabled {
            tracing::warn!(
                partner = %lane.partner,
                opened = step.opened,
                disabled = step.disabled,
                "the partner's deliveries pause"
            );
            lane.pause();
        }
        Ok(())
    }
}

async fn store_trouble(partner: &str, error: &StoreError) -> DeliveryEnd {
    tracing::warn!(partner, %error, "Redis could not record the push; handed back");
    tokio::time::sleep(STORE_TROUBLE_PAUSE).await;
    DeliveryEnd::HandBack
}
