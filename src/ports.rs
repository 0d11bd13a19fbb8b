//! The ports of the job path: what a job needs of the queue, the store, Stripe and the clock,
//! one small trait each, named for what the worker does with it. The real adapters
//! (`worker::adapters`) sit on lapin, Redis and the Stripe gateway; the in-memory ones
//! (`worker::memory`, the `testing` feature) keep the same rules and drive the deterministic
//! simulation. Below the worker, so that `rebuild`, which the intake uses too, runs on them.
//!
//! Trait objects with boxed futures, not generics: the job path is written once, reads like
//! plain async code, and a boxed call costs nothing next to a network round trip.

use std::time::Duration;

use futures_util::future::BoxFuture;

use std::collections::HashMap;

use crate::broker::BrokerError;
use crate::domain::event::LifecycleEvent;
pub use crate::domain::job::CreateSent;
use crate::domain::renewal::{Applied, RenewalChange, RenewalUpdate};
use crate::domain::{FinalResult, PayKey, ResultEvent};
pub use crate::store::JobStart;
use crate::store::StoreError;
use crate::stripe::{
    Attached, CreatedCustomer, CustomerMark, FoundSubscription, NewCustomer, NewSubscription,
    PaymentError, PriceSpec, StripeFailure, Subscribed, SubscriptionState, WriteFailure,
};

/// Implements a port's methods by calling another type's own, one line a method, so the
/// signatures are read once, in the port: `=> Type::method` calls the real type's inherent
/// method (an async fn) and boxes its future; `via field;` forwards every method to the port
/// of the same name on `self.field` (a wrapper in a test).
macro_rules! forward {
    ($($name:ident <$a:lifetime> ($($arg:ident : $ty:ty),*) -> $ret:ty => $target:path;)*) => {
        $(
            fn $name<$a>(&$a self, $($arg: $ty),*) -> BoxFuture<$a, $ret> {
                futures_util::FutureExt::boxed($target(self, $($arg),*))
            }
        )*
    };
    (via $field:ident; $($name:ident <$a:lifetime> ($($arg:ident : $ty:ty),*) -> $ret:ty;)*) => {
        $(
            fn $name<$a>(&$a self, $($arg: $ty),*) -> BoxFuture<$a, $ret> {
                self.$field.$name($($arg),*)
            }
        )*
    };
}
pub(crate) use forward;

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

    /// The customer that `/stripeSubAuthorization` (docs/partners.md#before-the-request-stripesubauthorization) made for this partner's payId,
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

    /// The payId's final result, if its creation has ended (a cancel waits for it).
    fn result<'a>(
        &'a self,
        pay_key: &'a PayKey,
    ) -> BoxFuture<'a, Result<Option<FinalResult>, StoreError>>;

    /// Whether the intake holds a record of the payId: its creation was accepted and has not
    /// ended yet, or its records were lost (then Stripe is asked).
    fn has_record<'a>(&'a self, pay_key: &'a PayKey) -> BoxFuture<'a, Result<bool, StoreError>>;

    /// Takes the payId's lock whatever is stored (a cancel works on a finished payId); false
    /// when another worker holds it.
    fn lock<'a>(
        &'a self,
        pay_key: &'a PayKey,
        token: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>>;

    /// Applies a change to the payId's renewal state unless that part is newer already: the
    /// stored state never goes back, whatever order the changes come in.
    fn apply_renewal<'a>(
        &'a self,
        pay_key: &'a PayKey,
        update: &'a RenewalUpdate,
    ) -> BoxFuture<'a, Result<Applied, StoreError>>;

    /// Puts back a result rebuilt from Stripe where none is, and the subscription's state as of
    /// `version`; returns the result that stands (an earlier one wins).
    fn restore<'a>(
        &'a self,
        pay_key: &'a PayKey,
        result: &'a FinalResult,
        state: RenewalChange,
        version: u64,
    ) -> BoxFuture<'a, Result<FinalResult, StoreError>>;
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
    /// The partner whose lane it travels in, kept on every copy; none for a Stripe event and a
    /// job published before the lanes.
    pub partner: Option<String>,
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

    /// Publishes a creation's result event.
    fn announce<'a>(&'a self, event: &'a ResultEvent) -> BoxFuture<'a, Result<(), BrokerError>>;

    /// Publishes a change of a subscription's life (a cancel, a renewal, …).
    fn announce_change<'a>(
        &'a self,
        event: &'a LifecycleEvent,
    ) -> BoxFuture<'a, Result<(), BrokerError>>;

    /// The `source` of the events this queue announces.
    fn event_source(&self) -> String;
}

