//! Taking a request: claim its record, publish its message with a confirm, then mark the
//! record enqueued, or release it. Every route that puts something on the broker (a creation,
//! a cancel, a Stripe event) takes it this one way; what differs between them is passed in.
//!
//! A failure that proves the message is not on the broker releases the claim, so the caller's
//! retry starts afresh; one that leaves it unknown (a timeout) keeps the claim until its lease
//! ends (a second copy is then possible, which the worker's idempotency makes harmless).

use std::time::{Duration, Instant};

use lapin::types::AMQPValue;

use super::error::IntakeError;
use super::state::AppState;
use crate::broker::{Destination, JobMessage};
use crate::domain::FinalResult;
use crate::domain::clock::now_millis;
use crate::store::{Claim, ClaimOutcome, IntakeRecord};

/// How often a request whose record another request is enqueueing looks again.
const PENDING_POLL: Duration = Duration::from_millis(20);

/// What one route puts on the broker.
#[derive(Debug)]
pub struct Enqueue<'a> {
    pub record: IntakeRecord,
    /// What was asked, when the record refuses other content (a creation).
    pub fingerprint: Option<&'a str>,
    /// The record's own fields, written by a fresh claim.
    pub fields: &'a [(&'static str, &'a [u8])],
    pub message: JobMessage<'a>,
    /// Headers of the message's own kind (a Stripe event's).
    pub headers: Vec<(&'static str, AMQPValue)>,
    /// The answer when another request holds the record past this one's deadline.
    pub busy: IntakeError,
}

/// How a request was taken.
#[derive(Debug)]
pub enum Taken {
    /// This request put the message on the broker.
    Now,
    /// A request before it did; `result` is a creation's final result, if there is one yet.
    Before { result: Option<Box<FinalResult>> },
}

/// Takes the request: `Taken`, or the error to answer (Redis or RabbitMQ unavailable, the
/// record held by another request past the publish timeout, or known with other content).
pub async fn enqueue(state: &AppState, request: Enqueue<'_>) -> Result<Taken, IntakeError> {
    // Unique even when a caller reuses its X-Request-Id: only its holder may release a claim.
    let token = uuid::Uuid::new_v4().to_string();
    let deadline = Instant::now() + state.limits.publish_timeout;
    loop {
        let claim = Claim {
            token: &token,
            now_ms: now_millis(),
            // A claim outlives any publish that is still in flight: the publish gives up after
            // `publish_timeout`, so only a dead holder leaves a claim this old.
            lease: state.limits.publish_timeout * 2,
            fingerprint: request.fingerprint,
            fields: request.fields,
        };
        match state.store.claim(&request.record, &claim).await? {
            ClaimOutcome::Claimed { stored } => {
                let message = JobMessage {
                    body: stored.as_deref().unwrap_or(request.message.body),
                    ..request.message
                };
                publish(state, &request.record, &claim, message, request.headers).await?;
                return Ok(Taken::Now);
            }
            ClaimOutcome::Enqueued { result } => return Ok(Taken::Before { result }),
            ClaimOutcome::Conflict => return Err(IntakeError::PayIdConflict),
            ClaimOutcome::Pending => {
                // Another request for this record is between Redis and the broker. Its
                // outcome decides ours: wait for it, within our own deadline.
                if Instant::now() + PENDING_POLL > deadline {
                    return Err(request.busy);
                }
                tokio::time::sleep(PENDING_POLL).await;
            }
        }
    }
}

/// Publishes the message; marks the record enqueued, or releases the claim when the message is
/// known not to be on the broker.
async fn publish(
    state: &AppState,
    record: &IntakeRecord,
    claim: &Claim<'_>,
    message: JobMessage<'_>,
    headers: Vec<(&'static str, AMQPValue)>,
) -> Result<(), IntakeError> {
    let published = state
        .broker
        .publish_job_with(
            message,
            headers,
            Destination::Jobs,
            state.limits.publish_timeout,
        )
        .await;
    match published {
        Ok(()) => {
            // The message is safe on the broker, so the answer need not wait for this write.
            state.marks.mark(record.clone());
            Ok(())
        }
        Err(error) => {
            if error.known_not_sent()
                && let Err(release) = state.store.release(record, claim).await
            {
                tracing::warn!(message_id = message.message_id, error = %release, "claim not released");
            }
            Err(error.into())
        }
    }
}
