//! The ports of one delivery: what [`super::deliver::Deliverer`] needs of the attempt log (Redis
//! in production), of the partner's endpoint (the HTTP client), of the wait queues (RabbitMQ)
//! and of the clock. The real ones are the [`Store`], the [`PushClient`] and the [`Broker`]; the
//! deterministic simulation (`tests/simulate/push.rs`) gives in-memory twins with the same
//! rules, so the delivery's own code is what the simulation runs.

use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt;
use futures_util::future::BoxFuture;

use super::client::{Attempted, PushClient};
use crate::broker::push::PushMessage;
use crate::broker::{Broker, BrokerError};
use crate::domain::clock::now_millis;
use crate::domain::push::{AttemptRecord, DeliveryStatus, PushSecret};
use crate::store::{BreakerStep, NewNotification, Store, StoreError};

/// When the breaker opens and the push is disabled (`push.breaker_*`, `disable_after_hours`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerRule {
    pub failures: u32,
    pub cooldown: Duration,
    pub longest_cooldown: Duration,
    pub disable_after: Duration,
}

/// The attempt log and the breaker, shared by every notifier.
pub trait PushLog: Send + Sync {
    /// Records the event if it is new (`pending`) and answers its status.
    fn record<'a>(
        &'a self,
        partner: &'a str,
        event: &'a NewNotification<'a>,
        retention: Duration,
    ) -> BoxFuture<'a, Result<DeliveryStatus, StoreError>>;

    /// Logs an attempt and moves the event to `status` (None: as it was); a delivered event
    /// stays delivered. `Some(Delivered)` (a 2xx) also closes the partner's breaker, at once:
    /// the log and the breaker never disagree about the last attempt.
    fn attempt<'a>(
        &'a self,
        partner: &'a str,
        webhook_id: &'a str,
        attempt: &'a AttemptRecord,
        status: Option<DeliveryStatus>,
        retention: Duration,
    ) -> BoxFuture<'a, Result<Option<DeliveryStatus>, StoreError>>;

    /// A failed attempt, counted against the partner's breaker.
    fn failure<'a>(
        &'a self,
        partner: &'a str,
        rule: BreakerRule,
    ) -> BoxFuture<'a, Result<BreakerStep, StoreError>>;

    /// Disables the partner's push (a 410).
    fn disable<'a>(
        &'a self,
        partner: &'a str,
        reason: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>>;
}

/// The partner's endpoint.
pub trait PushSender: Send + Sync {
    /// POSTs `body` to `url`, signed now under `webhook_id`; never fails: a failure is an
    /// [`Attempted`] without a 2xx.
    fn send<'a>(
        &'a self,
        url: &'a str,
        webhook_id: &'a str,
        secrets: &'a [PushSecret],
        body: &'a Bytes,
    ) -> BoxFuture<'a, Attempted>;
}

/// The wait queues of failed attempts.
pub trait PushRetries: Send + Sync {
    /// Puts `message` back on its partner's queue after `delay`; Ok once the broker confirmed.
    fn schedule<'a>(
        &'a self,
        message: PushMessage<'a>,
        delay: Duration,
    ) -> BoxFuture<'a, Result<(), BrokerError>>;
}

/// Wall time for the attempt log and the breaker, in ms since the epoch.
pub trait PushClock: Send + Sync {
    fn now_ms(&self) -> i64;
}

impl PushLog for Store {
    fn record<'a>(
        &'a self,
        partner: &'a str,
        event: &'a NewNotification<'a>,
        retention: Duration,
    ) -> BoxFuture<'a, Result<DeliveryStatus, StoreError>> {
        self.push_record(partner, event, retention).boxed()
    }

    fn attempt<'a>(
        &'a self,
        partner: &'a str,
        webhook_id: &'a str,
        attempt: &'a AttemptRecord,
        status: Option<DeliveryStatus>,
        retention: Duration,
    ) -> BoxFuture<'a, Result<Option<DeliveryStatus>, StoreError>> {
        self.push_attempt(partner, webhook_id, attempt, status, retention)
            .boxed()
    }

    fn failure<'a>(
        &'a self,
        partner: &'a str,
        rule: BreakerRule,
    ) -> BoxFuture<'a, Result<BreakerStep, StoreError>> {
        self.push_failure(
            partner,
            rule.failures,
            rule.cooldown,
            rule.longest_cooldown,
            rule.disable_after,
        )
        .boxed()
    }

    fn disable<'a>(
        &'a self,
        partner: &'a str,
        reason: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        self.push_disable(partner, reason).boxed()
    }
}

impl PushSender for PushClient {
    fn send<'a>(
        &'a self,
        url: &'a str,
        webhook_id: &'a str,
        secrets: &'a [PushSecret],
        body: &'a Bytes,
    ) -> BoxFuture<'a, Attempted> {
        PushClient::send(self, url, webhook_id, secrets, body).boxed()
    }
}

/// The notifier's own publishes wait this long for the broker's confirm.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(5);

impl PushRetries for Broker {
    fn schedule<'a>(
        &'a self,
        message: PushMessage<'a>,
        delay: Duration,
    ) -> BoxFuture<'a, Result<(), BrokerError>> {
        async move {
            let Some(queue) = self.topology().push_wait_for(delay) else {
                return Err(BrokerError::Unavailable);
            };
            self.publish_push(message, &queue, Some(delay), PUBLISH_TIMEOUT)
                .await
        }
        .boxed()
    }
}

/// The system's clock.
pub struct SystemClock;

impl PushClock for SystemClock {
    fn now_ms(&self) -> i64 {
        i64::try_from(now_millis()).unwrap_or(i64::MAX)
    }
}
