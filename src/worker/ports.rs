//! The ports of the job path: what a job needs of the queue, the store, Stripe and the clock,
//! one small trait each, named for what the worker does with it. The real adapters
//! ([`super::adapters`]) sit on lapin, Redis and the Stripe gateway; the in-memory ones
//! ([`super::memory`]) keep the same rules and drive the deterministic simulation.
//!
//! Trait objects with boxed futures, not generics: the job path is written once, reads like
//! plain async code, and a boxed call costs nothing next to a network round trip.

use std::time::Duration;

use futures_util::future::BoxFuture;

use crate::broker::BrokerError;
pub use crate::domain::job::CreateSent;
use crate::domain::{FinalResult, PayKey, ResultEvent};
pub use crate::store::JobStart;
use crate::store::StoreError;
use crate::stripe::{
    Attached, CreatedCustomer, NewCustomer, NewSubscription, PriceSpec, StripeFailure, Subscribed,
};

/// The store's part of the job path (Redis in production).
pub trait JobStore: Send + Sync {
    /// The settled result, or the lock for `ttl` with what is remembered of creates.
    fn begin<'a>(
        &'a self,
        pay_key: &'a PayKey,
        token: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<JobStart, StoreError>>;

    /// Extends a lock this token still holds; false when it was lost.
    fn extend_lock<'a>(
        &'a self,
        pay_key: &'a PayKey,
        token: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>>;

    /// Releases the lock if this token still holds it.
    fn unlock<'a>(
        &'a self,
        pay_key: &'a PayKey,
        token: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Records that a create under `sent.generation` is about to be sent, only while `token`
    /// holds the lock (false: lost, nothing recorded). Must succeed before the create goes out.
    fn record_create<'a>(
        &'a self,
        pay_key: &'a PayKey,
        token: &'a str,
        sent: &'a CreateSent,
    ) -> BoxFuture<'a, Result<bool, StoreError>>;

    /// What is remembered of creates, outside any lock (for a job that cannot run its steps).
    fn created<'a>(
        &'a self,
        pay_key: &'a PayKey,
    ) -> BoxFuture<'a, Result<Option<CreateSent>, StoreError>>;

    /// The Stripe customer of (`partner`, `email`), if a job has found or made it before.
    fn customer_of<'a>(
        &'a self,
        partner: &'a str,
        email: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, StoreError>>;

    /// Remembers the Stripe customer of (`partner`, `email`), as long as a payId's record.
    fn remember_customer<'a>(
        &'a self,
        partner: &'a str,
        email: &'a str,
        customer: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>>;

    /// The customer that `/stripeSubAuthorization` (CONTRACT §12) made for this partner's payId,
    /// if it was made for this `email`. None by default: a store that keeps no authorizations
    /// sends every job through the customer steps.
    fn authorized_customer<'a>(
        &'a self,
        pay_key: &'a PayKey,
        email: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, StoreError>> {
        let _ = (pay_key, email);
        Box::pin(async { Ok(None) })
    }

    /// A short lock on creating the price of `lookup_key`, so that of all the workers starting
    /// a new plan at once one creates it and the others wait and find it. False when held.
    fn lock_price<'a>(
        &'a self,
        lookup_key: &'a str,
        token: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>>;

    fn unlock_price<'a>(
        &'a self,
        lookup_key: &'a str,
        token: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Stores the final result once and releases the lock `token` holds, in one atomic step:
    /// no other copy of the job can take the lock and find no result. A result stored earlier
    /// wins and is returned, so racing copies agree on one ending. A failure is stored only
    /// while `token` holds the lock (a copy holding it may be creating the subscription):
    /// None when it was not.
    fn finish<'a>(
        &'a self,
        pay_key: &'a PayKey,
        token: &'a str,
        result: &'a FinalResult,
    ) -> BoxFuture<'a, Result<Option<FinalResult>, StoreError>>;
}

/// Where a job waits before it comes back to the jobs queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// The delayed-retry queue of this stage (0 = the shortest delay); the attempt moves on.
    Retry(usize),
    /// Another worker holds the payId: the lock-retry queue, no attempt spent.
    Lock,
    /// Parked for reconciliation: it comes back only to be looked up, never to create.
    Reconcile,
}

