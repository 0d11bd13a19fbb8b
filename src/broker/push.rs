//! The push's queues (docs/partners.md#the-push-signed-notifications-to-your-url, docs/design.md "The partner push"): one quorum queue per
//! pushing partner, bound to the results exchange for that partner's events, and shared wait
//! queues for the delayed retries, which dead-letter each message back to its partner's queue.
//!
//! A queue per partner gives isolation by construction: each partner's deliveries are held
//! against its own consumer's prefetch, so a partner whose endpoint hangs holds only its own
//! messages; with one shared queue its messages would fill the shared prefetch and stall the
//! others behind them.

use std::time::Duration;

use lapin::BasicProperties;
use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, ExchangeKind};

use super::Broker;
use super::BrokerError;
use super::publish::Route;
use super::topology::{Topology, humanize};
use crate::config::Settings;
use crate::domain::push::binding_key;

/// Names the partner of a push message; the return exchange routes on it. Not `x-`: a headers
/// exchange ignores `x-` headers when it matches.
pub const PARTNER_HEADER: &str = "autorenew-push-partner";
/// Failed scheduled attempts so far.
pub const ATTEMPTS_HEADER: &str = "x-autorenew-push-attempts";
/// Why the message is here: absent for the schedule, `resend` or `recover` for a partner's call.
pub const TRIGGER_HEADER: &str = "x-autorenew-push-trigger";

/// The pushing partners and what they subscribe to, from the configuration.
#[derive(Debug, Clone, Default)]
pub struct PushTopology {
    /// (partner code, routing-key patterns).
    pub partners: Vec<(String, Vec<String>)>,
    /// The distinct delays of the retry schedule, shortest first.
    pub waits: Vec<Duration>,
}

impl PushTopology {
    pub fn from_settings(settings: &Settings) -> Self {
        let partners = settings
            .partners
            .iter()
            .filter_map(|p| {
                p.push
                    .as_ref()
                    .map(|push| (p.code.clone(), push.events.clone()))
            })
            .collect();
        let mut waits = settings.push.retry_schedule();
        waits.sort();
        waits.dedup();
        PushTopology { partners, waits }
    }
}

impl Topology {
    /// The queue a partner's pushes wait in.
    pub fn push_queue(&self, partner: &str) -> String {
        format!("{}.push.{partner}", self.prefix())
    }

    /// The headers exchange the wait queues dead-letter into; it routes by [`PARTNER_HEADER`].
    pub fn push_return(&self) -> String {
        format!("{}.push.return", self.prefix())
    }

    /// The wait queue for `delay`, e.g. `autorenew.push.wait.5m`.
    pub fn push_wait_queue(&self, delay: Duration) -> String {
        format!("{}.push.wait.{}", self.prefix(), humanize(delay))
    }

    /// The push queues, for tools and tests that clean up.
    pub fn push_queues(&self) -> Vec<String> {
        let push = self.push();
        let mut queues: Vec<String> = push
            .partners
            .iter()
            .map(|(code, _)| self.push_queue(code))
            .collect();
        queues.extend(push.waits.iter().map(|d| self.push_wait_queue(*d)));
        queues
    }

    /// The wait queue a retry due in `delay` goes to: the shortest whose delay, plus the 20 %
    /// of jitter, reaches it. A message expires on its own `expiration`, but only at the head
    /// of its queue; with every message of a queue due within 0.8 to 1.2 times its delay, one
    /// stuck behind another is never held past 1.2 times it.
    pub fn push_wait_for(&self, delay: Duration) -> Option<String> {
        let waits = &self.push().waits;
        waits
            .iter()
            .find(|wait| wait.mul_f64(1.2) >= delay)
            .or(waits.last())
            .map(|wait| self.push_wait_queue(*wait))
    }

