//! `POST /queryAutoRenewalRecord` (docs/partners.md#post-queryautorenewalrecord): where one of the partner's own auto-renewals
//! stands, kept current by Stripe's webhooks.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};

use super::error::Refusal;
use super::metrics::ErrorCode;
use super::renewal_record::{RenewalRecord, RenewalResponse};
use super::signed::SignedRequest;
use super::state::AppState;
use crate::domain::renewal::RenewalQuery;

pub async fn query_auto_renewal(
    State(state): State<Arc<AppState>>,
    SignedRequest { body, .. }: SignedRequest<RenewalQuery>,
) -> Result<Response, Refusal> {
    let refuse = Refusal::about(body.pay_id.to_string());
    let record = RenewalRecord::find(&state, &body.pay_key())
        .await
        .map_err(refuse)?;
    let answer = RenewalResponse::of(&record);
    let code = answer.base.error_code;
    let mut response = Json(answer).into_response();
    // Counted under the answer's own code, as every answer (see `ApiResponse`).
    if let Some(code) = code {
        response.extensions_mut().insert(ErrorCode(code));
    }
    Ok(response)
}
