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
//! - [`worker`]: consumes jobs, runs the Stripe steps under a lock, stores results, publishes
//!   events, routes retries and dead letters.
//! - [`push`]: the partner push: `autorenew notifier` (signed deliveries of the result events
//!   to each partner's URL, a lane per partner), `autorenew push`, `autorenew receiver`.
//! - [`rebuild`]: a payId's records put back from Stripe when Redis has lost them.
//! - [`run`]: `autorenew run`, intake + worker (+ the simulator the binary gives it) in one
//!   process.
//! - [`dlq`]: `autorenew dlq list|replay|drop`.
//! - [`events`]: `autorenew events`, the result events printed as they are published.
//! - [`probe`]: `autorenew probe URL`, the containers' healthcheck.
//! - [`telemetry`]: logging and Prometheus metrics.
//! - [`accept`]: the accept loop of the servers with their own connections (a crate shared with
//!   the simulator), re-exported.
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
pub mod config;
pub mod dlq;
pub mod domain;
pub mod events;
pub mod intake;
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
