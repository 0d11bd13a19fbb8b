//! `POST /stripe/webhook` (docs/partners.md#stripes-webhooks): Stripe's signed event deliveries become messages on
//! the jobs exchange, each event once, and Stripe hears `2xx` only for what the broker confirmed.

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;

use super::enqueue::{Enqueue, Taken, enqueue};
use super::error::IntakeError;
use super::response::ApiResponse;
use super::signed::read_body;
use super::state::AppState;
use crate::broker::{JobMessage, stripe_event_headers};
use crate::domain::FieldError;
use crate::domain::clock::now_rfc3339;
use crate::domain::webhook::{EventSummary, SIGNATURE_HEADER, STRIPE_EVENT_MESSAGE_TYPE};
use crate::telemetry::names::intake::WEBHOOK_EVENTS_TOTAL;

/// Stripe's events carry whole objects (an invoice with its lines), far larger than a partner
/// request; Stripe documents no cap, and this leaves room for large invoices.
const MAX_EVENT_BYTES: usize = 512 * 1024;

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
    if state.webhooks.is_empty() {
        return Err(IntakeError::NotFound);
    }
    // The raw bytes, as Stripe signed them: nothing is parsed before the signature verifies.
    let bytes = read_body(body, MAX_EVENT_BYTES, state.limits.request_timeout_ms).await?;
    let header = headers
        .get(SIGNATURE_HEADER)
        .map(|value| value.to_str().unwrap_or(""));
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    if let Err(error) = state.webhooks.verify(header, &bytes, now) {
        count("unknown", "signature_invalid");
        return Err(error.into());
    }
    let event = EventSummary::parse(&bytes).map_err(|error| {
        count("unknown", "invalid");
        IntakeError::Field(FieldError::Body(error.to_string()))
    })?;

    // A second copy is possible only when a publish's outcome stayed unknown; the worker
    // applies an event id once.
    let taken = enqueue(
        &state,
        Enqueue {
            record: state.store.stripe_event_record(&event.id),
            fingerprint: None,
            fields: &[],
            message: JobMessage {
                kind: STRIPE_EVENT_MESSAGE_TYPE,
                body: &bytes,
                message_id: &event.id,
                attempt: 1,
                parked: false,
                // Which partner's subscription the event is about is known only once the
                // worker has found it: the shared queue takes Stripe's events.
                partner: None,
            },
            headers: stripe_event_headers(&event, &now_rfc3339()),
            busy: IntakeError::WebhookEventBusy,
        },
    )
    .await
    .inspect_err(|error| match error {
        IntakeError::WebhookEventBusy => count(&event.kind, "busy"),
        _ => count(&event.kind, "unavailable"),
    })?;
    match taken {
        Taken::Now => {
            count(&event.kind, "enqueued");
            tracing::info!(event_id = %event.id, event_type = %event.kind, "Stripe event enqueued");
            Ok(Json(ApiResponse::event_taken("event taken")))
        }
        Taken::Before { .. } => {
            count(&event.kind, "duplicate");
            tracing::info!(event_id = %event.id, event_type = %event.kind, "Stripe event delivered again");
            Ok(Json(ApiResponse::event_taken("event taken before")))
        }
    }
}
