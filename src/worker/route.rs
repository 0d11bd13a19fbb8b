//! What happens to a message after its job: results stored and announced, retries scheduled,
//! dead letters written. Every publish is confirmed before the job's message is acked, so a
//! crash at any point leaves the job on a queue, never nowhere.

use lapin::types::AMQPValue;

use crate::broker::{Broker, BrokerError, Message};
use crate::domain::event::CLOUDEVENTS_CONTENT_TYPE;
use crate::domain::job::JOB_MESSAGE_TYPE;
use crate::domain::{FinalResult, Job, ResultEvent};
use crate::store::Store;

/// The header that counts a job's passes through the delayed-retry queues.
pub const ATTEMPT_HEADER: &str = "x-attempt";
/// The header that says why a message is a dead letter.
pub const DEATH_REASON_HEADER: &str = "x-autorenew-reason";

#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// The worker cannot work on the job now; it goes back to the queue.
    #[error("handed back: {0}")]
    HandBack(String),
}

/// Stores the result (the first stored wins, so racing workers agree) and publishes its event.
pub async fn finish(
    broker: &Broker,
    store: &Store,
    job: &Job,
    result: &FinalResult,
    timeout: std::time::Duration,
) -> Result<FinalResult, RouteError> {
    let stored = store.save_result(&job.pay_id, result).await?;
    publish_event(broker, job, &stored, timeout).await?;
    Ok(stored)
}

pub async fn publish_event(
    broker: &Broker,
    job: &Job,
    result: &FinalResult,
    timeout: std::time::Duration,
) -> Result<(), BrokerError> {
    let source = format!("urn:autorenew:{}", broker.topology().prefix());
    let event = ResultEvent::new(job, result, &source);
    let exchange = broker.topology().results();
    let routing_key = event.routing_key();
    let body = event.encode();
    broker
        .publish(
            Message {
                exchange: &exchange,
                routing_key: &routing_key,
                body: &body,
                content_type: CLOUDEVENTS_CONTENT_TYPE,
                message_id: &event.id,
                kind: &event.kind,
                headers: Vec::new(),
                // An event with no subscriber bound yet is not an error.
                mandatory: false,
            },
            timeout,
        )
        .await
}

/// Puts the job into a delayed queue (straight into the queue, through the default exchange).
pub async fn delay(
    broker: &Broker,
    queue: &str,
    body: &[u8],
    message_id: &str,
    attempt: u32,
    timeout: std::time::Duration,
) -> Result<(), BrokerError> {
    broker
        .publish(
            Message {
                exchange: "",
                routing_key: queue,
                body,
                content_type: "application/json",
                message_id,
                kind: JOB_MESSAGE_TYPE,
                headers: vec![(ATTEMPT_HEADER, AMQPValue::LongUInt(attempt))],
                mandatory: true,
            },
            timeout,
        )
        .await
}

/// Copies a message to the dead letters, with the reason.
pub async fn dead_letter(
    broker: &Broker,
    body: &[u8],
    message_id: &str,
    reason: &str,
    attempt: u32,
    timeout: std::time::Duration,
) -> Result<(), BrokerError> {
    let exchange = broker.topology().dead();
    let reason = AMQPValue::LongString(reason.as_bytes().to_vec().into());
    broker
        .publish(
            Message {
                exchange: &exchange,
                routing_key: "",
                body,
                content_type: "application/json",
                message_id,
                kind: JOB_MESSAGE_TYPE,
                headers: vec![
                    (DEATH_REASON_HEADER, reason),
                    (ATTEMPT_HEADER, AMQPValue::LongUInt(attempt)),
                ],
                mandatory: true,
            },
            timeout,
        )
        .await
}

/// The attempt number carried by a message (1 when absent).
pub fn attempt_of(properties: &lapin::BasicProperties) -> u32 {
    properties
        .headers()
        .as_ref()
        .and_then(|headers| headers.inner().get(ATTEMPT_HEADER))
        .and_then(|value| match value {
            AMQPValue::LongUInt(n) => Some(*n),
            AMQPValue::LongInt(n) => u32::try_from(*n).ok(),
            AMQPValue::LongLongInt(n) => u32::try_from(*n).ok(),
            AMQPValue::ShortUInt(n) => Some(u32::from(*n)),
            AMQPValue::ShortShortUInt(n) => Some(u32::from(*n)),
            _ => None,
        })
        .unwrap_or(1)
        .max(1)
}
