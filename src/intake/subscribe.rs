//! `POST /stripeSubDirectly`: a checked request becomes a job on the broker, once per payId.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Extension;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};

use super::enqueue::{Enqueue, Taken, enqueue};
use super::error::{IntakeError, Refusal};
use super::request_id::RequestId;
use super::response::ApiResponse;
use super::signed::SignedRequest;
use super::state::AppState;
use crate::broker::JobMessage;
use crate::domain::clock::now_rfc3339;
use crate::domain::job::JOB_MESSAGE_TYPE;
use crate::domain::outcome::STATUS_PROCESSING;
use crate::domain::request::SUBSCRIPTION_FIELDS;
use crate::domain::{Job, PayKey, SubscriptionRequest};
use crate::telemetry::names::intake::ENQUEUE_SECONDS;
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
    let answer = take(&state, body, fields, request_id).await?;
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

/// Holds a taken request's answer until its job's final result is stored, or `wait` ends,
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

/// Takes a checked request: its job goes on the broker once per payId (see [`enqueue`]).
async fn take(
    state: &AppState,
    body: SubscriptionRequest,
    fields: crate::domain::SignedFields,
    request_id: String,
) -> Result<ApiResponse, Refusal> {
    let refuse = Refusal::about(body.pay_id.to_string());
    let pay_key = body.pay_key();
    let accepted_at = now_rfc3339();
    let extras = fields
        .extras(SUBSCRIPTION_FIELDS)
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let job = Job::new(&body, extras, accepted_at.clone(), request_id.clone()).encode();
    let fingerprint = fields.fingerprint();
    let message_id = pay_key.to_string();
    let started = Instant::now();
    let taken = enqueue(
        state,
        Enqueue {
            record: state.store.creation_record(&pay_key),
            fingerprint: Some(&fingerprint),
            fields: &[
                ("fp", fingerprint.as_bytes()),
                ("partner", body.partner_code.as_str().as_bytes()),
                ("accepted_at", accepted_at.as_bytes()),
                ("job", &job),
            ],
            message: JobMessage {
                kind: JOB_MESSAGE_TYPE,
                body: &job,
                message_id: &message_id,
                attempt: 1,
                parked: false,
                partner: Some(body.partner_code.as_str()),
            },
            headers: Vec::new(),
            busy: IntakeError::PayIdBusy,
        },
    )
    .await
    .map_err(refuse)?;
    match taken {
        Taken::Now => {
            metrics::histogram!(ENQUEUE_SECONDS).record(started.elapsed().as_secs_f64());
            tracing::info!(
                pay_id = %body.pay_id,
                partner = %body.partner_code,
                email = %body.email.masked(),
                request_id,
                "job enqueued"
            );
            Ok(ApiResponse::for_job(body.pay_id.as_str(), None))
        }
        Taken::Before { result } => Ok(ApiResponse::for_job(
            body.pay_id.as_str(),
            result.as_deref(),
        )),
    }
}
