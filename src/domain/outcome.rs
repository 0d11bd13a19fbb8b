//! Where a payId stands: processing, or the final result a worker stored (docs/partners.md#what-to-do-with-each-answer).

use serde::{Deserialize, Serialize};

/// `status` while no worker has finished the job.
pub const STATUS_PROCESSING: &str = "processing";
/// `status` of a job that ended without a subscription.
pub const STATUS_FAILED: &str = "failed";

/// The stable codes of a job that ended `failed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum FailureCode {
    /// The card was declined (`decline_code` says why).
    CardDeclined,
    /// The payment method is unknown, or attached to another customer.
    PaymentMethodUnavailable,
    /// Stripe refused the request as invalid.
    StripeRejected,
    /// Stripe could not be reached or kept failing until the retries were spent, and a lookup
    /// showed that no subscription was made.
    StripeUnavailable,
    /// The job crashed the worker (a panic), or kept being handed back until the broker's
    /// delivery limit; a lookup showed that no subscription was made.
    InternalError,
}

impl FailureCode {
    pub fn as_str(&self) -> &'static str {
        match self {
            FailureCode::CardDeclined => "CARD_DECLINED",
            FailureCode::PaymentMethodUnavailable => "PAYMENT_METHOD_UNAVAILABLE",
            FailureCode::StripeRejected => "STRIPE_REJECTED",
            FailureCode::StripeUnavailable => "STRIPE_UNAVAILABLE",
            FailureCode::InternalError => "INTERNAL_ERROR",
        }
    }
}

/// Why a job failed, as partners and subscribers read it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailureDetail {
    pub code: FailureCode,
    pub message: String,
    /// Stripe's own error `code`; `null` where Stripe gave none. Always present, so every
    /// failure has the same shape whatever its code.
    #[serde(default)]
    pub stripe_code: Option<String>,
    /// Stripe's `decline_code`; `null` where Stripe gave none (a refusal that is not a decline).
    #[serde(default)]
    pub decline_code: Option<String>,
}

/// The final result of a job, stored once per payId.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FinalResult {
    /// The subscription's own status (`active`, `trialing`, `incomplete`, …) or `failed`.
    pub status: String,
    #[serde(default)]
    pub customer_id: String,
    #[serde(default)]
    pub sub_id: String,
    #[serde(default)]
    pub product_id: String,
    #[serde(default)]
    pub pay_method: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<FailureDetail>,
    pub attempts: u32,
    pub accepted_at: String,
    pub completed_at: String,
}

impl FinalResult {
    pub fn is_failed(&self) -> bool {
        self.error.is_some() || self.status == STATUS_FAILED
    }

    /// A subscription was made and has not ended: what is kept for the payId lives as long.
    pub fn subscription_lives(&self) -> bool {
        !self.is_failed() && !super::renewal::has_ended(&self.status)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_failure_has_the_same_fields_whatever_stripe_said() {
        let unavailable = FailureDetail {
            code: FailureCode::StripeUnavailable,
            message: "Stripe could not be reached in time".into(),
            stripe_code: None,
            decline_code: None,
        };
        let json = serde_json::to_value(&unavailable).expect("serializes");
        assert_eq!(
            json,
            serde_json::json!({"code": "STRIPE_UNAVAILABLE",
                               "message": "Stripe could not be reached in time",
                               "stripe_code": null, "decline_code": null})
        );
    }
}
