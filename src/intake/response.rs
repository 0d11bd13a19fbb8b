//! The body of every intake answer: the partner documentation's flat fields at top level
//! (docs/partners.md#what-to-do-with-each-answer), always all present so strict partner parsers never miss one.

use axum::Json;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::metrics::ErrorCode;

use crate::domain::outcome::STATUS_PROCESSING;
use crate::domain::{FailureDetail, FinalResult};

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ApiResponse {
    pub operate_code: &'static str,
    pub message: String,
    pub pay_id: String,
    pub status: String,
    #[serde(rename = "customer_id")]
    pub customer_id: String,
    #[serde(rename = "pay_method")]
    pub pay_method: String,
    #[serde(rename = "product_id")]
    pub product_id: String,
    #[serde(rename = "sub_id")]
    pub sub_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_code: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<FailureDetail>,
}

/// As JSON, with the answer's `errorCode` left for the request metrics: a job that ended `F`
/// is counted under its code, though its HTTP status is 200.
impl IntoResponse for ApiResponse {
    fn into_response(self) -> Response {
        let code = self.error_code;
        let mut response = Json(self).into_response();
        if let Some(code) = code {
            response.extensions_mut().insert(ErrorCode(code));
        }
        response
    }
}

impl ApiResponse {
    /// An answer with only these three fields filled; every other flat field is present and
    /// empty.
    fn bare(operate_code: &'static str, message: String, pay_id: &str) -> Self {
        ApiResponse {
            operate_code,
            message,
            pay_id: pay_id.to_owned(),
            status: String::new(),
            customer_id: String::new(),
            pay_method: String::new(),
            product_id: String::new(),
            sub_id: String::new(),
            error_code: None,
            field: None,
            error: None,
        }
    }

    /// A request we refused: `F` with a stable code and, where there is one, the field.
    pub fn refused(
        code: &'static str,
        message: String,
        field: Option<String>,
        pay_id: Option<&str>,
    ) -> Self {
        ApiResponse {
            error_code: Some(code),
            field,
            ..ApiResponse::bare("F", message, pay_id.unwrap_or_default())
        }
    }

    /// A Stripe event taken (or taken before): `S`, with no payId of its own.
    pub fn event_taken(message: &str) -> Self {
        ApiResponse::bare("S", message.to_owned(), "")
    }

    /// Where an accepted payId stands: processing, or its final result.
    pub fn for_job(pay_id: &str, result: Option<&FinalResult>) -> Self {
        let Some(result) = result else {
            return ApiResponse {
                status: STATUS_PROCESSING.into(),
                ..ApiResponse::bare("S", "accepted".into(), pay_id)
            };
        };
        let failed = result.error.as_ref();
        ApiResponse {
            operate_code: if failed.is_some() { "F" } else { "S" },
            message: match failed {
                Some(detail) => detail.message.clone(),
                None => "subscription created".into(),
            },
            pay_id: pay_id.to_owned(),
            status: result.status.clone(),
            customer_id: result.customer_id.clone(),
            pay_method: result.pay_method.clone(),
            product_id: result.product_id.clone(),
            sub_id: result.sub_id.clone(),
            error_code: failed.map(|detail| detail.code.as_str()),
            field: None,
            error: failed.cloned(),
        }
    }
}
