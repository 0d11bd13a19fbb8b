//! RabbitMQ: the topology, a connection that heals itself, and publishing with confirms.
//! Knows the domain, never HTTP or Stripe.

mod connection;
mod error;
mod jobs;
mod publish;
pub mod push;
pub mod topology;

pub use connection::Broker;
pub use error::BrokerError;
pub use jobs::{
    ATTEMPT_HEADER, DEATH_REASON_HEADER, Destination, JobHeaders, JobMessage, PARKED_HEADER,
    stripe_event_headers,
};
pub use publish::Message;
pub use topology::{JOB_DELIVERY_LIMIT, JOB_ROUTING_KEY, Topology};
