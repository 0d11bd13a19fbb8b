//! What a failed Stripe call means for the job: retry it, settle it by lookup, or end the job.

use stripe::{ApiErrorsCode, ApiErrorsType, StripeError};

use crate::domain::{FailureCode, FailureDetail};

/// A Stripe call that did not succeed, classified for the retry policy.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StripeFailure {
    /// Nothing happened, or it is safe to send the same request again (429, 409 lock, a
    /// network error on a read): retry after a pause.
    #[error("transient Stripe failure: {0}")]
    Transient(String),
    /// A write whose outcome is unknown (a timeout or 5xx after sending, an answer that would
    /// not parse): look the object up before anything is created again.
    #[error("Stripe outcome unknown: {0}")]
    Unknown(String),
    /// Stripe said no for good: the job ends `failed` with this detail.
    #[error("Stripe refused: {}", .0.message)]
    Permanent(FailureDetail),
    /// The shared request budget could not be asked (its store is away): nothing was sent to
    /// Stripe, and retrying here cannot help; the job goes back until the budget answers again.
    #[error("the Stripe request budget is unavailable: {0}")]
    BudgetUnavailable(String),
}

impl StripeFailure {
    /// A permanent failure of the payment method (unknown, or someone else's).
    pub fn payment_method(message: impl Into<String>, stripe_code: Option<String>) -> Self {
        StripeFailure::Permanent(FailureDetail {
            code: FailureCode::PaymentMethodUnavailable,
            message: message.into(),
            stripe_code,
            decline_code: None,
        })
    }

    /// Classifies an error of a call; `should_retry` is Stripe's `Stripe-Should-Retry` header,
    /// `write` says whether the call may have changed something.
    pub fn classify(error: StripeError, should_retry: Option<bool>, write: bool) -> Self {
        let unknown_or_transient = |reason: String| {
            if write {
                StripeFailure::Unknown(reason)
            } else {
                StripeFailure::Transient(reason)
            }
        };
        match error {
            StripeError::Stripe(api, status) => {
                let message = api
                    .message
                    .clone()
                    .unwrap_or_else(|| format!("HTTP {status}"));
                let stripe_code = api.code.as_ref().map(|c| c.as_str().to_owned());
                match status {
                    // The key was used before with other parameters: something may have been
                    // made under it (by an earlier request with other inputs). Look it up.
                    400 if write && api.type_ == ApiErrorsType::IdempotencyError => {
                        StripeFailure::Unknown(format!("{status}: {message}"))
                    }
                    // Rate limited, or a lock / idempotency key in use: nothing was done.
                    429 | 409 => StripeFailure::Transient(format!("{status}: {message}")),
                    // Stripe's 5xx may come after the write happened.
                    500..=599 => unknown_or_transient(format!("{status}: {message}")),
                    // A bad key or missing permission is the operator's to fix; the job waits.
                    401 | 403 => StripeFailure::Transient(format!("{status}: {message}")),
                    // Stripe says a retry may succeed where the status alone would not: it
                    // knows (docs/design.md#how-a-request-becomes-a-subscription).
                    _ if should_retry == Some(true) => StripeFailure::Transient(format!(
                        "{status} (Stripe-Should-Retry): {message}"
                    )),
                    _ => StripeFailure::Permanent(permanent_detail(&api, message, stripe_code)),
                }
            }
            StripeError::Timeout => unknown_or_transient("timed out".into()),
            StripeError::ClientError(reason) => unknown_or_transient(reason),
            StripeError::JSONDeserialize(reason) => {
                unknown_or_transient(format!("unreadable answer: {reason}"))
            }
            StripeError::ConfigError(reason) => StripeFailure::Transient(reason),
        }
    }
}

/// A failed write under an idempotency key, as the key switch reads it: what it means for the
/// job, and whether Stripe answered from the key's record (`Idempotent-Replayed: true`).
///
/// A replayed answer is definitive for its key: the first request under it ran to its end, so
/// nothing under that key can still be executing. Stripe saves an answer once the endpoint
/// began executing, a 500 included; a 409 (the key's first request still running), a 429 or a
/// request that failed validation is not saved, so it is never replayed
/// (docs/design.md#how-a-request-becomes-a-subscription).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{failure}{}", if *.replayed { " (replayed by Stripe)" } else { "" })]
pub struct WriteFailure {
    pub failure: StripeFailure,
    pub replayed: bool,
}

impl From<StripeFailure> for WriteFailure {
    /// A failure that is not an answer Stripe replayed (it was executed now, or never reached
    /// Stripe's idempotency layer).
    fn from(failure: StripeFailure) -> Self {
        WriteFailure {
            failure,
            replayed: false,
        }
    }
}

fn permanent_detail(
    api: &stripe::ApiErrors,
    message: String,
    stripe_code: Option<String>,
) -> FailureDetail {
    let code = if api.type_ == ApiErrorsType::CardError {
        FailureCode::CardDeclined
    } else if matches!(api.code, Some(ApiErrorsCode::ResourceMissing))
        && api
            .param
            .as_deref()
            .is_some_and(|p| p.contains("payment_method"))
    {
        FailureCode::PaymentMethodUnavailable
    } else {
        FailureCode::StripeRejected
    };
    FailureDetail {
        code,
        message,
        stripe_code,
        decline_code: api.decline_code.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stripe_error(status: u16, kind: &str) -> StripeError {
        let json = format!(r#"{{"type":"{kind}","message":"m"}}"#);
        let api: stripe::ApiErrors = miniserde::json::from_str(&json).expect("an ApiErrors");
        StripeError::Stripe(Box::new(api), status)
    }

    #[test]
    fn stripe_s_advice_to_retry_makes_a_refusal_transient() {
        let advised =
            StripeFailure::classify(stripe_error(400, "invalid_request_error"), Some(true), true);
        let unadvised =
            StripeFailure::classify(stripe_error(400, "invalid_request_error"), None, true);

        assert!(
            matches!(advised, StripeFailure::Transient(_)),
            "{advised:?}"
        );
        assert!(
            matches!(unadvised, StripeFailure::Permanent(_)),
            "{unadvised:?}"
        );
    }

    #[test]
    fn a_key_reused_with_other_parameters_is_an_unknown_outcome_to_look_up() {
        let write = StripeFailure::classify(stripe_error(400, "idempotency_error"), None, true);

        assert!(matches!(write, StripeFailure::Unknown(_)), "{write:?}");
    }

    #[test]
    fn a_5xx_after_a_write_stays_unknown_whatever_the_advice() {
        let failure = StripeFailure::classify(stripe_error(500, "api_error"), Some(true), true);

        assert!(matches!(failure, StripeFailure::Unknown(_)), "{failure:?}");
    }
}
