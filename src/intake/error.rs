//! Every way the intake refuses a request, mapped once to an HTTP status, a stable `errorCode`
//! and a log line (docs/partners.md#what-to-do-with-each-answer).

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::response::ApiResponse;
use crate::broker::BrokerError;
use crate::domain::FieldError;
use crate::domain::webhook::SignatureError;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum IntakeError {
    #[error("body is larger than {limit} bytes")]
    BodyTooLarge { limit: usize },
    #[error("Content-Type `{0}` is not supported; send application/json")]
    ContentType(String),
    #[error("the request body was not received within {0} ms")]
    SlowBody(u64),
    #[error("{0}")]
    Field(#[from] FieldError),
    #[error("partner `{0}` is not configured")]
    PartnerUnknown(String),
    #[error("sign does not verify")]
    SignInvalid,
    #[error("tradeTime is more than {max_skew_ms} ms away from the server's clock")]
    TradeTimeExpired { max_skew_ms: u64 },
    #[error("payId is not known for this partner")]
    PayIdUnknown,
    #[error("payId is already known with different content")]
    PayIdConflict,
    #[error("an earlier request for this payId is still being enqueued; retry shortly")]
    PayIdBusy,
    #[error("payId cannot be canceled: {0}")]
    PayIdNotCancelable(&'static str),
    #[error("no push of this partner has this webhook_id")]
    NotificationUnknown,
    #[error("the Stripe-Signature does not verify: {0}")]
    WebhookSignature(#[from] SignatureError),
    #[error("another delivery of this Stripe event is being enqueued; retry shortly")]
    WebhookEventBusy,
    #[error("this partner is over its request rate; retry shortly")]
    RateLimited,
    #[error("no such endpoint")]
    NotFound,
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("the job could not be enqueued: {0}")]
    Broker(#[from] BrokerError),
    #[error("the request could not be recorded: {0}")]
    Store(#[from] StoreError),
    #[error("Stripe could not be reached in time: {0}")]
    StripeUnavailable(String),
    #[error("Stripe refused the authorization: {0}")]
    StripeRejected(String),
}

impl IntakeError {
    /// Every `errorCode` the intake answers a refusal with: docs/partners.md's table and the OpenAPI
    /// document (`openapi.json`) list each one.
    pub const ERROR_CODES: &[&str] = &[
        "BODY_INVALID",
        "PARAM_MISSING",
        "PARAM_INVALID",
        "PARTNER_UNKNOWN",
        "SIGN_INVALID",
        "TRADE_TIME_EXPIRED",
        "PAY_ID_UNKNOWN",
        "NOT_FOUND",
        "METHOD_NOT_ALLOWED",
        "REQUEST_TIMEOUT",
        "PAY_ID_CONFLICT",
        "BODY_TOO_LARGE",
        "CONTENT_TYPE_UNSUPPORTED",
        "RATE_LIMITED",
        "BROKER_UNAVAILABLE",
        "STORE_UNAVAILABLE",
        "PAY_ID_BUSY",
        "PAY_ID_NOT_CANCELABLE",
        "WEBHOOK_SIGNATURE_INVALID",
        "WEBHOOK_EVENT_BUSY",
        "NOTIFICATION_UNKNOWN",
        "STRIPE_UNAVAILABLE",
        "STRIPE_REJECTED",
    ];

    pub fn status(&self) -> StatusCode {
        match self {
            IntakeError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            IntakeError::ContentType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            IntakeError::SlowBody(_) => StatusCode::REQUEST_TIMEOUT,
            IntakeError::Field(_) | IntakeError::WebhookSignature(_) => StatusCode::BAD_REQUEST,
            IntakeError::PartnerUnknown(_)
            | IntakeError::SignInvalid
            | IntakeError::TradeTimeExpired { .. } => StatusCode::UNAUTHORIZED,
            IntakeError::PayIdUnknown
            | IntakeError::NotificationUnknown
            | IntakeError::NotFound => StatusCode::NOT_FOUND,
            IntakeError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            IntakeError::PayIdConflict | IntakeError::PayIdNotCancelable(_) => StatusCode::CONFLICT,
            IntakeError::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            IntakeError::PayIdBusy
            | IntakeError::WebhookEventBusy
            | IntakeError::Broker(_)
            | IntakeError::Store(_)
            | IntakeError::StripeUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            IntakeError::StripeRejected(_) => StatusCode::BAD_GATEWAY,
        }
    }

    /// The stable code partners program against; listed in docs/partners.md.
    pub fn code(&self) -> &'static str {
        match self {
            IntakeError::BodyTooLarge { .. } => "BODY_TOO_LARGE",
            IntakeError::ContentType(_) => "CONTENT_TYPE_UNSUPPORTED",
            IntakeError::SlowBody(_) => "REQUEST_TIMEOUT",
            IntakeError::Field(FieldError::Body(_)) => "BODY_INVALID",
            IntakeError::Field(FieldError::Missing { .. }) => "PARAM_MISSING",
            IntakeError::Field(FieldError::Invalid { .. }) => "PARAM_INVALID",
            IntakeError::PartnerUnknown(_) => "PARTNER_UNKNOWN",
            IntakeError::SignInvalid => "SIGN_INVALID",
            IntakeError::TradeTimeExpired { .. } => "TRADE_TIME_EXPIRED",
            IntakeError::PayIdUnknown => "PAY_ID_UNKNOWN",
            IntakeError::PayIdConflict => "PAY_ID_CONFLICT",
            IntakeError::PayIdBusy => "PAY_ID_BUSY",
            IntakeError::PayIdNotCancelable(_) => "PAY_ID_NOT_CANCELABLE",
            IntakeError::NotificationUnknown => "NOTIFICATION_UNKNOWN",
            IntakeError::WebhookSignature(_) => "WEBHOOK_SIGNATURE_INVALID",
            IntakeError::WebhookEventBusy => "WEBHOOK_EVENT_BUSY",
            IntakeError::RateLimited => "RATE_LIMITED",
            IntakeError::NotFound => "NOT_FOUND",
            IntakeError::MethodNotAllowed => "METHOD_NOT_ALLOWED",
            IntakeError::Broker(_) => "BROKER_UNAVAILABLE",
            IntakeError::Store(_) => "STORE_UNAVAILABLE",
            IntakeError::StripeUnavailable(_) => "STRIPE_UNAVAILABLE",
            IntakeError::StripeRejected(_) => "STRIPE_REJECTED",
        }
    }

    fn field(&self) -> Option<String> {
        match self {
            IntakeError::Field(error) => error.field().map(str::to_owned),
            IntakeError::PartnerUnknown(_) => Some("partnerCode".into()),
            IntakeError::SignInvalid => Some("sign".into()),
            IntakeError::TradeTimeExpired { .. } => Some("tradeTime".into()),
            IntakeError::PayIdUnknown
            | IntakeError::PayIdConflict
            | IntakeError::PayIdBusy
            | IntakeError::PayIdNotCancelable(_) => Some("payId".into()),
            IntakeError::NotificationUnknown => Some("webhook_id".into()),
            _ => None,
        }
    }

    /// Whether a client should simply try again later.
    fn retry_after(&self) -> Option<&'static str> {
        match self {
            IntakeError::Broker(_) | IntakeError::Store(_) | IntakeError::StripeUnavailable(_) => {
                Some("2")
            }
            IntakeError::PayIdBusy | IntakeError::WebhookEventBusy | IntakeError::RateLimited => {
                Some("1")
            }
            _ => None,
        }
    }

    /// The answer for this error, with the payId echoed when the request had a readable one.
    pub fn into_response_for(self, pay_id: Option<&str>) -> Response {
        let status = self.status();
        let code = self.code();
        if status.is_server_error() {
            // The cause chain (Redis's or RabbitMQ's own words) goes to the log, not the partner.
            tracing::warn!(error_code = code, pay_id, error = %self, "request not taken");
        } else {
            tracing::info!(error_code = code, pay_id, error = %self, "request refused");
        }
        let message = match &self {
            IntakeError::Broker(_) => "the job could not be enqueued now; retry later".to_owned(),
            IntakeError::Store(_) => {
                "the request could not be recorded now; retry later".to_owned()
            }
            IntakeError::StripeUnavailable(_) => {
                "Stripe could not be reached in time; retry later".to_owned()
            }
            other => other.to_string(),
        };
        let body = ApiResponse::refused(code, message, self.field(), pay_id);
        let mut response = (status, Json(body)).into_response();
        response
            .extensions_mut()
            .insert(super::metrics::ErrorCode(code));
        if let Some(seconds) = self.retry_after() {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static(seconds));
        }
        response
    }
}

impl IntoResponse for IntakeError {
    fn into_response(self) -> Response {
        self.into_response_for(None)
    }
}

/// An error together with the payId of the request it answers.
#[derive(Debug)]
pub struct Refusal {
    pub error: IntakeError,
    pub pay_id: Option<String>,
}

impl Refusal {
    /// Makes the refusals of a request about `pay_id`: `.map_err(Refusal::about(pay_id))`.
    pub fn about(pay_id: String) -> impl Fn(IntakeError) -> Refusal {
        move |error| Refusal {
            error,
            pay_id: Some(pay_id.clone()),
        }
    }
}

impl<E: Into<IntakeError>> From<E> for Refusal {
    fn from(error: E) -> Self {
        Refusal {
            error: error.into(),
            pay_id: None,
        }
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        self.error.into_response_for(self.pay_id.as_deref())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::time::Duration;

    use super::*;

    /// One error of each kind. The match fails to compile when a variant is added, as a
    /// reminder to add it here (and its code to `ERROR_CODES` and the OpenAPI document).
    fn one_of_each() -> Vec<IntakeError> {
        let all = vec![
            IntakeError::BodyTooLarge { limit: 16 },
            IntakeError::ContentType("text/plain".into()),
            IntakeError::SlowBody(10),
            IntakeError::Field(FieldError::Body("not JSON".into())),
            IntakeError::Field(FieldError::Missing {
                field: "email".into(),
            }),
            IntakeError::Field(FieldError::invalid("email", "must be an email address")),
            IntakeError::PartnerUnknown("P0".into()),
            IntakeError::SignInvalid,
            IntakeError::TradeTimeExpired { max_skew_ms: 1 },
            IntakeError::PayIdUnknown,
            IntakeError::PayIdConflict,
            IntakeError::PayIdBusy,
            IntakeError::PayIdNotCancelable("its creation failed"),
            IntakeError::WebhookSignature(SignatureError::NoMatch),
            IntakeError::WebhookEventBusy,
            IntakeError::NotificationUnknown,
            IntakeError::RateLimited,
            IntakeError::NotFound,
            IntakeError::MethodNotAllowed,
            IntakeError::Broker(BrokerError::Unavailable),
            IntakeError::Store(StoreError::Timeout(Duration::from_millis(1))),
            IntakeError::StripeUnavailable("timed out".into()),
            IntakeError::StripeRejected("invalid".into()),
        ];
        for error in &all {
            match error {
                IntakeError::BodyTooLarge { .. }
                | IntakeError::ContentType(_)
                | IntakeError::SlowBody(_)
                | IntakeError::Field(_)
                | IntakeError::PartnerUnknown(_)
                | IntakeError::SignInvalid
                | IntakeError::TradeTimeExpired { .. }
                | IntakeError::PayIdUnknown
                | IntakeError::PayIdConflict
                | IntakeError::PayIdBusy
                | IntakeError::PayIdNotCancelable(_)
                | IntakeError::WebhookSignature(_)
                | IntakeError::WebhookEventBusy
                | IntakeError::NotificationUnknown
                | IntakeError::RateLimited
                | IntakeError::NotFound
                | IntakeError::MethodNotAllowed
                | IntakeError::Broker(_)
                | IntakeError::Store(_)
                | IntakeError::StripeUnavailable(_)
                | IntakeError::StripeRejected(_) => {}
            }
        }
        all
    }

    #[test]
    fn error_codes_lists_every_code_and_nothing_else() {
        let produced: HashSet<&str> = one_of_each().iter().map(IntakeError::code).collect();
        let listed: HashSet<&str> = IntakeError::ERROR_CODES.iter().copied().collect();
        assert_eq!(
            listed.len(),
            IntakeError::ERROR_CODES.len(),
            "a code listed twice"
        );
        assert_eq!(produced, listed);
    }
}
