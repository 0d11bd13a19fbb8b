//! autorenew: signed partner requests in, Stripe subscriptions and result events out.
//!
//! # Layout
//! The ground floor, which every other part may use and which uses none of them:
//! - [`domain`]: the sign, the requests and their validation, amounts, the job and its result,
//!   Stripe's webhook signature, cancels, an auto-renewal's state. Pure: no I/O ([`domain::clock`]
//!   alone reads the wall clock).
//! - [`config`]: `config.toml` + `AUTORENEW__…` environment, checked at start-up.
//! - [`telemetry`]: logging, Prometheus metrics, and every metric's name
//!   ([`telemetry::names`]).
//! - [`accept`]: the accept loop of the servers that run their own hyper connections (a crate
//!   shared with the simulator, re-exported); the one message every server gives when it cannot
//!   bind.
//! - [`http_client`]: the outgoing HTTP client, built one way for the Stripe gateway and the push.
//!
//! The adapters, each knowing the domain and nothing of the others:
//! - [`broker`]: RabbitMQ: the topology, a self-healing connection, the confirming publisher,
//!   the job message built in one place.
//! - [`store`]: Redis: the intake's records (creations, cancels, Stripe events: one claim
//!   family), results, locks, rate budgets, each auto-renewal's state.
//! - [`stripe`]: the Stripe gateway over async-stripe: the calls of a job and of an
//!   authorization, errors classified.
//! - [`budget`]: Stripe's request rate for the whole deployment, kept in Redis, shared between
//!   the partners by weight: the gateway's budget, for workers and intake alike.
//! - [`ports`]: what a job, a cancel and a Stripe event need of the queue, the store, Stripe and
//!   the clock, one trait each; the adapters above implement them, the worker's in-memory twins
//!   (`testing`) too.
//!
//! The service:
//! - [`intake`]: the HTTP front door (axum): checks a request (or a Stripe webhook) and takes it
//!   onto the broker (`intake::enqueue`, the one way); answers `/stripeSubAuthorization` from
//!   Stripe, through the gateway.
//! - [`worker`]: consumes jobs, runs the Stripe steps under a lock, stores results, publishes
//!   events, routes retries and dead letters.
//! - [`push`]: the partner push: `autorenew notifier` (signed deliveries of the result events
//!   to each partner's URL, a lane per partner), `autorenew push`, `autorenew receiver`.
//! - [`rebuild`]: a payId's records put back from Stripe when Redis has lost them.
//!
//! The commands and tools:
//! - [`run`]: `autorenew run`, intake + worker (+ the simulator the binary gives it) in one
//!   process.
//! - [`reconcile`]: `autorenew reconcile`, the Stripe events the intake missed, fed through the
//!   webhook's path.
//! - [`dlq`]: `autorenew dlq list|replay|drop`.
//! - [`events`]: `autorenew events`, the result events printed as they are published.
//! - [`probe`]: `autorenew probe URL`, the containers' healthcheck.
//! - [`sign_tool`]: `autorenew sign`, the partner's side of the sign.
//!
//! # Arrows
//! An arrow points from a part to what it may use; none points up a floor or back (the service's
//! arrows are checked by `layout_tests`):
//! - the ground floor (`domain`, `config`, `telemetry`, `accept`, `http_client`) uses only itself
//!   (`telemetry` reads `config`, `config` reads `domain`);
//! - `broker` and `store` use the ground floor; `stripe` uses the ground floor and knows
//!   nothing of RabbitMQ or Redis;
//! - `budget` joins `store` to `stripe`'s budget; `ports` names the adapters' types; `rebuild` uses `ports`, `store` and `stripe`; `intake` and `worker` use the adapters and `rebuild`,
//!   and never each other; `push` uses `broker` and `store`, never Stripe;
//! - the commands and tools use whatever they drive; nothing of the service uses them. `run`
//!   composes intake + worker + the simulator the binary hands it, without either knowing of
//!   the other, and `reconcile` reads `run`'s simulator defaults to reach it.
//!
//! # Not here
//! The Stripe simulator (`crates/stripe-sim`, `autorenew stripe-sim`) and the load generator
//! (`crates/loadgen`, `autorenew loadgen`) are crates of their own, and the command line
//! (`src/cli.rs`) belongs to the binary (`src/main.rs`), which wires them to this library
//! (`src/wiring.rs`). See docs/design.md, "Crates".

// The simulator and loadgen are dependencies of this package for the binary's sake, and Cargo
// gives a package's dependencies to every target. These two lines take their names in this
// library, so that `stripe_sim::…` or `loadgen::…` (with or without a leading `::`) anywhere in
// it is a compile error ("cannot find … in `stripe_sim`"): the service cannot reach the
// simulator's code, nor the load generator's.
extern crate self as loadgen;
extern crate self as stripe_sim;

pub use accept;

pub mod broker;
pub mod budget;
pub mod config;
pub mod dlq;
pub mod domain;
pub mod events;
pub mod http_client;
pub mod intake;
pub mod ports;
pub mod probe;
pub mod push;
pub mod rebuild;
pub mod reconcile;
pub mod run;
pub mod sign_tool;
pub mod store;
pub mod stripe;
pub mod telemetry;
pub mod worker;

#[cfg(test)]
mod layout_tests;
