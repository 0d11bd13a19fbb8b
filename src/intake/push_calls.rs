//! The partner's calls about its pushes (docs/partners.md#your-calls-about-your-pushes): the attempt log of a payId, one
//! resend, and the recovery of a window. A resend or a recovery is a message on the partner's
//! push queue, confirmed by the broker before the answer; the notifier attempts it once.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use serde::Serialize;

use super::error::{IntakeError, Refusal};
use super::renewal_record::RenewalRecord;
use super::response::ApiResponse;
use super::signed::SignedRequest;
use super::state::AppState;
use crate::broker::push::PushMessage;
use crate::domain::FieldError;
use crate::domain::push::{Notification, Trigger};
use crate::domain::push_calls::{NotificationQuery, RecoverRequest, ResendRequest};

/// The flat fields every answer has, and what the call answers.
#[derive(Debug, Serialize)]
pub struct PushCallResponse {
    #[serde(flatten)]
    pub flat: ApiResponse,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub notifications: Option<Vec<Notification>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhook_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
}

impl PushCallResponse {
    fn new(message: &str, pay_id: &str) -> Self {
        let mut flat = ApiResponse::event_taken(message);
        flat.pay_id = pay_id.to_owned();
        PushCallResponse {
            flat,
            notifications: None,
            webhook_id: None,
            count: None,
        }
    }
}

/// `POST /queryNotifications`: every event of a payId with its attempts. A payId this partner
/// never sent is `404 PAY_ID_UNKNOWN`, like another partner's.
pub async fn query_notifications(
    State(state): State<Arc<AppState>>,
    SignedRequest { body, .. }: SignedRequest<NotificationQuery>,
) -> Result<Json<PushCallResponse>, Refusal> {
    let pay_id = body.pay_id.to_string();
    let refuse = Refusal::about(pay_id.clone());
    let partner = body.partner_code.as_str();
    let notifications = state
        .store
        .push_notifications(partner, &pay_id)
        .await
        .map_err(|e| refuse(e.into()))?;
    if notifications.is_empty() {
        // Known to this partner, nothing pushed (yet): an empty list.
        RenewalRecord::find(&state, &body.pay_key())
            .await
            .map_err(refuse)?;
    }
    let mut answer = PushCallResponse::new("notifications", &pay_id);
    answer.notifications = Some(notifications);
    Ok(Json(answer))
}

/// `POST /resendNotification`: one attempt now, outside the schedule, same `webhook-id`.
pub async fn resend_notification(
    State(state): State<Arc<AppState>>,
    SignedRequest { body, .. }: SignedRequest<ResendRequest>,
) -> Result<Json<PushCallResponse>, Refusal> {
    let partner = body.partner_code.as_str();
    let found = if pushes(&state, partner) {
        state.store.push_body(partner, &body.webhook_id).await?
    } else {
        None
    };
    let Some((event_id, event)) = found else {
        return Err(IntakeError::NotificationUnknown.into());
    };
    queue(&state, partner, &event_id, &event, Trigger::Resend).await?;
    let mut answer = PushCallResponse::new("resend queued", "");
    answer.webhook_id = Some(body.webhook_id);
    Ok(Json(answer))
}

/// `POST /recoverNotifications`: every event of the window without a 2xx is attempted again.
pub async fn recover_notifications(
    State(state): State<Arc<AppState>>,
    SignedRequest { body, .. }: SignedRequest<RecoverRequest>,
) -> Result<Json<PushCallResponse>, Refusal> {
    let partner = body.partner_code.as_str();
    let now = crate::domain::clock::now_millis() as i64;
    let retention = state.limits.push_retention;
    let oldest = now - i64::try_from(retention.as_millis()).unwrap_or(i64::MAX / 2);
    if body.since_ms < oldest {
        return Err(IntakeError::Field(FieldError::invalid(
            "since",
            format!(
                "must be within the last {} days (push.log_retention_days)",
                retention.as_secs() / 86_400
            ),
        ))
        .into());
    }
    let mut count = 0;
    if pushes(&state, partner) {
        let until = body.until_ms.unwrap_or(now);
        for webhook_id in state
            .store
            .push_undelivered(partner, body.since_ms, until)
            .await?
        {
            // Expired since the window was read: nothing left to send.
            let Some((event_id, event)) = state.store.push_body(partner, &webhook_id).await? else {
                continue;
            };
            queue(&state, partner, &event_id, &event, Trigger::Recover).await?;
            count += 1;
        }
    }
    let mut answer = PushCallResponse::new("recovery queued", "");
    answer.count = Some(count);
    Ok(Json(answer))
}

/// Whether the partner has a push (its queue exists).
fn pushes(state: &AppState, partner: &str) -> bool {
    state
        .broker
        .topology()
        .push()
        .partners
        .iter()
        .any(|(code, _)| code == partner)
}

async fn queue(
    state: &AppState,
    partner: &str,
    event_id: &str,
    event: &[u8],
    trigger: Trigger,
) -> Result<(), IntakeError> {
    let message = PushMessage {
        partner,
        body: event,
        message_id: event_id,
        attempts: 0,
        trigger: Some(trigger.as_str()),
    };
    let queue = state.broker.topology().push_queue(partner);
    state
        .broker
        .publish_push(message, &queue, None, state.limits.publish_timeout)
        .await?;
    Ok(())
}