/// What the broker should do with the delivered message once the worker is done with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Everything the message needed is stored or on another queue: remove it.
    Ack,
    /// Give it back to be redelivered (the copy that holds the payId decides).
    Requeue,
    /// Give it back, and stop taking messages for a while: Redis or RabbitMQ is away, or the
    /// worker is stopping, so a redelivery to this worker would only come back again.
    HandBack,
}

/// How one message ended: what the broker does with it, and the metric label it is counted
/// under. Nothing branches on the label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    pub disposition: Disposition,
    pub label: &'static str,
}

impl Outcome {
    pub fn ack(label: &'static str) -> Self {
        Outcome {
            disposition: Disposition::Ack,
            label,
        }
    }

    pub fn requeue(label: &'static str) -> Self {
        Outcome {
            disposition: Disposition::Requeue,
            label,
        }
    }

    /// Redis or RabbitMQ went away mid-message, or the worker is stopping.
    pub fn hand_back() -> Self {
        Outcome {
            disposition: Disposition::HandBack,
            label: "handed_back",
        }
    }
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

    /// A failure says whether Stripe replayed it from the key's record (`Idempotent-Replayed`):
    /// only such a definitive answer lets the job path give the key up for a new one.
    fn create_subscription<'a>(
        &'a self,
        new: &'a NewSubscription<'a>,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Subscribed, WriteFailure>>;

    /// No more renewals: the paid period runs out, then Stripe cancels the subscription.
    fn cancel_at_period_end<'a>(
        &'a self,
        subscription: &'a str,
        key: &'a str,
    ) -> BoxFuture<'a, Result<SubscriptionState, StripeFailure>>;

    /// Cancels the subscription now.
    fn cancel_now<'a>(
        &'a self,
        subscription: &'a str,
        key: &'a str,
    ) -> BoxFuture<'a, Result<SubscriptionState, StripeFailure>>;

    /// The subscription as it stands.
    fn subscription_state<'a>(
        &'a self,
        subscription: &'a str,
    ) -> BoxFuture<'a, Result<SubscriptionState, StripeFailure>>;

    /// A subscription's metadata (`payId`, `partnerCode`), for an event that does not carry it.
    fn subscription_metadata<'a>(
        &'a self,
        subscription: &'a str,
    ) -> BoxFuture<'a, Result<HashMap<String, String>, StripeFailure>>;

    /// The subscription that carries this partner's payId in its metadata, found without any
    /// local record (search: a subscription of the last minute may not show yet).
    fn search_subscription<'a>(
        &'a self,
        partner_code: &'a str,
        pay_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<FoundSubscription>, StripeFailure>>;

    /// The value of metadata `name` on a customer of (`partner_code`, `email`), if one has it:
    /// a final failure recorded at Stripe (`domain::failure_mark`). A consistent list.
    fn customer_mark<'a>(
        &'a self,
        partner_code: &'a str,
        email: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, StripeFailure>>;

    /// Sets the mark on the newest customer of (`partner_code`, `email`), or creates the
    /// customer (without a payment method) carrying it when there is none.
    fn mark_customer<'a>(
        &'a self,
        mark: &'a CustomerMark<'a>,
        key: &'a str,
    ) -> BoxFuture<'a, Result<(), StripeFailure>>;

    /// The error of an invoice's failed payment, if a payment carries one.
    fn invoice_payment_error<'a>(
        &'a self,
        invoice: &'a str,
        payment_intent: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Option<PaymentError>, StripeFailure>>;
}

/// The worker's clock: wall time for records and results. Sleeps use tokio's clock, which the
/// simulation pauses and advances.
pub trait Clock: Send + Sync {
    /// Milliseconds since the epoch.
    fn now_ms(&self) -> u64;
}
