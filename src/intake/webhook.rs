//! `POST /stripe/webhook` (CONTRACT §9.1): Stripe's signed event deliveries become messages on
//! the jobs exchange, each event once, and Stripe hears `2xx` only for what the broker confirmed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use lapin::types::AMQPValue;
use secrecy::SecretString;
use time::format_description::well_known::Rfc3339;

use super::error::IntakeError;
use super::response::ApiResponse;
use super::signed::read_body;
use super::state::AppState;
use crate::broker::{BrokerError, JOB_ROUTING_KEY, Message};
use crate::config::StripeSettings;
use crate::domain::FieldError;
use crate::domain::webhook::{
    EventSummary, SIGNATURE_HEADER, STRIPE_EVENT_MESSAGE_TYPE, verify_signature,
};
use crate::store::EventClaim;

/// Stripe's events carry whole objects (an invoice with its lines), far larger than a partner
/// request; Stripe documents no cap, and this leaves room for large invoices.
const MAX_EVENT_BYTES: usize = 512 * 1024;
/// How often a delivery of an event that another delivery is enqueueing looks again.
const PENDING_POLL: Duration = Duration::from_millis(20);

pub const WEBHOOK_EVENTS_TOTAL: &str = "autorenew_webhook_events_total";

/// The webhook endpoint's signing secrets and tolerance, read once from the settings.
#[derive(Debug, Clone)]
pub struct Webhooks {
    secrets: Vec<SecretString>,
    tolerance_secs: u64,
}

impl Webhooks {
    pub fn from_settings(settings: &StripeSettings) -> Self {
        Webhooks {
            secrets: settings.webhook_secrets.clone(),
            tolerance_secs: settings.webhook_tolerance_secs,
        }
    }
}

/// Counts a delivery by its event's type (bounded: Stripe's own list; `unknown` before the
/// signature is verified) and what became of it.
fn count(kind: &str, outcome: &'static str) {
    metrics::counter!(WEBHOOK_EVENTS_TOTAL, "type" => kind.to_owned(), "outcome" => outcome)
        .increment(1);
}

pub async fn stripe_webhook(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<ApiResponse>, IntakeError> {
    let webhooks = &state.webhooks;
    if webhooks.secrets.is_empty() {
        return Err(IntakeError::NotFound);
    }
    // The raw bytes, as Stripe signed them: nothing is parsed before the signature verifies.
    let bytes = read_body(body, MAX_EVENT_BYTES, state.limits.request_timeout_ms).await?;
    let header = headers
        .get(SIGNATURE_HEADER)
        .map(|value| value.to_str().unwrap_or(""));
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    if let Err(error) = verify_signature(
        header,
        &bytes,
        &webhooks.secrets,
        now,
        webhooks.tolerance_secs,
    ) {
        count("unknown", "signature_invalid");
        return Err(error.into());
    }
    let event = EventSummary::parse(&bytes).map_err(|error| {
        count("unknown", "invalid");
        IntakeError::Field(FieldError::Body(error.to_string()))
    })?;

    let token = uuid::Uuid::new_v4().to_string();
    let deadline = Instant::now() + state.limits.publish_timeout;
    loop {
        // The claim outlives any publish still in flight (it gives up after `publish_timeout`),
        // so only a dead holder leaves one this old; it then expires by itself.
        let lease = state.limits.publish_timeout * 2;
        let claim = state
            .store
            .claim_stripe_event(&event.id, &token, lease)
            .await
            .inspect_err(|_| count(&event.kind, "unavailable"))?;
        match claim {
            EventClaim::Claimed => {
                enqueue(&state, &event, &bytes, &token)
                    .await
                    .inspect_err(|_| count(&event.kind, "unavailable"))?;
                count(&event.kind, "enqueued");
                tracing::info!(event_id = %event.id, event_type = %event.kind, "Stripe event enqueued");
                return Ok(Json(ApiResponse::event_taken("event taken")));
            }
            EventClaim::Taken => {
                count(&event.kind, "duplicate");
                tracing::info!(event_id = %event.id, event_type = %event.kind, "Stripe event delivered again");
                return Ok(Json(ApiResponse::event_taken("event taken before")));
            }
            EventClaim::Pending => {
                // Another delivery of this event is between Redis and the broker; its outcome
                // decides ours, within our own deadline.
                if Instant::now() + PENDING_POLL > deadline {
                    count(&event.kind, "busy");
                    return Err(IntakeError::WebhookEventBusy);
                }
                tokio::time::sleep(PENDING_POLL).await;
            }
        }
    }
}

/// Publishes the event and records it taken. A failure that proves the message is not on the
/// broker releases the claim, so Stripe's retry starts afresh; one that leaves it unknown keeps
/// the claim until its lease ends (a second copy is then possible, and the worker applies an
/// event id once).
async fn enqueue(
    state: &AppState,
    event: &EventSummary,
    raw: &[u8],
    token: &str,
) -> Result<(), IntakeError> {
    let exchange = state.broker.topology().jobs();
    let received_at = time::OffsetDateTime::now_utc()
        .format(&Rfc3339)
        .unwrap_or_default();
    let message = Message {
        exchange: &exchange,
        routing_key: JOB_ROUTING_KEY,
        body: raw,
        content_type: "application/json",
        message_id: &event.id,
        kind: STRIPE_EVENT_MESSAGE_TYPE,
        headers: vec![
            (
                "stripe_event_type",
                AMQPValue::LongString(event.kind.as_str().into()),
            ),
            (
                "stripe_event_created",
                AMQPValue::LongLongInt(event.created),
            ),
            ("stripe_livemode", AMQPValue::Boolean(event.livemode)),
            (
                "received_at",
                AMQPValue::LongString(received_at.as_str().into()),
            ),
        ],
        mandatory: true,
    };
    match state
        .broker
        .publish(message, state.limits.publish_timeout)
        .await
    {
        Ok(()) => {
            // The event is safe on the broker: answer 2xx even if this mark is lost (a later
            // delivery would then enqueue a second copy, which the worker applies once).
            if let Err(error) = state.store.mark_stripe_event_taken(&event.id).await {
                tracing::warn!(event_id = %event.id, %error, "Stripe event not marked taken");
            }
            Ok(())
        }
        Err(error) => {
            let known_not_sent = matches!(
                error,
                BrokerError::Unavailable | BrokerError::Nacked | BrokerError::Unroutable
            );
            if known_not_sent
                && let Err(release) = state.store.release_stripe_event(&event.id, token).await
            {
                tracing::warn!(event_id = %event.id, error = %release, "event claim not released");
            }
            Err(error.into())
        }
    }
}
