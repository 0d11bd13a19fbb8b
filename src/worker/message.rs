//! Every message the worker takes, decoded once into one [`Message`] and carried out on the same
//! ports, ending in one [`Outcome`]: a creation job (docs/partners.md#events-and-the-broker, [`super::creation`]), a
//! partner's cancel ([`super::cancel`]) or a Stripe event (
//! [`super::stripe_event`]). The AMQP `type` picks the decoder here and nowhere else.
//!
//! The consumer loop (RabbitMQ) and the deterministic simulation both drive [`handle`] and
//! [`after_panic`].

use stripe_shared::Event;

use super::creation::{self, JobContext};
use super::ports::{Incoming, Outcome};
use super::{cancel, stripe_event};
use crate::domain::Job;
use crate::domain::cancel::{CANCEL_MESSAGE_TYPE, CancelJob};
use crate::domain::webhook::STRIPE_EVENT_MESSAGE_TYPE;

/// One message, as the worker understands it.
#[derive(Debug)]
pub enum Message {
    /// Make the payId's subscription.
    Creation(Job),
    /// Stop the payId's renewals, now or at the period's end.
    Cancel(CancelJob),
    /// Something happened to a subscription at Stripe.
    StripeEvent(Box<Event>),
}

impl Message {
    /// Decodes a delivery by its AMQP `type`; the error says why it is poison.
    pub fn decode(incoming: &Incoming) -> Result<Message, String> {
        match incoming.kind.as_str() {
            CANCEL_MESSAGE_TYPE => CancelJob::decode(&incoming.body)
                .map(Message::Cancel)
                .map_err(|error| format!("unparseable cancel: {error}")),
            STRIPE_EVENT_MESSAGE_TYPE => std::str::from_utf8(&incoming.body)
                .ok()
                .and_then(|text| miniserde::json::from_str::<Event>(text).ok())
                .map(|event| Message::StripeEvent(Box::new(event)))
                .ok_or_else(|| "not a Stripe event".to_owned()),
            // Creation jobs published before messages had a type carry none.
            _ => Job::decode(&incoming.body)
                .map(Message::Creation)
                .map_err(|error| format!("unparseable: {error}")),
        }
    }

    /// The span every log line of the message carries: its payId and the request that
    /// brought it, so a message can be followed from the intake's line to its end.
    pub fn span(decoded: &Result<Message, String>, incoming: &Incoming) -> tracing::Span {
        let attempt = incoming.attempt;
        let ids = match decoded {
            Ok(Message::Creation(job)) => Some((job.pay_id.to_string(), job.request_id.as_str())),
            Ok(Message::Cancel(cancel)) => {
                Some((cancel.pay_id.to_string(), cancel.request_id.as_str()))
            }
            Ok(Message::StripeEvent(_)) | Err(_) => None,
        };
        match ids {
            Some((pay_id, request_id)) => {
                tracing::info_span!("job", %pay_id, %request_id, attempt)
            }
            None => tracing::info_span!("job", message_id = %incoming.message_id, attempt),
        }
    }
}

/// Carries out one decoded message; `token` is this attempt's lock token, unique across
/// workers. A message that does not decode goes to the dead letters.
pub async fn handle(
    ctx: &JobContext,
    decoded: &Result<Message, String>,
    incoming: &Incoming,
    token: &str,
) -> Outcome {
    let work = async {
        match decoded {
            Ok(Message::Creation(job)) => creation::handle(ctx, job, incoming, token).await,
            Ok(Message::Cancel(cancel)) => {
                Box::pin(cancel::handle(ctx, cancel, incoming, token)).await
            }
            Ok(Message::StripeEvent(event)) => {
                Box::pin(stripe_event::handle(ctx, event, incoming)).await
            }
            Err(reason) => dead_letter(ctx, incoming, reason, "poison").await,
        }
    };
    crate::stripe::calls::counted(work).await
}

/// What a message whose task panicked ends as. A creation: its lock released, and `failed`
/// with its own code unless a create was sent (then parked, and a lookup settles it). A cancel
/// or an event: the dead letters (both are safe to replay), never a requeue that would panic
/// again; a cancel's lock expires by itself.
pub async fn after_panic(
    ctx: &JobContext,
    decoded: &Result<Message, String>,
    incoming: &Incoming,
    token: &str,
) -> Outcome {
    match decoded {
        Ok(Message::Creation(job)) => creation::after_panic(ctx, job, incoming, token).await,
        Ok(_) | Err(_) => dead_letter(ctx, incoming, "the message panicked", "poison").await,
    }
}

/// Copies the message to the dead letters (for `autorenew dlq`) and acks it.
pub(super) async fn dead_letter(
    ctx: &JobContext,
    incoming: &Incoming,
    reason: &str,
    label: &'static str,
) -> Outcome {
    // Said once, here, so an operator learns why before listing the dead letters.
    tracing::warn!(
        message_id = %incoming.message_id,
        kind = %incoming.kind,
        reason,
        "message dead-lettered"
    );
    match ctx.ports.queue.dead_letter(incoming, reason).await {
        Ok(()) => Outcome::ack(label),
        Err(_) => Outcome::hand_back(),
    }
}
