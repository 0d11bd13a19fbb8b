//! The intake (`src/intake`): what a partner and Stripe meet at the HTTP edge, on the shared
//! RabbitMQ and Redis.

mod enqueue;
mod outages;
mod partners;
mod renewal_records;
mod shutdown;
mod validation;
mod webhook;
