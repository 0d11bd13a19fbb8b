//! The job: what the intake puts on the jobs queue and a worker takes off it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::request::{
    Email, PartnerCode, PayId, PayKey, PaymentMethodId, PlanId, SubscriptionRequest,
};

/// The `type` property of a job message, so a consumer can tell a job from anything else.
pub const JOB_MESSAGE_TYPE: &str = "autorenew.job.v1";

/// One accepted request, self-contained: a worker needs nothing else to carry it out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Job {
    pub pay_id: PayId,
    pub partner_code: PartnerCode,
    pub email: Email,
    #[serde(rename = "plan_id")]
    pub plan_id: PlanId,
    #[serde(rename = "pm_id")]
    pub pm_id: PaymentMethodId,
    /// `payAmount` as the partner wrote it.
    pub pay_amount: String,
    /// The amount in the currency's minor units, as Stripe takes it.
    pub amount_minor: i64,
    /// Lower case, as Stripe takes it.
    pub pay_currency: String,
    pub trade_type: String,
    /// When the intake accepted the request (RFC 3339).
    pub accepted_at: String,
    /// The intake's id for the HTTP request that brought the job, for following it in logs.
    pub request_id: String,
    /// Fields the contract does not name; they were signed, so they travel with the job.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extras: BTreeMap<String, String>,
}

/// What is remembered of the subscription creates sent for a payId. Written *before* a create
/// goes out (write-ahead), and kept as long as the payId's record: whoever works on the payId
/// next knows that a subscription may exist, and looks it up before anything is created again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateSent {
    /// The idempotency-key generation of the last create sent ([`subscription_key`]).
    pub generation: u32,
    /// When that create was sent, in milliseconds since the epoch (the worker's clock).
    pub sent_at_ms: u64,
    /// The customer it was sent for: the lookup lists this customer's subscriptions.
    pub customer: String,
    /// The payment method's type, for the result of a subscription found by lookup.
    pub pay_method: String,
    /// The create's idempotency keys are scoped by partner (`ar-<partner>:<payId>-sub-g<n>`).
    /// False in a record written before payIds were scoped: its keys were `ar-<payId>-sub-g<n>`,
    /// and a create still in flight under one must be resent under the same key.
    #[serde(default)]
    pub scoped: bool,
    /// The payment method id the create was sent with: sending it again under the same key
    /// needs the same parameters, or Stripe answers 400 `idempotency_error`. Empty in a record
    /// written before it was kept: such a create is sent again after the customer steps.
    #[serde(default)]
    pub payment_method: String,
}

/// The idempotency key of a payId's subscription create under `generation`; `scoped` is false
/// only for a payId whose first create was sent before payIds were scoped by partner.
pub fn subscription_key(pay_key: &PayKey, generation: u32, scoped: bool) -> String {
    if scoped {
        format!("ar-{pay_key}-sub-g{generation}")
    } else {
        format!("ar-{}-sub-g{generation}", pay_key.pay_id())
    }
}

/// A message body that is not a job.
#[derive(Debug, thiserror::Error)]
#[error("not a job: {0}")]
pub struct JobDecodeError(#[from] serde_json::Error);

impl Job {
    /// The payId in its partner's namespace: what everything kept for it is keyed by.
    pub fn pay_key(&self) -> PayKey {
        PayKey::new(self.partner_code.clone(), self.pay_id.clone())
    }
    pub fn new(
        request: &SubscriptionRequest,
        extras: BTreeMap<String, String>,
        accepted_at: String,
        request_id: String,
    ) -> Self {
        Job {
            pay_id: request.pay_id.clone(),
            partner_code: request.partner_code.clone(),
            email: request.email.clone(),
            plan_id: request.plan_id.clone(),
            pm_id: request.pm_id.clone(),
            pay_amount: request.pay_amount.clone(),
            amount_minor: request.amount.minor_units(),
            pay_currency: request.amount.currency().as_str().to_owned(),
            trade_type: request.trade_type.clone(),
            accepted_at,
            request_id,
            extras,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        // A struct of strings and integers always serializes.
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, JobDecodeError> {
        Ok(serde_json::from_slice(bytes)?)
    }
}
