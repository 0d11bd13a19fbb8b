//! `POST /resultQuery`: where one of the partner's own payIds stands.

use std::sync::Arc;

use axum::extract::State;

use super::error::Refusal;
use super::renewal_record::RenewalRecord;
use super::response::ApiResponse;
use super::signed::SignedRequest;
use super::state::AppState;
use crate::domain::ResultQuery;

pub async fn result_query(
    State(state): State<Arc<AppState>>,
    SignedRequest { body, .. }: SignedRequest<ResultQuery>,
) -> Result<ApiResponse, Refusal> {
    let refuse = Refusal::about(body.pay_id.to_string());
    // The creation's result with the subscription's status as the webhooks and cancels keep it
    // (`canceled` after a cancel), as `/queryAutoRenewalRecord` answers it. Another partner's
    // payId of the same name is another key: answered as unknown, so no partner learns what
    // another sent.
    let record = RenewalRecord::find(&state, &body.pay_key())
        .await
        .map_err(refuse)?;
    Ok(record.current())
}
