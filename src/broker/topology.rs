//! The RabbitMQ topology of docs/partners.md#events-and-the-broker, under a configurable prefix, declared idempotently.
//!
//! Jobs travel in lanes: a quorum queue per configured partner, and the shared jobs queue for
//! what has no partner of its own (Stripe's events, a partner the workers do not know yet, and
//! jobs published by a release before the lanes). Every worker consumes every lane, each under
//! its own prefetch, so one partner's backlog never stands in front of another's job
//! (docs/design.md, "Partners served in turn"). A job enters its lane through the headers
//! exchange `<prefix>.jobs.partners`, which routes on [`PARTNER_HEADER`]; what matches no
//! partner's queue falls through its alternate exchange, the jobs exchange, into the shared
//! queue, so no job is refused or lost for want of a lane. The delay queues dead-letter into
//! the same headers exchange: a retry or lock-wait comes back to its own partner's lane.

use std::time::Duration;

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, ExchangeKind};

use crate::config::Settings;

/// The routing key jobs travel under: the shared queue's binding on the jobs exchange, and so
/// the key a job falls through to it with when no partner's lane takes it.
pub const JOB_ROUTING_KEY: &str = "job";

/// Names a job's partner; the lanes exchange routes on it. Not `x-`: a headers exchange
/// ignores `x-` headers when it matches. Absent on a job of no partner (a Stripe event).
pub const PARTNER_HEADER: &str = "autorenew-job-partner";

/// The routing key under which the jobs queue dead-letters a job past its delivery limit, into
/// the expired-jobs queue, where a worker still ends it with a result.
pub const EXPIRED_ROUTING_KEY: &str = "expired";

/// How often a job may be delivered before RabbitMQ dead-letters it: a message that makes
/// workers crash (not merely fail) would otherwise go round forever. Workers end a job
/// themselves one delivery earlier, with a result; this is the broker's backstop.
pub const JOB_DELIVERY_LIMIT: u32 = 50;

/// The names of every exchange and queue, derived from one prefix.
#[derive(Debug, Clone)]
pub struct Topology {
    prefix: String,
    retry_delays: Vec<Duration>,
    lock_delay: Duration,
    reconcile_delay: Duration,
    /// The partners with a lane of their own: the configuration's partners.
    partners: Vec<String>,
    /// The partner push's queues (see `push.rs`).
    push: super::push::PushTopology,
}

impl Topology {
    pub fn new(
        prefix: &str,
        retry_delays: Vec<Duration>,
        lock_delay: Duration,
        reconcile_delay: Duration,
    ) -> Self {
        Topology {
            prefix: prefix.to_owned(),
            retry_delays,
            lock_delay,
            reconcile_delay,
            partners: Vec::new(),
            push: super::push::PushTopology::default(),
        }
    }

    /// This topology with a lane for each of `partners`.
    pub fn with_partners(mut self, partners: impl IntoIterator<Item = String>) -> Self {
        self.partners = partners.into_iter().collect();
        self
    }

    /// The partners with a lane of their own.
    pub fn partners(&self) -> &[String] {
        &self.partners
    }

    /// This topology with the push's queues (docs/partners.md#the-push-signed-notifications-to-your-url).
    pub fn with_push(mut self, push: super::push::PushTopology) -> Self {
        self.push = push;
        self
    }

    pub fn push(&self) -> &super::push::PushTopology {
        &self.push
    }

    /// The topology `settings` name.
    pub fn from_settings(settings: &Settings) -> Self {
        let millis = Duration::from_millis;
        Topology::new(
            &settings.amqp.prefix,
            settings
                .amqp
                .retry_delays_ms
                .iter()
                .map(|ms| millis(*ms))
                .collect(),
            millis(settings.worker.lock_retry_delay_ms),
            millis(settings.amqp.reconcile_delay_ms),
        )
        .with_partners(settings.partners.iter().map(|p| p.code.clone()))
        // Every process declares the push queues: an event published before any notifier ran
        // still waits for its partner.
        .with_push(super::push::PushTopology::from_settings(settings))
    }

    /// Every queue of the topology, for tools and tests that clean up after themselves.
    pub fn queues(&self) -> Vec<String> {
        let mut queues = vec![
            self.jobs(),
            self.dead(),
            self.expired(),
            self.lock_retry_queue(),
            self.reconcile_queue(),
        ];
        queues.extend(self.lanes());
        queues.extend(self.retry_queues().into_iter().map(|(_, name)| name));
        queues.extend(self.push_queues());
        queues
    }

    /// Every queue a job may wait in to be worked on: the shared jobs queue, the partners'
    /// lanes and the expired jobs. Autoscaling and alerts read their depth together.
    pub fn work_queues(&self) -> Vec<String> {
        let mut queues = vec![self.jobs()];
        queues.extend(self.lanes());
        queues.push(self.expired());
        queues
    }

