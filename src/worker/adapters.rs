//! The real adapters of the job path's ports: Redis ([`Store`]), RabbitMQ ([`BrokerQueue`]),
//! the Stripe [`Gateway`] and the system clock.

use std::collections::HashMap;
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;

use super::ports::{
    Clock, CreateSent, Incoming, JobQueue, JobStart, JobStore, StripeApi, Wait, forward,
};
use crate::broker::{Broker, BrokerError, Destination, JobMessage, Message};
use crate::domain::event::{CLOUDEVENTS_CONTENT_TYPE, LifecycleEvent};
use crate::domain::renewal::{Applied, RenewalChange, RenewalUpdate};
use crate::domain::{FinalResult, PayKey, ResultEvent};
use crate::store::{Store, StoreError};
use crate::stripe::{
    Attached, CreatedCustomer, CustomerMark, FoundSubscription, Gateway, NewCustomer,
    NewSubscription, PaymentError, PriceSpec, StripeFailure, Subscribed, SubscriptionState,
    WriteFailure,
};

#[rustfmt::skip]
impl JobStore for Store {
    forward! {
        begin<'a>(pay_key: &'a PayKey, token: &'a str, ttl: Duration) -> Result<JobStart, StoreError> => Store::begin_job;
        extend_lock<'a>(pay_key: &'a PayKey, token: &'a str, ttl: Duration) -> Result<bool, StoreError> => Store::extend_lock;
        unlock<'a>(pay_key: &'a PayKey, token: &'a str) -> Result<(), StoreError> => Store::unlock;
        record_create<'a>(pay_key: &'a PayKey, token: &'a str, sent: &'a CreateSent) -> Result<bool, StoreError> => Store::record_create;
        created<'a>(pay_key: &'a PayKey) -> Result<Option<CreateSent>, StoreError> => Store::created;
        customer_of<'a>(partner: &'a str, email: &'a str) -> Result<Option<String>, StoreError> => Store::customer_of;
        remember_customer<'a>(partner: &'a str, email: &'a str, customer: &'a str) -> Result<(), StoreError> => Store::remember_customer;
        lock_price<'a>(lookup_key: &'a str, token: &'a str, ttl: Duration) -> Result<bool, StoreError> => Store::lock_price;
        unlock_price<'a>(lookup_key: &'a str, token: &'a str) -> Result<(), StoreError> => Store::unlock_price;
        finish<'a>(pay_key: &'a PayKey, token: &'a str, result: &'a FinalResult) -> Result<Option<FinalResult>, StoreError> => Store::finish_job;
        result<'a>(pay_key: &'a PayKey) -> Result<Option<FinalResult>, StoreError> => Store::result;
        lock<'a>(pay_key: &'a PayKey, token: &'a str, ttl: Duration) -> Result<bool, StoreError> => Store::lock_pay_id;
        apply_renewal<'a>(pay_key: &'a PayKey, update: &'a RenewalUpdate) -> Result<Applied, StoreError> => Store::apply_renewal;
        restore<'a>(pay_key: &'a PayKey, result: &'a FinalResult, state: RenewalChange, version: u64) -> Result<FinalResult, StoreError> => Store::restore;
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

    fn has_record<'a>(&'a self, pay_key: &'a PayKey) -> BoxFuture<'a, Result<bool, StoreError>> {
        async move { Ok(Store::record(self, pay_key).await?.is_some()) }.boxed()
    }
}

/// The job path's queue on RabbitMQ: every publish waits for its confirm.
#[derive(Clone)]
pub struct BrokerQueue {
    pub broker: Broker,
    /// How long a confirm of the worker's own publishes may take.
    pub timeout: Duration,
}