/// A job message as it arrives, whatever the queue.
#[derive(Debug, Clone)]
pub struct Incoming {
    /// What the message is (its AMQP `type`): a creation job, a cancel, a Stripe event. Kept
    /// when the message is delayed, so it comes back as what it was.
    pub kind: String,
    pub body: Vec<u8>,
    pub message_id: String,
    /// 1 for the first delivery, +1 for each pass through a delayed-retry queue.
    pub attempt: u32,
    /// The broker delivered it before (a worker died or the channel broke holding it).
    pub redelivered: bool,
    /// It came back from the reconciliation queue: look the subscription up, create nothing.
    pub parked: bool,
    /// How often the broker has handed this message out and had it returned
    /// (`x-delivery-count` of quorum queues; 0 on the first delivery).
    pub delivery_count: u32,
}

/// The queue's part of the job path (RabbitMQ in production). Every call returns once the
/// broker has confirmed the message.
pub trait JobQueue: Send + Sync {
    /// How many delayed-retry stages there are.
    fn retry_stages(&self) -> usize;

    /// Puts a copy of the job on the queue that `wait` names, carrying `attempt`.
    fn delay<'a>(
        &'a self,
        wait: Wait,
        job: &'a Incoming,
        attempt: u32,
    ) -> BoxFuture<'a, Result<(), BrokerError>>;

    /// Copies the job to the dead letters, with the reason (for `autorenew dlq`).
    fn dead_letter<'a>(
        &'a self,
        job: &'a Incoming,
        reason: &'a str,
    ) -> BoxFuture<'a, Result<(), BrokerError>>;

    /// Publishes a result event.
    fn announce<'a>(&'a self, event: &'a ResultEvent) -> BoxFuture<'a, Result<(), BrokerError>>;

    /// The `source` of the events this queue announces.
    fn event_source(&self) -> String;
}

/// What the broker should do with the delivered message once the job path is done with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settle {
    /// Everything the job needed is stored or on another queue: remove it.
    Ack,
    /// The worker could not work on it now: give it back (it is redelivered).
    Requeue,
}

/// The calls a job makes to Stripe (the gateway in production). Every write carries the fixed
/// idempotency key the caller chose.
pub trait StripeApi: Send + Sync {
    fn find_customer<'a>(
        &'a self,
        partner_code: &'a str,
        email: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, StripeFailure>>;

    /// Creates the customer with the payment method attached and made its default.
    fn create_customer<'a>(
        &'a self,
        new: &'a NewCustomer<'a>,
        key: &'a str,
    ) -> BoxFuture<'a, Result<CreatedCustomer, StripeFailure>>;

    fn attach_payment_method<'a>(
        &'a self,
        payment_method: &'a str,
        customer: &'a str,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Attached, StripeFailure>>;

    /// A configured price's product.
    fn price_product<'a>(&'a self, price: &'a str) -> BoxFuture<'a, Result<String, StripeFailure>>;

    /// The price with this lookup key: (price id, product id).
    fn find_price<'a>(
        &'a self,
        lookup_key: &'a str,
    ) -> BoxFuture<'a, Result<Option<(String, String)>, StripeFailure>>;

    fn create_price<'a>(
        &'a self,
        spec: &'a PriceSpec<'a>,
        key: &'a str,
    ) -> BoxFuture<'a, Result<(String, String), StripeFailure>>;

    /// The customer's subscription whose metadata carries this payId (a consistent list).
    fn find_subscription<'a>(
        &'a self,
        customer: &'a str,
        pay_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<Subscribed>, StripeFailure>>;

    fn create_subscription<'a>(
        &'a self,
        new: &'a NewSubscription<'a>,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Subscribed, StripeFailure>>;
}

/// The worker's clock: wall time for records and results. Sleeps use tokio's clock, which the
/// simulation pauses and advances.
pub trait Clock: Send + Sync {
    /// Milliseconds since the epoch.
    fn now_ms(&self) -> u64;
}