    /// The partners' lanes.
    pub fn lanes(&self) -> Vec<String> {
        self.partners.iter().map(|p| self.lane(p)).collect()
    }

    /// A partner's lane, e.g. `autorenew.jobs.partner.P000818`.
    pub fn lane(&self, partner: &str) -> String {
        format!("{}.jobs.partner.{partner}", self.prefix)
    }

    /// The headers exchange that puts a job into its partner's lane.
    pub fn lanes_exchange(&self) -> String {
        format!("{}.jobs.partners", self.prefix)
    }

    /// Where a job parked for reconciliation waits before it is looked up again.
    pub fn reconcile_queue(&self) -> String {
        format!("{}.delay.reconcile", self.prefix)
    }

    /// Where the broker puts jobs past their delivery limit; workers consume it too.
    pub fn expired(&self) -> String {
        format!("{}.jobs.expired", self.prefix)
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Where a job waits while another worker holds its payId's lock; it spends no attempt.
    pub fn lock_retry_queue(&self) -> String {
        format!("{}.delay.locked", self.prefix)
    }

    /// The delays of the delayed-retry queues, shortest first.
    pub fn retry_delays(&self) -> &[Duration] {
        &self.retry_delays
    }

    /// Exchange and quorum queue of the jobs.
    pub fn jobs(&self) -> String {
        format!("{}.jobs", self.prefix)
    }

    /// Exchange and queue of the dead letters.
    pub fn dead(&self) -> String {
        format!("{}.dead", self.prefix)
    }

    /// Topic exchange of the result events.
    pub fn results(&self) -> String {
        format!("{}.results", self.prefix)
    }

    /// The delayed-retry queues, shortest delay first.
    pub fn retry_queues(&self) -> Vec<(Duration, String)> {
        self.retry_delays
            .iter()
            .map(|delay| (*delay, self.retry_queue(*delay)))
            .collect()
    }

    /// The retry queue for `delay`, e.g. `autorenew.delay.10s`.
    ///
    /// Not `retry.…`: the queues of that name, from a release before the lanes, dead-letter
    /// every job into the shared queue, and a queue's arguments cannot change once declared.
    /// They are no longer declared; what is left in them still comes back, to the shared queue
    /// (docs/operations.md, "Upgrading to partner lanes").
    pub fn retry_queue(&self, delay: Duration) -> String {
        format!("{}.delay.{}", self.prefix, humanize(delay))
    }

    /// Declares everything; safe to run at every start-up and from every process.
    pub async fn declare(&self, channel: &Channel) -> lapin::Result<()> {
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..ExchangeDeclareOptions::default()
        };
        let durable_queue = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };

        // Dead letters first: the jobs queue names the dead exchange.
        channel
            .exchange_declare(
                self.dead().into(),
                ExchangeKind::Fanout,
                durable,
                FieldTable::default(),
            )
            .await?;
        channel
            .queue_declare(self.dead().into(), durable_queue, quorum())
            .await?;
        channel
            .queue_bind(
                self.dead().into(),
                self.dead().into(),
                "".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;

        channel
            .exchange_declare(
                self.jobs().into(),
                ExchangeKind::Direct,
                durable,
                FieldTable::default(),
            )
            .await?;
        channel
            .queue_declare(self.jobs().into(), durable_queue, self.work_queue_args())
            .await?;
        channel
            .queue_bind(
                self.jobs().into(),
                self.jobs().into(),
                JOB_ROUTING_KEY.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;

        // Expired jobs: no delivery limit and no dead-lettering of its own; a worker ends each.
        channel
            .queue_declare(self.expired().into(), durable_queue, quorum())
            .await?;
        channel
            .queue_bind(
                self.expired().into(),
                self.jobs().into(),
                EXPIRED_ROUTING_KEY.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;

        // The lanes: a headers exchange routing on the partner, falling through to the jobs
        // exchange (and so the shared queue, under the job routing key) when no lane matches.
        let mut lanes_args = FieldTable::default();
        lanes_args.insert("alternate-exchange".into(), long_string(&self.jobs()));
        channel
            .exchange_declare(
                self.lanes_exchange().into(),
                ExchangeKind::Headers,
                durable,
                lanes_args,
            )
            .await?;
        for partner in &self.partners {
            let lane = self.lane(partner);
            channel
                .queue_declare(lane.as_str().into(), durable_queue, self.work_queue_args())
                .await?;
            let mut matching = FieldTable::default();
            matching.insert("x-match".into(), long_string("all"));
            matching.insert(PARTNER_HEADER.into(), long_string(partner));
            channel
                .queue_bind(
                    lane.as_str().into(),
                    self.lanes_exchange().into(),
                    "".into(),
                    QueueBindOptions::default(),
                    matching,
                )
                .await?;
        }

        let mut delayed = self.retry_queues();
        delayed.push((self.lock_delay, self.lock_retry_queue()));
        delayed.push((self.reconcile_delay, self.reconcile_queue()));
        for (delay, queue) in delayed {
            let mut args = quorum();
            // Nobody consumes a delay queue: each message waits out the TTL, then RabbitMQ
            // dead-letters it back into its partner's lane (the shared queue when it has none).
            args.insert(
                "x-message-ttl".into(),
                AMQPValue::LongLongInt(i64::try_from(delay.as_millis()).unwrap_or(i64::MAX)),
            );
            args.insert(
                "x-dead-letter-exchange".into(),
                long_string(&self.lanes_exchange()),
            );
            // The headers exchange ignores the key; its alternate exchange routes on it, and
            // this one takes a job of no lane to the shared queue.
            args.insert(
                "x-dead-letter-routing-key".into(),
                long_string(JOB_ROUTING_KEY),
            );
            // At-least-once dead-lettering (quorum queues, RabbitMQ 3.10+): the move back to the
            // jobs queue is confirmed, so a broker crash cannot drop a job in transit. It needs
            // publishers to be refused, not messages dropped, when the queue is full.
            args.insert(
                "x-dead-letter-strategy".into(),
                long_string("at-least-once"),
            );
            args.insert("x-overflow".into(), long_string("reject-publish"));
            channel
                .queue_declare(queue.into(), durable_queue, args)
                .await?;
        }

        channel
            .exchange_declare(
                self.results().into(),
                ExchangeKind::Topic,
                durable,
                FieldTable::default(),
            )
            .await?;
        self.declare_push(channel).await
    }
}

impl Topology {
    /// The arguments of every queue jobs are worked from (the shared queue and the lanes).
    fn work_queue_args(&self) -> FieldTable {
        let mut args = quorum();
        // A job past its delivery limit goes, at least once (a confirmed move, not a
        // fire-and-forget one), to the expired-jobs queue, where a worker still stores and
        // announces its ending; never silently to the dead letters.
        args.insert("x-dead-letter-exchange".into(), long_string(&self.jobs()));
        args.insert(
            "x-dead-letter-routing-key".into(),
            long_string(EXPIRED_ROUTING_KEY),
        );
        args.insert(
            "x-dead-letter-strategy".into(),
            long_string("at-least-once"),
        );
        // At-least-once dead-lettering needs publishers refused, not messages dropped, when
        // the queue is full.
        args.insert("x-overflow".into(), long_string("reject-publish"));
        args.insert(
            "x-delivery-limit".into(),
            AMQPValue::LongLongInt(i64::from(JOB_DELIVERY_LIMIT)),
        );
        args
    }
}

/// Quorum queues: replicated, durable, and the only kind that keeps a job through a node loss.
fn quorum() -> FieldTable {
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), long_string("quorum"));
    args
}

fn long_string(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value.as_bytes().to_vec()))
}

/// `10s`, `1m`, `1h`, or milliseconds when it is not a whole second.
pub(super) fn humanize(delay: Duration) -> String {
    let millis = delay.as_millis();
    let secs = delay.as_secs();
    if !millis.is_multiple_of(1000) {
        format!("{millis}ms")
    } else if secs.is_multiple_of(3600) {
        format!("{}h", secs / 3600)
    } else if secs.is_multiple_of(60) {
        format!("{}m", secs / 60)
    } else {
        format!("{secs}s")
    }
}

/// A short string for AMQP names and properties.
pub fn short(value: &str) -> ShortString {
    ShortString::from(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_derive_from_the_prefix() {
        let topology = Topology::new(
            "autorenew",
            vec![
                Duration::from_secs(10),
                Duration::from_secs(60),
                Duration::from_millis(1500),
            ],
            Duration::from_secs(2),
            Duration::from_secs(600),
        );
        assert_eq!(topology.jobs(), "autorenew.jobs");
        assert_eq!(topology.dead(), "autorenew.dead");
        assert_eq!(topology.results(), "autorenew.results");
        let names: Vec<String> = topology
            .retry_queues()
            .into_iter()
            .map(|(_, n)| n)
            .collect();
        assert_eq!(topology.lock_retry_queue(), "autorenew.delay.locked");
        assert_eq!(topology.reconcile_queue(), "autorenew.delay.reconcile");
        assert_eq!(topology.expired(), "autorenew.jobs.expired");
        assert_eq!(
            names,
            [
                "autorenew.delay.10s",
                "autorenew.delay.1m",
                "autorenew.delay.1500ms"
            ]
        );
        let topology = topology.with_partners(["P000818".to_owned(), "expired".to_owned()]);
        assert_eq!(topology.lanes_exchange(), "autorenew.jobs.partners");
        // A partner called `expired` cannot take the expired-jobs queue's name.
        assert_eq!(
            topology.work_queues(),
            [
                "autorenew.jobs",
                "autorenew.jobs.partner.P000818",
                "autorenew.jobs.partner.expired",
                "autorenew.jobs.expired"
            ]
        );
    }
}
