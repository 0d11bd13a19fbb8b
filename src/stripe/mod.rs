//! The Stripe gateway: the calls a job (and an authorization, docs/partners.md#before-the-request-stripesubauthorization) makes, over async-stripe, each classified into a
//! [`StripeFailure`] the retry policy can read. Knows nothing of RabbitMQ or Redis: the shared
//! rate budget comes in as a [`Budget`].

pub mod calls;
mod client;
mod error;
mod gateway;
mod on_behalf;

pub use client::{CallError, ClientOptions, StripeHttp};
pub use error::{StripeFailure, WriteFailure};
pub use gateway::{
    Attached, CreatedCustomer, CustomerMark, FoundSubscription, Gateway, NewCustomer,
    NewSubscription, PaymentError, PriceSpec, SetupIntent, Subscribed, SubscriptionState,
    charged_intent,
};
pub use on_behalf::{current_partner, on_behalf_of};

use std::future::Future;
use std::pin::Pin;

/// The request budget every call takes one unit of before it goes out.
pub trait Budget: Send + Sync {
    /// Waits for one request's worth of budget for a call made on behalf of `partner` (empty:
    /// of no partner); an error means the budget could not be asked.
    fn take<'a>(
        &'a self,
        partner: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>>;
}

/// No budget: every call goes at once (tests, tools).
#[derive(Debug, Default)]
pub struct Unlimited;

impl Budget for Unlimited {
    fn take<'a>(
        &'a self,
        _partner: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>> {
        Box::pin(async { Ok(()) })
    }
}
