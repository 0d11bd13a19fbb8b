//! The worker, end to end: real RabbitMQ and Redis, the simulator as Stripe, the intake over
//! HTTP, events read from the results exchange.

mod authorization;
mod cancel;
mod cluster;
mod dead_letters;
mod drain;
mod end_to_end;
mod faults;
mod lanes;
mod lifetime;
mod outages;
mod processes;
mod reconcile;
mod renewals;
