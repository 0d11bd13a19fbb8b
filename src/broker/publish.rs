//! Publishing with publisher confirms: a message counts as sent only once RabbitMQ has taken
//! responsibility for it.

use std::time::Duration;

use lapin::BasicProperties;
use lapin::options::BasicPublishOptions;
use lapin::types::{AMQPValue, FieldTable, ShortString};

use super::BrokerError;
use super::connection::Broker;

/// One message to publish: where to, what, and the properties that matter to consumers.
#[derive(Debug, Clone)]
pub struct Message<'a> {
    pub exchange: &'a str,
    pub routing_key: &'a str,
    pub body: &'a [u8],
    pub content_type: &'a str,
    /// `message_id`: consumers de-duplicate on it.
    pub message_id: &'a str,
    /// `type`: what the body is.
    pub kind: &'a str,
    pub headers: Vec<(&'a str, AMQPValue)>,
    /// Whether a message no queue takes is an error. True for jobs (a job nobody will consume
    /// is lost); false for events, which may have no subscriber yet.
    pub mandatory: bool,
}

impl Broker {
    /// Publishes a persistent message and waits for RabbitMQ's confirm.
    ///
    /// Many publishes may wait for their confirms at once on the one channel: a slow confirm
    /// never holds up the next request. `Ok` means the broker has the message stored (for a
    /// quorum queue: on a majority of nodes); a returned (unroutable) message is an error, since
    /// nothing would ever consume it.
    pub async fn publish(
        &self,
        message: Message<'_>,
        timeout: Duration,
    ) -> Result<(), BrokerError> {
        let mut headers = FieldTable::default();
        for (key, value) in message.headers {
            headers.insert(ShortString::from(key), value);
        }
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let properties = BasicProperties::default()
            .with_delivery_mode(2) // persistent
            .with_content_type(message.content_type.into())
            .with_message_id(message.message_id.into())
            .with_type(message.kind.into())
            .with_app_id("autorenew".into())
            .with_timestamp(u64::try_from(now).unwrap_or(0))
            .with_headers(headers);
        let route = Route {
            exchange: message.exchange,
            routing_key: message.routing_key,
            mandatory: message.mandatory,
        };
        self.publish_confirmed(route, message.body, properties, timeout)
            .await
    }

    /// Publishes `body` with `properties` as they are, and waits for RabbitMQ's confirm: the one
    /// place that reads a confirm, for every kind of message.
    pub(super) async fn publish_confirmed(
        &self,
        route: Route<'_>,
        body: &[u8],
        properties: BasicProperties,
        timeout: Duration,
    ) -> Result<(), BrokerError> {
        let channel = self.publisher()?;
        let options = BasicPublishOptions {
            mandatory: route.mandatory,
            ..BasicPublishOptions::default()
        };
        let broker = self.clone();
        let confirmed = async move {
            let confirm = channel
                .basic_publish(
                    route.exchange.into(),
                    route.routing_key.into(),
                    options,
                    body,
                    properties,
                )
                .await?
                .await?;
            match confirm {
                lapin::Confirmation::Ack(None) => Ok(()),
                lapin::Confirmation::Ack(Some(_)) => Err(BrokerError::Unroutable),
                lapin::Confirmation::Nack(_) => {
                    broker.report_nack();
                    Err(BrokerError::Nacked)
                }
                // The publisher channel is always in confirm mode; not getting a confirm means
                // we cannot know the message is safe.
                lapin::Confirmation::NotRequested => Err(BrokerError::Nacked),
            }
        };
        match tokio::time::timeout(timeout, confirmed).await {
            Ok(result) => result,
            Err(_) => Err(BrokerError::Timeout(timeout)),
        }
    }
}

/// Where a message goes.
#[derive(Debug, Clone, Copy)]
pub(super) struct Route<'a> {
    pub exchange: &'a str,
    pub routing_key: &'a str,
    /// Whether a message no queue takes is an error (see [`Message::mandatory`]).
    pub mandatory: bool,
}
