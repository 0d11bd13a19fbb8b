//! `SignedRequest<T>`: the extractor every partner endpoint takes, so no handler can forget a
//! check. It runs them in the contract's order: size, content type, JSON, fields, partner,
//! sign, tradeTime.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{FromRequest, Request};
use axum::http::header;
use http_body_util::{BodyExt, Limited};

use super::error::{IntakeError, Refusal};
use super::state::AppState;
use crate::domain::authorization::AuthorizationRequest;
use crate::domain::cancel::CancelRequest;
use crate::domain::clock::now_millis;
use crate::domain::push_calls::{NotificationQuery, RecoverRequest, ResendRequest};
use crate::domain::renewal::RenewalQuery;
use crate::domain::request::{PartnerCode, PayId, TradeTime};
use crate::domain::{FieldError, ResultQuery, SignedFields, SubscriptionRequest};
use crate::telemetry::names::intake::SIGN_INVALID_TOTAL;

/// A request body that is signed by a partner.
pub trait SignedBody: Sized + Send {
    fn parse(body: &[u8]) -> Result<(Self, SignedFields), FieldError>;
    fn partner(&self) -> &PartnerCode;
    fn trade_time(&self) -> TradeTime;
}

impl SignedBody for SubscriptionRequest {
    fn parse(body: &[u8]) -> Result<(Self, SignedFields), FieldError> {
        SubscriptionRequest::parse(body)
    }
    fn partner(&self) -> &PartnerCode {
        &self.partner_code
    }
    fn trade_time(&self) -> TradeTime {
        self.trade_time
    }
}

impl SignedBody for ResultQuery {
    fn parse(body: &[u8]) -> Result<(Self, SignedFields), FieldError> {
        ResultQuery::parse(body)
    }
    fn partner(&self) -> &PartnerCode {
        &self.partner_code
    }
    fn trade_time(&self) -> TradeTime {
        self.trade_time
    }
}

impl SignedBody for CancelRequest {
    fn parse(body: &[u8]) -> Result<(Self, SignedFields), FieldError> {
        CancelRequest::parse(body)
    }
    fn partner(&self) -> &PartnerCode {
        &self.partner_code
    }
    fn trade_time(&self) -> TradeTime {
        self.trade_time
    }
}

impl SignedBody for RenewalQuery {
    fn parse(body: &[u8]) -> Result<(Self, SignedFields), FieldError> {
        RenewalQuery::parse(body)
    }
    fn partner(&self) -> &PartnerCode {
        &self.partner_code
    }
    fn trade_time(&self) -> TradeTime {
        self.trade_time
    }
}

/// The push's calls (docs/partners.md#your-calls-about-your-pushes).
macro_rules! signed_push_call {
    ($($kind:ty),*) => {$(
        impl SignedBody for $kind {
            fn parse(body: &[u8]) -> Result<(Self, SignedFields), FieldError> {
                <$kind>::parse(body)
            }
            fn partner(&self) -> &PartnerCode {
                &self.partner_code
            }
            fn trade_time(&self) -> TradeTime {
                self.trade_time
            }
        }
    )*};
}

signed_push_call!(NotificationQuery, ResendRequest, RecoverRequest);

impl SignedBody for AuthorizationRequest {
    fn parse(body: &[u8]) -> Result<(Self, SignedFields), FieldError> {
        AuthorizationRequest::parse(body)
    }
    fn partner(&self) -> &PartnerCode {
        &self.partner_code
    }
    fn trade_time(&self) -> TradeTime {
        self.trade_time
    }
}

/// A body whose every check passed.
#[derive(Debug)]
pub struct SignedRequest<T> {
    pub body: T,
    pub fields: SignedFields,
}

impl<T: SignedBody> FromRequest<Arc<AppState>> for SignedRequest<T> {
    type Rejection = Refusal;

    async fn from_request(request: Request, state: &Arc<AppState>) -> Result<Self, Refusal> {
        let limit = state.limits.max_body_bytes;
        let declared = request
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.parse::<u64>().ok());
        if declared.is_some_and(|length| length > limit as u64) {
            return Err(IntakeError::BodyTooLarge { limit }.into());
        }
        check_content_type(request.headers())?;
        let bytes = read_body(request.into_body(), limit, state.limits.request_timeout_ms).await?;

        let (body, fields) = T::parse(&bytes).map_err(|error| Refusal {
            error: error.into(),
            pay_id: readable_pay_id(&bytes),
        })?;
        let pay_id = Some(fields.get("payId").to_owned()).filter(|p| PayId::parse(p).is_ok());
        if let Some(pay_id) = &pay_id {
            tracing::Span::current().record("pay_id", pay_id.as_str());
        }
        let refuse = |error: IntakeError| Refusal {
            error,
            pay_id: pay_id.clone(),
        };

        let partner = state
            .partners
            .get(body.partner().as_str())
            .ok_or_else(|| refuse(IntakeError::PartnerUnknown(body.partner().to_string())))?;
        if !partner.verifies(&fields) {
            // By partner, so an operator sees whose secret is wrong (a rotation half done). The
            // partner is a configured one here, so the label's values are bounded.
            metrics::counter!(SIGN_INVALID_TOTAL, "partner" => body.partner().to_string())
                .increment(1);
            tracing::info!(partner = %body.partner(), "a sign that does not verify");
            return Err(refuse(IntakeError::SignInvalid));
        }
        let max_skew_ms = state.limits.max_clock_skew_ms;
        if !body.trade_time().is_within(now_millis(), max_skew_ms) {
            return Err(refuse(IntakeError::TradeTimeExpired { max_skew_ms }));
        }
        // Only signed requests count against a partner's rate: nobody else can spend it.
        if partner.rate_limit_per_second > 0 {
            let allowed = state
                .store
                .try_take_rate(body.partner().as_str(), partner.rate_limit_per_second)
                .await
                .map_err(|e| refuse(e.into()))?;
            if !allowed {
                return Err(refuse(IntakeError::RateLimited));
            }
        }
        Ok(SignedRequest { body, fields })
    }
}

/// JSON, or no Content-Type at all (taken as JSON, as partners' older clients send).
fn check_content_type(headers: &axum::http::HeaderMap) -> Result<(), IntakeError> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Ok(());
    };
    let text = value.to_str().unwrap_or("");
    let essence = text
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let is_json = essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"));
    if is_json {
        Ok(())
    } else {
        Err(IntakeError::ContentType(text.chars().take(100).collect()))
    }
}

/// Reads at most `limit` bytes, within `timeout_ms`: a slow or endless body is cut off.
pub(super) async fn read_body(
    body: Body,
    limit: usize,
    timeout_ms: u64,
) -> Result<bytes::Bytes, IntakeError> {
    let read = Limited::new(body, limit).collect();
    match tokio::time::timeout(std::time::Duration::from_millis(timeout_ms), read).await {
        Err(_) => Err(IntakeError::SlowBody(timeout_ms)),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(error)) if error.is::<http_body_util::LengthLimitError>() => {
            Err(IntakeError::BodyTooLarge { limit })
        }
        // The client went away or sent a broken body: nothing more to read.
        Ok(Err(_)) => Err(IntakeError::Field(FieldError::Body(
            "the request body could not be read".into(),
        ))),
    }
}

/// The payId of a body that failed validation, if there is a well-formed one to echo back.
fn readable_pay_id(bytes: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    let pay_id = value.get("payId")?.as_str()?;
    PayId::parse(pay_id).ok().map(|p| p.to_string())
}
