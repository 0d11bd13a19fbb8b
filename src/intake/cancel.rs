//! `POST /cancelAutoRenewalRecord` (CONTRACT §9.3): a cancel becomes a job of its own kind on
//! the broker, once per payId and `when`; a worker runs it after the creation has ended.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Extension;
use axum::Json;
use axum::extract::State;
use time::format_description::well_known::Rfc3339;

use super::error::{IntakeError, Refusal};
use super::renewal_record::RenewalRecord;
use super::request_id::RequestId;
use super::response::ApiResponse;
use super::signed::{SignedRequest, now_millis};
use super::state::AppState;
use crate::broker::{BrokerError, Destination, JobMessage};
use crate::domain::cancel::{CANCEL_MESSAGE_TYPE, CancelJob, CancelRequest};
use crate::store::CancelClaim;

/// How often a cancel that another request is enqueueing looks again.
const PENDING_POLL: Duration = Duration::from_millis(20);

pub async fn cancel_auto_renewal(
    State(state): State<Arc<AppState>>,
    Extension(RequestId(request_id)): Extension<RequestId>,
    SignedRequest { body, .. }: SignedRequest<CancelRequest>,
) -> Result<Json<ApiResponse>, Refusal> {
    let refuse = |error: IntakeError| Refusal {
        error,
        pay_id: Some(body.pay_id.to_string()),
    };
    accept(&state, &body, request_id).await.map_err(refuse)
}

async fn accept(
    state: &AppState,
    request: &CancelRequest,
    request_id: String,
) -> Result<Json<ApiResponse>, IntakeError> {
    let pay_id = &request.pay_id;
    let pay_key = request.pay_key();
    let record = RenewalRecord::find(state, &pay_key).await?;
    // A repeat of a cancel answers like the first time, whatever happened since.
    if state.store.cancel_enqueued(&pay_key, request.when).await? {
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

    // Unique even when a caller reuses its X-Request-Id: only its holder may release a claim.
    let token = uuid::Uuid::new_v4().to_string();
    let requested_at = time::OffsetDateTime::now_utc()
        .format(&Rfc3339)
        .unwrap_or_default();
    let job = CancelJob {
        pay_id: pay_id.clone(),
        partner_code: request.partner_code.clone(),
        when: request.when,
        requested_at: requested_at.clone(),
        request_id,
    };
    let deadline = Instant::now() + state.limits.publish_timeout;
    loop {
        // As the intake's claim of a payId: the lease outlives any publish still in flight.
        let claim = state
            .store
            .claim_cancel(
                &pay_key,
                request.when,
                &token,
                now_millis(),
                state.limits.publish_timeout * 2,
                &requested_at,
            )
            .await?;
        match claim {
            CancelClaim::Claimed => {
                enqueue(state, &job, &token).await?;
                tracing::info!(%pay_id, when = %request.when, "cancel enqueued");
                return Ok(Json(accepted(&record)));
            }
            CancelClaim::Enqueued => return Ok(Json(accepted(&record))),
            CancelClaim::Pending => {
                if Instant::now() + PENDING_POLL > deadline {
                    return Err(IntakeError::PayIdBusy);
                }
                tokio::time::sleep(PENDING_POLL).await;
            }
        }
    }
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

/// Publishes the cancel job and records it enqueued; on a failure that proves the job is not on
/// the broker, releases the claim so the partner's retry starts afresh.
async fn enqueue(state: &AppState, job: &CancelJob, token: &str) -> Result<(), IntakeError> {
    let body = job.encode();
    let message_id = job.message_id();
    // Built like every other job message, so the worker's redelivery and dead-letter paths
    // read the same headers off a cancel as off a creation.
    let message = JobMessage {
        kind: CANCEL_MESSAGE_TYPE,
        body: &body,
        message_id: &message_id,
        attempt: 1,
        parked: false,
    };
    match state
        .broker
        .publish_job(message, Destination::Jobs, state.limits.publish_timeout)
        .await
    {
        Ok(()) => {
            // The job is on the broker: the answer stands even if this mark is lost (a repeat
            // would then enqueue a second copy, with the same message id and the same fixed
            // Stripe idempotency keys).
            if let Err(error) = state
                .store
                .mark_cancel_enqueued(&job.pay_key(), job.when)
                .await
            {
                tracing::warn!(pay_id = %job.pay_id, %error, "cancel not marked enqueued");
            }
            Ok(())
        }
        Err(error) => {
            let known_not_sent = matches!(
                error,
                BrokerError::Unavailable | BrokerError::Nacked | BrokerError::Unroutable
            );
            if known_not_sent
                && let Err(release) = state
                    .store
                    .release_cancel(&job.pay_key(), job.when, token)
                    .await
            {
                tracing::warn!(pay_id = %job.pay_id, error = %release, "cancel claim not released");
            }
            Err(error.into())
        }
    }
}
