//! `POST /cancelAutoRenewalRecord` (docs/partners.md#post-cancelautorenewalrecord): a cancel becomes a job of its own kind on
//! the broker, once per payId and `when`; a worker runs it after the creation has ended.

use std::sync::Arc;

use axum::Extension;
use axum::Json;
use axum::extract::State;

use super::enqueue::{Enqueue, Taken, enqueue};
use super::error::{IntakeError, Refusal};
use super::renewal_record::RenewalRecord;
use super::request_id::RequestId;
use super::response::ApiResponse;
use super::signed::SignedRequest;
use super::state::AppState;
use crate::broker::JobMessage;
use crate::domain::cancel::{CANCEL_MESSAGE_TYPE, CancelJob, CancelRequest};
use crate::domain::clock::now_rfc3339;

pub async fn cancel_auto_renewal(
    State(state): State<Arc<AppState>>,
    Extension(RequestId(request_id)): Extension<RequestId>,
    SignedRequest { body, .. }: SignedRequest<CancelRequest>,
) -> Result<Json<ApiResponse>, Refusal> {
    let refuse = Refusal::about(body.pay_id.to_string());
    take(&state, &body, request_id).await.map_err(refuse)
}

/// Takes a cancel: its job goes on the broker once per payId and `when` (see [`enqueue`]).
async fn take(
    state: &AppState,
    request: &CancelRequest,
    request_id: String,
) -> Result<Json<ApiResponse>, IntakeError> {
    let pay_key = request.pay_key();
    let record = RenewalRecord::find(state, &pay_key).await?;
    let cancel_record = state.store.cancel_record(&pay_key, request.when);
    // A repeat of a cancel answers like the first time, whatever happened since.
    if state.store.is_enqueued(&cancel_record).await? {
        return Ok(Json(accepted(&record)));
    }
    if record.creation_failed() {
        return Err(IntakeError::PayIdNotCancelable(
            "its creation failed, there is no subscription",
        ));
    }
    if record.canceled() {
        return Err(IntakeError::PayIdNotCancelable("it is canceled already"));
    }

    let requested_at = now_rfc3339();
    let job = CancelJob {
        pay_id: request.pay_id.clone(),
        partner_code: request.partner_code.clone(),
        when: request.when,
        requested_at: requested_at.clone(),
        request_id,
    };
    let body = job.encode();
    let message_id = job.message_id();
    let taken = enqueue(
        state,
        Enqueue {
            record: cancel_record,
            fingerprint: None,
            fields: &[("requested_at", requested_at.as_bytes())],
            // Built like every other job message, so the worker's redelivery and dead-letter
            // paths read the same headers off a cancel as off a creation.
            message: JobMessage {
                kind: CANCEL_MESSAGE_TYPE,
                body: &body,
                message_id: &message_id,
                attempt: 1,
                parked: false,
                partner: Some(request.partner_code.as_str()),
            },
            headers: Vec::new(),
            busy: IntakeError::PayIdBusy,
        },
    )
    .await?;
    if let Taken::Now = taken {
        tracing::info!(pay_id = %request.pay_id, when = %request.when, "cancel enqueued");
    }
    Ok(Json(accepted(&record)))
}

/// `S` with the payId's current status: the cancel itself is announced later, as
/// `subscription.updated` / `subscription.canceled`.
fn accepted(record: &RenewalRecord) -> ApiResponse {
    ApiResponse {
        operate_code: "S",
        message: "cancel accepted".into(),
        error_code: None,
        field: None,
        error: None,
        ..record.current()
    }
}
