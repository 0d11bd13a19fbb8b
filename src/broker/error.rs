//! Why a publish failed, for every publisher of the broker (the intake, the worker, the push).

use std::time::Duration;

/// Why a message was not confirmed.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("RabbitMQ is not connected")]
    Unavailable,
    #[error("RabbitMQ did not confirm within {0:?}")]
    Timeout(Duration),
    #[error("RabbitMQ refused the message (nack)")]
    Nacked,
    #[error("RabbitMQ returned the message: no queue is bound for it")]
    Unroutable,
    #[error("RabbitMQ: {0}")]
    Amqp(#[from] lapin::Error),
}

impl BrokerError {
    /// Whether the failure proves the message is not on the broker (so a claim on it may be
    /// released); a timeout or a dropped connection leaves that unknown.
    pub fn known_not_sent(&self) -> bool {
        matches!(
            self,
            BrokerError::Unavailable | BrokerError::Nacked | BrokerError::Unroutable
        )
    }
}
