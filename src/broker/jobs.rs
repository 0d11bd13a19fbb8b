//! The job message, built in one place: the intake's first publish (a creation, a cancel or a
//! Stripe event), the worker's delayed copies and dead letters, and `autorenew dlq replay` all
//! go through [`JobMessage`], and every reader of a delivery's headers goes through
//! [`JobHeaders`].

use std::time::Duration;

use lapin::BasicProperties;
use lapin::types::AMQPValue;

use super::topology::PARTNER_HEADER;
use super::{Broker, BrokerError, JOB_ROUTING_KEY, Message};
use crate::domain::job::JOB_MESSAGE_TYPE;
use crate::domain::webhook::EventSummary;

/// Counts a job's passes through the delayed-retry queues.
pub const ATTEMPT_HEADER: &str = "x-attempt";
/// Says why a message is a dead letter.
pub const DEATH_REASON_HEADER: &str = "x-autorenew-reason";
/// Marks a job parked for reconciliation: it comes back only to be looked up.
pub const PARKED_HEADER: &str = "x-autorenew-parked";
/// Quorum queues count the deliveries of a message that came back (nack, a lost channel).
const DELIVERY_COUNT_HEADER: &str = "x-delivery-count";

/// Where a job message goes.
#[derive(Debug, Clone, Copy)]
pub enum Destination<'a> {
    /// The partner's lane (the shared jobs queue for a job of no partner), to be worked on now.
    Jobs,
    /// A queue of the topology (a delayed-retry, lock-retry or reconciliation queue), straight
    /// through the default exchange.
    Queue(&'a str),
    /// The dead letters, with the reason.
    Dead { reason: &'a str },
}

/// One job message to publish.
#[derive(Debug, Clone, Copy)]
pub struct JobMessage<'a> {
    /// The AMQP `type`: [`JOB_MESSAGE_TYPE`] for a creation job, a cancel's or a Stripe event's.
    pub kind: &'a str,
    pub body: &'a [u8],
    /// The payId (a Stripe event: its id): consumers and operators find a job by it.
    pub message_id: &'a str,
    pub attempt: u32,
    pub parked: bool,
    /// The partner whose lane the job travels in; none for a Stripe event, which has no
    /// partner until the worker finds its subscription.
    pub partner: Option<&'a str>,
}

impl Broker {
    /// Publishes a job message to `destination` and waits for the broker's confirm.
    pub async fn publish_job(
        &self,
        job: JobMessage<'_>,
        destination: Destination<'_>,
        timeout: Duration,
    ) -> Result<(), BrokerError> {
        self.publish_job_with(job, Vec::new(), destination, timeout)
            .await
    }

    /// [`Broker::publish_job`], with headers of the message's own kind besides the job's
    /// (a Stripe event's: [`stripe_event_headers`]).
    pub async fn publish_job_with(
        &self,
        job: JobMessage<'_>,
        mut headers: Vec<(&str, AMQPValue)>,
        destination: Destination<'_>,
        timeout: Duration,
    ) -> Result<(), BrokerError> {
        headers.push((ATTEMPT_HEADER, AMQPValue::LongUInt(job.attempt)));
        if job.parked {
            headers.push((PARKED_HEADER, AMQPValue::Boolean(true)));
        }
        // Every copy carries its partner: a delayed one comes back into the lane through it,
        // and a dead letter replayed goes back to it.
        if let Some(partner) = job.partner {
            headers.push((
                PARTNER_HEADER,
                AMQPValue::LongString(partner.as_bytes().to_vec().into()),
            ));
        }
        let lanes = self.topology().lanes_exchange();
        let dead = self.topology().dead();
        let (exchange, routing_key) = match destination {
            Destination::Jobs => (lanes.as_str(), JOB_ROUTING_KEY),
            Destination::Queue(queue) => ("", queue),
            Destination::Dead { reason } => {
                let reason = AMQPValue::LongString(reason.as_bytes().to_vec().into());
                headers.push((DEATH_REASON_HEADER, reason));
                (dead.as_str(), "")
            }
        };
        self.publish(
            Message {
                exchange,
                routing_key,
                body: job.body,
                content_type: "application/json",
                message_id: job.message_id,
                kind: job.kind,
                headers,
                // A job no queue takes would be lost: refuse it.
                mandatory: true,
            },
            timeout,
        )
        .await
    }
}

