//! RabbitMQ: the topology, a connection that heals itself, and publishing with confirms.
//! Knows the domain, never HTTP or Stripe.

mod connection;
mod jobs;
mod publish;
pub mod push;
pub mod topology;

pub use connection::Broker;
pub use jobs::{
    ATTEMPT_HEADER, DEATH_REASON_HEADER, Destination, JobHeaders, JobMessage, PARKED_HEADER,
};
pub use publish::{BrokerError, Message};
pub use topology::{JOB_DELIVERY_LIMIT, JOB_ROUTING_KEY, Topology};
