//! `POST /stripeSubDirectly`: a checked request becomes a job on the broker, once per payId.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Extension;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use time::format_description::well_known::Rfc3339;

use super::error::{IntakeError, Refusal};
use super::metrics::ENQUEUE_SECONDS;
use super::request_id::RequestId;
use super::response::ApiResponse;
use super::signed::{SignedRequest, now_millis};
use super::state::AppState;
use crate::broker::{BrokerError, Destination, JobMessage};
use crate::domain::job::JOB_MESSAGE_TYPE;
use crate::domain::outcome::STATUS_PROCESSING;
use crate::domain::request::SUBSCRIPTION_FIELDS;
use crate::domain::{Job, PayKey, SubscriptionRequest};
use crate::store::{Claim, ClaimOutcome};

/// How often a request for a payId that another request is enqueueing looks again.
const PENDING_POLL: Duration = Duration::from_millis(20);
/// How often a request with `Prefer: wait` looks for its job's result.
const RESULT_POLL: Duration = Duration::from_millis(50);

pub async fn subscribe(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Extension(RequestId(request_id)): Extension<RequestId>,
    SignedRequest { body, fields }: SignedRequest<SubscriptionRequest>,
) -> Result<Response, Refusal> {
    let wait = preferred_wait(&headers).map(|wait| wait.min(state.limits.max_wait));
    let pay_key = body.pay_key();
    let answer = accept(&state, body, fields, request_id).await?;
    let Some(wait) = wait else {
        return Ok(answer.into_response());
    };
    let answer = if answer.status == STATUS_PROCESSING && answer.operate_code == "S" {
        wait_for_result(&state, &pay_key, answer, wait).await
    } else {
        answer
    };
    let applied = format!("wait={}", wait.as_secs());
    let mut response = answer.into_response();
    if let Ok(value) = HeaderValue::from_str(&applied) {
        response.headers_mut().insert("preference-applied", value);
    }
    Ok(response)
}

/// `Prefer: wait=N` (RFC 7240), among other preferences; None when absent or unreadable.
fn preferred_wait(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get_all("prefer")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split([',', ';']))
        .filter_map(|preference| {
            let (name, value) = preference.split_once('=')?;
            (name.trim().eq_ignore_ascii_case("wait"))
                .then(|| value.trim().trim_matches('"').parse::<u64>().ok())
                .flatten()
        })
        .next()
        .map(Duration::from_secs)
}

/// Holds an accepted request's answer until its job's final result is stored, or `wait` ends,
/// or the intake stops (the answer then goes at once: a stopping intake holds no one up).
async fn wait_for_result(
    state: &AppState,
    pay_key: &PayKey,
    answer: ApiResponse,
    wait: Duration,
) -> ApiResponse {
    let deadline = Instant::now() + wait;
    while Instant::now() < deadline {
        let pause = RESULT_POLL.min(deadline.saturating_duration_since(Instant::now()));
        tokio::select! {
            () = state.stopping.cancelled() => break,
            () = tokio::time::sleep(pause) => {}
        }
        // A Redis hiccup while waiting does not undo the acceptance: answer what we know.
        if let Ok(Some(result)) = state.store.result(pay_key).await {
            return ApiResponse::for_job(pay_key.pay_id().as_str(), Some(&result));
        }
    }
    answer
}

async fn accept(
    state: &AppState,
    body: SubscriptionRequest,
    fields: crate::domain::SignedFields,
    request_id: String,
) -> Result<ApiResponse, Refusal> {
    let pay_id = body.pay_id.clone();
    let pay_key = body.pay_key();
    let refuse = |error: IntakeError| Refusal {
        error,
        pay_id: Some(pay_id.to_string()),
    };
    // The claim token must be unique even when a caller reuses its X-Request-Id.
    let token = uuid::Uuid::new_v4().to_string();
    let accepted_at = time::OffsetDateTime::now_utc()
        .format(&Rfc3339)
        .unwrap_or_default();
    let extras = fields
        .extras(SUBSCRIPTION_FIELDS)
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let job = Job::new(&body, extras, accepted_at.clone(), request_id.clone()).encode();
    let fingerprint = fields.fingerprint();
    let started = Instant::now();
    let deadline = started + state.limits.publish_timeout;

    loop {
        let claim = Claim {
            pay_key: &pay_key,
            fingerprint: &fingerprint,
            token: &token,
            now_ms: now_millis(),
            // A claim outlives any publish that is still in flight: the publish gives up
            // after `publish_timeout`, so only a dead holder leaves a claim this old.
            lease: state.limits.publish_timeout * 2,
            accepted_at: &accepted_at,
            job: &job,
        };
        let outcome = state
            .store
            .claim(claim)
            .await
            .map_err(|e| refuse(e.into()))?;
        match outcome {
            ClaimOutcome::Claimed { stored, .. } => {
                let payload = stored.as_deref().unwrap_or(&job);
                enqueue(state, &body, payload, &token)
                    .await
                    .map_err(&refuse)?;
                metrics::histogram!(ENQUEUE_SECONDS).record(started.elapsed().as_secs_f64());
                tracing::info!(
                    pay_id = %body.pay_id,
                    partner = %body.partner_code,
                    email = %body.email.masked(),
                    request_id,
                    "job enqueued"
                );
                return Ok(ApiResponse::for_job(body.pay_id.as_str(), None));
            }
            ClaimOutcome::Enqueued { result, .. } => {
                return Ok(ApiResponse::for_job(
                    body.pay_id.as_str(),
                    result.as_deref(),
                ));
            }
            ClaimOutcome::Conflict => return Err(refuse(IntakeError::PayIdConflict)),
            ClaimOutcome::Pending { .. } => {
                // Another request with this content is between Redis and the broker. Its
                // answer decides ours: wait for it, within our own deadline.
                if Instant::now() + PENDING_POLL > deadline {
                    return Err(refuse(IntakeError::PayIdBusy));
                }
                tokio::time::sleep(PENDING_POLL).await;
            }
        }
    }
}

/// Publishes the job and records that it is on the broker. On a failure that proves the job
/// is not on the broker, the claim is released so the partner's retry starts afresh; on one
/// that leaves it unknown, the claim stays until its lease ends.
async fn enqueue(
    state: &AppState,
    request: &SubscriptionRequest,
    job: &[u8],
    token: &str,
) -> Result<(), IntakeError> {
    let pay_key = request.pay_key();
    let message = JobMessage {
        kind: JOB_MESSAGE_TYPE,
        body: job,
        message_id: &pay_key.to_string(),
        attempt: 1,
        parked: false,
    };
    match state
        .broker
        .publish_job(message, Destination::Jobs, state.limits.publish_timeout)
        .await
    {
        Ok(()) => {
            // The job is safe on the broker, so the answer need not wait for this write.
            state.marks.mark(pay_key);
            Ok(())
        }
        Err(error) => {
            let known_not_sent = matches!(
                error,
                BrokerError::Unavailable | BrokerError::Nacked | BrokerError::Unroutable
            );
            if known_not_sent && let Err(release) = state.store.release(&pay_key, token).await {
                tracing::warn!(pay_id = %request.pay_id, error = %release, "claim not released");
            }
            Err(error.into())
        }
    }
}