impl BrokerQueue {
    /// Publishes an event on the results exchange and waits for its confirm.
    async fn publish_event(
        &self,
        routing_key: String,
        body: Vec<u8>,
        id: &str,
        kind: &str,
    ) -> Result<(), BrokerError> {
        let exchange = self.broker.topology().results();
        let message = Message {
            exchange: &exchange,
            routing_key: &routing_key,
            body: &body,
            content_type: CLOUDEVENTS_CONTENT_TYPE,
            message_id: id,
            kind,
            headers: Vec::new(),
            // An event with no subscriber bound yet is not an error.
            mandatory: false,
        };
        self.broker.publish(message, self.timeout).await
    }
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
                partner: job.partner.as_deref(),
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
            partner: job.partner.as_deref(),
        };
        self.broker
            .publish_job(message, Destination::Dead { reason }, self.timeout)
            .boxed()
    }

    fn announce<'a>(&'a self, event: &'a ResultEvent) -> BoxFuture<'a, Result<(), BrokerError>> {
        let body = event.encode();
        self.publish_event(event.routing_key(), body, &event.id, &event.kind)
            .boxed()
    }

    fn announce_change<'a>(
        &'a self,
        event: &'a LifecycleEvent,
    ) -> BoxFuture<'a, Result<(), BrokerError>> {
        let body = event.encode();
        self.publish_event(event.routing_key(), body, &event.id, &event.kind)
            .boxed()
    }

    fn event_source(&self) -> String {
        format!("urn:autorenew:{}", self.broker.topology().prefix())
    }
}

#[rustfmt::skip]
impl StripeApi for Gateway {
    forward! {
        find_customer<'a>(partner_code: &'a str, email: &'a str) -> Result<Option<String>, StripeFailure> => Gateway::find_customer;
        create_customer<'a>(new: &'a NewCustomer<'a>, key: &'a str) -> Result<CreatedCustomer, StripeFailure> => Gateway::create_customer;
        attach_payment_method<'a>(payment_method: &'a str, customer: &'a str, key: &'a str) -> Result<Attached, StripeFailure> => Gateway::attach_payment_method;
        price_product<'a>(price: &'a str) -> Result<String, StripeFailure> => Gateway::price_product;
        find_price<'a>(lookup_key: &'a str) -> Result<Option<(String, String)>, StripeFailure> => Gateway::find_price;
        create_price<'a>(spec: &'a PriceSpec<'a>, key: &'a str) -> Result<(String, String), StripeFailure> => Gateway::create_price;
        find_subscription<'a>(customer: &'a str, pay_id: &'a str) -> Result<Option<Subscribed>, StripeFailure> => Gateway::find_subscription;
        create_subscription<'a>(new: &'a NewSubscription<'a>, key: &'a str) -> Result<Subscribed, WriteFailure> => Gateway::create_subscription;
        cancel_at_period_end<'a>(subscription: &'a str, key: &'a str) -> Result<SubscriptionState, StripeFailure> => Gateway::cancel_at_period_end;
        cancel_now<'a>(subscription: &'a str, key: &'a str) -> Result<SubscriptionState, StripeFailure> => Gateway::cancel_now;
        subscription_state<'a>(subscription: &'a str) -> Result<SubscriptionState, StripeFailure> => Gateway::subscription_state;
        subscription_metadata<'a>(subscription: &'a str) -> Result<HashMap<String, String>, StripeFailure> => Gateway::subscription_metadata;
        search_subscription<'a>(partner_code: &'a str, pay_id: &'a str) -> Result<Option<FoundSubscription>, StripeFailure> => Gateway::search_subscription;
        invoice_payment_error<'a>(invoice: &'a str, payment_intent: Option<&'a str>) -> Result<Option<PaymentError>, StripeFailure> => Gateway::invoice_payment_error;
        customer_mark<'a>(partner_code: &'a str, email: &'a str, name: &'a str) -> Result<Option<String>, StripeFailure> => Gateway::customer_mark;
        mark_customer<'a>(mark: &'a CustomerMark<'a>, key: &'a str) -> Result<(), StripeFailure> => Gateway::mark_customer;
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
