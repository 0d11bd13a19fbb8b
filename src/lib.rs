//! autorenew: signed partner requests in, Stripe subscriptions and result events out.
//!
//! # Layout
//! - [`domain`]: the sign, the requests and their validation, amounts, the job and its result,
//!   Stripe's webhook signature, cancels, an auto-renewal's state. Pure: no I/O.
//! - [`config`]: `config.toml` + `AUTORENEW__…` environment, checked at start-up.
//! - [`broker`]: RabbitMQ: the topology, a self-healing connection, the confirming publisher.
//! - [`store`]: Redis: intake records (idempotency), results, locks, rate budgets, the Stripe
//!   events and cancels taken, each auto-renewal's state.
//! - [`intake`]: the HTTP front door (axum): checks a request (or a Stripe webhook) and puts it
//!   on the broker; answers `/stripeSubAuthorization` from Stripe, through the gateway.
//! - [`stripe`]: the Stripe gateway over async-stripe: the calls of a job and of an
//!   authorization, errors classified.
//! - [`sim`]: `autorenew stripe-sim`, a stateful Stripe stand-in; it shares no code with the
//!   Stripe gateway.
//! - [`loadgen`]: `autorenew loadgen`, signed load and its report; talks to the service only as
//!   an outside client would (the sign, HTTP, the results exchange).
//! - [`worker`]: consumes jobs, runs the Stripe steps under a lock, stores results, publishes
//!   events, routes retries and dead letters.
//! - [`push`]: the partner push: `autorenew notifier` (signed deliveries of the result events
//!   to each partner's URL, a lane per partner), `autorenew push`, `autorenew receiver`.
//! - [`rebuild`]: a payId's records put back from Stripe when Redis has lost them.
//! - [`run`]: `autorenew run`, intake + worker (+ simulator) in one process.
//! - [`dlq`]: `autorenew dlq list|replay|drop`.
//! - [`events`]: `autorenew events`, the result events printed as they are published.
//! - [`probe`]: `autorenew probe URL`, the containers' healthcheck.
//! - [`telemetry`]: logging and Prometheus metrics.
//! - [`cli`]: the command line; `main.rs` only parses it and calls in here.

pub mod accept;
pub mod broker;
pub mod cli;
pub mod config;
pub mod dlq;
pub mod domain;
pub mod events;
pub mod intake;
pub mod loadgen;
pub mod probe;
pub mod push;
pub mod rebuild;
pub mod reconcile;
pub mod run;
pub mod sign_tool;
pub mod sim;
pub mod store;
pub mod stripe;
pub mod telemetry;
pub mod worker;