/// The headers a Stripe event carries besides the job's (`domain::webhook`'s
/// `STRIPE_EVENT_MESSAGE_TYPE` says what each is), for the worker's log and dead letters.
pub fn stripe_event_headers(
    event: &EventSummary,
    received_at: &str,
) -> Vec<(&'static str, AMQPValue)> {
    vec![
        (
            "stripe_event_type",
            AMQPValue::LongString(event.kind.as_str().into()),
        ),
        (
            "stripe_event_created",
            AMQPValue::LongLongInt(event.created),
        ),
        ("stripe_livemode", AMQPValue::Boolean(event.livemode)),
        ("received_at", AMQPValue::LongString(received_at.into())),
    ]
}

/// What a delivered job message's properties say.
#[derive(Debug, Clone, Copy)]
pub struct JobHeaders<'a>(pub &'a BasicProperties);

impl JobHeaders<'_> {
    /// The attempt number (1 when absent).
    pub fn attempt(&self) -> u32 {
        self.number(ATTEMPT_HEADER).unwrap_or(1).max(1)
    }

    pub fn parked(&self) -> bool {
        matches!(self.value(PARKED_HEADER), Some(AMQPValue::Boolean(true)))
    }

    /// Deliveries that came back before this one (0 on the first delivery).
    pub fn delivery_count(&self) -> u32 {
        self.number(DELIVERY_COUNT_HEADER).unwrap_or(0)
    }

    /// Why the message is a dead letter, when the worker put it there.
    pub fn death_reason(&self) -> Option<String> {
        match self.value(DEATH_REASON_HEADER)? {
            AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
            AMQPValue::ShortString(s) => Some(s.to_string()),
            _ => None,
        }
    }

    /// The message's AMQP `type`; a creation job when absent (as older intakes sent it).
    pub fn kind(&self) -> String {
        self.0
            .kind()
            .as_ref()
            .map_or_else(|| JOB_MESSAGE_TYPE.to_owned(), |kind| kind.to_string())
    }

    /// The partner whose lane the job travels in; none on a Stripe event and on a job
    /// published before the lanes.
    pub fn partner(&self) -> Option<String> {
        match self.value(PARTNER_HEADER)? {
            AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
            AMQPValue::ShortString(s) => Some(s.to_string()),
            _ => None,
        }
        .filter(|partner| !partner.is_empty())
    }

    pub fn message_id(&self) -> String {
        self.0
            .message_id()
            .as_ref()
            .map(|id| id.to_string())
            .unwrap_or_default()
    }

    fn value(&self, name: &str) -> Option<&AMQPValue> {
        self.0.headers().as_ref()?.inner().get(name)
    }

    fn number(&self, name: &str) -> Option<u32> {
        match self.value(name)? {
            AMQPValue::LongUInt(n) => Some(*n),
            AMQPValue::LongInt(n) => u32::try_from(*n).ok(),
            AMQPValue::LongLongInt(n) => u32::try_from(*n).ok(),
            AMQPValue::ShortUInt(n) => Some(u32::from(*n)),
            AMQPValue::ShortShortUInt(n) => Some(u32::from(*n)),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use lapin::types::{FieldTable, ShortString};

    use super::*;

    fn with_headers(pairs: &[(&str, AMQPValue)]) -> BasicProperties {
        let mut table = FieldTable::default();
        for (key, value) in pairs {
            table.insert(ShortString::from(*key), value.clone());
        }
        BasicProperties::default().with_headers(table)
    }

    #[test]
    fn a_message_without_headers_is_a_first_attempt_never_delivered_before() {
        let properties = BasicProperties::default();
        let headers = JobHeaders(&properties);

        assert_eq!(headers.attempt(), 1);
        assert_eq!(headers.delivery_count(), 0);
        assert!(!headers.parked());
        assert_eq!(headers.death_reason(), None);
        assert_eq!(headers.partner(), None);
    }

    #[test]
    fn headers_are_read_whatever_integer_type_the_broker_chose() {
        let properties = with_headers(&[
            (ATTEMPT_HEADER, AMQPValue::LongLongInt(3)),
            (DELIVERY_COUNT_HEADER, AMQPValue::LongInt(7)),
            (PARKED_HEADER, AMQPValue::Boolean(true)),
            (PARTNER_HEADER, AMQPValue::ShortString("P000818".into())),
        ]);
        let headers = JobHeaders(&properties);
        assert_eq!(headers.partner().as_deref(), Some("P000818"));

        assert_eq!(headers.attempt(), 3);
        assert_eq!(headers.delivery_count(), 7);
        assert!(headers.parked());
    }
}
