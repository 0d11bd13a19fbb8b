//! Tests of the Stripe simulator (`autorenew stripe-sim`): real HTTP against it on port 0,
//! and the real async-stripe client the worker uses.

mod clock;
mod customer_create;
mod declines;
mod faults;
mod idempotency;
mod queries;
mod receiver;
mod setup_intents;
mod stripe_client;
mod webhooks;
mod worker_client;
