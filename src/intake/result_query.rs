//! `POST /resultQuery`: where one of the partner's own payIds stands.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;

use super::error::{IntakeError, Refusal};
use super::response::ApiResponse;
use super::signed::SignedRequest;
use super::state::AppState;
use crate::domain::ResultQuery;

pub async fn result_query(
    State(state): State<Arc<AppState>>,
    SignedRequest { body, .. }: SignedRequest<ResultQuery>,
) -> Result<Json<ApiResponse>, Refusal> {
    let refuse = |error: IntakeError| Refusal {
        error,
        pay_id: Some(body.pay_id.to_string()),
    };
    let record = state
        .store
        .record(&body.pay_key())
        .await
        .map_err(|e| refuse(e.into()))?;
    match record {
        Some(record) => Ok(Json(ApiResponse::for_job(
            body.pay_id.as_str(),
            record.result.as_ref(),
        ))),
        // Another partner's payId of the same name is another key: answered as unknown, so no
        // partner learns what another sent.
        None => Err(refuse(IntakeError::PayIdUnknown)),
    }
}
