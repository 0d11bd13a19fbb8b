//! The Stripe gateway: the calls a job (and an authorization, docs/partners.md#before-the-request-stripesubauthorization) makes, over async-stripe, each classified into a
//! [`StripeFailure`] the retry policy can read. Knows nothing of RabbitMQ or Redis: the shared
//! rate budget comes in as a [`Budget`].

pub mod calls;
mod client;
mod error;
mod gateway;

pub use client::{CallError, ClientOptions, StripeHttp};
pub use error::{StripeFailure, WriteFailure};
pub use gateway::{
    Attached, CreatedCustomer, FoundSubscription, Gateway, NewCustomer, NewSubscription,
    PaymentError, PriceSpec, SetupIntent, Subscribed, SubscriptionState, charged_intent,
};

use std::future::Future;
use std::pin::Pin;

/// The request budget every call takes one unit of before it goes out.
pub trait Budget: Send + Sync {
    /// Waits for one request's worth of budget; an error means the budget could not be asked.
    fn take(&self) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + '_>>;
}

/// No budget: every call goes at once (tests, tools).
#[derive(Debug, Default)]
pub struct Unlimited;

impl Budget for Unlimited {
    fn take(&self) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + '_>> {
        Box::pin(async { Ok(()) })
    }
}
