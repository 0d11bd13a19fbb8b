//! The real adapters of the job path's ports: Redis ([`Store`]), RabbitMQ ([`BrokerQueue`]),
//! the Stripe [`Gateway`] and the system clock.

use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;

use super::ports::{Clock, CreateSent, Incoming, JobQueue, JobStart, JobStore, StripeApi, Wait};
use crate::broker::{Broker, BrokerError, Destination, JobMessage, Message};
use crate::domain::event::CLOUDEVENTS_CONTENT_TYPE;
use crate::domain::{FinalResult, PayKey, ResultEvent};
use crate::store::{Store, StoreError};
use crate::stripe::{
    Attached, CreatedCustomer, Gateway, NewCustomer, NewSubscription, PriceSpec, StripeFailure,
    Subscribed,
};

impl JobStore for Store {
    fn begin<'a>(
        &'a self,
        pay_key: &'a PayKey,
        token: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<JobStart, StoreError>> {
        self.begin_job(pay_key, token, ttl).boxed()
    }

    fn extend_lock<'a>(
        &'a self,
        pay_key: &'a PayKey,
        token: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Store::extend_lock(self, pay_key, token, ttl).boxed()
    }

    fn unlock<'a>(
        &'a self,
        pay_key: &'a PayKey,
        token: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Store::unlock(self, pay_key, token).boxed()
    }

    fn record_create<'a>(
        &'a self,
        pay_key: &'a PayKey,
        token: &'a str,
        sent: &'a CreateSent,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Store::record_create(self, pay_key, token, sent).boxed()
    }

    fn created<'a>(
        &'a self,
        pay_key: &'a PayKey,
    ) -> BoxFuture<'a, Result<Option<CreateSent>, StoreError>> {
        Store::created(self, pay_key).boxed()
    }

    fn customer_of<'a>(
        &'a self,
        partner: &'a str,
        email: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, StoreError>> {
        Store::customer_of(self, partner, email).boxed()
    }

    fn authorized_customer<'a>(
        &'a self,
        pay_key: &'a PayKey,
        email: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, StoreError>> {
        async move {
            let authorization = Store::authorization(self, pay_key).await?;
            Ok(authorization
                .filter(|a| a.email == email)
                .map(|a| a.customer_id))
        }
        .boxed()
    }

    fn remember_customer<'a>(
        &'a self,
        partner: &'a str,
        email: &'a str,
        customer: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Store::remember_customer(self, partner, email, customer).boxed()
    }

    fn lock_price<'a>(
        &'a self,
        lookup_key: &'a str,
        token: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Store::lock_price(self, lookup_key, token, ttl).boxed()
    }

    fn unlock_price<'a>(
        &'a self,
        lookup_key: &'a str,
        token: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Store::unlock_price(self, lookup_key, token).boxed()
    }

    fn finish<'a>(
        &'a self,
        pay_key: &'a PayKey,
        token: &'a str,
        result: &'a FinalResult,
    ) -> BoxFuture<'a, Result<Option<FinalResult>, StoreError>> {
        self.finish_job(pay_key, token, result).boxed()
    }
}

/// The job path's queue on RabbitMQ: every publish waits for its confirm.
#[derive(Clone)]
pub struct BrokerQueue {
    pub broker: Broker,
    /// How long a confirm of the worker's own publishes may take.
    pub timeout: Duration,
}

impl JobQueue for BrokerQueue {
    fn retry_stages(&self) -> usize {
        self.broker.topology().retry_delays().len()
    }

    fn delay<'a>(
        &'a self,
        wait: Wait,
        job: &'a Incoming,
        attempt: u32,
    ) -> BoxFuture<'a, Result<(), BrokerError>> {
        async move {
            let topology = self.broker.topology();
            let queue = match wait {
                Wait::Retry(stage) => {
                    let delays = topology.retry_delays();
                    let delay = delays
                        .get(stage)
                        .or(delays.last())
                        .copied()
                        .unwrap_or_default();
                    topology.retry_queue(delay)
                }
                Wait::Lock => topology.lock_retry_queue(),
                Wait::Reconcile => topology.reconcile_queue(),
            };
            let message = JobMessage {
                kind: &job.kind,
                body: &job.body,
                message_id: &job.message_id,
                attempt,
                parked: wait == Wait::Reconcile,
            };
            self.broker
                .publish_job(message, Destination::Queue(&queue), self.timeout)
                .await
        }
        .boxed()
    }

    fn dead_letter<'a>(
        &'a self,
        job: &'a Incoming,
        reason: &'a str,
    ) -> BoxFuture<'a, Result<(), BrokerError>> {
        let message = JobMessage {
            kind: &job.kind,
            body: &job.body,
            message_id: &job.message_id,
            attempt: job.attempt,
            parked: false,
        };
        self.broker
            .publish_job(message, Destination::Dead { reason }, self.timeout)
            .boxed()
    }

    fn announce<'a>(&'a self, event: &'a ResultEvent) -> BoxFuture<'a, Result<(), BrokerError>> {
        async move {
            let exchange = self.broker.topology().results();
            let routing_key = event.routing_key();
            let body = event.encode();
            let message = Message {
                exchange: &exchange,
                routing_key: &routing_key,
                body: &body,
                content_type: CLOUDEVENTS_CONTENT_TYPE,
                message_id: &event.id,
                kind: &event.kind,
                headers: Vec::new(),
                // An event with no subscriber bound yet is not an error.
                mandatory: false,
            };
            self.broker.publish(message, self.timeout).await
        }
        .boxed()
    }

    fn event_source(&self) -> String {
        format!("urn:autorenew:{}", self.broker.topology().prefix())
    }
}

impl StripeApi for Gateway {
    fn find_customer<'a>(
        &'a self,
        partner_code: &'a str,
        email: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, StripeFailure>> {
        Gateway::find_customer(self, partner_code, email).boxed()
    }

    fn create_customer<'a>(
        &'a self,
        new: &'a NewCustomer<'a>,
        key: &'a str,
    ) -> BoxFuture<'a, Result<CreatedCustomer, StripeFailure>> {
        Gateway::create_customer(self, new, key).boxed()
    }

    fn attach_payment_method<'a>(
        &'a self,
        payment_method: &'a str,
        customer: &'a str,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Attached, StripeFailure>> {
        Gateway::attach_payment_method(self, payment_method, customer, key).boxed()
    }

    fn price_product<'a>(&'a self, price: &'a str) -> BoxFuture<'a, Result<String, StripeFailure>> {
        Gateway::price_product(self, price).boxed()
    }

    fn find_price<'a>(
        &'a self,
        lookup_key: &'a str,
    ) -> BoxFuture<'a, Result<Option<(String, String)>, StripeFailure>> {
        Gateway::find_price(self, lookup_key).boxed()
    }

    fn create_price<'a>(
        &'a self,
        spec: &'a PriceSpec<'a>,
        key: &'a str,
    ) -> BoxFuture<'a, Result<(String, String), StripeFailure>> {
        Gateway::create_price(self, spec, key).boxed()
    }

    fn find_subscription<'a>(
        &'a self,
        customer: &'a str,
        pay_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<Subscribed>, StripeFailure>> {
        Gateway::find_subscription(self, customer, pay_id).boxed()
    }

    fn create_subscription<'a>(
        &'a self,
        new: &'a NewSubscription<'a>,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Subscribed, StripeFailure>> {
        Gateway::create_subscription(self, new, key).boxed()
    }
}

/// The system's wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        let now = time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000;
        u64::try_from(now).unwrap_or(0)
    }
}
