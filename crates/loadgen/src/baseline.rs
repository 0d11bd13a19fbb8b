//! The raw baseline: the same bodies published straight to a scratch quorum queue over one
//! confirm channel, with no HTTP and no checks. Its rate is the ceiling the intake's rate is a
//! fraction of: what the broker alone can durably take from one connection.

use std::time::Duration;

use anyhow::Context;
use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};
use secrecy::{ExposeSecret, SecretString};

use super::drive;
use super::payload::Prepared;
use super::report::Answer;

/// A confirming publisher on one scratch queue.
pub struct Baseline {
    connection: Connection,
    channel: Channel,
    queue: String,
    timeout: Duration,
}

impl Baseline {
    /// Connects and declares the scratch queue `queue` (a quorum queue, like the jobs queue,
    /// so the figure includes the replication and fsync a job pays for).
    pub async fn open(url: &SecretString, queue: &str, timeout: Duration) -> anyhow::Result<Self> {
        let connection = connect(url, "autorenew-loadgen-baseline")
            .await
            .context("connecting to RabbitMQ for the baseline")?;
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .context("turning on publisher confirms")?;
        let mut arguments = FieldTable::default();
        arguments.insert(
            "x-queue-type".into(),
            AMQPValue::LongString(LongString::from(b"quorum".to_vec())),
        );
        // Quorum queues are always durable and cannot be exclusive; `close` deletes it.
        channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    durable: true,
                    ..QueueDeclareOptions::default()
                },
                arguments,
            )
            .await
            .with_context(|| format!("declaring the scratch queue `{queue}`"))?;
        Ok(Baseline {
            connection,
            channel,
            queue: queue.to_owned(),
            timeout,
        })
    }

    /// Deletes the scratch queue and its messages, and closes the connection.
    pub async fn close(&self) -> anyhow::Result<()> {
        let deleted = self
            .channel
            .queue_delete(self.queue.as_str().into(), QueueDeleteOptions::default())
            .await
            .with_context(|| format!("deleting the scratch queue `{}`", self.queue));
        let _ = self.connection.close(200, "baseline done".into()).await;
        deleted.map(|_| ())
    }
}

impl drive::Send for Baseline {
    async fn send(&self, request: &Prepared) -> Answer {
        // The properties a job carries: persistent, JSON, its payId as message id.
        let properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into())
            .with_message_id(request.pay_id.as_str().into());
        let options = BasicPublishOptions {
            mandatory: true,
            ..BasicPublishOptions::default()
        };
        let confirmed = async {
            self.channel
                .basic_publish(
                    "".into(),
                    self.queue.as_str().into(),
                    options,
                    &request.body,
                    properties,
                )
                .await?
                .await
        };
        match tokio::time::timeout(self.timeout, confirmed).await {
            Ok(Ok(Confirmation::Ack(None))) => Answer::Broker("ack"),
            Ok(Ok(Confirmation::Ack(Some(_)))) => Answer::Broker("returned"),
            Ok(Ok(Confirmation::Nack(_) | Confirmation::NotRequested)) => Answer::Broker("nack"),
            Ok(Err(_)) => Answer::Error("amqp"),
            Err(_) => Answer::Error("timeout"),
        }
    }
}

/// The first node of `amqp.url`, which may name a cluster's nodes, comma-separated.
pub fn first_node(url: &str) -> &str {
    url.split(',').map(str::trim).next().unwrap_or(url)
}

/// How long loadgen waits for RabbitMQ's handshake: a node can take the TCP connection and never
/// answer, and lapin would wait for it forever.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Connects to the first node of `amqp.url`, or fails within [`CONNECT_TIMEOUT`].
pub async fn connect(url: &SecretString, name: &str) -> anyhow::Result<Connection> {
    let properties = ConnectionProperties::default()
        .with_connection_name(format!("{name}-{}", std::process::id()).into());
    tokio::time::timeout(
        CONNECT_TIMEOUT,
        Connection::connect(first_node(url.expose_secret()), properties),
    )
    .await
    .map_err(|_| anyhow::anyhow!("RabbitMQ did not answer within {CONNECT_TIMEOUT:?}"))?
    .map_err(anyhow::Error::from)
}
