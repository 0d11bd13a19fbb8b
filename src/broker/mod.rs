//! RabbitMQ: the topology, a connection that heals itself, and publishing with confirms.
//! Knows the domain, never HTTP or Stripe.

mod connection;
mod publish;
pub mod topology;

pub use connection::Broker;
pub use publish::{BrokerError, Message};
pub use topology::{JOB_ROUTING_KEY, Topology};
