//! Stripe-shaped errors: `{"error": {"type", "code", "decline_code", "param", "message"}}` with
//! Stripe's HTTP statuses, mapped to a response in one place.

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

/// One Stripe API error, as the client will read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub kind: &'static str,
    pub code: Option<String>,
    pub decline_code: Option<Box<str>>,
    pub param: Option<String>,
    pub message: String,
    /// `Stripe-Should-Retry`: Stripe sets it on errors a retry may fix (409 lock, 429, 5xx).
    pub should_retry: Option<bool>,
    /// The SetupIntent a failed confirm leaves (`error.setup_intent`), as Stripe adds it.
    pub setup_intent: Option<Box<Value>>,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            kind,
            code: None,
            decline_code: None,
            param: None,
            message: message.into(),
            should_retry: None,
            setup_intent: None,
        }
    }

    fn code(mut self, code: &str) -> Self {
        self.code = Some(code.to_owned());
        self
    }

    /// The error with Stripe's `code`.
    pub fn with_code(self, code: &str) -> Self {
        self.code(code)
    }

    fn param(mut self, param: Option<&str>) -> Self {
        self.param = param.map(str::to_owned);
        self
    }

    fn retry(mut self, should_retry: bool) -> Self {
        self.should_retry = Some(should_retry);
        self
    }

    pub fn invalid_request(message: &str, param: Option<&str>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message).param(param)
    }

    pub fn missing_param(param: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            format!("Missing required param: {param}."),
        )
        .code("parameter_missing")
        .param(Some(param))
    }

    pub fn invalid_param(param: &str, expected: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            format!("Invalid {param}: must be {expected}."),
        )
        .code("parameter_invalid_string")
        .param(Some(param))
    }

    pub fn unknown_param(param: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            format!("Received unknown parameter: {param}"),
        )
        .code("parameter_unknown")
        .param(Some(param))
    }

    /// An id in the URL path names nothing: 404, as Stripe answers.
    pub fn no_such(object: &str, id: &str, param: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            format!("No such {object}: '{id}'"),
        )
        .code("resource_missing")
        .param(Some(param))
    }

    /// An id in the parameters names nothing: 400 naming the parameter.
    pub fn no_such_param(object: &str, id: &str, param: &str) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            ..Self::no_such(object, id, param)
        }
    }

    /// A payment method that exists but is not this customer's: Stripe answers 400
    /// `resource_missing` naming the parameter, as if the customer had none by that id.
    pub fn not_attached(pm: &str, param: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            format!(
                "The customer does not have a payment method with the ID {pm}. The payment \
                 method must be attached to the customer."
            ),
        )
        .code("resource_missing")
        .param(Some(param))
    }

    pub fn unauthorized(message: &str) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "invalid_request_error", message)
    }

    pub fn not_found_route(method: &str, path: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            format!("Unrecognized request URL ({method}: {path})."),
        )
    }

    /// A declined charge: 402 `card_error`.
    pub fn card_declined(code: &str, decline_code: &str, message: &str) -> Self {
        Self {
            decline_code: Some(decline_code.into()),
            ..Self::new(StatusCode::PAYMENT_REQUIRED, "card_error", message)
                .code(code)
                .param(match code {
                    "expired_card" => Some("exp_month"),
                    "incorrect_cvc" => Some("cvc"),
                    _ => None,
                })
        }
    }

    pub fn rate_limited() -> Self {
        Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "invalid_request_error",
            "Request rate limit exceeded. Learn more about rate limits here \
             https://stripe.com/docs/rate-limits.",
        )
        .code("rate_limit")
        .retry(true)
    }

    pub fn server_error() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "api_error",
            "An unknown error occurred (injected by the simulator).",
        )
        .retry(true)
    }

    /// A 500 of an endpoint that started and failed, saved under the idempotency key so a
    /// retry with that key gets it again. No `Stripe-Should-Retry`: Stripe does not document
    /// what it sends there, and the worker must not lean on it.
    pub fn saved_server_error() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "api_error",
            "An unknown error occurred (injected by the simulator, saved under the idempotency \
             key).",
        )
    }

    pub fn idempotency_mismatch(key: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "idempotency_error",
            format!(
                "Keys for idempotent requests can only be used with the same parameters they \
                 were first used with. Try using a key other than '{key}' if you meant to \
                 execute a different request."
            ),
        )
        .code("idempotency_key_in_use")
    }

    pub fn idempotency_other_endpoint(key: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "idempotency_error",
            format!(
                "Keys for idempotent requests can only be used for the same endpoint they were \
                 first used for. Try using a key other than '{key}' if you meant to execute a \
                 different request."
            ),
        )
    }

    pub fn idempotency_in_flight() -> Self {
        Self::new(
            StatusCode::CONFLICT,
            "invalid_request_error",
            "There is currently another in-progress request using this Idempotent Key \
             (that probably means you submitted twice, and the other request is still going \
             through). Please try again later.",
        )
        .code("idempotency_key_in_use")
        .retry(true)
    }

    /// A scripted error: whatever status, type and code the test asked for.
    pub fn scripted(status: StatusCode, kind: &str, code: Option<&str>, message: &str) -> Self {
        let kind = match kind {
            "card_error" => "card_error",
            "idempotency_error" => "idempotency_error",
            "invalid_request_error" => "invalid_request_error",
            _ => "api_error",
        };
        let mut error = Self::new(status, kind, message);
        error.code = code.map(str::to_owned);
        if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
            error.should_retry = Some(true);
        }
        error
    }

    /// The JSON body, without the HTTP status.
    pub fn body(&self) -> Value {
        let mut error = Map::new();
        error.insert("type".into(), json!(self.kind));
        error.insert("message".into(), json!(self.message));
        if let Some(code) = &self.code {
            error.insert("code".into(), json!(code));
            error.insert(
                "doc_url".into(),
                json!(format!(
                    "https://stripe.com/docs/error-codes/{}",
                    code.replace('_', "-")
                )),
            );
        }
        if let Some(decline_code) = &self.decline_code {
            error.insert("decline_code".into(), json!(decline_code));
        }
        if let Some(param) = &self.param {
            error.insert("param".into(), json!(param));
        }
        if let Some(intent) = &self.setup_intent {
            error.insert("setup_intent".into(), (**intent).clone());
        }
        json!({ "error": error })
    }

    /// Validation failures happen before an endpoint starts executing; Stripe does not save
    /// their idempotent result, so the client can fix the request and retry with the same key.
    pub fn is_validation(&self) -> bool {
        self.kind == "invalid_request_error"
            && matches!(self.status, StatusCode::BAD_REQUEST | StatusCode::NOT_FOUND)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(self.body())).into_response();
        if let Some(retry) = self.should_retry {
            response.headers_mut().insert(
                "stripe-should-retry",
                HeaderValue::from_static(if retry { "true" } else { "false" }),
            );
        }
        response
    }
}