    pub(super) async fn declare_push(&self, channel: &Channel) -> lapin::Result<()> {
        let push = self.push();
        if push.partners.is_empty() {
            return Ok(());
        }
        let durable_queue = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        channel
            .exchange_declare(
                self.push_return().into(),
                ExchangeKind::Headers,
                ExchangeDeclareOptions {
                    durable: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        for (code, patterns) in &push.partners {
            let queue = self.push_queue(code);
            // Quorum: a partner's undelivered events survive a node loss.
            channel
                .queue_declare(queue.as_str().into(), durable_queue, quorum())
                .await?;
            for pattern in patterns {
                channel
                    .queue_bind(
                        queue.as_str().into(),
                        self.results().into(),
                        binding_key(pattern, code).into(),
                        QueueBindOptions::default(),
                        FieldTable::default(),
                    )
                    .await?;
            }
            let mut by_partner = FieldTable::default();
            by_partner.insert("x-match".into(), long_string("all"));
            by_partner.insert(PARTNER_HEADER.into(), long_string(code));
            channel
                .queue_bind(
                    queue.as_str().into(),
                    self.push_return().into(),
                    "".into(),
                    QueueBindOptions::default(),
                    by_partner,
                )
                .await?;
        }
        for wait in &push.waits {
            let mut args = quorum();
            // Nobody consumes a wait queue: each message expires on its own `expiration` and
            // RabbitMQ dead-letters it, with its headers, to the return exchange, which routes
            // it to its partner's queue by PARTNER_HEADER.
            args.insert(
                "x-dead-letter-exchange".into(),
                long_string(&self.push_return()),
            );
            // The move back is confirmed, so a broker crash cannot drop a retry in transit;
            // that needs publishers refused, not messages dropped, when the queue is full.
            args.insert(
                "x-dead-letter-strategy".into(),
                long_string("at-least-once"),
            );
            args.insert("x-overflow".into(), long_string("reject-publish"));
            channel
                .queue_declare(self.push_wait_queue(*wait).into(), durable_queue, args)
                .await?;
        }
        Ok(())
    }
}

/// A push message to put (back) on the broker: an event for a partner.
#[derive(Debug, Clone)]
pub struct PushMessage<'a> {
    pub partner: &'a str,
    pub body: &'a [u8],
    /// The CloudEvent id.
    pub message_id: &'a str,
    pub attempts: u32,
    /// `None`: the schedule.
    pub trigger: Option<&'a str>,
}

impl Broker {
    /// Publishes a push message to `queue` (through the default exchange), to expire after
    /// `expire` when given, and waits for the confirm.
    pub async fn publish_push(
        &self,
        message: PushMessage<'_>,
        queue: &str,
        expire: Option<Duration>,
        timeout: Duration,
    ) -> Result<(), BrokerError> {
        let mut headers = FieldTable::default();
        headers.insert(PARTNER_HEADER.into(), long_string(message.partner));
        headers.insert(
            ATTEMPTS_HEADER.into(),
            AMQPValue::LongUInt(message.attempts),
        );
        if let Some(trigger) = message.trigger {
            headers.insert(TRIGGER_HEADER.into(), long_string(trigger));
        }
        let mut properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type(crate::domain::event::CLOUDEVENTS_CONTENT_TYPE.into())
            .with_message_id(ShortString::from(message.message_id))
            .with_app_id("autorenew".into())
            .with_headers(headers);
        if let Some(expire) = expire {
            properties = properties
                .with_expiration(ShortString::from(expire.as_millis().max(1).to_string()));
        }
        // Through the default exchange to the lane's queue; a push no queue takes would be lost.
        let route = Route {
            exchange: "",
            routing_key: queue,
            mandatory: true,
        };
        self.publish_confirmed(route, message.body, properties, timeout)
            .await
    }
}

/// What a delivery's headers say about a push message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushHeaders {
    pub attempts: u32,
    pub trigger: Option<String>,
}

impl PushHeaders {
    pub fn read(properties: &BasicProperties) -> Self {
        let headers = properties.headers().as_ref();
        let get = |name: &str| headers.and_then(|h| h.inner().get(name)).cloned();
        let attempts = match get(ATTEMPTS_HEADER) {
            Some(AMQPValue::LongUInt(n)) => n,
            Some(AMQPValue::LongLongInt(n)) => u32::try_from(n).unwrap_or(0),
            Some(AMQPValue::LongInt(n)) => u32::try_from(n).unwrap_or(0),
            Some(AMQPValue::ShortUInt(n)) => u32::from(n),
            _ => 0,
        };
        let trigger = match get(TRIGGER_HEADER) {
            Some(AMQPValue::LongString(s)) => {
                Some(String::from_utf8_lossy(s.as_bytes()).into_owned())
            }
            Some(AMQPValue::ShortString(s)) => Some(s.as_str().to_owned()),
            _ => None,
        };
        PushHeaders { attempts, trigger }
    }
}

fn quorum() -> FieldTable {
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), long_string("quorum"));
    args
}

fn long_string(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value.as_bytes().to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_retry_waits_in_the_shortest_queue_that_reaches_its_delay() {
        let topology = Topology::new(
            "p",
            vec![Duration::from_secs(10)],
            Duration::from_secs(1),
            Duration::from_secs(1),
        )
        .with_push(PushTopology {
            partners: vec![("P1".into(), vec!["subscription.*".into()])],
            waits: vec![Duration::from_secs(5), Duration::from_secs(300)],
        });
        assert_eq!(topology.push_queue("P1"), "p.push.P1");
        let wait = |secs: f64| topology.push_wait_for(Duration::from_secs_f64(secs));
        assert_eq!(wait(4.0).as_deref(), Some("p.push.wait.5s"));
        assert_eq!(wait(6.0).as_deref(), Some("p.push.wait.5s"));
        assert_eq!(wait(7.0).as_deref(), Some("p.push.wait.5m"));
        assert_eq!(wait(400.0).as_deref(), Some("p.push.wait.5m"));
        assert_eq!(
            topology.push_queues(),
            ["p.push.P1", "p.push.wait.5s", "p.push.wait.5m"]
        );
    }
}
